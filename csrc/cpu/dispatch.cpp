// Run-time choice of the CPU kernel build: every kernel source is compiled for baseline x86-64,
// x86-64-v3 (AVX2/FMA) and x86-64-v4 (AVX-512); this file picks the best one the processor and OS
// support, once, and forwards each call. EMBER_ISA=base|v3|v4 in the environment overrides it.
#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "ember/cpu.h"

namespace ember::cpu::base {
#include "ember/cpu_kernels.inc"
}
#if EMBER_X86
namespace ember::cpu::v3 {
#include "ember/cpu_kernels.inc"
}
namespace ember::cpu::v4 {
#include "ember/cpu_kernels.inc"
}
#endif

namespace ember::cpu {
namespace {

int supported_level() {
#if EMBER_X86
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
  return v4 ? 4 : v3 ? 3 : 0;
#else
  return 0;
#endif
}

int parse_level(const char* name) {
  if (std::strcmp(name, "base") == 0) return 0;
  if (std::strcmp(name, "v3") == 0) return 3;
  if (std::strcmp(name, "v4") == 0) return 4;
  return -1;
}

int initial_level() {
  const int best = supported_level();
  const char* env = std::getenv("EMBER_ISA");
  if (env != nullptr && *env != '\0') {
    const int wanted = parse_level(env);
    if (wanted >= 0 && wanted <= best) return wanted;
  }
  return best;
}

int g_level = initial_level();

}  // namespace

const char* isa_name() {
  switch (g_level) {
    case 4: return "x86-64-v4";
    case 3: return "x86-64-v3";
    default: return "base";
  }
}

bool set_isa(const char* name) {
  const int wanted = parse_level(name);
  if (wanted < 0 || wanted > supported_level()) return false;
  g_level = wanted;
  return true;
}

void set_num_threads(int n) { omp_set_num_threads(n); }
int get_num_threads() { return omp_get_max_threads(); }

#if EMBER_X86
#define EMBER_DISPATCH(fn, ...)                          \
  switch (g_level) {                                     \
    case 4: return v4::fn(__VA_ARGS__);                  \
    case 3: return v3::fn(__VA_ARGS__);                  \
    default: return base::fn(__VA_ARGS__);               \
  }
#else
#define EMBER_DISPATCH(fn, ...) return base::fn(__VA_ARGS__);
#endif

void gemm(const GemmArgs& a) { EMBER_DISPATCH(gemm, a) }
void linear_backward(const LinearBackwardArgs& a) { EMBER_DISPATCH(linear_backward, a) }
void activation_forward(int64_t n, const float* x, float* y, Activation act, float param) {
  EMBER_DISPATCH(activation_forward, n, x, y, act, param)
}
void activation_backward(int64_t n, const float* g, const float* z, float* gi, Activation act,
                         float param) {
  EMBER_DISPATCH(activation_backward, n, g, z, gi, act, param)
}
double softmax_cross_entropy(const SoftmaxCrossEntropyArgs& a) {
  EMBER_DISPATCH(softmax_cross_entropy, a)
}
double mse(int64_t n, const float* p, const float* t, float* g, Reduction r, float s) {
  EMBER_DISPATCH(mse, n, p, t, g, r, s)
}
void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out) {
  EMBER_DISPATCH(argmax_rows, rows, cols, x, out)
}
int64_t count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels) {
  EMBER_DISPATCH(count_correct, rows, cols, logits, labels)
}
void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate) {
  EMBER_DISPATCH(column_sum, rows, cols, x, out, accumulate)
}
double sum(int64_t n, const float* x) { EMBER_DISPATCH(sum, n, x) }
double sum_squares(int64_t count, const float* const* t, const int64_t* sizes) {
  EMBER_DISPATCH(sum_squares, count, t, sizes)
}
void gather_rows(int64_t rows, int64_t cols, const float* x, const int64_t* index, float* out) {
  EMBER_DISPATCH(gather_rows, rows, cols, x, index, out)
}
void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t off) {
  EMBER_DISPATCH(dropout_forward, n, x, y, p, seed, off)
}
void dropout_backward(int64_t n, const float* g, float* gi, float p, uint64_t seed, uint64_t off) {
  EMBER_DISPATCH(dropout_backward, n, g, gi, p, seed, off)
}
MlpStepResult mlp_train_step(const MlpStepArgs& a) { EMBER_DISPATCH(mlp_train_step, a) }
StepResult sgd_step(const SgdArgs& a) { EMBER_DISPATCH(sgd_step, a) }
StepResult adam_step(const AdamArgs& a) { EMBER_DISPATCH(adam_step, a) }

}  // namespace ember::cpu
