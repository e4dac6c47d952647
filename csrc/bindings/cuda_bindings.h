// Binding functions for the CUDA kernel families (csrc/bindings/cuda_<family>.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace ember::bind {
void bind_cuda_kernels(pybind11::module_& m);  // cuda_kernels.cpp: every family's launchers
void bind_cuda_gemm(pybind11::module_& m);     // cuda_gemm.cpp: gemm, linear_backward
void bind_cuda_loss(pybind11::module_& m);     // cuda_loss.cpp: softmax_cross_entropy, mse, argmax, accuracy
void bind_cuda_elementwise(pybind11::module_& m);  // cuda_elementwise.cpp: activations, column_sum, sum
void bind_cuda_dropout(pybind11::module_& m);  // cuda_dropout.cpp: dropout_forward / _backward
void bind_cuda_optim(pybind11::module_& m);    // cuda_optim.cpp: sgd_step, adam_step, global_norm
}  // namespace ember::bind
