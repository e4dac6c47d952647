// Bindings of the CUDA dropout family: dropout_forward / dropout_backward on CUDA arrays
// (contract: dropout_args.h; positional arguments as in ember._cpu, then `stream` and `alloc`).
// The mask is the CPU kernel's, bit for bit (ember/philox.h).
#include <pybind11/pybind11.h>

#include "cuda_bindings.h"
#include "cuda_device.h"
#include "dropout_args.h"

namespace ember::bind {
namespace {

py::object dropout(const char* fn, const char* in_name, py::handle x_obj, py::handle p_obj,
                   py::handle seed_obj, py::handle offset_obj, py::handle out_obj,
                   uintptr_t stream, const py::object& alloc) {
  const DropoutArgs a =
      dropout_args(cuda_call(fn, alloc), in_name, x_obj, p_obj, seed_obj, offset_obj, out_obj);
  device_phase(fn, {&a.in, &a.out}, stream);
  cuda::dropout_forward(a.in.size, a.in.cf32(), a.out.f32(), a.p, a.seed, a.offset,
                        as_stream(stream));
  return a.out.obj;
}

}  // namespace

void bind_cuda_dropout(py::module_& m) {
  m.def(
      "dropout_forward",
      [](py::handle x, py::handle p, py::handle seed, py::handle offset, py::handle out,
         uintptr_t stream, const py::object& alloc) {
        return dropout("dropout_forward", "x", x, p, seed, offset, out, stream, alloc);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out"),
      py::arg("stream"), py::arg("alloc"),
      R"(Dropout with the Philox4x32-10 mask of (seed, offset); out may be x (see ember.ops.dropout_forward).)");
  m.def(
      "dropout_backward",
      [](py::handle grad_out, py::handle p, py::handle seed, py::handle offset, py::handle out,
         uintptr_t stream, const py::object& alloc) {
        return dropout("dropout_backward", "grad_out", grad_out, p, seed, offset, out, stream, alloc);
      },
      py::arg("grad_out"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out"),
      py::arg("stream"), py::arg("alloc"),
      R"(Gradient of dropout_forward with the same (p, seed, offset) (see ember.ops.dropout_backward).)");
}

}  // namespace ember::bind
