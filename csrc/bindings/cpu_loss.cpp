// Bindings: softmax_cross_entropy, mse, argmax, accuracy (contract: loss_args.h).
#include "cpu_bindings.h"
#include "ember/cpu.h"
#include "loss_args.h"

namespace ember::bind {

void bind_loss(py::module_& m) {
  m.def(
      "softmax_cross_entropy",
      [](py::handle logits_obj, py::handle labels_obj, py::handle weight_obj, py::handle eps_obj,
         py::handle reduction_obj, py::handle scale_obj, py::handle compute_grad_obj,
         py::handle grad_obj, py::handle row_loss_obj) {
        const SoftmaxCrossEntropyCall a = softmax_cross_entropy_args(
            cpu_call("softmax_cross_entropy"), logits_obj, labels_obj, weight_obj, eps_obj,
            reduction_obj, scale_obj, compute_grad_obj, grad_obj, row_loss_obj);
        SoftmaxCrossEntropyArgs args;
        args.rows = a.rows;
        args.classes = a.classes;
        args.logits = a.logits.cf32();
        args.labels = a.labels.ci64();
        args.class_weight = a.weight.given() ? a.weight.cf32() : nullptr;
        args.label_smoothing = a.label_smoothing;
        args.reduction = a.reduction;
        args.grad_scale = a.grad_scale;
        args.grad = a.compute_grad ? a.grad.f32() : nullptr;
        args.row_loss = a.row_loss.given() ? a.row_loss.f32() : nullptr;
        py::object grad = a.compute_grad ? a.grad.obj : py::object(py::none());
        double loss;
        {
          py::gil_scoped_release release;
          loss = cpu::softmax_cross_entropy(args);
        }
        return py::make_tuple(loss, grad);
      },
      py::arg("logits"), py::arg("labels"), py::arg("weight") = py::none(),
      py::arg("label_smoothing") = 0.0, py::arg("reduction") = "mean", py::arg("grad_scale") = 1.0,
      py::arg("compute_grad") = true, py::arg("grad") = py::none(), py::arg("row_loss") = py::none(),
      R"(Fused softmax cross-entropy loss and gradient; returns (loss, grad or None).
See ember.ops.softmax_cross_entropy.)");

  m.def(
      "mse",
      [](py::handle pred_obj, py::handle target_obj, py::handle reduction_obj, py::handle scale_obj,
         py::handle compute_grad_obj, py::handle grad_obj) {
        const MseCall a = mse_args(cpu_call("mse"), pred_obj, target_obj, reduction_obj,
                                   scale_obj, compute_grad_obj, grad_obj);
        double loss;
        {
          py::gil_scoped_release release;
          loss = cpu::mse(a.pred.size, a.pred.cf32(), a.target.cf32(),
                          a.compute_grad ? a.grad.f32() : nullptr, a.reduction, a.grad_scale);
        }
        return py::make_tuple(loss, a.compute_grad ? a.grad.obj : py::object(py::none()));
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction") = "mean",
      py::arg("grad_scale") = 1.0, py::arg("compute_grad") = true, py::arg("grad") = py::none(),
      R"(Mean (or summed) squared error and its gradient wrt pred; returns (loss, grad or None).
See ember.ops.mse.)");

  m.def(
      "argmax",
      [](py::handle x_obj, py::handle out_obj) {
        const ArgmaxCall a = argmax_args(cpu_call("argmax"), x_obj, out_obj);
        {
          py::gil_scoped_release release;
          cpu::argmax_rows(a.x.dim(0), a.x.dim(1), a.x.cf32(), a.out.i64());
        }
        return a.out.obj;
      },
      py::arg("x"), py::arg("out") = py::none(),
      R"(Index of the largest value of each row (first on ties, NaN counts as largest), as int64.
See ember.ops.argmax.)");

  m.def(
      "accuracy",
      [](py::handle logits_obj, py::handle labels_obj) {
        const AccuracyCall a = accuracy_args(cpu_call("accuracy"), logits_obj, labels_obj);
        const int64_t rows = a.logits.dim(0), cols = a.logits.dim(1);
        int64_t correct;
        {
          py::gil_scoped_release release;
          correct = cpu::count_correct(rows, cols, a.logits.cf32(), a.labels.ci64());
        }
        return static_cast<double>(correct) / static_cast<double>(rows);
      },
      py::arg("logits"), py::arg("labels"),
      R"(Fraction of rows whose argmax equals the label. See ember.ops.accuracy.)");
}

}  // namespace ember::bind
