// Bindings of the CUDA activation family: activation_forward / activation_backward on CUDA arrays
// (contract: activation_args.h; positional arguments as in ember._cpu, then `stream` and `alloc`).
#include <pybind11/pybind11.h>

#include "activation_args.h"
#include "cuda_bindings.h"
#include "cuda_device.h"

namespace ember::bind {
namespace {

py::object activation_forward(py::handle x_obj, py::handle act_obj, py::handle slope_obj,
                              py::handle out_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "activation_forward";
  const ActivationArgs a =
      activation_forward_args(cuda_call(fn, alloc), x_obj, act_obj, slope_obj, out_obj);
  device_phase(fn, {&a.in, &a.out}, stream);
  cuda::activation_forward(a.in.size, a.in.cf32(), a.out.f32(), a.act, a.slope, as_stream(stream));
  return a.out.obj;
}

py::object activation_backward(py::handle g_obj, py::handle z_obj, py::handle act_obj,
                               py::handle slope_obj, py::handle out_obj, uintptr_t stream,
                               const py::object& alloc) {
  const char* fn = "activation_backward";
  const ActivationArgs a =
      activation_backward_args(cuda_call(fn, alloc), g_obj, z_obj, act_obj, slope_obj, out_obj);
  device_phase(fn, {&a.in, &a.preact, &a.out}, stream);
  cuda::activation_backward(a.in.size, a.in.cf32(), a.preact.cf32(), a.out.f32(), a.act, a.slope,
                            as_stream(stream));
  return a.out.obj;
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
