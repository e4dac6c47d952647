// Dropout forward and backward on the GPU, drawing the stream of ember/philox.h (the CPU kernel's,
// bit for bit): thread t of the grid takes Philox block b = (offset >> 2) + t, whose 4 words serve
// the elements with global indices 4b .. 4b+3 (those inside [offset, offset + n)). The mask is
// never stored; backward regenerates it. Forward and backward are the same map.
#include <cstdint>
#include <stdexcept>

#include "check.cuh"
#include "ember/philox.h"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;

struct DropoutParams {
  int64_t n;
  const float* x;
  float* y;  // may be x: each element is read before it is written, by the same thread
  uint64_t seed, offset;
  uint32_t threshold;  // keep when (r >> 8) >= threshold
  float scale;         // 1 / (1 - p), in float as the CPU kernel computes it
  bool vec;            // offset % 4 == 0 and x, y 16-byte aligned: one float4 per block
};

__device__ __forceinline__ float keep(const DropoutParams& p, uint32_t r, float x) {
  return (r >> 8) >= p.threshold ? x * p.scale : 0.0f;
}

__global__ void __launch_bounds__(kThreads) dropout_kernel(const DropoutParams p) {
  const uint64_t first = p.offset >> 2, head = p.offset & 3;
  // Philox blocks touched: those of global indices offset .. offset + n - 1.
  const uint64_t blocks = ((p.offset + static_cast<uint64_t>(p.n) - 1) >> 2) - first + 1;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x; t < blocks;
       t += static_cast<uint64_t>(gridDim.x) * kThreads) {
    const Philox4 r = dropout_block(p.seed, first + t);
    // Element index of word 0 of this block (may be "negative" before the first element).
    const int64_t i0 = static_cast<int64_t>(4 * t) - static_cast<int64_t>(head);
    if (p.vec && i0 + 4 <= p.n) {
      const float4 v = reinterpret_cast<const float4*>(p.x)[i0 / 4];
      reinterpret_cast<float4*>(p.y)[i0 / 4] =
          make_float4(keep(p, r.v[0], v.x), keep(p, r.v[1], v.y), keep(p, r.v[2], v.z),
                      keep(p, r.v[3], v.w));
    } else {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int64_t i = i0 + w;
        if (i >= 0 && i < p.n) p.y[i] = keep(p, r.v[w], p.x[i]);
      }
    }
  }
}

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; }

}  // namespace

void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t offset,
                     Stream stream) {
  if (n <= 0) throw std::invalid_argument("dropout: n must be >= 1");
  if (!(p >= 0.0f && p <= 1.0f)) throw std::invalid_argument("dropout: p must be in [0, 1]");
  const DropoutParams d{n, x, y, seed, offset, dropout_threshold(p),
                        p < 1.0f ? 1.0f / (1.0f - p) : 0.0f,
                        (offset & 3) == 0 && aligned16(x) && aligned16(y)};
  const int64_t blocks = ((offset + static_cast<uint64_t>(n) - 1) >> 2) - (offset >> 2) + 1;
  int64_t grid = (blocks + kThreads - 1) / kThreads;
  if (grid > 65536) grid = 65536;  // grid-stride beyond: 16M Philox blocks in flight is plenty
  dropout_kernel<<<static_cast<unsigned>(grid), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d);
  EMBER_CUDA_CHECK_LAUNCH("dropout_kernel");
}

void dropout_backward(int64_t n, const float* grad_out, float* grad_in, float p, uint64_t seed,
                      uint64_t offset, Stream stream) {
  dropout_forward(n, grad_out, grad_in, p, seed, offset, stream);
}

}  // namespace ember::cuda
