// Bindings: column_sum, sum, global_norm (contract: reduce_args.h).
#include <pybind11/stl.h>

#include <cmath>
#include <vector>

#include "cpu_bindings.h"
#include "ember/cpu.h"
#include "reduce_args.h"

namespace ember::bind {

void bind_reduce(py::module_& m) {
  m.def(
      "column_sum",
      [](py::handle x_obj, py::handle out_obj, bool accumulate) {
        const ColumnSumArgs a = column_sum_args(cpu_call("column_sum"), x_obj, out_obj, accumulate);
        {
          py::gil_scoped_release release;
          cpu::column_sum(a.x.dim(0), a.x.dim(1), a.x.cf32(), a.out.f32(), a.accumulate);
        }
        return a.out.obj;
      },
      py::arg("x"), py::arg("out") = py::none(), py::arg("accumulate") = false,
      R"(Column sums of a 2-D float32 array; deterministic. See ember.ops.column_sum.)");

  m.def(
      "sum",
      [](py::handle x_obj) {
        const Arr x = sum_args(cpu_call("sum"), x_obj);
        py::gil_scoped_release release;
        return cpu::sum(x.size, x.cf32());
      },
      py::arg("x"), R"(Sum of all elements in float64, deterministic. See ember.ops.sum.)");

  m.def(
      "global_norm",
      [](py::list arrays) {
        const ArrList l = global_norm_args(cpu_call("global_norm"), arrays);
        const std::vector<const float*> ptrs = l.pointers<const float*>();
        const std::vector<int64_t> sizes = l.sizes();
        py::gil_scoped_release release;
        return std::sqrt(cpu::sum_squares(static_cast<int64_t>(ptrs.size()), ptrs.data(), sizes.data()));
      },
      py::arg("arrays"), R"(L2 norm over all elements of all arrays. See ember.ops.global_norm.)");
}

}  // namespace ember::bind
