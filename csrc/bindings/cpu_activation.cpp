// Bindings: activation_forward, activation_backward (contract: activation_args.h).
#include "activation_args.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {

void bind_activation(py::module_& m) {
  m.def(
      "activation_forward",
      [](py::handle x_obj, py::handle act_obj, py::handle slope_obj, py::handle out_obj) {
        const ActivationArgs a = activation_forward_args(cpu_call("activation_forward"), x_obj,
                                                         act_obj, slope_obj, out_obj);
        {
          py::gil_scoped_release release;
          cpu::activation_forward(a.in.size, a.in.cf32(), a.out.f32(), a.act, a.slope);
        }
        return a.out.obj;
      },
      py::arg("x"), py::arg("activation"), py::arg("negative_slope") = 0.01,
      py::arg("out") = py::none(),
      R"(act(x) elementwise, any rank; out may be x. See ember.ops.activation_forward.)");

  m.def(
      "activation_backward",
      [](py::handle g_obj, py::handle z_obj, py::handle act_obj, py::handle slope_obj,
         py::handle out_obj) {
        const ActivationArgs a = activation_backward_args(cpu_call("activation_backward"), g_obj,
                                                          z_obj, act_obj, slope_obj, out_obj);
        {
          py::gil_scoped_release release;
          cpu::activation_backward(a.in.size, a.in.cf32(), a.preact.cf32(), a.out.f32(), a.act,
                                   a.slope);
        }
        return a.out.obj;
      },
      py::arg("grad_out"), py::arg("preact"), py::arg("activation"),
      py::arg("negative_slope") = 0.01, py::arg("out") = py::none(),
      R"(grad_out * act'(preact) elementwise; out may be grad_out. See ember.ops.activation_backward.)");
}

}  // namespace ember::bind
