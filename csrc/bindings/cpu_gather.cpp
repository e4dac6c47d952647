// Bindings: gather_rows (contract: gather_args.h).
#include "cpu_bindings.h"
#include "ember/cpu.h"
#include "gather_args.h"

namespace ember::bind {

void bind_gather(py::module_& m) {
  m.def(
      "gather_rows",
      [](py::handle x_obj, py::handle index_obj, py::handle out_obj) {
        const GatherArgs a = gather_rows_args(cpu_call("gather_rows"), x_obj, index_obj, out_obj);
        {
          py::gil_scoped_release release;
          cpu::gather_rows(a.index.dim(0), a.x.dim(1), a.x.cf32(), a.index.ci64(), a.out.f32());
        }
        return a.out.obj;
      },
      py::arg("x"), py::arg("index"), py::arg("out") = py::none(),
      R"(out[i] = x[index[i]]: rows of a 2-D float32 array (a batch). See ember.ops.gather_rows.)");
}

}  // namespace ember::bind
