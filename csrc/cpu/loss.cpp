// Losses and metrics: fused softmax cross-entropy (forward and backward in one pass per row), mean
// squared error (loss and gradient in one pass), row argmax and correct-prediction counts.
// Every loss is reduced deterministically: rows (elements for mse) are cut into a fixed number of
// chunks that depend only on the sizes; each chunk is summed in order, in float64, and the chunk
// sums are added in order. The result has the same bits whatever the thread count.
#include <atomic>

#include "ember/pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "activation_math.h"
#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {
namespace {

constexpr int kChunks = 64;
// Elements before the rows are split over threads. Low: a split gives each thread the rows the
// output-layer GEMMs before and after it also give that thread, so logits and gradients stay in
// the cache of the core that uses them (forward, loss, accuracy, backward of a 200 x 10 output
// layer on 2 cores: 8% faster than with the loss on one thread, median of 12 paired runs).
constexpr int64_t kParallelMin = int64_t(1) << 10;
constexpr int kLanes = 16;                          // float accumulators per row reduction

// sum over c of f(lo_c, hi_c), where [lo_c, hi_c) are kChunks fixed slices of [0, n) whose
// starts are multiples of `align`; f returns a float64 partial sum.
template <class F>
double chunked_sum(int64_t n, int64_t align, bool parallel, F f) {
  const int64_t chunk = ((n + kChunks - 1) / kChunks + align - 1) / align * align;
  double partial[kChunks];
parallel_for(kChunks, parallel, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = std::min<int64_t>(n, c * chunk), hi = std::min<int64_t>(n, lo + chunk);
      partial[c] = lo < hi ? f(lo, hi) : 0.0;
    }
  });
  double total = 0.0;
  for (int c = 0; c < kChunks; ++c) total += partial[c];
  return total;
}

inline float row_max(const float* x, int64_t n) {
  // NaN never wins a comparison, so it is skipped here; it still reaches the loss through exp.
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  }
  for (int l = 0; j < n; ++j, ++l) acc[l] = x[j] > acc[l] ? x[j] : acc[l];
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = acc[l] > m ? acc[l] : m;
  return m;
}

inline double lanes_total(const float* acc) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += static_cast<double>(acc[l]);
  return s;
}

struct CeConst {
  int64_t classes;
  const float* weight;  // or null
  float eps;            // label smoothing
  double weight_total;  // sum_c w[c] (classes when unweighted)
  float grad_scale;     // grad_scale / divisor of the reduction
};

// The loss of one row and (when kGrad) its gradient, from the row's sums: s = sum_j e_j,
// dy = x_y - m, wsum = sum_j w_j (x_j - m) (smoothing only), and its exps e (n values), which
// g may alias (each g[j] is written after e[j] is read).
template <bool kWeight, bool kSmooth, bool kGrad>
inline double ce_finish(const CeConst& k, int64_t y, double s, double dy, double wsum,
                        const float* e, float* g) {
  const int64_t n = k.classes;
  const double log_s = std::log(s);
  const double wy = kWeight ? k.weight[y] : 1.0;
  const double eps = k.eps, eps_c = eps / static_cast<double>(n);
  double loss = (1.0 - eps) * wy * (log_s - dy);
  if constexpr (kSmooth) loss += eps_c * (k.weight_total * log_s - wsum);
  if constexpr (kGrad) {
    const float a = static_cast<float>(k.grad_scale * ((1.0 - eps) * wy + eps_c * k.weight_total) / s);
    const float b = static_cast<float>(k.grad_scale * eps_c);
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (kSmooth) {
        g[j] = a * e[j] - b * (kWeight ? k.weight[j] : 1.0f);
      } else {
        g[j] = a * e[j];
      }
    }
    g[y] -= static_cast<float>(k.grad_scale * (1.0 - eps) * wy);
  }
  return loss;
}

// One row: returns l_i and, when kGrad, writes grad_scale' * d l_i / d x into g (which may be x).
// With e_j = exp(x_j - m), S = sum_j e_j, p_j = e_j / S:
//   -log p_c = log S - (x_c - m)
//   l = (1-eps) w_y (-log p_y) + (eps/C) sum_c w_c (-log p_c)
//   dl/dx_j = p_j [(1-eps) w_y + (eps/C) W] - (eps/C) w_j - (1-eps) w_y [j == y],  W = sum_c w_c
template <bool kWeight, bool kSmooth, bool kGrad>
double ce_row(const float* x, int64_t y, float* g, const CeConst& k) {
  const int64_t n = k.classes;
  const float m = row_max(x, n);
  const float xy = x[y];  // read before g (possibly x itself) is overwritten
  float sum[kLanes] = {}, wsum[kLanes] = {};
  // e_j into g (when there is one), sum e_j and, for the smoothing term, sum_j w_j (x_j - m) <= 0:
  // a sum of terms of one sign, so W log S - that sum does not cancel.
  auto body = [&](int64_t j, int l) {
    const float d = x[j] - m;
    const float e = math::exp_f(d);
    sum[l] += e;
    if constexpr (kSmooth) wsum[l] += kWeight ? k.weight[j] * d : d;
    if constexpr (kGrad) g[j] = e;
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) body(j + l, l);
  }
  for (int l = 0; j < n; ++j, ++l) body(j, l);

  return ce_finish<kWeight, kSmooth, kGrad>(k, y, lanes_total(sum), static_cast<double>(xy) - m,
                                            kSmooth ? lanes_total(wsum) : 0.0, g, g);
}

