// Bindings: gemm, linear_backward. Every argument is checked here, before any kernel runs.
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {
namespace {

// The CPU kernels compute in float32 whatever the precision; tf32 and bf16 select GPU tensor cores.
void check_precision(const char* fn, const std::string& precision) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16") {
    throw py::value_error(std::string(fn) + ": precision must be 'fp32', 'tf32' or 'bf16', got '" +
                          precision + "'");
  }
}

// An output must not share memory with any array the kernel reads while writing it.
void no_overlap_all(const char* fn, const py::array& out, const char* out_name,
                    const std::vector<std::pair<const py::array*, const char*>>& inputs) {
  for (const auto& [in, name] : inputs) {
    if (in != nullptr) no_overlap(fn, out, out_name, *in, name);
  }
}

}  // namespace

void bind_gemm(py::module_& m) {
  m.def(
      "gemm",
      [](py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle out_obj,
         py::handle preact_obj, bool trans_a, bool trans_b, const std::string& activation,
         double negative_slope, double alpha, double beta, bool save_preact,
         const std::string& precision) {
        const char* fn = "gemm";
        py::array a = array_arg(fn, a_obj, "a", DType::f32, 2);
        py::array b = array_arg(fn, b_obj, "b", DType::f32, 2);
        const int64_t m = trans_a ? a.shape(1) : a.shape(0);
        const int64_t k = trans_a ? a.shape(0) : a.shape(1);
        const int64_t n = trans_b ? b.shape(0) : b.shape(1);
        if ((trans_b ? b.shape(1) : b.shape(0)) != k) {
          const std::string ks = std::to_string(k);
          throw py::value_error(std::string("gemm: b must have shape ") +
                                (trans_b ? "(n, " + ks + ") with trans_b=True" : "(" + ks + ", n)") +
                                " to match op(a)'s " + ks + " columns, got " + shape_str(b));
        }
        GemmArgs g;
        g.act = parse_activation(fn, activation);
        check_precision(fn, precision);
        g.act_param = finite_scalar(fn, negative_slope, "negative_slope");
        g.alpha = finite_scalar(fn, alpha, "alpha");
        g.beta = finite_scalar(fn, beta, "beta");
        if (g.beta != 0.0f && out_obj.is_none()) {
          throw py::value_error("gemm: beta != 0 needs out (the C that beta scales), got out=None");
        }
        py::array bias;
        if (!bias_obj.is_none()) {
          bias = array_arg(fn, bias_obj, "bias", DType::f32, 1);
          expect_shape(fn, bias, "bias", {n});
        }
        const py::array* bias_p = bias_obj.is_none() ? nullptr : &bias;
        py::array out = out_arg(fn, out_obj, "out", {m, n});
        no_overlap_all(fn, out, "out", {{&a, "a"}, {&b, "b"}, {bias_p, "bias"}});
        const bool want_preact = save_preact || !preact_obj.is_none();
        py::array preact;
        if (want_preact) {
          preact = out_arg(fn, preact_obj, "preact_out", {m, n});
          no_overlap_all(fn, preact, "preact_out",
                         {{&a, "a"}, {&b, "b"}, {bias_p, "bias"}, {&out, "out"}});
        }
        g.m = m;
        g.n = n;
        g.k = k;
        g.a = cf32(a);
        g.lda = a.shape(1);
        g.trans_a = trans_a;
        g.b = cf32(b);
        g.ldb = b.shape(1);
        g.trans_b = trans_b;
        g.c = f32(out);
        g.ldc = n;
        g.bias = bias_p ? cf32(bias) : nullptr;
        g.preact = want_preact ? f32(preact) : nullptr;
        {
          py::gil_scoped_release release;
          cpu::gemm(g);
        }
        if (want_preact) return py::object(py::make_tuple(out, preact));
        return py::object(out);
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
        const char* fn = "linear_backward";
        py::array gy = array_arg(fn, grad_out_obj, "grad_out", DType::f32, 2);
        py::array x = array_arg(fn, x_obj, "x", DType::f32, 2);
        py::array w = array_arg(fn, weight_obj, "weight", DType::f32, 2);
        const int64_t batch = gy.shape(0), out_f = gy.shape(1), in_f = x.shape(1);
        expect_shape(fn, x, "x", {batch, in_f});
        expect_shape(fn, w, "weight", {out_f, in_f});
        LinearBackwardArgs la;
        la.act = parse_activation(fn, activation);
        check_precision(fn, precision);
        la.act_param = finite_scalar(fn, negative_slope, "negative_slope");
        const bool identity = la.act == Activation::identity;

        py::array z;
        const py::array* z_p = nullptr;
        if (!preact_obj.is_none()) {
          z = array_arg(fn, preact_obj, "preact", DType::f32, 2);
          expect_shape(fn, z, "preact", {batch, out_f});
          z_p = &z;
        } else if (!identity) {
          throw py::value_error("linear_backward: preact is required when activation is '" +
                                activation + "' (act' is evaluated at the saved pre-activation)");
        }
        if (accumulate && grad_weight_obj.is_none()) {
          throw py::value_error("linear_backward: accumulate=True needs grad_weight to add into");
        }
        if (accumulate && has_bias && grad_bias_obj.is_none()) {
          throw py::value_error("linear_backward: accumulate=True with bias=True needs grad_bias "
                                "to add into");
        }
        if (!need_grad_input && !grad_input_obj.is_none()) {
          throw py::value_error("linear_backward: grad_input was given but need_grad_input is False");
        }
        if (!has_bias && !grad_bias_obj.is_none()) {
          throw py::value_error("linear_backward: grad_bias was given but bias is False");
        }

        // dZ: in place in grad_out, a caller's workspace, or a new array (not needed for identity).
        py::array dz;
        const py::array* dz_p = nullptr;
        if (!identity) {
          // In place: workspace is grad_out (the same object, or an array over the same memory).
          const bool in_place =
              !workspace_obj.is_none() &&
              (workspace_obj.ptr() == grad_out_obj.ptr() ||
               (py::isinstance<py::array>(workspace_obj) &&
                py::reinterpret_borrow<py::array>(workspace_obj).data() == gy.data() &&
                array_arg(fn, workspace_obj, "workspace", DType::f32, 2).nbytes() == gy.nbytes()));
          if (in_place) {
            require(gy.writeable(), fn,
                    "workspace is grad_out (in place), so grad_out must be writable (it is "
                    "read-only)");
            dz = gy;
          } else {
            dz = out_arg(fn, workspace_obj, "workspace", {batch, out_f});
            no_overlap_all(fn, dz, "workspace", {{&gy, "grad_out"}, {z_p, "preact"}, {&x, "x"},
                                                  {&w, "weight"}});
          }
          dz_p = &dz;
        } else if (!workspace_obj.is_none()) {
          // Unused for identity, but still held to its contract.
          py::array ws = array_arg(fn, workspace_obj, "workspace", DType::f32, 2, true);
          expect_shape(fn, ws, "workspace", {batch, out_f});
        }

        // Everything an output must not share memory with: all inputs and the dZ it is made from.
        std::vector<std::pair<const py::array*, const char*>> reads = {
            {&gy, "grad_out"}, {&x, "x"}, {&w, "weight"}, {z_p, "preact"}, {dz_p, "workspace"}};
        py::array gx, gw, gb;
        if (need_grad_input) {
          gx = out_arg(fn, grad_input_obj, "grad_input", {batch, in_f});
          no_overlap_all(fn, gx, "grad_input", reads);
        }
        gw = out_arg(fn, grad_weight_obj, "grad_weight", {out_f, in_f});
        no_overlap_all(fn, gw, "grad_weight", reads);
        if (need_grad_input) no_overlap(fn, gw, "grad_weight", gx, "grad_input");
        if (has_bias) {
          gb = out_arg(fn, grad_bias_obj, "grad_bias", {out_f});
          no_overlap_all(fn, gb, "grad_bias", reads);
          no_overlap(fn, gb, "grad_bias", gw, "grad_weight");
          if (need_grad_input) no_overlap(fn, gb, "grad_bias", gx, "grad_input");
        }

        la.batch = batch;
        la.in_features = in_f;
        la.out_features = out_f;
        la.grad_out = cf32(gy);
        la.x = cf32(x);
        la.weight = cf32(w);
        la.preact = z_p ? cf32(z) : nullptr;
        la.grad_preact = dz_p ? f32(dz) : nullptr;
        la.grad_input = need_grad_input ? f32(gx) : nullptr;
        la.grad_weight = f32(gw);
        la.grad_bias = has_bias ? f32(gb) : nullptr;
        la.accumulate = accumulate;
        {
          py::gil_scoped_release release;
          cpu::linear_backward(la);
        }
        return py::make_tuple(need_grad_input ? py::object(gx) : py::object(py::none()), gw,
                              has_bias ? py::object(gb) : py::object(py::none()));
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
