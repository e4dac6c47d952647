// Shared enums and argument structs for ember's kernel families (CPU and CUDA alike).
// Kernels take raw pointers and sizes and never allocate: callers own every buffer.
#pragma once
#include <cstdint>

namespace ember {

// Activation applied in GEMM epilogues and by activation_forward/backward.
// The integer values are part of the Python API (ember.ops.ACTIVATIONS) and must not change.
enum class Activation : int {
  identity = 0,
  relu = 1,
  leaky_relu = 2,  // param = negative slope
  gelu_erf = 3,    // x * Phi(x), the exact form (PyTorch approximate="none")
  gelu_tanh = 4,   // PyTorch approximate="tanh"
  tanh = 5,
  sigmoid = 6,
  silu = 7,
};

enum class Reduction : int { mean = 0, sum = 1 };

// C = act(alpha * op(A) * op(B) + beta * C + bias), row-major.
// op(A) is m x k (A is k x m when trans_a), op(B) is k x n (B is n x k when trans_b).
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;  // row stride of A as stored
  bool trans_a = false;
  const float* b = nullptr;
  int64_t ldb = 0;
  bool trans_b = false;
  float* c = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f;
  float beta = 0.0f;              // 0: C is write-only (its old contents, even NaN, are ignored)
  const float* bias = nullptr;    // n values broadcast over rows, or null
  float* preact = nullptr;        // m x n (row stride ldc): alpha*AB + beta*C + bias, before act; or null
  Activation act = Activation::identity;
  float act_param = 0.01f;        // leaky_relu slope
  // CPU only: op(B) already packed by gemm_pack_b (B is then not read unless the GEMM is one that
  // reads B in place, which gemm_packed_b_size tells by returning 0). packed_n0: the column of
  // the packed matrix where this problem's column 0 is (0 for a whole GEMM).
  const float* packed_b = nullptr;
  int64_t packed_n0 = 0;
};

// The operand part of a GemmArgs (alpha 1, beta 0, no bias, no activation until set).
inline GemmArgs gemm_operands(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                              bool trans_a, const float* b, int64_t ldb, bool trans_b, float* c,
                              int64_t ldc) {
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.lda = lda;
  g.trans_a = trans_a;
  g.b = b;
  g.ldb = ldb;
  g.trans_b = trans_b;
  g.c = c;
  g.ldc = ldc;
  return g;
}

// Backward of y = act(x * W^T + b) with x: batch x in, W: out x in (PyTorch's Linear layout).
//   dZ = dY * act'(Z)           (Z = saved pre-activation; dZ = dY when act is identity)
//   dX = dZ * W                 (batch x in)
//   dW = dZ^T * x  (+= when accumulate)   (out x in)
//   db = column sums of dZ (+= when accumulate)
struct LinearBackwardArgs {
  int64_t batch = 0, in_features = 0, out_features = 0;
  const float* grad_out = nullptr;  // batch x out
  const float* x = nullptr;         // batch x in
  const float* weight = nullptr;    // out x in
  const float* preact = nullptr;    // batch x out; required unless act is identity
  Activation act = Activation::identity;
  float act_param = 0.01f;
  float* grad_preact = nullptr;  // batch x out workspace for dZ (may equal grad_out); unused for identity
  float* grad_input = nullptr;   // batch x in, or null when not needed
  float* grad_weight = nullptr;  // out x in, or null
  float* grad_bias = nullptr;    // out, or null
  bool accumulate = false;       // add into grad_weight / grad_bias instead of overwriting
  // CPU only (the fused MLP step): grad_input = (dZ W) * act'(input_preact), the previous
  // layer's activation derivative applied in the dX GEMM's epilogue (its dZ, one pass less).
  // input_act must be relu or leaky_relu; input_preact is batch x in (the pre-activation, or for
  // these two the activation's output, whose sign is the same).
  const float* input_preact = nullptr;
  Activation input_act = Activation::identity;
  float input_act_param = 0.0f;
};

