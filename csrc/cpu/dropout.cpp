// Dropout forward and backward. The mask is never stored: element i of a call draws its random
// word from Philox4x32-10 at global index offset + i (the stream is defined in ember/philox.h), so
// the backward pass (and any later run, on any thread count or backend) regenerates it exactly.
// Forward and backward are the same map: y = keep ? x * scale : 0.
#include "ember/pool.h"

#include <algorithm>

#include "ember/common.h"
#include "ember/philox.h"

namespace ember::cpu::EMBER_ISA {
namespace {

constexpr int kBlocks = 16;                          // Philox calls computed side by side
constexpr int64_t kGroup = 4 * kBlocks;              // elements they serve
constexpr int64_t kChunk = 4096;                     // elements per parallel work item
constexpr int64_t kParallelMin = int64_t(1) << 13;

struct Mask {
  uint64_t seed;
  uint32_t threshold;
  float scale;
  EMBER_HD float apply(uint32_t r, float x) const { return (r >> 8) >= threshold ? x * scale : 0.0f; }
};

// Elements [lo, hi) of the call (global indices offset + lo ...). Elements before the first
// multiple of 4 and after the last full group use one Philox call each; full groups of 64
// elements use 16 calls in lock-step, which the compiler vectorises (vpmuludq on AVX2/AVX-512).
void apply_range(int64_t lo, int64_t hi, const float* x, float* y, uint64_t offset, const Mask& m) {
  int64_t i = lo;
  auto one = [&](int64_t end) {
    for (; i < end; ++i) {
      const uint64_t g = offset + static_cast<uint64_t>(i);
      y[i] = m.apply(dropout_block(m.seed, g >> 2).v[g & 3], x[i]);
    }
  };
  // Head: up to the next element whose global index is a multiple of 4.
  const int64_t head = static_cast<int64_t>((4 - ((offset + static_cast<uint64_t>(i)) & 3)) & 3);
  one(std::min(hi, i + head));
  for (; i + kGroup <= hi; i += kGroup) {
    const uint64_t block0 = (offset + static_cast<uint64_t>(i)) >> 2;
    const uint32_t k0 = static_cast<uint32_t>(m.seed), k1 = static_cast<uint32_t>(m.seed >> 32);
    uint32_t r[kGroup];  // r[4b + w] = word w of block b: the element order
    for (int b = 0; b < kBlocks; ++b) {
      // g wraps modulo 2^64, so the block index g >> 2 wraps modulo 2^62.
      const uint64_t c = (block0 + static_cast<uint64_t>(b)) & ((uint64_t(1) << 62) - 1);
      const Philox4 out =
          philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u, k0, k1);
      for (int w = 0; w < 4; ++w) r[4 * b + w] = out.v[w];
    }
    float tmp[kGroup];  // y may be x: read the whole group before writing it
    const uint32_t threshold = m.threshold;  // locals, so that the loop vectorises
    const float scale = m.scale;
    const float* xg = x + i;
    for (int j = 0; j < kGroup; ++j) tmp[j] = (r[j] >> 8) >= threshold ? xg[j] * scale : 0.0f;
    std::copy(tmp, tmp + kGroup, y + i);
  }
  one(hi);
}

}  // namespace

void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t offset) {
  // p == 1 keeps nothing (threshold 2^24 > any r >> 8); the scale is then never used.
  const Mask m{seed, dropout_threshold(p), p < 1.0f ? 1.0f / (1.0f - p) : 0.0f};
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
parallel_for(nchunks, n >= kParallelMin, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      apply_range(c * kChunk, std::min(n, (c + 1) * kChunk), x, y, offset, m);
    }
  });
}

void dropout_backward(int64_t n, const float* grad_out, float* grad_in, float p, uint64_t seed,
                      uint64_t offset) {
  dropout_forward(n, grad_out, grad_in, p, seed, offset);
}

}  // namespace ember::cpu::EMBER_ISA
