// The contract of the reduce family (column_sum, sum, global_norm), used by both bindings
// (cpu_reduce.cpp, cuda_reduce.cpp).
#pragma once
#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN ColumnSumArgs {
  Arr x, out;
  bool accumulate = false;
};

// x: 2-D float32; out: (cols,), required with accumulate, must not overlap x.
inline ColumnSumArgs column_sum_args(const Call& c, py::handle x_obj, py::handle out_obj,
                                     bool accumulate) {
  ColumnSumArgs a;
  a.x = array_arg(c, x_obj, "x", DType::f32, 2);
  if (accumulate && out_obj.is_none()) value_error(c, "accumulate=True needs out");
  a.out = out_arg(c, out_obj, "out", {a.x.dim(1)});
  no_overlap(c, a.out, a.x);
  a.accumulate = accumulate;
  return a;
}

inline Arr sum_args(const Call& c, py::handle x_obj) {
  return array_arg(c, x_obj, "x", DType::f32, -1);
}

// arrays: a non-empty list of float32 arrays of any shapes (read only: they may overlap).
inline ArrList global_norm_args(const Call& c, py::handle arrays_obj) {
  return array_list(c, arrays_obj, "arrays", false, -1);
}

}  // namespace ember::bind
