// One MLP training step in one call: each Linear layer's GEMM with its fused epilogue, the loss
// (softmax cross-entropy, with the count of correct predictions, or mean squared error) and its
// gradient, then each layer's backward. The calls, their arguments and their order are those of
// ember.nn.Sequential and ember.losses layer by layer, so the results are the same bits; what
// this saves is the Python between them.
#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {

// gemm.cpp, loss.cpp
void gemm(const GemmArgs& args);
void linear_backward(const LinearBackwardArgs& args);
double softmax_cross_entropy(const SoftmaxCrossEntropyArgs& args);
double mse(int64_t n, const float* pred, const float* target, float* grad, Reduction reduction,
           float grad_scale);
int64_t count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels);

MlpStepResult mlp_train_step(const MlpStepArgs& s) {
  const int64_t L = s.layers, batch = s.batch;
  for (int64_t i = 0; i < L; ++i) {
    const MlpLayer& l = s.layer[i];
    // y = act(input W^T + b): (batch x in) (in x out)
    GemmArgs g = gemm_operands(batch, l.out, l.in, i ? s.layer[i - 1].y : s.x, l.in, false,
                               l.weight, l.in, true, l.y, l.out);
    g.bias = l.bias;
    g.preact = l.preact;
    g.act = l.act;
    g.act_param = l.act_param;
    gemm(g);
  }
  const MlpLayer& last = s.layer[L - 1];
  SoftmaxCrossEntropyArgs ce = s.loss;
  ce.rows = batch;
  ce.classes = last.out;
  ce.logits = last.y;
  ce.labels = s.labels;
  MlpStepResult r;
  if (s.mse) {
    r.loss = mse(batch * last.out, last.y, s.target, ce.grad, ce.reduction, 1.0f);
  } else {
    r.loss = softmax_cross_entropy(ce);
    if (s.count_correct) r.correct = count_correct(batch, last.out, last.y, s.labels);
  }
  for (int64_t i = L - 1; i >= 0; --i) {
    const MlpLayer& l = s.layer[i];
    LinearBackwardArgs a;
    a.batch = batch;
    a.in_features = l.in;
    a.out_features = l.out;
    a.grad_out = i == L - 1 ? ce.grad : s.layer[i + 1].grad_input;
    a.x = i ? s.layer[i - 1].y : s.x;
    a.weight = l.weight;
    a.act = l.act;
    a.act_param = l.act_param;
    a.preact = l.act == Activation::identity ? nullptr : (l.preact ? l.preact : l.y);
    a.grad_preact = l.workspace;
    a.grad_input = l.grad_input;
    a.grad_weight = l.grad_weight;
    a.grad_bias = l.grad_bias;
    linear_backward(a);
  }
  return r;
}

}  // namespace ember::cpu::EMBER_ISA
