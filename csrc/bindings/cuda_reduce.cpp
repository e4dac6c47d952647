// Bindings of the CUDA reduce family: column_sum, sum and global_norm on CUDA arrays (contract:
// reduce_args.h; positional arguments as in ember._cpu, then `stream` and `alloc`). sum and
// global_norm return a Python float: they synchronise the stream once, after the launches.
#include <pybind11/pybind11.h>

#include <vector>

#include "cuda_bindings.h"
#include "cuda_device.h"
#include "reduce_args.h"

namespace ember::bind {
namespace {

py::object column_sum(py::handle x_obj, py::handle out_obj, bool accumulate, uintptr_t stream,
                      const py::object& alloc) {
  const char* fn = "column_sum";
  const Call c = cuda_call(fn, alloc);
  const ColumnSumArgs a = column_sum_args(c, x_obj, out_obj, accumulate);
  device_phase(fn, {&a.x, &a.out}, stream);
  const Arr ws = cuda_workspace(c, cuda::column_sum_workspace_words(a.x.dim(0), a.x.dim(1)));
  cuda::column_sum(a.x.dim(0), a.x.dim(1), a.x.cf32(), a.out.f32(), a.accumulate, words(ws),
                   as_stream(stream));
  return a.out.obj;
}

double sum(py::handle x_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "sum";
  const Call c = cuda_call(fn, alloc);
  const Arr x = sum_args(c, x_obj);
  device_phase(fn, {&x}, stream);
  const Arr ws = cuda_workspace(c, cuda::sum_workspace_words(x.size));
  cuda::sum(x.size, x.cf32(), words(ws), as_stream(stream));
  return as_double(read_words(words(ws), 1, stream)[0]);
}

double global_norm(py::list arrays_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "global_norm";
  const Call c = cuda_call(fn, alloc);
  const ArrList l = global_norm_args(c, arrays_obj);
  std::vector<const Arr*> arrays;
  add_all(arrays, l);
  device_phase(fn, arrays, stream);
  const auto ptrs = l.pointers<const float*>();
  const auto sizes = l.sizes();
  const auto n = static_cast<int64_t>(ptrs.size());
  const Arr ws = cuda_workspace(c, cuda::optim_workspace_words(n, sizes.data()));
  cuda::global_norm(n, ptrs.data(), sizes.data(), words(ws), as_stream(stream));
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