// Rows [lo, hi) when there are fewer classes than lanes (an MLP's 10-way output): a row is too
// short for ce_row's vector loop, so blocks of rows go through stack buffers instead, and the exps
// of a whole block run as one vectorised loop over contiguous memory. Same formulas as ce_row; the
// result of a row does not depend on the block it falls in. Every input of a block is read before
// any of its gradients is written (grad may be the logits themselves).
template <bool kWeight, bool kSmooth, bool kGrad>
double ce_rows_narrow(const SoftmaxCrossEntropyArgs& args, const CeConst& k, int64_t lo,
                      int64_t hi) {
  constexpr int64_t kBuf = 1024;
  const int64_t n = k.classes;
  const int64_t block_rows = kBuf / n;  // n < kLanes, so >= 64
  float d[kBuf], e[kBuf];
  double dy[kBuf];  // x_y - m of each row of the block
  double total = 0.0;
  for (int64_t r0 = lo; r0 < hi; r0 += block_rows) {
    const int64_t nr = std::min(block_rows, hi - r0);
    const float* x = args.logits + r0 * n;
    for (int64_t r = 0; r < nr; ++r) {
      const float* xr = x + r * n;
      float m = -std::numeric_limits<float>::infinity();  // NaN skipped, as in row_max
      for (int64_t j = 0; j < n; ++j) m = xr[j] > m ? xr[j] : m;
      for (int64_t j = 0; j < n; ++j) d[r * n + j] = xr[j] - m;
      dy[r] = static_cast<double>(xr[args.labels[r0 + r]]) - m;
    }
    const int64_t len = nr * n;
    for (int64_t i = 0; i < len; ++i) e[i] = math::exp_f(d[i]);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t y = args.labels[r0 + r];
      const float* er = e + r * n;
      float s = 0.0f, ws = 0.0f;
      for (int64_t j = 0; j < n; ++j) s += er[j];
      if constexpr (kSmooth) {
        for (int64_t j = 0; j < n; ++j) ws += (kWeight ? k.weight[j] : 1.0f) * d[r * n + j];
      }
      const double l = ce_finish<kWeight, kSmooth, kGrad>(
          k, y, static_cast<double>(s), dy[r], static_cast<double>(ws), er,
          kGrad ? args.grad + (r0 + r) * n : nullptr);
      if (args.row_loss != nullptr) args.row_loss[r0 + r] = static_cast<float>(l);
      total += l;
    }
  }
  return total;
}

template <bool kWeight, bool kSmooth, bool kGrad>
double ce_rows(const SoftmaxCrossEntropyArgs& args, const CeConst& k) {
  const int64_t rows = args.rows, classes = args.classes;
  return chunked_sum(rows, 1, rows * classes >= kParallelMin, [&](int64_t lo, int64_t hi) {
    if (classes < kLanes) return ce_rows_narrow<kWeight, kSmooth, kGrad>(args, k, lo, hi);
    double total = 0.0;
    for (int64_t r = lo; r < hi; ++r) {
      const double l = ce_row<kWeight, kSmooth, kGrad>(
          args.logits + r * classes, args.labels[r], kGrad ? args.grad + r * classes : nullptr, k);
      if (args.row_loss != nullptr) args.row_loss[r] = static_cast<float>(l);
      total += l;
    }
    return total;
  });
}

}  // namespace

