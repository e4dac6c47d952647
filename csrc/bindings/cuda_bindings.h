// Binding functions for the CUDA kernel families (csrc/bindings/cuda_<family>.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace ember::bind {
void bind_cuda_kernels(pybind11::module_& m);  // cuda_kernels.cpp: every family's launchers
void bind_cuda_gemm(pybind11::module_& m);     // cuda_gemm.cpp: gemm, linear_backward
}  // namespace ember::bind
