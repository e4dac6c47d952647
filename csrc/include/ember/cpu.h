// ember's CPU kernel library: the functions below dispatch at run time to the build for the best
// instruction set this processor supports (see csrc/cpu/dispatch.cpp).
#pragma once
#include "ember/common.h"

namespace ember::cpu {

#include "ember/cpu_kernels.inc"

// "base", "x86-64-v3" (AVX2+FMA) or "x86-64-v4" (AVX-512), as chosen for this process.
const char* isa_name();
// Force an ISA level for tests/benchmarks ("base", "v3", "v4"); returns false if unsupported here.
bool set_isa(const char* name);

void set_num_threads(int n);
int get_num_threads();

}  // namespace ember::cpu
