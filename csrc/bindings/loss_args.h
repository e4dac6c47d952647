// The contract of the loss family (softmax_cross_entropy, mse, argmax, accuracy), used by both
// bindings (cpu_loss.cpp, cuda_loss.cpp).
//
// Two checks need values: labels (every one in [0, classes)) and class weights (finite, >= 0).
// Host labels are range-checked here; CUDA labels on the device, by the kernel that reads them
// (cuda_loss.cpp reads the check back with the loss). Class weights are checked here on either
// device: on the CPU from the array itself, on CUDA from `weight_values`, the host copy of the
// weights that ember/_cuda_ops.py passes (one value per class; None: not checked, for the
// never-synchronising device_loss calls, whose weights ember.losses checked when it was built).
#pragma once
#include <cmath>
#include <string>

#include "args.h"

namespace ember::bind {

struct EMBER_BIND_HIDDEN SoftmaxCrossEntropyCall {
  Arr logits, labels, weight, grad, row_loss;
  int64_t rows = 0, classes = 0;
  float label_smoothing = 0.0f;
  Reduction reduction = Reduction::mean;
  float grad_scale = 1.0f;
  bool compute_grad = true;
};

inline void class_weight_values(const Call& c, const float* w, int64_t classes) {
  for (int64_t k = 0; k < classes; ++k) {
    if (!(std::isfinite(w[k]) && w[k] >= 0.0f)) {
      value_error(c, "weight must be finite and >= 0, got weight[" + std::to_string(k) + "] = " +
                         std::to_string(w[k]));
    }
  }
}

inline SoftmaxCrossEntropyCall softmax_cross_entropy_args(
    const Call& c, py::handle logits_obj, py::handle labels_obj, py::handle weight_obj,
    py::handle eps_obj, py::handle reduction_obj, py::handle scale_obj,
    py::handle compute_grad_obj, py::handle grad_obj, py::handle row_loss_obj,
    py::handle weight_values = py::none()) {
  const char* fn = c.fn;
  SoftmaxCrossEntropyCall a;
  a.logits = array_arg(c, logits_obj, "logits", DType::f32, 2);
  a.rows = a.logits.dim(0);
  a.classes = a.logits.dim(1);
  a.labels = labels_arg(c, labels_obj, a.rows, a.classes);
  if (!weight_obj.is_none()) {
    a.weight = array_arg(c, weight_obj, "weight", DType::f32, 1);
    expect_shape(c, a.weight, {a.classes});
    if (!c.cuda()) {
      class_weight_values(c, a.weight.cf32(), a.classes);
    } else if (!weight_values.is_none()) {
      Arr host = array_arg(cpu_call(fn), weight_values, "weight", DType::f32, 1);
      expect_shape(c, host, {a.classes});
      class_weight_values(c, host.cf32(), a.classes);
    }
  }
  const double eps = real_arg(fn, eps_obj, "label_smoothing");
  require(eps >= 0.0 && eps <= 1.0, c,
          "label_smoothing must be in [0, 1], got " + py::repr(eps_obj).cast<std::string>());
  a.label_smoothing = static_cast<float>(eps);
  a.reduction = parse_reduction(fn, str_arg(fn, reduction_obj, "reduction"));
  a.grad_scale = finite_f32_arg(fn, scale_obj, "grad_scale");
  a.compute_grad = bool_arg(fn, compute_grad_obj, "compute_grad");
  require(a.compute_grad || grad_obj.is_none(), c, "grad is given but compute_grad is False");
  if (a.compute_grad) {
    a.grad = out_arg(c, grad_obj, "grad", {a.rows, a.classes});
    same_or_no_overlap(c, a.grad, a.logits);
    no_overlap(c, a.grad, a.labels);
    no_overlap(c, a.grad, a.weight);
  }
  if (!row_loss_obj.is_none()) {
    a.row_loss = out_arg(c, row_loss_obj, "row_loss", {a.rows});
    no_overlap_all(c, a.row_loss, {&a.logits, &a.labels, &a.weight, &a.grad});
  }
  return a;
}

struct EMBER_BIND_HIDDEN MseCall {
  Arr pred, target, grad;
  Reduction reduction = Reduction::mean;
  float grad_scale = 1.0f;
  bool compute_grad = true;
};

inline MseCall mse_args(const Call& c, py::handle pred_obj, py::handle target_obj,
                        py::handle reduction_obj, py::handle scale_obj,
                        py::handle compute_grad_obj, py::handle grad_obj) {
  const char* fn = c.fn;
  MseCall a;
  a.pred = array_arg(c, pred_obj, "pred", DType::f32, -1);
  a.target = array_arg(c, target_obj, "target", DType::f32, -1);
  expect_shape(c, a.target, a.pred.shape);
  a.reduction = parse_reduction(fn, str_arg(fn, reduction_obj, "reduction"));
  a.grad_scale = finite_f32_arg(fn, scale_obj, "grad_scale");
  a.compute_grad = bool_arg(fn, compute_grad_obj, "compute_grad");
  require(a.compute_grad || grad_obj.is_none(), c, "grad is given but compute_grad is False");
  if (a.compute_grad) {
    a.grad = out_arg(c, grad_obj, "grad", a.pred.shape);
    same_or_no_overlap(c, a.grad, a.pred);
    same_or_no_overlap(c, a.grad, a.target);
  }
  return a;
}

struct EMBER_BIND_HIDDEN ArgmaxCall {
  Arr x, out;
};

inline ArgmaxCall argmax_args(const Call& c, py::handle x_obj, py::handle out_obj) {
  ArgmaxCall a;
  a.x = array_arg(c, x_obj, "x", DType::f32, 2);
  a.out = out_arg(c, out_obj, "out", {a.x.dim(0)}, DType::i64);
  no_overlap(c, a.out, a.x);
  return a;
}

struct EMBER_BIND_HIDDEN AccuracyCall {
  Arr logits, labels;
};

inline AccuracyCall accuracy_args(const Call& c, py::handle logits_obj, py::handle labels_obj) {
  AccuracyCall a;
  a.logits = array_arg(c, logits_obj, "logits", DType::f32, 2);
  a.labels = labels_arg(c, labels_obj, a.logits.dim(0), a.logits.dim(1));
  return a;
}

}  // namespace ember::bind
