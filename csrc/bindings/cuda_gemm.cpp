// Bindings of the CUDA GEMM family: gemm and linear_backward on CUDA arrays.
// ember/_cuda_ops.py calls these with ember.ops' positional arguments plus the stream to run on
// (CuPy's current stream, as an integer) and an allocator for outputs left as None.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_checks.h"
#include "ember/cuda.h"

namespace ember::bind {
namespace {

py::object gemm(py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle out_obj,
                py::handle preact_obj, bool trans_a, bool trans_b, const std::string& activation,
                double negative_slope, double alpha, double beta, bool save_preact,
                const std::string& precision, uintptr_t stream, const py::object& alloc) {
  const char* fn = "gemm";
  const Activation act = parse_activation(fn, activation);
  const float slope = finite_scalar(fn, negative_slope, "negative_slope");
  const float alpha_f = finite_scalar(fn, alpha, "alpha");
  const float beta_f = finite_scalar(fn, beta, "beta");
  const cuda::Precision prec = parse_precision(fn, precision);

  const CudaArray a = cuda_array_arg(fn, a_obj, "a", DType::f32, 2);
  const CudaArray b = cuda_array_arg(fn, b_obj, "b", DType::f32, 2);
  const int64_t m = trans_a ? a.dim(1) : a.dim(0), k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0), n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb) {
    throw py::value_error("gemm: inner dimensions differ: op(a) is " + shape_str({m, k}) +
                          " and op(b) is " + shape_str({kb, n}));
  }
  std::vector<const CudaArray*> arrays{&a, &b};
  CudaArray bias;
  if (!bias_obj.is_none()) {
    bias = cuda_array_arg(fn, bias_obj, "bias", DType::f32, 1);
    expect_shape(fn, bias, {n});
    arrays.push_back(&bias);
  }
  if (beta_f != 0.0f && out_obj.is_none()) {
    throw py::value_error("gemm: beta != 0 needs out (its previous contents are scaled by beta)");
  }
  const CudaArray out = cuda_out_arg(fn, out_obj, "out", {m, n}, alloc);
  no_overlap(fn, out, a);
  no_overlap(fn, out, b);
  if (bias.ptr) no_overlap(fn, out, bias);
  arrays.push_back(&out);
  CudaArray preact;
  const bool want_preact = save_preact || !preact_obj.is_none();
  if (want_preact) {
    preact = cuda_out_arg(fn, preact_obj, "preact_out", {m, n}, alloc);
    no_overlap(fn, preact, a);
    no_overlap(fn, preact, b);
    if (bias.ptr) no_overlap(fn, preact, bias);
    no_overlap(fn, preact, out);
    arrays.push_back(&preact);
  }

  on_current_device(fn, arrays);
  wait_for_producers(fn, stream, arrays);

  GemmArgs g;
  g.m = m, g.n = n, g.k = k;
  g.a = a.cf32(), g.lda = a.dim(1), g.trans_a = trans_a;
  g.b = b.cf32(), g.ldb = b.dim(1), g.trans_b = trans_b;
  g.c = out.f32(), g.ldc = n;
  g.alpha = alpha_f, g.beta = beta_f;
  g.bias = bias.ptr ? bias.cf32() : nullptr;
  g.preact = want_preact ? preact.f32() : nullptr;
  g.act = act, g.act_param = slope;
  // Split-K scratch (only for outputs too small to fill the GPU), from the same pool; freed on
  // return, which is safe because CuPy's pool reuses it only for work on the same stream.
  CudaArray ws;
  if (const int64_t words = cuda::gemm_workspace_floats(m, n, k)) {
    ws = cuda_out_arg(fn, py::none(), "workspace", {words}, alloc);
  }
  cuda::gemm(g, prec, reinterpret_cast<cuda::Stream>(stream), ws.ptr ? ws.f32() : nullptr);
  if (want_preact) return py::make_tuple(out.obj, preact.obj);
  return out.obj;
}

