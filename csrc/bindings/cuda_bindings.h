// One binding function per kernel family; each lives in csrc/bindings/cuda_<family>.cpp, next to
// the CPU family of the same name (cpu_<family>.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace ember::bind {
void bind_cuda_gemm(pybind11::module_& m);        // gemm, linear_backward
void bind_cuda_activation(pybind11::module_& m);  // activation_forward, activation_backward
void bind_cuda_loss(pybind11::module_& m);        // softmax_cross_entropy, mse, argmax, accuracy
void bind_cuda_reduce(pybind11::module_& m);      // column_sum, sum, global_norm
void bind_cuda_dropout(pybind11::module_& m);     // dropout_forward, dropout_backward
void bind_cuda_optim(pybind11::module_& m);       // sgd_step, adam_step, OptimPlan
// gather_rows has no CUDA kernel: ember/_cuda_ops.py gathers with cupy.take.
}  // namespace ember::bind
