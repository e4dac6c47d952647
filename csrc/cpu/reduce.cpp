// Deterministic reductions: the order of every floating-point addition depends only on the sizes,
// never on the thread count or scheduling, so the same inputs always give the same bits.
#include "ember/pool.h"

#include <algorithm>

#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {
namespace {

// A fixed number of chunks (not threads) so that the partial sums are the same on any machine.
constexpr int kChunks = 64;
constexpr int64_t kParallelMin = int64_t(1) << 13;

// Sum of f(x[i]) in float64 with 32 independent lanes (vectorisable without reassociation).
// 32, not 8: with one vector of accumulators the loop waits on the add latency and runs at half
// the speed of the cache (it is the global-norm pass of every optimizer step).
template <class F>
double lane_sum(const float* x, int64_t n, F f) {
  constexpr int kLanes = 32;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += f(static_cast<double>(x[i + l]));
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += f(static_cast<double>(x[i]));
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

template <class F>
double chunked_sum(const float* x, int64_t n, F f) {
  if (n < kParallelMin) return lane_sum(x, n, f);
  double partial[kChunks];
  const int64_t chunk = ((n + kChunks - 1) / kChunks + 7) / 8 * 8;
parallel_for(kChunks, true, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = std::min<int64_t>(n, c * chunk), hi = std::min<int64_t>(n, lo + chunk);
      partial[c] = lane_sum(x + lo, hi - lo, f);
    }
  });
  double total = 0.0;
  for (int c = 0; c < kChunks; ++c) total += partial[c];
  return total;
}

}  // namespace

void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate) {
  // Each thread owns whole columns and walks the rows in order: the result does not depend on
  // the number of threads. Blocks of 64 columns keep the float64 accumulators in registers/L1.
  constexpr int64_t kBlock = 64;
  const int64_t nblocks = (cols + kBlock - 1) / kBlock;
  parallel_for(nblocks, rows * cols >= kParallelMin && nblocks > 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kBlock, w = std::min(kBlock, cols - c0);
      double acc[kBlock];
      for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * cols + c0;
        for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(row[j]);
      }
      float* o = out + c0;
      for (int64_t j = 0; j < w; ++j) {
        o[j] = accumulate ? static_cast<float>(static_cast<double>(o[j]) + acc[j])
                          : static_cast<float>(acc[j]);
      }
    }
  });
}

double sum(int64_t n, const float* x) {
  return chunked_sum(x, n, [](double v) { return v; });
}

double sum_squares(int64_t count, const float* const* tensors, const int64_t* sizes) {
  double total = 0.0;
  for (int64_t t = 0; t < count; ++t) {
    total += chunked_sum(tensors[t], sizes[t], [](double v) { return v * v; });
  }
  return total;
}

}  // namespace ember::cpu::EMBER_ISA
