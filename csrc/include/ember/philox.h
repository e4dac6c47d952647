// Philox4x32-10, the counter-based random number generator of Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3" (SC 2011), bit-compatible with Random123's philox4x32_R(10, ...)
// and with cuRAND's Philox state. Header-only, usable from C++ and CUDA, so that the CPU and GPU
// dropout kernels draw the same stream (tests/test_ops_dropout.py checks the Random123
// known-answer vectors through ember._cpu.philox4x32_10).
//
// The dropout stream (ember's contract; the CUDA kernels must follow it bit for bit):
//   key      = (seed & 0xffffffff, seed >> 32)
//   element g = offset + i (i: index in the flattened array; uint64 arithmetic, wrapping)
//   counter  = ((g >> 2) & 0xffffffff, (g >> 2) >> 32, 0, 0)
//   r        = word (g & 3) of philox4x32_10(counter, key)   (one call serves 4 elements)
//   keep     = (r >> 8) >= ceil(p * 2^24), i.e. u = (r >> 8) * 2^-24 >= p, with p as float32
//   y        = keep ? x * (1.0f / (1.0f - p)) : 0       (float32 arithmetic; p == 1 keeps none)
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define EMBER_HD __host__ __device__ __forceinline__
#else
#define EMBER_HD inline
#endif

namespace ember {

// Multipliers and Weyl key increments from Random123 (philox.h: PHILOX_M4x32_0/1, PHILOX_W32_0/1).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

struct Philox4 {
  uint32_t v[4];
};

// philox4x32_R(10, counter, key): ten rounds, the key bumped between rounds.
EMBER_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                               uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The 4 random words serving elements 4b .. 4b+3 of the dropout stream for `seed`.
EMBER_HD Philox4 dropout_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Elements with (r >> 8) >= dropout_threshold(p) are kept: ceil(p * 2^24), exact for float p.
EMBER_HD uint32_t dropout_threshold(float p) {
  const float scaled = p * 16777216.0f;  // exact: a power-of-two scale
  uint32_t t = static_cast<uint32_t>(scaled);
  if (static_cast<float>(t) < scaled) ++t;
  return t;
}

}  // namespace ember