double softmax_cross_entropy(const SoftmaxCrossEntropyArgs& args) {
  const int64_t rows = args.rows, classes = args.classes;
  const float* w = args.class_weight;
  // The divisor of "mean": sum_i w[y_i] (rows when unweighted). PyTorch gives NaN for the loss
  // and every gradient when it is 0, and so do we.
  double divisor = 1.0, weight_total = static_cast<double>(classes);
  if (args.reduction == Reduction::mean) {
    divisor = static_cast<double>(rows);
    if (w != nullptr) {
      divisor = 0.0;
      for (int64_t r = 0; r < rows; ++r) divisor += static_cast<double>(w[args.labels[r]]);
    }
  }
  if (w != nullptr) {
    weight_total = 0.0;
    for (int64_t c = 0; c < classes; ++c) weight_total += static_cast<double>(w[c]);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inv = divisor > 0.0 ? 1.0 / divisor : nan;
  const CeConst k{classes, w, args.label_smoothing, weight_total,
                  static_cast<float>(static_cast<double>(args.grad_scale) * inv)};

  const bool weighted = w != nullptr, smooth = args.label_smoothing != 0.0f;
  const bool grad = args.grad != nullptr;
  double total;
  // Eight instantiations, so that the per-element loops carry no tests.
  if (weighted) {
    if (smooth) total = grad ? ce_rows<true, true, true>(args, k) : ce_rows<true, true, false>(args, k);
    else total = grad ? ce_rows<true, false, true>(args, k) : ce_rows<true, false, false>(args, k);
  } else {
    if (smooth) total = grad ? ce_rows<false, true, true>(args, k) : ce_rows<false, true, false>(args, k);
    else total = grad ? ce_rows<false, false, true>(args, k) : ce_rows<false, false, false>(args, k);
  }
  return total * inv;
}

double mse(int64_t n, const float* pred, const float* target, float* grad, Reduction reduction,
           float grad_scale) {
  const double divisor = reduction == Reduction::mean ? static_cast<double>(n) : 1.0;
  const float gs = static_cast<float>(2.0 * static_cast<double>(grad_scale) / divisor);
  constexpr int64_t kBlock = 512;
  // Blocks through a stack buffer: grad may be pred or target itself (in place) and the loops
  // still vectorise without run-time alias checks.
  const double total = chunked_sum(n, kBlock, n >= kParallelMin, [&](int64_t lo, int64_t hi) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float d[kBlock];
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t w = std::min(kBlock, hi - b);
      for (int64_t i = 0; i < w; ++i) d[i] = pred[b + i] - target[b + i];
      int64_t i = 0;
      for (; i + 8 <= w; i += 8) {
        for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(d[i + l]) * d[i + l];
      }
      for (int l = 0; i < w; ++i, ++l) acc[l] += static_cast<double>(d[i]) * d[i];
      if (grad != nullptr) {
        for (int64_t j = 0; j < w; ++j) grad[b + j] = gs * d[j];
      }
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  });
  return total / divisor;
}

namespace {

// First index of the largest value; a NaN counts as larger than everything (numpy.argmax), so
// the first NaN wins.
inline int64_t row_argmax_scalar(const float* x, int64_t n) {
  int64_t best = 0;
  float bv = x[0];
  if (bv != bv) return 0;
  for (int64_t j = 1; j < n; ++j) {
    const float v = x[j];
    if (v != v) return j;
    if (v > bv) {
      bv = v;
      best = j;
    }
  }
  return best;
}

// The same, vectorised for long rows: each vector lane keeps the first position of its own
// maximum (strictly greater replaces), then the lanes are merged: the largest value, and among
// equal ones the smallest position. A row holding a NaN goes to the scalar loop (first NaN wins).
#if defined(__AVX512F__)
constexpr int kArgW = 16;
#elif defined(__AVX2__)
constexpr int kArgW = 8;
#else
constexpr int kArgW = 4;  // SSE2: wider vectors would be split and run slower than scalar code
#endif
typedef float vfa __attribute__((vector_size(kArgW * sizeof(float))));
typedef int32_t via __attribute__((vector_size(kArgW * sizeof(int32_t))));

inline int64_t row_argmax(const float* x, int64_t n) {
  constexpr int W = kArgW;
  if (n < 64 || n > INT32_MAX) return row_argmax_scalar(x, n);
  vfa best, v;
  std::memcpy(&best, x, sizeof best);
  via pos, step;
  for (int l = 0; l < W; ++l) {
    pos[l] = l;
    step[l] = W;
  }
  via cur = pos, nan = best != best;
  int64_t j = W;
  for (; j + W <= n; j += W) {
    std::memcpy(&v, x + j, sizeof v);
    cur += step;
    const via gt = v > best;
    best = gt ? v : best;
    pos = gt ? cur : pos;
    nan |= v != v;
  }
  bool any_nan = false;
  for (int l = 0; l < W; ++l) any_nan = any_nan || nan[l] != 0;
  for (int64_t t = j; t < n; ++t) any_nan = any_nan || x[t] != x[t];
  if (any_nan) return row_argmax_scalar(x, n);
  float bv = best[0];
  int64_t bi = pos[0];
  for (int l = 1; l < W; ++l) {
    if (best[l] > bv || (best[l] == bv && pos[l] < bi)) {
      bv = best[l];
      bi = pos[l];
    }
  }
  for (; j < n; ++j) {  // the tail comes after every position seen: strictly greater only
    if (x[j] > bv) {
      bv = x[j];
      bi = j;
    }
  }
  return bi;
}

}  // namespace

void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out) {
parallel_for(rows, rows * cols >= kParallelMin, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) out[r] = row_argmax(x + r * cols, cols);
  });
}

int64_t count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels) {
  std::atomic<int64_t> correct{0};
  parallel_for(rows, rows * cols >= kParallelMin, [&](int64_t r0, int64_t r1) {
    int64_t c = 0;
    for (int64_t r = r0; r < r1; ++r) c += row_argmax(logits + r * cols, cols) == labels[r];
    correct.fetch_add(c, std::memory_order_relaxed);
  });
  return correct.load();
}

}  // namespace ember::cpu::EMBER_ISA
