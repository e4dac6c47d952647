// Bindings of the CUDA dropout family: dropout_forward / dropout_backward on CUDA arrays
// (positional arguments as in ember._cpu, then `stream` and `alloc`). The mask is the CPU
// kernel's, bit for bit (ember/philox.h).
#include <pybind11/pybind11.h>

#include <string>

#include "cuda_bindings.h"
#include "cuda_ops_common.h"

namespace ember::bind {
namespace {

float p_arg(const char* fn, double p) {
  if (!(p >= 0.0 && p <= 1.0)) {
    throw py::value_error(std::string(fn) + ": p must be in [0, 1], got " +
                          py::str(py::float_(p)).cast<std::string>());
  }
  return static_cast<float>(p);
}

py::object dropout(const char* fn, const char* in_name, py::handle x_obj, double p, uint64_t seed,
                   uint64_t offset, py::handle out_obj, uintptr_t stream, const py::object& alloc) {
  const float pf = p_arg(fn, p);
  const CudaArray x = cuda_array_arg(fn, x_obj, in_name, DType::f32, -1);
  const CudaArray out = cuda_out_arg(fn, out_obj, "out", x.shape, alloc);
  if (!same_memory(out, x)) no_overlap(fn, out, x);  // in place is allowed
  device_phase(fn, {&x, &out}, stream);
  cuda::dropout_forward(x.size, x.cf32(), out.f32(), pf, seed, offset,
                        reinterpret_cast<cuda::Stream>(stream));
  return out.obj;
}

}  // namespace

void bind_cuda_dropout(py::module_& m) {
  m.def(
      "dropout_forward",
      [](py::handle x, double p, uint64_t seed, uint64_t offset, py::handle out, uintptr_t stream,
         const py::object& alloc) {
        return dropout("dropout_forward", "x", x, p, seed, offset, out, stream, alloc);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out"),
      py::arg("stream"), py::arg("alloc"),
      R"(Dropout with the Philox4x32-10 mask of (seed, offset); out may be x (see ember.ops.dropout_forward).)");
  m.def(
      "dropout_backward",
      [](py::handle grad_out, double p, uint64_t seed, uint64_t offset, py::handle out,
         uintptr_t stream, const py::object& alloc) {
        return dropout("dropout_backward", "grad_out", grad_out, p, seed, offset, out, stream, alloc);
      },
      py::arg("grad_out"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out"),
      py::arg("stream"), py::arg("alloc"),
      R"(Gradient of dropout_forward with the same (p, seed, offset) (see ember.ops.dropout_backward).)");
}

}  // namespace ember::bind