py::tuple linear_backward(py::handle grad_out_obj, py::handle x_obj, py::handle weight_obj,
                          py::handle preact_obj, const std::string& activation,
                          double negative_slope, bool need_grad_input, bool has_bias,
                          bool accumulate, py::handle grad_input_obj, py::handle grad_weight_obj,
                          py::handle grad_bias_obj, py::handle workspace_obj,
                          const std::string& precision, uintptr_t stream, const py::object& alloc) {
  const char* fn = "linear_backward";
  const Activation act = parse_activation(fn, activation);
  const float slope = finite_scalar(fn, negative_slope, "negative_slope");
  const cuda::Precision prec = parse_precision(fn, precision);
  const bool fused_act = act != Activation::identity;

  const CudaArray dy = cuda_array_arg(fn, grad_out_obj, "grad_out", DType::f32, 2);
  const CudaArray x = cuda_array_arg(fn, x_obj, "x", DType::f32, 2);
  const CudaArray w = cuda_array_arg(fn, weight_obj, "weight", DType::f32, 2);
  const int64_t batch = dy.dim(0), out_f = dy.dim(1), in_f = x.dim(1);
  expect_shape(fn, x, {batch, in_f});
  expect_shape(fn, w, {out_f, in_f});
  std::vector<const CudaArray*> inputs{&dy, &x, &w};
  CudaArray z;
  if (fused_act) {
    if (preact_obj.is_none()) {
      throw py::value_error("linear_backward: preact is required for activation '" + activation +
                            "'");
    }
    z = cuda_array_arg(fn, preact_obj, "preact", DType::f32, 2);
    expect_shape(fn, z, {batch, out_f});
    inputs.push_back(&z);
  }
  if (accumulate && (grad_weight_obj.is_none() || (has_bias && grad_bias_obj.is_none()))) {
    throw py::value_error("linear_backward: accumulate=True needs grad_weight" +
                          std::string(has_bias ? " and grad_bias" : "") + " to add into");
  }

  // dZ: in `workspace` (which may be grad_out itself, to work in place) unless act is identity.
  CudaArray dz;
  if (fused_act) {
    dz = cuda_out_arg(fn, workspace_obj, "workspace", {batch, out_f}, alloc);
    for (const CudaArray* in : std::initializer_list<const CudaArray*>{&x, &w, &z}) no_overlap(fn, dz, *in);
    if (!same_memory(dz, dy)) no_overlap(fn, dz, dy);
  }
  std::vector<const CudaArray*> reads = inputs;
  if (fused_act) reads.push_back(&dz);

  std::vector<CudaArray> outs;  // reserved: pointers into it are taken below
  outs.reserve(3);
  const CudaArray* dx = nullptr;
  const CudaArray* dw = nullptr;
  const CudaArray* db = nullptr;
  if (need_grad_input) {
    outs.push_back(cuda_out_arg(fn, grad_input_obj, "grad_input", {batch, in_f}, alloc));
    dx = &outs.back();
  }
  outs.push_back(cuda_out_arg(fn, grad_weight_obj, "grad_weight", {out_f, in_f}, alloc));
  dw = &outs.back();
  if (has_bias) {
    outs.push_back(cuda_out_arg(fn, grad_bias_obj, "grad_bias", {out_f}, alloc));
    db = &outs.back();
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    for (const CudaArray* in : reads) no_overlap(fn, outs[i], *in);
    for (size_t j = 0; j < i; ++j) no_overlap(fn, outs[i], outs[j]);
  }

  std::vector<const CudaArray*> all = reads;
  for (const CudaArray& o : outs) all.push_back(&o);
  on_current_device(fn, all);
  wait_for_producers(fn, stream, all);

  // Scratch for the bias gradient's per-block partial sums and the products' split-K slices,
  // from the same pool; freed when this call returns, which is safe because CuPy's pool reuses
  // it only for work on the same stream.
  CudaArray partials;
  if (const int64_t words = cuda::linear_backward_partials_size(batch, in_f, out_f)) {
    partials = cuda_out_arg(fn, py::none(), "partials", {words}, alloc);
  }

  LinearBackwardArgs args;
  args.batch = batch, args.in_features = in_f, args.out_features = out_f;
  args.grad_out = dy.cf32(), args.x = x.cf32(), args.weight = w.cf32();
  args.preact = fused_act ? z.cf32() : nullptr;
  args.act = act, args.act_param = slope;
  args.grad_preact = fused_act ? dz.f32() : nullptr;
  args.grad_input = dx ? dx->f32() : nullptr;
  args.grad_weight = dw->f32();
  args.grad_bias = db ? db->f32() : nullptr;
  args.accumulate = accumulate;
  cuda::linear_backward(args, prec, partials.ptr ? partials.f32() : nullptr,
                        reinterpret_cast<cuda::Stream>(stream));
  return py::make_tuple(dx ? dx->obj : py::none(), dw->obj, db ? db->obj : py::none());
}

}  // namespace

void bind_cuda_gemm(py::module_& m) {
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("bias"), py::arg("out"),
        py::arg("preact_out"), py::arg("trans_a"), py::arg("trans_b"), py::arg("activation"),
        py::arg("negative_slope"), py::arg("alpha"), py::arg("beta"), py::arg("save_preact"),
        py::arg("precision"), py::arg("stream"), py::arg("alloc"),
        R"(C = act(alpha * op(a) @ op(b) + beta * out + bias) on CUDA arrays (see ember.ops.gemm).

`stream` is the cudaStream_t to run on, as an integer (CuPy's current stream); `alloc(shape)`
returns a new float32 CUDA array for each output passed as None. Returns out, or (out, preact)
when save_preact or preact_out is given.)");
  m.def("linear_backward", &linear_backward, py::arg("grad_out"), py::arg("x"), py::arg("weight"),
        py::arg("preact"), py::arg("activation"), py::arg("negative_slope"),
        py::arg("need_grad_input"), py::arg("has_bias"), py::arg("accumulate"),
        py::arg("grad_input"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("workspace"),
        py::arg("precision"), py::arg("stream"), py::arg("alloc"),
        R"(Backward of linear_forward on CUDA arrays (see ember.ops.linear_backward).

dZ = grad_out * act'(preact) and the bias gradient in one kernel (deterministic: per-block
partial sums reduced in a fixed order), then dX = dZ @ weight and dW = dZ.T @ x.
Returns (grad_input or None, grad_weight, grad_bias or None).)");
}

}  // namespace ember::bind
