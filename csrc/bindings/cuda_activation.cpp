// Bindings of the CUDA activation family: activation_forward / activation_backward on CUDA arrays
// (positional arguments as in ember._cpu, then `stream` and `alloc`).
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_ops_common.h"

namespace ember::bind {
namespace {

// An elementwise output of x's shape that may be `x` itself (in place) but not overlap otherwise.
CudaArray same_shape_out(const char* fn, py::handle out_obj, const CudaArray& like,
                         const std::vector<const CudaArray*>& inputs, const py::object& alloc) {
  CudaArray out = cuda_out_arg(fn, out_obj, "out", like.shape, alloc);
  for (const CudaArray* in : inputs) {
    if (!same_memory(out, *in)) no_overlap(fn, out, *in);
  }
  return out;
}

py::object activation_forward(py::handle x_obj, const std::string& activation,
                              double negative_slope, py::handle out_obj, uintptr_t stream,
                              const py::object& alloc) {
  const char* fn = "activation_forward";
  const Activation act = parse_activation(fn, activation);
  const float slope = finite_scalar(fn, negative_slope, "negative_slope");
  const CudaArray x = cuda_array_arg(fn, x_obj, "x", DType::f32, -1);
  const CudaArray out = same_shape_out(fn, out_obj, x, {&x}, alloc);
  device_phase(fn, {&x, &out}, stream);
  cuda::activation_forward(x.size, x.cf32(), out.f32(), act, slope,
                           reinterpret_cast<cuda::Stream>(stream));
  return out.obj;
}

py::object activation_backward(py::handle grad_out_obj, py::handle preact_obj,
                               const std::string& activation, double negative_slope,
                               py::handle out_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "activation_backward";
  const Activation act = parse_activation(fn, activation);
  const float slope = finite_scalar(fn, negative_slope, "negative_slope");
  const CudaArray g = cuda_array_arg(fn, grad_out_obj, "grad_out", DType::f32, -1);
  const CudaArray z = cuda_array_arg(fn, preact_obj, "preact", DType::f32, -1);
  expect_shape(fn, z, g.shape);
  const CudaArray out = same_shape_out(fn, out_obj, g, {&g, &z}, alloc);
  device_phase(fn, {&g, &z, &out}, stream);
  cuda::activation_backward(g.size, g.cf32(), z.cf32(), out.f32(), act, slope,
                            reinterpret_cast<cuda::Stream>(stream));
  return out.obj;
}

}  // namespace

void bind_cuda_activation(py::module_& m) {
  m.def("activation_forward", &activation_forward, py::arg("x"), py::arg("activation"),
        py::arg("negative_slope"), py::arg("out"), py::arg("stream"), py::arg("alloc"),
        R"(act(x) elementwise; out may be x (see ember.ops.activation_forward).)");
  m.def("activation_backward", &activation_backward, py::arg("grad_out"), py::arg("preact"),
        py::arg("activation"), py::arg("negative_slope"), py::arg("out"), py::arg("stream"),
        py::arg("alloc"), R"(grad_out * act'(preact); out may be grad_out (see ember.ops.activation_backward).)");
}

}  // namespace ember::bind
