// ember._cuda: CUDA kernels for arrays exposing __cuda_array_interface__ (CuPy, PyTorch, Numba).
// Imports on a machine without a GPU (the CUDA runtime is linked statically); device_count() is 0
// there. ember/_cuda_ops.py adapts these functions to ember.ops' signatures.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda_bindings.h"
#include "ember/cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ember CUDA kernels. Use ember.ops.";

  // ember.CudaError is defined in Python (ember/errors.py) so that it exists without this module.
  static py::object cuda_error_type = py::module_::import("ember.errors").attr("CudaError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ember::CudaError& e) {
      PyErr_SetString(cuda_error_type.ptr(), e.what());
    }
  });

  m.def(
      "device_count",
      []() {
        std::string why;
        int n = ember::cuda::device_count(&why);
        return py::make_tuple(n, why);
      },
      R"(Return (number of usable CUDA devices, reason when 0).)");
  m.def(
      "device_info",
      [](int device) {
        auto d = ember::cuda::device_info(device);
        py::dict out;
        out["name"] = d.name;
        out["compute_capability"] = py::make_tuple(d.major, d.minor);
        out["multiprocessors"] = d.multiprocessors;
        out["total_memory"] = d.total_memory;
        return out;
      },
      py::arg("device"), R"(Properties of one device: name, compute capability, SMs, memory.)");
  m.def("runtime_version", &ember::cuda::runtime_version, R"(CUDA runtime version (e.g. 13000).)");
  m.def("driver_version", &ember::cuda::driver_version, R"(Driver's CUDA version; 0 without a driver.)");

  ember::bind::bind_cuda_gemm(m);
  ember::bind::bind_cuda_activation(m);
  ember::bind::bind_cuda_loss(m);
  ember::bind::bind_cuda_reduce(m);
  ember::bind::bind_cuda_dropout(m);
  ember::bind::bind_cuda_optim(m);
}
