// Bindings of the CUDA reduce family: column_sum, sum and global_norm on CUDA arrays (positional
// arguments as in ember._cpu, then `stream` and `alloc`). sum and global_norm return a Python
// float: they synchronise the stream once, after the launches.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_ops_common.h"

namespace ember::bind {
namespace {

py::object column_sum(py::handle x_obj, py::handle out_obj, bool accumulate, uintptr_t stream,
                      const py::object& alloc) {
  const char* fn = "column_sum";
  const CudaArray x = cuda_array_arg(fn, x_obj, "x", DType::f32, 2);
  if (accumulate && out_obj.is_none()) throw py::value_error("column_sum: accumulate=True needs out");
  const CudaArray out = cuda_out_arg(fn, out_obj, "out", {x.dim(1)}, alloc);
  no_overlap(fn, out, x);
  device_phase(fn, {&x, &out}, stream);
  const CudaArray ws =
      cuda_workspace(fn, cuda::column_sum_workspace_words(x.dim(0), x.dim(1)), alloc);
  cuda::column_sum(x.dim(0), x.dim(1), x.cf32(), out.f32(), accumulate, words(ws),
                   reinterpret_cast<cuda::Stream>(stream));
  return out.obj;
}

double sum(py::handle x_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "sum";
  const CudaArray x = cuda_array_arg(fn, x_obj, "x", DType::f32, -1);
  device_phase(fn, {&x}, stream);
  const CudaArray ws = cuda_workspace(fn, cuda::sum_workspace_words(x.size), alloc);
  cuda::sum(x.size, x.cf32(), words(ws), reinterpret_cast<cuda::Stream>(stream));
  return as_double(read_words(words(ws), 1, stream)[0]);
}

double global_norm(py::handle arrays_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "global_norm";
  const CudaArrayList l = cuda_array_list(fn, arrays_obj, "arrays", false, -1);
  std::vector<const CudaArray*> arrays;
  add_all(arrays, l);
  device_phase(fn, arrays, stream);
  const auto ptrs = list_pointers<const float*>(l);
  const auto sizes = sizes_of(l);
  const auto n = static_cast<int64_t>(ptrs.size());
  const CudaArray ws = cuda_workspace(fn, cuda::optim_workspace_words(n, sizes.data()), alloc);
  cuda::global_norm(n, ptrs.data(), sizes.data(), words(ws), reinterpret_cast<cuda::Stream>(stream));
  return as_double(read_words(words(ws) + 2, 1, stream)[0]);
}

}  // namespace

void bind_cuda_reduce(py::module_& m) {
  m.def("column_sum", &column_sum, py::arg("x"), py::arg("out"), py::arg("accumulate"),
        py::arg("stream"), py::arg("alloc"),
        R"(Column sums in double, deterministic (see ember.ops.column_sum).)");
  m.def("sum", &sum, py::arg("x"), py::arg("stream"), py::arg("alloc"),
        R"(Sum of all elements in double, deterministic; synchronises the stream (see ember.ops.sum).)");
  m.def("global_norm", &global_norm, py::arg("arrays"), py::arg("stream"), py::arg("alloc"),
        R"(L2 norm of all elements of all arrays (double, deterministic; synchronises the stream).)");
}

}  // namespace ember::bind
