// PLACEHOLDER (development only): replaced by the dropout kernel family.
#include <stdexcept>
#include "ember/common.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
namespace ember::cpu::EMBER_ISA {
void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t offset) { throw std::logic_error("not implemented"); }
void dropout_backward(int64_t n, const float* grad_out, float* grad_in, float p, uint64_t seed, uint64_t offset) { throw std::logic_error("not implemented"); }
}