// Softmax cross-entropy over rows of logits with integer class labels, PyTorch semantics:
//   per-row loss l_i = (1-eps) * w[y_i] * (-log p_{i,y_i}) + (eps/C) * sum_c w[c] * (-log p_{i,c})
//   mean: sum_i l_i / sum_i w[y_i]   (w = 1 when no class weights); sum: sum_i l_i.
// grad (if non-null) receives grad_scale * d(loss)/d(logits); it may alias logits (in place).
struct SoftmaxCrossEntropyArgs {
  int64_t rows = 0, classes = 0;
  const float* logits = nullptr;
  const int64_t* labels = nullptr;      // rows values in [0, classes) (checked by the caller)
  const float* class_weight = nullptr;  // classes values, or null
  float label_smoothing = 0.0f;
  Reduction reduction = Reduction::mean;
  float grad_scale = 1.0f;
  float* grad = nullptr;      // rows x classes, or null
  float* row_loss = nullptr;  // rows: unreduced l_i, or null
};

// Optimizer steps over many tensors in one call. Step-dependent scalars are computed on the host.
// Hyperparameters are doubles (Python floats) because derived scalars such as 1 - beta2 and
// 1 - beta2^t lose digits when beta2 is first rounded to float (0.999f gives 1 - beta2 wrong by
// 1.3e-5); they are computed in double and rounded once, as PyTorch does.
// grad_norm: the global L2 norm of all gradients (before clipping). When it is not finite the step
// is skipped: parameters and state are left untouched and `skipped` is set.
// With max_grad_norm > 0 gradients are scaled on the fly by min(1, max_grad_norm/(norm+1e-6))
// (torch.nn.utils.clip_grad_norm_); the gradient arrays themselves are not modified.
struct StepResult {
  double grad_norm = 0.0;
  bool skipped = false;
};

// One training step of an MLP (Linear layers with fused activations) and softmax cross-entropy
// (or mean squared error):
// forward, loss (+ correct count), backward into the parameter gradients, in one call, with the
// same kernel calls, in the same order, as the layer-by-layer path (so the same bits).
struct MlpLayer {
  int64_t in = 0, out = 0;
  const float* weight = nullptr;  // out x in
  const float* bias = nullptr;    // out, or null
  Activation act = Activation::identity;
  float act_param = 0.01f;
  float* y = nullptr;             // batch x out: the layer's output
  float* preact = nullptr;        // batch x out, or null: identity, or act' read off y (relu and
                                  // leaky_relu with slope >= 0)
  float* grad_weight = nullptr;   // out x in
  float* grad_bias = nullptr;     // out; null exactly when bias is
  float* grad_input = nullptr;    // batch x in; null for the first layer (not needed)
  float* workspace = nullptr;     // batch x out for dZ; null for identity
};

struct MlpStepArgs {
  int64_t batch = 0, layers = 0;
  const float* x = nullptr;       // batch x layer[0].in
  MlpLayer* layer = nullptr;
  SoftmaxCrossEntropyArgs loss;   // class_weight, label_smoothing, reduction, grad (batch x
                                  // classes); rows, classes, logits, labels set by the call
  const int64_t* labels = nullptr;
  bool count_correct = false;
  // Mean squared error instead of softmax-CE: target is batch x classes, loss.reduction applies,
  // loss.grad receives the gradient; labels and count_correct are unused.
  bool mse = false;
  const float* target = nullptr;
  // When set, called with layer index i as soon as layer i's backward has written its weight and
  // bias gradients (i = layers-1 down to 0): data-parallel training starts that layer's gradient
  // reduction while the earlier layers' backward runs.
  void (*layer_done)(void* context, int64_t layer) = nullptr;
  void* layer_done_context = nullptr;
};

struct MlpStepResult {
  double loss = 0.0;
  int64_t correct = 0;
};

struct SgdArgs {
  int64_t count = 0;  // number of tensors
  float* const* params = nullptr;
  const float* const* grads = nullptr;
  float* const* momentum_buffers = nullptr;  // required when momentum != 0
  const int64_t* sizes = nullptr;            // elements per tensor
  double lr = 0.01, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false, maximize = false;
  int64_t step = 1;  // 1-based index of this step; step 1 initialises momentum buffers to the gradient
  double max_grad_norm = 0.0;
};

struct AdamArgs {
  int64_t count = 0;
  float* const* params = nullptr;
  const float* const* grads = nullptr;
  float* const* exp_avg = nullptr;
  float* const* exp_avg_sq = nullptr;
  float* const* max_exp_avg_sq = nullptr;  // required when amsgrad
  const int64_t* sizes = nullptr;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool amsgrad = false, decoupled_weight_decay = false /* AdamW */, maximize = false;
  int64_t step = 1;  // 1-based index of this step (bias corrections use it)
  double max_grad_norm = 0.0;
};

}  // namespace ember
