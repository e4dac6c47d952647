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
  // A ReLU / leaky ReLU layer's dZ = dY * act'(Z) is formed in the epilogue of the next layer's
  // dX GEMM, straight into the layer's workspace (the product activation_backward would form:
  // the same bits, one pass over the batch less); its own backward then starts from dZ.
  auto derivative_in_epilogue = [&](int64_t i) {
    const Activation a = s.layer[i].act;
    return a == Activation::relu || a == Activation::leaky_relu;
  };
  for (int64_t i = L - 1; i >= 0; --i) {
    const MlpLayer& l = s.layer[i];
    const bool have_dz = i < L - 1 && derivative_in_epilogue(i);
    LinearBackwardArgs a;
    a.batch = batch;
    a.in_features = l.in;
    a.out_features = l.out;
    a.x = i ? s.layer[i - 1].y : s.x;
    a.weight = l.weight;
    if (have_dz) {  // dZ already in the workspace; the layer's backward is identity's from here
      a.grad_out = l.workspace;
    } else {
      a.grad_out = i == L - 1 ? ce.grad : s.layer[i + 1].grad_input;
      a.act = l.act;
      a.act_param = l.act_param;
      a.preact = l.act == Activation::identity ? nullptr : (l.preact ? l.preact : l.y);
      a.grad_preact = l.workspace;
    }
    a.grad_input = l.grad_input;
    if (i > 0 && derivative_in_epilogue(i - 1)) {
      const MlpLayer& prev = s.layer[i - 1];
      a.grad_input = prev.workspace;
      a.input_preact = prev.preact ? prev.preact : prev.y;
      a.input_act = prev.act;
      a.input_act_param = prev.act_param;
    }
    a.grad_weight = l.grad_weight;
    a.grad_bias = l.grad_bias;
    linear_backward(a);
    if (s.layer_done) s.layer_done(s.layer_done_context, i);
  }
  return r;
}

}  // namespace ember::cpu::EMBER_ISA
