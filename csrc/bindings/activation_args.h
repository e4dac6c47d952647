// The contract of the activation family (activation_forward, activation_backward), used by both
// bindings (cpu_activation.cpp, cuda_activation.cpp): the same call gets the same error on either
// device.
#pragma once
#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN ActivationArgs {
  Arr in, preact, out;  // in: x (forward) or grad_out (backward); preact: backward only
  Activation act = Activation::identity;
  float slope = 0.0f;
};

// x: float32, any rank; out: x's shape, may be x itself (in place) but must not otherwise overlap.
inline ActivationArgs activation_forward_args(const Call& c, py::handle x_obj, py::handle act_obj,
                                              py::handle slope_obj, py::handle out_obj) {
  ActivationArgs a;
  a.in = array_arg(c, x_obj, "x", DType::f32, -1);
  a.act = parse_activation(c.fn, str_arg(c.fn, act_obj, "activation"));
  a.slope = finite_f32_arg(c.fn, slope_obj, "negative_slope");
  a.out = out_arg(c, out_obj, "out", a.in.shape);
  same_or_no_overlap(c, a.out, a.in);
  return a;
}

// grad_out and preact: float32 of one shape; out may be either of them (in place).
inline ActivationArgs activation_backward_args(const Call& c, py::handle g_obj, py::handle z_obj,
                                               py::handle act_obj, py::handle slope_obj,
                                               py::handle out_obj) {
  ActivationArgs a;
  a.in = array_arg(c, g_obj, "grad_out", DType::f32, -1);
  a.preact = array_arg(c, z_obj, "preact", DType::f32, -1);
  expect_shape(c, a.preact, a.in.shape);
  a.act = parse_activation(c.fn, str_arg(c.fn, act_obj, "activation"));
  a.slope = finite_f32_arg(c.fn, slope_obj, "negative_slope");
  a.out = out_arg(c, out_obj, "out", a.in.shape);
  same_or_no_overlap(c, a.out, a.in);
  same_or_no_overlap(c, a.out, a.preact);
  return a;
}

}  // namespace ember::bind
