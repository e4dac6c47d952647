// Bindings of the CUDA loss family: softmax_cross_entropy, mse, argmax, accuracy on CUDA arrays
// (contract: loss_args.h).
// Positional arguments as in ember._cpu, then `loss_out` (losses only), `stream` and `alloc`.
//
// The loss comes back as a Python float, which needs the GPU's result: the binding synchronises
// the stream once, after the launches (ember/cuda.h copy_to_host). Labels are range-checked on the
// device and the check is read with the loss; an out-of-range label raises ValueError then. With
// `loss_out` (a float32 CUDA array of shape (1,)) nothing is synchronised: the loss stays on the
// device (NaN when a label was out of range) and the binding returns loss_out itself.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_device.h"
#include "loss_args.h"

namespace ember::bind {
namespace {

// Reads {value, bad row} from the loss workspace; raises for a bad label (naming its row and value).
double loss_result(const char* fn, const Arr& ws, const Arr* labels, int64_t classes,
                   uintptr_t stream) {
  const std::vector<int64_t> r = read_words(words(ws), 2, stream);
  if (r[1] >= 0 && labels) {
    const int64_t bad = r[1];
    const int64_t value = read_words(labels->ci64() + bad, 1, stream)[0];
    // (This wording, not the CPU's "labels[i] = v is out of range [0, C)", is pinned by
    // tests/test_cuda_ops.py.)
    throw py::value_error(std::string(fn) + ": labels must be in [0, " + std::to_string(classes) +
                          "), got labels[" + std::to_string(bad) + "] = " + std::to_string(value));
  }
  return as_double(r[0]);
}

// float32 (1,), or float64 (1,): the loss exactly as the synchronising call returns it.
Arr loss_out_arg(const Call& c, py::handle obj) {
  DType t = DType::f32;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    py::object iface = obj.attr("__cuda_array_interface__");
    if (py::isinstance<py::dict>(iface) && iface.contains("typestr") &&
        py::str(iface["typestr"]).cast<std::string>() == "<f8") {
      t = DType::f64;
    }
  }
  Arr a = array_arg(c, obj, "loss_out", t, 1, true);
  expect_shape(c, a, {1});
  return a;
}

float* loss_out_f32(const Arr& lo) { return lo.given() && lo.itemsize == 4 ? lo.f32() : nullptr; }
double* loss_out_f64(const Arr& lo) {
  return lo.given() && lo.itemsize == 8 ? reinterpret_cast<double*>(lo.ptr) : nullptr;
}

py::tuple softmax_cross_entropy(py::handle logits_obj, py::handle labels_obj, py::handle weight_obj,
                                py::handle eps_obj, py::handle reduction_obj, py::handle scale_obj,
                                py::handle compute_grad_obj, py::handle grad_obj,
                                py::handle row_loss_obj, py::handle loss_out_obj, uintptr_t stream,
                                const py::object& alloc, py::handle weight_values) {
  const char* fn = "softmax_cross_entropy";
  const Call c = cuda_call(fn, alloc);
  const SoftmaxCrossEntropyCall x = softmax_cross_entropy_args(
      c, logits_obj, labels_obj, weight_obj, eps_obj, reduction_obj, scale_obj, compute_grad_obj,
      grad_obj, row_loss_obj, weight_values);
  Arr lo;
  if (!loss_out_obj.is_none()) {
    lo = loss_out_arg(c, loss_out_obj);
    no_overlap_all(c, lo, {&x.logits, &x.labels, &x.weight, &x.grad, &x.row_loss});
  }
  device_phase(fn, {&x.logits, &x.labels, &x.weight, &x.grad, &x.row_loss, &lo}, stream);
  const Arr ws = cuda_workspace(c, cuda::loss_workspace_words());

  SoftmaxCrossEntropyArgs a;
  a.rows = x.rows, a.classes = x.classes;
  a.logits = x.logits.cf32();
  a.labels = x.labels.ci64();
  a.class_weight = x.weight.given() ? x.weight.cf32() : nullptr;
  a.label_smoothing = x.label_smoothing;
  a.reduction = x.reduction;
  a.grad_scale = x.grad_scale;
  a.grad = x.compute_grad ? x.grad.f32() : nullptr;
  a.row_loss = x.row_loss.given() ? x.row_loss.f32() : nullptr;
  cuda::softmax_cross_entropy(a, words(ws), loss_out_f32(lo), loss_out_f64(lo), as_stream(stream));
  py::object grad_ret = x.compute_grad ? x.grad.obj : py::none();
  if (lo.given()) return py::make_tuple(lo.obj, grad_ret);
  return py::make_tuple(loss_result(fn, ws, &x.labels, x.classes, stream), grad_ret);
}

py::tuple mse(py::handle pred_obj, py::handle target_obj, py::handle reduction_obj,
              py::handle scale_obj, py::handle compute_grad_obj, py::handle grad_obj,
              py::handle loss_out_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "mse";
  const Call c = cuda_call(fn, alloc);
  const MseCall x = mse_args(c, pred_obj, target_obj, reduction_obj, scale_obj, compute_grad_obj,
                             grad_obj);
  Arr lo;
  if (!loss_out_obj.is_none()) {
    lo = loss_out_arg(c, loss_out_obj);
    no_overlap_all(c, lo, {&x.pred, &x.target, &x.grad});
  }
  device_phase(fn, {&x.pred, &x.target, &x.grad, &lo}, stream);
  const Arr ws = cuda_workspace(c, cuda::loss_workspace_words());
  cuda::mse(x.pred.size, x.pred.cf32(), x.target.cf32(), x.compute_grad ? x.grad.f32() : nullptr,
            x.reduction, x.grad_scale, words(ws), loss_out_f32(lo), loss_out_f64(lo),
            as_stream(stream));
  py::object grad_ret = x.compute_grad ? x.grad.obj : py::none();
  if (lo.given()) return py::make_tuple(lo.obj, grad_ret);
  return py::make_tuple(loss_result(fn, ws, nullptr, 0, stream), grad_ret);
}

py::object argmax(py::handle x_obj, py::handle out_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "argmax";
  const ArgmaxCall a = argmax_args(cuda_call(fn, alloc), x_obj, out_obj);
  device_phase(fn, {&a.x, &a.out}, stream);
  cuda::argmax_rows(a.x.dim(0), a.x.dim(1), a.x.cf32(), a.out.i64(), as_stream(stream));
  return a.out.obj;
}

double accuracy(py::handle logits_obj, py::handle labels_obj, uintptr_t stream,
                const py::object& alloc) {
  const char* fn = "accuracy";
  const Call c = cuda_call(fn, alloc);
  const AccuracyCall a = accuracy_args(c, logits_obj, labels_obj);
  device_phase(fn, {&a.logits, &a.labels}, stream);
  const Arr ws = cuda_workspace(c, cuda::loss_workspace_words());
  cuda::count_correct(a.logits.dim(0), a.logits.dim(1), a.logits.cf32(), a.labels.ci64(),
                      words(ws), as_stream(stream));
  return loss_result(fn, ws, &a.labels, a.logits.dim(1), stream) /
         static_cast<double>(a.logits.dim(0));
}

}  // namespace

