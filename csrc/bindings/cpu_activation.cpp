// Bindings: activation_forward, activation_backward.
#include "checks.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {

void bind_activation(py::module_& m) {
  m.def(
      "activation_forward",
      [](py::handle x_obj, py::handle act_obj, py::handle slope_obj, py::handle out_obj) {
        const char* fn = "activation_forward";
        py::array x = array_arg(fn, x_obj, "x", DType::f32, -1);
        const Activation act = parse_activation(fn, str_arg(fn, act_obj, "activation"));
        const float slope = finite_f32_arg(fn, slope_obj, "negative_slope");
        std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
        py::array out = out_arg(fn, out_obj, "out", shape);
        same_or_no_overlap(fn, out, "out", x, "x");
        const int64_t n = x.size();
        {
          py::gil_scoped_release release;
          cpu::activation_forward(n, cf32(x), f32(out), act, slope);
        }
        return out;
      },
      py::arg("x"), py::arg("activation"), py::arg("negative_slope") = 0.01,
      py::arg("out") = py::none(),
      R"(act(x) elementwise, any rank; out may be x. See ember.ops.activation_forward.)");

  m.def(
      "activation_backward",
      [](py::handle g_obj, py::handle z_obj, py::handle act_obj, py::handle slope_obj,
         py::handle out_obj) {
        const char* fn = "activation_backward";
        py::array g = array_arg(fn, g_obj, "grad_out", DType::f32, -1);
        py::array z = array_arg(fn, z_obj, "preact", DType::f32, -1);
        std::vector<int64_t> shape(g.shape(), g.shape() + g.ndim());
        expect_shape(fn, z, "preact", shape);
        const Activation act = parse_activation(fn, str_arg(fn, act_obj, "activation"));
        const float slope = finite_f32_arg(fn, slope_obj, "negative_slope");
        py::array out = out_arg(fn, out_obj, "out", shape);
        same_or_no_overlap(fn, out, "out", g, "grad_out");
        same_or_no_overlap(fn, out, "out", z, "preact");
        const int64_t n = g.size();
        {
          py::gil_scoped_release release;
          cpu::activation_backward(n, cf32(g), cf32(z), f32(out), act, slope);
        }
        return out;
      },
      py::arg("grad_out"), py::arg("preact"), py::arg("activation"),
      py::arg("negative_slope") = 0.01, py::arg("out") = py::none(),
      R"(grad_out * act'(preact) elementwise; out may be grad_out. See ember.ops.activation_backward.)");
}

}  // namespace ember::bind
