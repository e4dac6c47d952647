// The contract of the GEMM family (gemm, linear_backward), used by both bindings (cpu_gemm.cpp,
// cuda_gemm.cpp). Every argument is checked here, before any kernel runs or any output is touched.
#pragma once
#include <string>
#include <vector>

#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN GemmCall {
  Arr a, b, bias, out, preact;
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  Activation act = Activation::identity;
  float slope = 0.0f, alpha = 1.0f, beta = 0.0f;
  Precision precision = Precision::fp32;
};

inline GemmCall gemm_args(const Call& c, py::handle a_obj, py::handle b_obj, py::handle bias_obj,
                          py::handle out_obj, py::handle preact_obj, bool trans_a, bool trans_b,
                          const std::string& activation, double negative_slope, double alpha,
                          double beta, bool save_preact, const std::string& precision) {
  const char* fn = c.fn;
  GemmCall g;
  g.a = array_arg(c, a_obj, "a", DType::f32, 2);
  g.b = array_arg(c, b_obj, "b", DType::f32, 2);
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = trans_a ? g.a.dim(1) : g.a.dim(0);
  g.k = trans_a ? g.a.dim(0) : g.a.dim(1);
  g.n = trans_b ? g.b.dim(0) : g.b.dim(1);
  const int64_t kb = trans_b ? g.b.dim(1) : g.b.dim(0);
  if (kb != g.k) {
    const std::string ks = std::to_string(g.k);
    value_error(c, std::string("b must have shape ") +
                       (trans_b ? "(n, " + ks + ") with trans_b=True" : "(" + ks + ", n)") +
                       " to match op(a)'s " + ks + " columns, got " + shape_str(g.b.shape));
  }
  g.act = parse_activation(fn, activation);
  g.precision = parse_precision(fn, precision);
  g.slope = finite_scalar(fn, negative_slope, "negative_slope");
  g.alpha = finite_scalar(fn, alpha, "alpha");
  g.beta = finite_scalar(fn, beta, "beta");
  if (g.beta != 0.0f && out_obj.is_none()) {
    value_error(c, "beta != 0 needs out (the C that beta scales), got out=None");
  }
  if (!bias_obj.is_none()) {
    g.bias = array_arg(c, bias_obj, "bias", DType::f32, 1);
    expect_shape(c, g.bias, {g.n});
  }
  g.out = out_arg(c, out_obj, "out", {g.m, g.n});
  no_overlap_all(c, g.out, {&g.a, &g.b, &g.bias});
  if (save_preact || !preact_obj.is_none()) {
    g.preact = out_arg(c, preact_obj, "preact_out", {g.m, g.n});
    no_overlap_all(c, g.preact, {&g.a, &g.b, &g.bias, &g.out});
  }
  return g;
}

struct EMBER_BIND_HIDDEN LinearBackwardCall {
  Arr grad_out, x, weight, preact, dz, grad_input, grad_weight, grad_bias;
  int64_t batch = 0, in_f = 0, out_f = 0;
  Activation act = Activation::identity;
  float slope = 0.0f;
  Precision precision = Precision::fp32;
  bool accumulate = false;
};

inline LinearBackwardCall linear_backward_args(
    const Call& c, py::handle grad_out_obj, py::handle x_obj, py::handle weight_obj,
    py::handle preact_obj, const std::string& activation, double negative_slope,
    bool need_grad_input, bool has_bias, bool accumulate, py::handle grad_input_obj,
    py::handle grad_weight_obj, py::handle grad_bias_obj, py::handle workspace_obj,
    const std::string& precision) {
  const char* fn = c.fn;
  LinearBackwardCall l;
  l.grad_out = array_arg(c, grad_out_obj, "grad_out", DType::f32, 2);
  l.x = array_arg(c, x_obj, "x", DType::f32, 2);
  l.weight = array_arg(c, weight_obj, "weight", DType::f32, 2);
  l.batch = l.grad_out.dim(0);
  l.out_f = l.grad_out.dim(1);
  l.in_f = l.x.dim(1);
  expect_shape(c, l.x, {l.batch, l.in_f});
  expect_shape(c, l.weight, {l.out_f, l.in_f});
  l.act = parse_activation(fn, activation);
  l.precision = parse_precision(fn, precision);
  l.slope = finite_scalar(fn, negative_slope, "negative_slope");
  const bool identity = l.act == Activation::identity;
  if (!preact_obj.is_none()) {
    l.preact = array_arg(c, preact_obj, "preact", DType::f32, 2);
    expect_shape(c, l.preact, {l.batch, l.out_f});
  } else if (!identity) {
    value_error(c, "preact is required when activation is '" + activation +
                       "' (act' is evaluated at the saved pre-activation)");
  }
  if (accumulate && grad_weight_obj.is_none()) {
    value_error(c, "accumulate=True needs grad_weight to add into");
  }
  if (accumulate && has_bias && grad_bias_obj.is_none()) {
    value_error(c, "accumulate=True with bias=True needs grad_bias to add into");
  }
  if (!need_grad_input && !grad_input_obj.is_none()) {
    value_error(c, "grad_input was given but need_grad_input is False");
  }
  if (!has_bias && !grad_bias_obj.is_none()) {
    value_error(c, "grad_bias was given but bias is False");
  }
  l.accumulate = accumulate;

  // dZ: in place in grad_out, a caller's workspace, or a new array (not needed for identity).
  if (!identity) {
    // In place: workspace is grad_out (the same object, or an array over the same memory).
    bool in_place = false;
    if (!workspace_obj.is_none()) {
      in_place = workspace_obj.ptr() == grad_out_obj.ptr() ||
                 same_memory(array_arg(c, workspace_obj, "workspace", DType::f32, 2), l.grad_out);
    }
    if (in_place) {
      require(!l.grad_out.readonly, c,
              "workspace is grad_out (in place), so grad_out must be writable (it is read-only)");
      l.dz = l.grad_out;
      l.dz.name = "workspace";
    } else {
      l.dz = out_arg(c, workspace_obj, "workspace", {l.batch, l.out_f});
      no_overlap_all(c, l.dz, {&l.grad_out, &l.preact, &l.x, &l.weight});
    }
  } else if (!workspace_obj.is_none()) {
    // Unused for identity, but still held to its contract.
    Arr ws = array_arg(c, workspace_obj, "workspace", DType::f32, 2, true);
    expect_shape(c, ws, {l.batch, l.out_f});
  }

  // Everything an output must not share memory with: all inputs and the dZ it is made from.
  const std::initializer_list<const Arr*> reads = {&l.grad_out, &l.x, &l.weight, &l.preact, &l.dz};
  if (need_grad_input) {
    l.grad_input = out_arg(c, grad_input_obj, "grad_input", {l.batch, l.in_f});
    no_overlap_all(c, l.grad_input, reads);
  }
  l.grad_weight = out_arg(c, grad_weight_obj, "grad_weight", {l.out_f, l.in_f});
  no_overlap_all(c, l.grad_weight, reads);
  no_overlap(c, l.grad_weight, l.grad_input);
  if (has_bias) {
    l.grad_bias = out_arg(c, grad_bias_obj, "grad_bias", {l.out_f});
    no_overlap_all(c, l.grad_bias, reads);
    no_overlap(c, l.grad_bias, l.grad_weight);
    no_overlap(c, l.grad_bias, l.grad_input);
  }
  return l;
}

}  // namespace ember::bind
