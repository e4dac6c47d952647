// Bindings of the CUDA GEMM family: gemm and linear_backward on CUDA arrays (contract: gemm_args.h).
// ember/_cuda_ops.py calls these with ember.ops' positional arguments plus the stream to run on
// (CuPy's current stream, as an integer) and an allocator for outputs left as None.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_device.h"
#include "gemm_args.h"

namespace ember::bind {
namespace {

py::object gemm(py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle out_obj,
                py::handle preact_obj, bool trans_a, bool trans_b, const std::string& activation,
                double negative_slope, double alpha, double beta, bool save_preact,
                const std::string& precision, uintptr_t stream, const py::object& alloc) {
  const char* fn = "gemm";
  const Call c = cuda_call(fn, alloc);
  const GemmCall x = gemm_args(c, a_obj, b_obj, bias_obj, out_obj, preact_obj, trans_a, trans_b,
                               activation, negative_slope, alpha, beta, save_preact, precision);
  device_phase(fn, {&x.a, &x.b, &x.bias, &x.out, &x.preact}, stream);

  GemmArgs g;
  g.m = x.m, g.n = x.n, g.k = x.k;
  g.a = x.a.cf32(), g.lda = x.a.dim(1), g.trans_a = trans_a;
  g.b = x.b.cf32(), g.ldb = x.b.dim(1), g.trans_b = trans_b;
  g.c = x.out.f32(), g.ldc = x.n;
  g.alpha = x.alpha, g.beta = x.beta;
  g.bias = x.bias.given() ? x.bias.cf32() : nullptr;
  g.preact = x.preact.given() ? x.preact.f32() : nullptr;
  g.act = x.act, g.act_param = x.slope;
  // Split-K scratch (only for outputs too small to fill the GPU), from the same pool; freed on
  // return, which is safe because CuPy's pool reuses it only for work on the same stream.
  Arr ws;
  if (const int64_t n = cuda::gemm_workspace_floats(x.m, x.n, x.k)) {
    ws = cuda_float_workspace(c, n, "workspace");
  }
  cuda::gemm(g, cuda_precision(x.precision), as_stream(stream), ws.given() ? ws.f32() : nullptr);
  if (x.preact.given()) return py::make_tuple(x.out.obj, x.preact.obj);
  return x.out.obj;
}

py::tuple linear_backward(py::handle grad_out_obj, py::handle x_obj, py::handle weight_obj,
                          py::handle preact_obj, const std::string& activation,
                          double negative_slope, bool need_grad_input, bool has_bias,
                          bool accumulate, py::handle grad_input_obj, py::handle grad_weight_obj,
                          py::handle grad_bias_obj, py::handle workspace_obj,
                          const std::string& precision, uintptr_t stream, const py::object& alloc) {
  const char* fn = "linear_backward";
  const Call c = cuda_call(fn, alloc);
  const LinearBackwardCall l = linear_backward_args(
      c, grad_out_obj, x_obj, weight_obj, preact_obj, activation, negative_slope, need_grad_input,
      has_bias, accumulate, grad_input_obj, grad_weight_obj, grad_bias_obj, workspace_obj,
      precision);
  device_phase(fn, {&l.grad_out, &l.x, &l.weight, &l.preact, &l.dz, &l.grad_input,
                    &l.grad_weight, &l.grad_bias}, stream);

  // Scratch for the bias gradient's per-block partial sums and the products' split-K slices,
  // from the same pool; freed when this call returns, which is safe because CuPy's pool reuses
  // it only for work on the same stream.
  Arr partials;
  if (const int64_t n = cuda::linear_backward_partials_size(l.batch, l.in_f, l.out_f)) {
    partials = cuda_float_workspace(c, n, "partials");
  }

  LinearBackwardArgs args;
  args.batch = l.batch, args.in_features = l.in_f, args.out_features = l.out_f;
  args.grad_out = l.grad_out.cf32(), args.x = l.x.cf32(), args.weight = l.weight.cf32();
  const bool fused_act = l.act != Activation::identity;
  args.preact = fused_act ? l.preact.cf32() : nullptr;
  args.act = l.act, args.act_param = l.slope;
  args.grad_preact = fused_act ? l.dz.f32() : nullptr;
  args.grad_input = l.grad_input.given() ? l.grad_input.f32() : nullptr;
  args.grad_weight = l.grad_weight.f32();
  args.grad_bias = l.grad_bias.given() ? l.grad_bias.f32() : nullptr;
  args.accumulate = accumulate;
  cuda::linear_backward(args, cuda_precision(l.precision),
                        partials.given() ? partials.f32() : nullptr, as_stream(stream));
  return py::make_tuple(l.grad_input.given() ? l.grad_input.obj : py::none(), l.grad_weight.obj,
                        l.grad_bias.given() ? l.grad_bias.obj : py::none());
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
