// Bindings: gather_rows.
#include <string>

#include "checks.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {

void bind_gather(py::module_& m) {
  m.def(
      "gather_rows",
      [](py::handle x_obj, py::handle index_obj, py::handle out_obj) {
        const char* fn = "gather_rows";
        py::array x = array_arg(fn, x_obj, "x", DType::f32, 2);
        py::array index = array_arg(fn, index_obj, "index", DType::i64, 1);
        const int64_t n = x.shape(0), cols = x.shape(1), rows = index.shape(0);
        const int64_t* idx = ci64(index);
        for (int64_t i = 0; i < rows; ++i) {
          if (idx[i] < 0 || idx[i] >= n) {
            throw py::value_error(std::string(fn) + ": index[" + std::to_string(i) + "] = " +
                                  std::to_string(idx[i]) + " is out of range [0, " +
                                  std::to_string(n) + ") (x has " + std::to_string(n) +
                                  " rows)");
          }
        }
        py::array out = out_arg(fn, out_obj, "out", {rows, cols});
        no_overlap(fn, out, "out", x, "x");
        no_overlap(fn, out, "out", index, "index");
        {
          py::gil_scoped_release release;
          cpu::gather_rows(rows, cols, cf32(x), idx, f32(out));
        }
        return out;
      },
      py::arg("x"), py::arg("index"), py::arg("out") = py::none(),
      R"(out[i] = x[index[i]]: rows of a 2-D float32 array (a batch). See ember.ops.gather_rows.)");
}

}  // namespace ember::bind
