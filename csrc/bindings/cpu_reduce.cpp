// Bindings: column_sum, sum, global_norm.
#include <pybind11/stl.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {

void bind_reduce(py::module_& m) {
  m.def(
      "column_sum",
      [](py::handle x_obj, py::handle out_obj, bool accumulate) {
        const char* fn = "column_sum";
        py::array x = array_arg(fn, x_obj, "x", DType::f32, 2);
        const int64_t rows = x.shape(0), cols = x.shape(1);
        if (accumulate && out_obj.is_none()) {
          throw py::value_error("column_sum: accumulate=True needs out");
        }
        py::array out = out_arg(fn, out_obj, "out", {cols});
        no_overlap(fn, out, "out", x, "x");
        {
          py::gil_scoped_release release;
          cpu::column_sum(rows, cols, cf32(x), f32(out), accumulate);
        }
        return out;
      },
      py::arg("x"), py::arg("out") = py::none(), py::arg("accumulate") = false,
      R"(Column sums of a 2-D float32 array; deterministic. See ember.ops.column_sum.)");

  m.def(
      "sum",
      [](py::handle x_obj) {
        py::array x = array_arg("sum", x_obj, "x", DType::f32, -1);
        const int64_t n = x.size();
        const float* p = cf32(x);
        py::gil_scoped_release release;
        return cpu::sum(n, p);
      },
      py::arg("x"), R"(Sum of all elements in float64, deterministic. See ember.ops.sum.)");

  m.def(
      "global_norm",
      [](py::list arrays) {
        const char* fn = "global_norm";
        if (arrays.empty()) throw py::value_error("global_norm: arrays must hold at least one array");
        std::vector<py::array> keep;
        std::vector<const float*> ptrs;
        std::vector<int64_t> sizes;
        for (size_t i = 0; i < arrays.size(); ++i) {
          const std::string name = "arrays[" + std::to_string(i) + "]";
          keep.push_back(array_arg(fn, arrays[i], name.c_str(), DType::f32, -1));
          ptrs.push_back(cf32(keep.back()));
          sizes.push_back(keep.back().size());
        }
        py::gil_scoped_release release;
        return std::sqrt(cpu::sum_squares(static_cast<int64_t>(ptrs.size()), ptrs.data(), sizes.data()));
      },
      py::arg("arrays"), R"(L2 norm over all elements of all arrays. See ember.ops.global_norm.)");
}

}  // namespace ember::bind
