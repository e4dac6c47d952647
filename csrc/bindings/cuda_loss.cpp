// Bindings of the CUDA loss family: softmax_cross_entropy, mse, argmax, accuracy on CUDA arrays.
// Positional arguments as in ember._cpu, then `loss_out` (losses only), `stream` and `alloc`.
//
// The loss comes back as a Python float, which needs the GPU's result: the binding synchronises
// the stream once, after the launches (ember/cuda.h copy_to_host). Labels are range-checked on the
// device and the check is read with the loss; an out-of-range label raises ValueError then. With
// `loss_out` (a float32 CUDA array of shape (1,)) nothing is synchronised: the loss stays on the
// device (NaN when a label was out of range) and the binding returns loss_out itself.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_ops_common.h"

namespace ember::bind {
namespace {

// Reads {value, bad row} from the loss workspace; raises for a bad label (naming its row and value).
double loss_result(const char* fn, const CudaArray& ws, const CudaArray* labels, int64_t classes,
                   uintptr_t stream) {
  const std::vector<int64_t> r = read_words(words(ws), 2, stream);
  if (r[1] >= 0 && labels) {
    const int64_t bad = r[1];
    const int64_t value = read_words(reinterpret_cast<const int64_t*>(labels->ptr) + bad, 1, stream)[0];
    throw py::value_error(std::string(fn) + ": labels must be in [0, " + std::to_string(classes) +
                          "), got labels[" + std::to_string(bad) + "] = " + std::to_string(value));
  }
  return as_double(r[0]);
}

// float32 (1,), or float64 (1,): the loss exactly as the synchronising call returns it.
CudaArray loss_out_arg(const char* fn, py::handle obj) {
  DType t = DType::f32;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    py::object iface = obj.attr("__cuda_array_interface__");
    if (py::isinstance<py::dict>(iface) && iface.contains("typestr") &&
        py::str(iface["typestr"]).cast<std::string>() == "<f8") {
      t = DType::f64;
    }
  }
  CudaArray a = cuda_array_arg(fn, obj, "loss_out", t, 1, true);
  expect_shape(fn, a, {1});
  return a;
}

float* loss_out_f32(const CudaArray& lo) { return lo.ptr && lo.itemsize == 4 ? lo.f32() : nullptr; }
double* loss_out_f64(const CudaArray& lo) {
  return lo.ptr && lo.itemsize == 8 ? reinterpret_cast<double*>(lo.ptr) : nullptr;
}

py::tuple softmax_cross_entropy(py::handle logits_obj, py::handle labels_obj, py::handle weight_obj,
                                double label_smoothing, const std::string& reduction,
                                double grad_scale, bool compute_grad, py::handle grad_obj,
                                py::handle row_loss_obj, py::handle loss_out_obj, uintptr_t stream,
                                const py::object& alloc) {
  const char* fn = "softmax_cross_entropy";
  const Reduction red = parse_reduction(fn, reduction);
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) {
    throw py::value_error(std::string(fn) + ": label_smoothing must be in [0, 1], got " +
                          py::str(py::float_(label_smoothing)).cast<std::string>());
  }
  const float gs = finite_scalar(fn, grad_scale, "grad_scale");
  const CudaArray x = cuda_array_arg(fn, logits_obj, "logits", DType::f32, 2);
  const int64_t rows = x.dim(0), classes = x.dim(1);
  const CudaArray y = cuda_array_arg(fn, labels_obj, "labels", DType::i64, 1);
  expect_shape(fn, y, {rows});
  std::vector<const CudaArray*> arrays{&x, &y};
  CudaArray w;
  if (!weight_obj.is_none()) {
    w = cuda_array_arg(fn, weight_obj, "weight", DType::f32, 1);
    expect_shape(fn, w, {classes});
    arrays.push_back(&w);
  }
  CudaArray g, rl, lo;
  if (compute_grad) {
    g = cuda_out_arg(fn, grad_obj, "grad", {rows, classes}, alloc);
    if (!same_memory(g, x)) no_overlap(fn, g, x);  // in place is allowed
    no_overlap(fn, g, y);
    if (w.ptr) no_overlap(fn, g, w);
    arrays.push_back(&g);
  }
  if (!row_loss_obj.is_none()) {
    rl = cuda_out_arg(fn, row_loss_obj, "row_loss", {rows}, alloc);
    for (const CudaArray* a : arrays) no_overlap(fn, rl, *a);
    arrays.push_back(&rl);
  }
  if (!loss_out_obj.is_none()) {
    lo = loss_out_arg(fn, loss_out_obj);
    for (const CudaArray* a : arrays) no_overlap(fn, lo, *a);
    arrays.push_back(&lo);
  }
  device_phase(fn, arrays, stream);
  const CudaArray ws = cuda_workspace(fn, cuda::loss_workspace_words(), alloc);

