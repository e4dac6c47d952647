// The contract of the dropout family (dropout_forward, dropout_backward: the same arguments and
// the same map), used by both bindings (cpu_dropout.cpp, cuda_dropout.cpp).
#pragma once
#include <string>

#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN DropoutArgs {
  Arr in, out;
  float p = 0.0f;
  uint64_t seed = 0, offset = 0;
};

// in (x or grad_out): float32, any rank; p: a real number in [0, 1]; seed, offset: ints in
// [0, 2**64); out: in's shape, may be in itself.
inline DropoutArgs dropout_args(const Call& c, const char* in_name, py::handle x_obj,
                                py::handle p_obj, py::handle seed_obj, py::handle offset_obj,
                                py::handle out_obj) {
  DropoutArgs a;
  a.in = array_arg(c, x_obj, in_name, DType::f32, -1);
  const double p = real_arg(c.fn, p_obj, "p");
  require(p >= 0.0 && p <= 1.0, c, "p must be in [0, 1], got " + py::repr(p_obj).cast<std::string>());
  a.p = static_cast<float>(p);
  a.seed = uint64_arg(c.fn, seed_obj, "seed");
  a.offset = uint64_arg(c.fn, offset_obj, "offset");
  a.out = out_arg(c, out_obj, "out", a.in.shape);
  same_or_no_overlap(c, a.out, a.in);
  return a;
}

}  // namespace ember::bind
