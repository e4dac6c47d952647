// One binding function per kernel family; each lives in csrc/bindings/cpu_<family>.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace ember::bind {
void bind_gemm(pybind11::module_& m);        // gemm, linear_backward
void bind_activation(pybind11::module_& m);  // activation_forward, activation_backward
void bind_loss(pybind11::module_& m);        // softmax_cross_entropy, mse, argmax, accuracy
void bind_reduce(pybind11::module_& m);      // column_sum, sum, global_norm
void bind_dropout(pybind11::module_& m);     // dropout_forward, dropout_backward
void bind_optim(pybind11::module_& m);       // sgd_step, adam_step
void bind_gather(pybind11::module_& m);      // gather_rows
void bind_mlp(pybind11::module_& m);         // MlpPlan (Sequential's training fast path)
void bind_predict(pybind11::module_& m);     // ForwardPlan (the frozen predictor's forward)
}  // namespace ember::bind
