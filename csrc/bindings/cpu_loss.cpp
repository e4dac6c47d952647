// Bindings: softmax_cross_entropy, mse, argmax, accuracy.
#include <cmath>

#include "checks.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {

void bind_loss(py::module_& m) {
  m.def(
      "softmax_cross_entropy",
      [](py::handle logits_obj, py::handle labels_obj, py::handle weight_obj, py::handle eps_obj,
         py::handle reduction_obj, py::handle scale_obj, py::handle compute_grad_obj,
         py::handle grad_obj, py::handle row_loss_obj) {
        const char* fn = "softmax_cross_entropy";
        py::array logits = array_arg(fn, logits_obj, "logits", DType::f32, 2);
        const int64_t rows = logits.shape(0), classes = logits.shape(1);
        py::array labels = labels_arg(fn, labels_obj, rows, classes);
        const bool weighted = !weight_obj.is_none();
        py::array weight;  // (an empty float64 array when not weighted: test `weighted`, not this)
        if (weighted) {
          weight = array_arg(fn, weight_obj, "weight", DType::f32, 1);
          expect_shape(fn, weight, "weight", {classes});
          const float* w = cf32(weight);
          for (int64_t c = 0; c < classes; ++c) {
            if (!(std::isfinite(w[c]) && w[c] >= 0.0f)) {
              throw py::value_error(std::string(fn) + ": weight must be finite and >= 0, got weight[" +
                                    std::to_string(c) + "] = " + std::to_string(w[c]));
            }
          }
        }
        const double eps = real_arg(fn, eps_obj, "label_smoothing");
        require(eps >= 0.0 && eps <= 1.0, fn,
                "label_smoothing must be in [0, 1], got " + py::repr(eps_obj).cast<std::string>());
        const Reduction reduction = parse_reduction(fn, str_arg(fn, reduction_obj, "reduction"));
        const float grad_scale = finite_f32_arg(fn, scale_obj, "grad_scale");
        const bool compute_grad = bool_arg(fn, compute_grad_obj, "compute_grad");
        require(compute_grad || grad_obj.is_none(), fn, "grad is given but compute_grad is False");

        py::object grad = py::none();
        SoftmaxCrossEntropyArgs args;
        args.rows = rows;
        args.classes = classes;
        args.logits = cf32(logits);
        args.labels = ci64(labels);
        args.class_weight = weighted ? cf32(weight) : nullptr;
        args.label_smoothing = static_cast<float>(eps);
        args.reduction = reduction;
        args.grad_scale = grad_scale;
        if (compute_grad) {
          py::array g = out_arg(fn, grad_obj, "grad", {rows, classes});
          same_or_no_overlap(fn, g, "grad", logits, "logits");
          no_overlap(fn, g, "grad", labels, "labels");
          if (weighted) no_overlap(fn, g, "grad", weight, "weight");
          args.grad = f32(g);
          grad = g;
        }
        py::object row_loss = py::none();
        if (!row_loss_obj.is_none()) {
          py::array rl = out_arg(fn, row_loss_obj, "row_loss", {rows});
          no_overlap(fn, rl, "row_loss", logits, "logits");
          no_overlap(fn, rl, "row_loss", labels, "labels");
          if (weighted) no_overlap(fn, rl, "row_loss", weight, "weight");
          if (compute_grad) no_overlap(fn, rl, "row_loss", py::reinterpret_borrow<py::array>(grad), "grad");
          args.row_loss = f32(rl);
          row_loss = rl;
        }
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
        const char* fn = "mse";
        py::array pred = array_arg(fn, pred_obj, "pred", DType::f32, -1);
        py::array target = array_arg(fn, target_obj, "target", DType::f32, -1);
        std::vector<int64_t> shape(pred.shape(), pred.shape() + pred.ndim());
        expect_shape(fn, target, "target", shape);
        const Reduction reduction = parse_reduction(fn, str_arg(fn, reduction_obj, "reduction"));
        const float grad_scale = finite_f32_arg(fn, scale_obj, "grad_scale");
        const bool compute_grad = bool_arg(fn, compute_grad_obj, "compute_grad");
        require(compute_grad || grad_obj.is_none(), fn, "grad is given but compute_grad is False");
        py::object grad = py::none();
        float* g = nullptr;
        if (compute_grad) {
          py::array ga = out_arg(fn, grad_obj, "grad", shape);
          same_or_no_overlap(fn, ga, "grad", pred, "pred");
          same_or_no_overlap(fn, ga, "grad", target, "target");
          g = f32(ga);
          grad = ga;
        }
        const int64_t n = pred.size();
        double loss;
        {
          py::gil_scoped_release release;
          loss = cpu::mse(n, cf32(pred), cf32(target), g, reduction, grad_scale);
        }
        return py::make_tuple(loss, grad);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction") = "mean",
      py::arg("grad_scale") = 1.0, py::arg("compute_grad") = true, py::arg("grad") = py::none(),
      R"(Mean (or summed) squared error and its gradient wrt pred; returns (loss, grad or None).
See ember.ops.mse.)");

  m.def(
      "argmax",
      [](py::handle x_obj, py::handle out_obj) {
        const char* fn = "argmax";
        py::array x = array_arg(fn, x_obj, "x", DType::f32, 2);
        const int64_t rows = x.shape(0), cols = x.shape(1);
        py::array out = out_arg(fn, out_obj, "out", {rows}, DType::i64);
        no_overlap(fn, out, "out", x, "x");
        {
          py::gil_scoped_release release;
          cpu::argmax_rows(rows, cols, cf32(x), i64(out));
        }
        return out;
      },
      py::arg("x"), py::arg("out") = py::none(),
      R"(Index of the largest value of each row (first on ties, NaN counts as largest), as int64.
See ember.ops.argmax.)");

  m.def(
      "accuracy",
      [](py::handle logits_obj, py::handle labels_obj) {
        const char* fn = "accuracy";
        py::array logits = array_arg(fn, logits_obj, "logits", DType::f32, 2);
        const int64_t rows = logits.shape(0), cols = logits.shape(1);
        py::array labels = labels_arg(fn, labels_obj, rows, cols);
        int64_t correct;
        {
          py::gil_scoped_release release;
          correct = cpu::count_correct(rows, cols, cf32(logits), ci64(labels));
        }
        return static_cast<double>(correct) / static_cast<double>(rows);
      },
      py::arg("logits"), py::arg("labels"),
      R"(Fraction of rows whose argmax equals the label. See ember.ops.accuracy.)");
}

}  // namespace ember::bind
