// Bindings: dropout_forward, dropout_backward (contract: dropout_args.h), and philox4x32_10 (the
// raw generator, for tests).
#include <pybind11/stl.h>

#include <array>

#include "cpu_bindings.h"
#include "dropout_args.h"
#include "ember/cpu.h"
#include "ember/philox.h"

namespace ember::bind {
namespace {

// dropout_forward and dropout_backward take the same arguments and run the same map.
py::object dropout(const char* fn, const char* in_name, py::handle x_obj, py::handle p_obj,
                   py::handle seed_obj, py::handle offset_obj, py::handle out_obj) {
  const DropoutArgs a = dropout_args(cpu_call(fn), in_name, x_obj, p_obj, seed_obj, offset_obj,
                                     out_obj);
  {
    py::gil_scoped_release release;
    cpu::dropout_forward(a.in.size, a.in.cf32(), a.out.f32(), a.p, a.seed, a.offset);
  }
  return a.out.obj;
}

}  // namespace

void bind_dropout(py::module_& m) {
  m.def(
      "dropout_forward",
      [](py::handle x, py::handle p, py::handle seed, py::handle offset, py::handle out) {
        return dropout("dropout_forward", "x", x, p, seed, offset, out);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
      py::arg("out") = py::none(),
      R"(Dropout with a Philox4x32-10 mask at (seed, offset + i). See ember.ops.dropout_forward.)");

  m.def(
      "dropout_backward",
      [](py::handle g, py::handle p, py::handle seed, py::handle offset, py::handle out) {
        return dropout("dropout_backward", "grad_out", g, p, seed, offset, out);
      },
      py::arg("grad_out"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
      py::arg("out") = py::none(),
      R"(Gradient of dropout_forward with the same (p, seed, offset). See ember.ops.dropout_backward.)");

  m.def(
      "philox4x32_10",
      [](const std::array<uint32_t, 4>& c, const std::array<uint32_t, 2>& k) {
        const Philox4 r = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
        return std::array<uint32_t, 4>{r.v[0], r.v[1], r.v[2], r.v[3]};
      },
      py::arg("counter"), py::arg("key"),
      R"(Philox4x32-10 of a 4-word counter under a 2-word key (Random123's philox4x32_R(10, ...)),
as 4 unsigned 32-bit words. The generator behind dropout; exposed for known-answer tests.)");
}

}  // namespace ember::bind