void bind_cuda_loss(py::module_& m) {
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"),
        py::arg("weight"), py::arg("label_smoothing"), py::arg("reduction"), py::arg("grad_scale"),
        py::arg("compute_grad"), py::arg("grad"), py::arg("row_loss"), py::arg("loss_out"),
        py::arg("stream"), py::arg("alloc"), py::arg("weight_values") = py::none(),
        R"(Softmax cross-entropy forward and backward in one kernel (see ember.ops.softmax_cross_entropy).

Returns (loss, grad or None). loss is a Python float read after a stream synchronisation, unless
loss_out (float32, shape (1,)) is given: then loss_out is returned and nothing waits for the GPU.
weight_values: a host (NumPy) copy of weight, whose values are then checked as the CPU checks
them (finite, >= 0); None: not checked.)");
  m.def("mse", &mse, py::arg("pred"), py::arg("target"), py::arg("reduction"),
        py::arg("grad_scale"), py::arg("compute_grad"), py::arg("grad"), py::arg("loss_out"),
        py::arg("stream"), py::arg("alloc"),
        R"(Squared error and its gradient in one pass (see ember.ops.mse); loss as for softmax_cross_entropy.)");
  m.def("argmax", &argmax, py::arg("x"), py::arg("out"), py::arg("stream"), py::arg("alloc"),
        R"(Row-wise argmax as int64 (first on ties; see ember.ops.argmax).)");
  m.def("accuracy", &accuracy, py::arg("logits"), py::arg("labels"), py::arg("stream"),
        py::arg("alloc"), R"(Fraction of rows whose argmax is the label (synchronises the stream).)");
}

}  // namespace ember::bind
