// Bindings: gemm, linear_backward (contract: gemm_args.h, checked before any kernel runs).
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "cpu_bindings.h"
#include "ember/cpu.h"
#include "gemm_args.h"

namespace ember::bind {

void bind_gemm(py::module_& m) {
  m.def(
      "gemm",
      [](py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle out_obj,
         py::handle preact_obj, bool trans_a, bool trans_b, const std::string& activation,
         double negative_slope, double alpha, double beta, bool save_preact,
         const std::string& precision) {
        const GemmCall c = gemm_args(cpu_call("gemm"), a_obj, b_obj, bias_obj, out_obj,
                                     preact_obj, trans_a, trans_b, activation, negative_slope,
                                     alpha, beta, save_preact, precision);
        GemmArgs g;
        g.m = c.m;
        g.n = c.n;
        g.k = c.k;
        g.a = c.a.cf32();
        g.lda = c.a.dim(1);
        g.trans_a = trans_a;
        g.b = c.b.cf32();
        g.ldb = c.b.dim(1);
        g.trans_b = trans_b;
        g.c = c.out.f32();
        g.ldc = c.n;
        g.alpha = c.alpha;
        g.beta = c.beta;
        g.bias = c.bias.given() ? c.bias.cf32() : nullptr;
        g.preact = c.preact.given() ? c.preact.f32() : nullptr;
        g.act = c.act;
        g.act_param = c.slope;
        {
          py::gil_scoped_release release;
          cpu::gemm(g);
        }
        if (c.preact.given()) return py::object(py::make_tuple(c.out.obj, c.preact.obj));
        return c.out.obj;
      },
      py::arg("a"), py::arg("b"), py::arg("bias") = py::none(), py::arg("out") = py::none(),
      py::arg("preact_out") = py::none(), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("activation") = "identity", py::arg("negative_slope") = 0.01,
      py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("save_preact") = false,
      py::arg("precision") = "fp32",
      R"(C = act(alpha * op(a) @ op(b) + beta * out + bias), epilogue fused. See ember.ops.gemm.

The CPU computes in float32 for every precision ('fp32', 'tf32', 'bf16').)");

  m.def(
      "linear_backward",
      [](py::handle grad_out_obj, py::handle x_obj, py::handle weight_obj, py::handle preact_obj,
         const std::string& activation, double negative_slope, bool need_grad_input,
         bool has_bias, bool accumulate, py::handle grad_input_obj, py::handle grad_weight_obj,
         py::handle grad_bias_obj, py::handle workspace_obj, const std::string& precision) {
        const LinearBackwardCall l = linear_backward_args(
            cpu_call("linear_backward"), grad_out_obj, x_obj, weight_obj, preact_obj, activation,
            negative_slope, need_grad_input, has_bias, accumulate, grad_input_obj,
            grad_weight_obj, grad_bias_obj, workspace_obj, precision);
        LinearBackwardArgs la;
        la.batch = l.batch;
        la.in_features = l.in_f;
        la.out_features = l.out_f;
        la.grad_out = l.grad_out.cf32();
        la.x = l.x.cf32();
        la.weight = l.weight.cf32();
        la.preact = l.preact.given() ? l.preact.cf32() : nullptr;
        la.act = l.act;
        la.act_param = l.slope;
        la.grad_preact = l.dz.given() ? l.dz.f32() : nullptr;
        la.grad_input = need_grad_input ? l.grad_input.f32() : nullptr;
        la.grad_weight = l.grad_weight.f32();
        la.grad_bias = has_bias ? l.grad_bias.f32() : nullptr;
        la.accumulate = accumulate;
        {
          py::gil_scoped_release release;
          cpu::linear_backward(la);
        }
        return py::make_tuple(need_grad_input ? l.grad_input.obj : py::object(py::none()),
                              l.grad_weight.obj,
                              has_bias ? l.grad_bias.obj : py::object(py::none()));
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("preact") = py::none(),
      py::arg("activation") = "identity", py::arg("negative_slope") = 0.01,
      py::arg("need_grad_input") = true, py::arg("has_bias") = true,
      py::arg("accumulate") = false, py::arg("grad_input") = py::none(),
      py::arg("grad_weight") = py::none(), py::arg("grad_bias") = py::none(),
      py::arg("workspace") = py::none(), py::arg("precision") = "fp32",
      R"(Backward of act(x @ weight.T + bias): (grad_input|None, grad_weight, grad_bias|None).

dZ = grad_out * act'(preact) (into workspace, which may be grad_out itself), the bias gradient
(its column sums), then dX = dZ @ weight and dW (+)= dZ.T @ x. See ember.ops.linear_backward.
The CPU computes in float32 for every precision.)");
}

}  // namespace ember::bind
