// Fused multi-tensor optimizer steps (torch.optim.SGD, Adam, AdamW): one call updates every
// parameter of a model. The global gradient norm comes first (deterministic sum_squares); unless it
// is non-finite (the step is then skipped), one vectorised pass per element applies clipping,
// maximize, weight decay, the moment updates and the parameter update: 4 (Adam) or 3 (SGD) reads
// and 3 or 2 writes per element, plus the norm's read of the gradients. No array may overlap
// another (the bindings check it): the loops are compiled with __restrict.
//
// Parallel work is split into fixed-size chunks counted from each tensor's start, and a thread
// always processes whole chunks with the same loop, so every element is computed by the same code
// (vector body or scalar tail, same alignment) whatever the thread count: bit-identical results.
#include "ember/pool.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {
#include "ember/cpu_kernels.inc"  // sum_squares, and a check that the signatures below match

namespace {

// The unit threads split the elements in: a multiple of every vector width, so a thread's range
// starts and ends where a vector does (the loop takes every element the same way, whatever the
// thread count). Small, for balance: the work is walked per tensor, not per chunk. (16K
// floats left two threads 49K and 36K elements of a 64-256-256-10 MLP's 84.5K.)
constexpr int64_t kChunk = 256;
// Below this many elements in total the step runs on the calling thread: a parallel region costs
// a few microseconds, about what a serial pass over 64K elements saves on two cores.
constexpr int64_t kParallelMin = int64_t(1) << 16;

// Calls f(t, lo, hi) on element ranges [lo, hi) of tensor t that together cover every tensor once.
// Each thread takes a contiguous run of the global chunk list; ranges start on chunk boundaries of
// their tensor. No allocation: the work list is walked, not built.
template <class F>
void for_each_range(int64_t count, const int64_t* sizes, F&& f) {
  int64_t total = 0, chunks = 0;
  for (int64_t t = 0; t < count; ++t) {
    total += sizes[t];
    chunks += (sizes[t] + kChunk - 1) / kChunk;
  }
  if (total < kParallelMin) {
    for (int64_t t = 0; t < count; ++t) f(t, int64_t(0), sizes[t]);
    return;
  }
  const int64_t nth = pool_threads();
  parallel_tasks(int(nth), [&](int task) {
    const int64_t me = task;
    const int64_t c0 = chunks * me / nth, c1 = chunks * (me + 1) / nth;
    int64_t first = 0;  // global index of tensor t's first chunk
    for (int64_t t = 0; t < count && first < c1; ++t) {
      const int64_t n = sizes[t], nc = (n + kChunk - 1) / kChunk;
      const int64_t lo = std::max(c0, first), hi = std::min(c1, first + nc);
      if (lo < hi) f(t, (lo - first) * kChunk, std::min(n, (hi - first) * kChunk));
      first += nc;
    }
  });
}

// A moment that decays below FLT_MIN is stored as 0. A unit whose gradient stays 0 (a dead ReLU)
// has its Adam first moment, and its SGD momentum buffer, shrink by beta1 (momentum) every step:
// after ~800 steps they were float32 subnormals, which cost an x86 core ~100x per operation (a
// 784-1024-1024-10 Adam step went from 2 ms to 12.8 ms; a long fit's step slowed 2.5x). What they
// would still move a weight by is below float32's resolution of any weight above ~1e-30.
inline float flushed(float x) { return std::fabs(x) < FLT_MIN ? 0.0f : x; }

// The global norm and the factor gradients are multiplied by: -1 for maximize (exact), times the
// clip_grad_norm_ coefficient min(1, max_norm / (norm + 1e-6)) when clipping.
struct GradScale {
  double norm;
  float scale;
};

GradScale grad_scale(int64_t count, const float* const* grads, const int64_t* sizes, bool maximize,
                     double max_grad_norm) {
  const double norm = std::sqrt(sum_squares(count, grads, sizes));
  double s = 1.0;
  if (max_grad_norm > 0.0) s = std::min(1.0, max_grad_norm / (norm + 1e-6));
  const float scale = static_cast<float>(s);
  return {norm, maximize ? -scale : scale};
}

// ---- SGD ----------------------------------------------------------------------------------------

enum class Momentum { none, first, running };  // first: step 1 sets a new buffer to the gradient

struct SgdScalars {
  float gscale, lr, wd, momentum, one_minus_dampening;
};

// torch.optim.SGD (_single_tensor_sgd): g = grad (+ wd*p); buf = g at step 1, else
// momentum*buf + (1-dampening)*g; g = g + momentum*buf (nesterov) or buf; p -= lr*g.
template <bool kWd, Momentum kMom, bool kNesterov>
void sgd_range(int64_t n, float* __restrict p, const float* __restrict grad, float* __restrict buf,
               SgdScalars s) {
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i] * s.gscale;
    if constexpr (kWd) g = g + s.wd * p[i];
    if constexpr (kMom != Momentum::none) {
      float b = g;
      if constexpr (kMom == Momentum::running) b = buf[i] * s.momentum + s.one_minus_dampening * g;
      buf[i] = flushed(b);
      if constexpr (kNesterov) {
        g = g + s.momentum * b;
      } else {
        g = b;
      }
    }
    p[i] = p[i] - s.lr * g;
  }
}

template <bool kWd, Momentum kMom, bool kNesterov>
void sgd_all(const SgdArgs& a, SgdScalars s) {
  for_each_range(a.count, a.sizes, [&](int64_t t, int64_t lo, int64_t hi) {
    float* buf = kMom == Momentum::none ? nullptr : a.momentum_buffers[t] + lo;
    sgd_range<kWd, kMom, kNesterov>(hi - lo, a.params[t] + lo, a.grads[t] + lo, buf, s);
  });
}

