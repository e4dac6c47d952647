// PLACEHOLDER (development only): replaced by the optim kernel family.
#include <stdexcept>
#include "ember/common.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
namespace ember::cpu::EMBER_ISA {
StepResult sgd_step(const SgdArgs& args) { throw std::logic_error("not implemented"); }
StepResult adam_step(const AdamArgs& args) { throw std::logic_error("not implemented"); }
}