  SoftmaxCrossEntropyArgs a;
  a.rows = rows, a.classes = classes;
  a.logits = x.cf32();
  a.labels = reinterpret_cast<const int64_t*>(y.ptr);
  a.class_weight = w.ptr ? w.cf32() : nullptr;
  a.label_smoothing = static_cast<float>(label_smoothing);
  a.reduction = red;
  a.grad_scale = gs;
  a.grad = compute_grad ? g.f32() : nullptr;
  a.row_loss = rl.ptr ? rl.f32() : nullptr;
  cuda::softmax_cross_entropy(a, words(ws), loss_out_f32(lo), loss_out_f64(lo),
                              reinterpret_cast<cuda::Stream>(stream));
  py::object grad_ret = compute_grad ? g.obj : py::none();
  if (lo.ptr) return py::make_tuple(lo.obj, grad_ret);
  return py::make_tuple(loss_result(fn, ws, &y, classes, stream), grad_ret);
}

py::tuple mse(py::handle pred_obj, py::handle target_obj, const std::string& reduction,
              double grad_scale, bool compute_grad, py::handle grad_obj, py::handle loss_out_obj,
              uintptr_t stream, const py::object& alloc) {
  const char* fn = "mse";
  const Reduction red = parse_reduction(fn, reduction);
  const float gs = finite_scalar(fn, grad_scale, "grad_scale");
  const CudaArray p = cuda_array_arg(fn, pred_obj, "pred", DType::f32, -1);
  const CudaArray t = cuda_array_arg(fn, target_obj, "target", DType::f32, -1);
  expect_shape(fn, t, p.shape);
  std::vector<const CudaArray*> arrays{&p, &t};
  CudaArray g, lo;
  if (compute_grad) {
    g = cuda_out_arg(fn, grad_obj, "grad", p.shape, alloc);
    if (!same_memory(g, p)) no_overlap(fn, g, p);
    if (!same_memory(g, t)) no_overlap(fn, g, t);
    arrays.push_back(&g);
  }
  if (!loss_out_obj.is_none()) {
    lo = loss_out_arg(fn, loss_out_obj);
    for (const CudaArray* a : arrays) no_overlap(fn, lo, *a);
    arrays.push_back(&lo);
  }
  device_phase(fn, arrays, stream);
  const CudaArray ws = cuda_workspace(fn, cuda::loss_workspace_words(), alloc);
  cuda::mse(p.size, p.cf32(), t.cf32(), compute_grad ? g.f32() : nullptr, red, gs, words(ws),
            loss_out_f32(lo), loss_out_f64(lo), reinterpret_cast<cuda::Stream>(stream));
  py::object grad_ret = compute_grad ? g.obj : py::none();
  if (lo.ptr) return py::make_tuple(lo.obj, grad_ret);
  return py::make_tuple(loss_result(fn, ws, nullptr, 0, stream), grad_ret);
}

py::object argmax(py::handle x_obj, py::handle out_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "argmax";
  const CudaArray x = cuda_array_arg(fn, x_obj, "x", DType::f32, 2);
  const CudaArray out = cuda_out_i64(fn, out_obj, "out", {x.dim(0)}, alloc);
  no_overlap(fn, out, x);
  device_phase(fn, {&x, &out}, stream);
  cuda::argmax_rows(x.dim(0), x.dim(1), x.cf32(), reinterpret_cast<int64_t*>(out.ptr),
                    reinterpret_cast<cuda::Stream>(stream));
  return out.obj;
}

double accuracy(py::handle logits_obj, py::handle labels_obj, uintptr_t stream,
                const py::object& alloc) {
  const char* fn = "accuracy";
  const CudaArray x = cuda_array_arg(fn, logits_obj, "logits", DType::f32, 2);
  const CudaArray y = cuda_array_arg(fn, labels_obj, "labels", DType::i64, 1);
  expect_shape(fn, y, {x.dim(0)});
  device_phase(fn, {&x, &y}, stream);
  const CudaArray ws = cuda_workspace(fn, cuda::loss_workspace_words(), alloc);
  cuda::count_correct(x.dim(0), x.dim(1), x.cf32(), reinterpret_cast<const int64_t*>(y.ptr),
                      words(ws), reinterpret_cast<cuda::Stream>(stream));
  return loss_result(fn, ws, &y, x.dim(1), stream) / static_cast<double>(x.dim(0));
}

}  // namespace

void bind_cuda_loss(py::module_& m) {
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"),
        py::arg("weight"), py::arg("label_smoothing"), py::arg("reduction"), py::arg("grad_scale"),
        py::arg("compute_grad"), py::arg("grad"), py::arg("row_loss"), py::arg("loss_out"),
        py::arg("stream"), py::arg("alloc"),
        R"(Softmax cross-entropy forward and backward in one kernel (see ember.ops.softmax_cross_entropy).

Returns (loss, grad or None). loss is a Python float read after a stream synchronisation, unless
loss_out (float32, shape (1,)) is given: then loss_out is returned and nothing waits for the GPU.)");
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
