// PLACEHOLDER (development only): replaced by the activation kernel family.
#include <stdexcept>
#include "ember/common.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
namespace ember::cpu::EMBER_ISA {
void activation_forward(int64_t n, const float* x, float* y, Activation act, float param) { throw std::logic_error("not implemented"); }
void activation_backward(int64_t n, const float* grad_out, const float* preact, float* grad_in, Activation act, float param) { throw std::logic_error("not implemented"); }
}