template <bool kWd>
void sgd_dispatch(const SgdArgs& a, SgdScalars s) {
  if (a.momentum == 0.0) return sgd_all<kWd, Momentum::none, false>(a, s);
  // Nesterov at step 1 still adds momentum*buf; the buffer just starts as the gradient.
  if (a.step == 1) {
    return a.nesterov ? sgd_all<kWd, Momentum::first, true>(a, s)
                      : sgd_all<kWd, Momentum::first, false>(a, s);
  }
  return a.nesterov ? sgd_all<kWd, Momentum::running, true>(a, s)
                    : sgd_all<kWd, Momentum::running, false>(a, s);
}

// ---- Adam / AdamW -------------------------------------------------------------------------------

struct AdamScalars {
  float gscale, wd, decay;  // decay = 1 - lr*wd (AdamW)
  float w1;                 // 1 - beta1: exp_avg.lerp_(g, 1 - beta1)
  float beta2, w2;          // w2 = 1 - beta2
  float inv_bc2_sqrt, eps, neg_step_size;  // 1 / sqrt(1 - beta2^t), eps, -lr / (1 - beta1^t)
};

// torch.optim.Adam / AdamW (_single_tensor_adam): g = grad (+ wd*p, Adam) ; p *= 1 - lr*wd (AdamW);
// m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g*g; vmax = max(vmax, v) (amsgrad);
// p += -lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
template <bool kL2, bool kDecoupled, bool kAmsgrad>
void adam_range(int64_t n, float* __restrict p, const float* __restrict grad, float* __restrict m,
                float* __restrict v, float* __restrict vmax, AdamScalars s) {
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    float g = grad[i] * s.gscale;
    if constexpr (kL2) g = g + s.wd * pi;
    if constexpr (kDecoupled) pi = pi * s.decay;
    const float mi = m[i] + s.w1 * (g - m[i]);
    float vi = v[i] * s.beta2 + s.w2 * g * g;
    m[i] = flushed(mi);  // (the step itself uses the values as computed: the same bits as
    v[i] = flushed(vi);  // before the flush for every moment above FLT_MIN)
    if constexpr (kAmsgrad) {
      vi = std::max(vmax[i], vi);
      vmax[i] = vi;
    }
    // PyTorch divides by sqrt(bc2); multiplying by its reciprocal (within an ulp) leaves one
    // division and one square root per element, which bound this loop's speed when in cache.
    const float denom = std::sqrt(vi) * s.inv_bc2_sqrt + s.eps;
    p[i] = pi + s.neg_step_size * (mi / denom);
  }
}

template <bool kL2, bool kDecoupled, bool kAmsgrad>
void adam_all(const AdamArgs& a, AdamScalars s) {
  for_each_range(a.count, a.sizes, [&](int64_t t, int64_t lo, int64_t hi) {
    float* vmax = kAmsgrad ? a.max_exp_avg_sq[t] + lo : nullptr;
    adam_range<kL2, kDecoupled, kAmsgrad>(hi - lo, a.params[t] + lo, a.grads[t] + lo,
                                          a.exp_avg[t] + lo, a.exp_avg_sq[t] + lo, vmax, s);
  });
}

template <bool kL2, bool kDecoupled>
void adam_dispatch(const AdamArgs& a, AdamScalars s) {
  if (a.amsgrad) return adam_all<kL2, kDecoupled, true>(a, s);
  adam_all<kL2, kDecoupled, false>(a, s);
}

}  // namespace

StepResult sgd_step(const SgdArgs& a) {
  const GradScale g = grad_scale(a.count, a.grads, a.sizes, a.maximize, a.max_grad_norm);
  if (!std::isfinite(g.norm)) return {g.norm, true};
  const SgdScalars s{g.scale, static_cast<float>(a.lr), static_cast<float>(a.weight_decay),
                     static_cast<float>(a.momentum), static_cast<float>(1.0 - a.dampening)};
  if (a.weight_decay != 0.0) {
    sgd_dispatch<true>(a, s);
  } else {
    sgd_dispatch<false>(a, s);
  }
  return {g.norm, false};
}

StepResult adam_step(const AdamArgs& a) {
  const GradScale g = grad_scale(a.count, a.grads, a.sizes, a.maximize, a.max_grad_norm);
  if (!std::isfinite(g.norm)) return {g.norm, true};
  // Derived scalars in double, then rounded once to float, as PyTorch does with its Python floats.
  const double t = static_cast<double>(a.step);
  const double bc1 = 1.0 - std::pow(a.beta1, t), bc2 = 1.0 - std::pow(a.beta2, t);
  const AdamScalars s{g.scale,
                      static_cast<float>(a.weight_decay),
                      static_cast<float>(1.0 - a.lr * a.weight_decay),
                      static_cast<float>(1.0 - a.beta1),
                      static_cast<float>(a.beta2),
                      static_cast<float>(1.0 - a.beta2),
                      static_cast<float>(1.0 / std::sqrt(bc2)),
                      static_cast<float>(a.eps),
                      static_cast<float>(-(a.lr / bc1))};
  const bool wd_on = a.weight_decay != 0.0;
  if (wd_on && a.decoupled_weight_decay) {
    adam_dispatch<false, true>(a, s);
  } else if (wd_on) {
    adam_dispatch<true, false>(a, s);
  } else {
    adam_dispatch<false, false>(a, s);
  }
  return {g.norm, false};
}

}  // namespace ember::cpu::EMBER_ISA
