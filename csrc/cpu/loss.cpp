// PLACEHOLDER (development only): replaced by the loss kernel family.
#include <stdexcept>
#include "ember/common.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
namespace ember::cpu::EMBER_ISA {
double softmax_cross_entropy(const SoftmaxCrossEntropyArgs& args) { throw std::logic_error("not implemented"); }
double mse(int64_t n, const float* pred, const float* target, float* grad, Reduction reduction, float grad_scale) { throw std::logic_error("not implemented"); }
void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out) { throw std::logic_error("not implemented"); }
int64_t count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels) { throw std::logic_error("not implemented"); }
}
