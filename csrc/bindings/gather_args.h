// The contract of the gather family (gather_rows). Only the CPU binds a kernel (cpu_gather.cpp):
// ember/_cuda_ops.py gathers CuPy arrays with cupy.take after its own checks.
#pragma once
#include <string>

#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN GatherArgs {
  Arr x, index, out;
};

// x: 2-D float32; index: 1-D int64, every value in [0, len(x)); out: (len(index), cols), sharing
// no memory with x or index.
inline GatherArgs gather_rows_args(const Call& c, py::handle x_obj, py::handle index_obj,
                                   py::handle out_obj) {
  GatherArgs a;
  a.x = array_arg(c, x_obj, "x", DType::f32, 2);
  a.index = array_arg(c, index_obj, "index", DType::i64, 1);
  const int64_t n = a.x.dim(0), rows = a.index.dim(0);
  const int64_t* idx = a.index.ci64();
  for (int64_t i = 0; i < rows; ++i) {
    if (idx[i] < 0 || idx[i] >= n) {
      value_error(c, "index[" + std::to_string(i) + "] = " + std::to_string(idx[i]) +
                         " is out of range [0, " + std::to_string(n) + ") (x has " +
                         std::to_string(n) + " rows)");
    }
  }
  a.out = out_arg(c, out_obj, "out", {rows, a.x.dim(1)});
  no_overlap(c, a.out, a.x);
  no_overlap(c, a.out, a.index);
  return a;
}

}  // namespace ember::bind
