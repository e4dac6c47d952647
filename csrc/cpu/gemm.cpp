// PLACEHOLDER (development only): replaced by the gemm kernel family.
#include <stdexcept>
#include "ember/common.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
namespace ember::cpu::EMBER_ISA {
void gemm(const GemmArgs& args) { throw std::logic_error("not implemented"); }
void linear_backward(const LinearBackwardArgs& args) { throw std::logic_error("not implemented"); }
}
