// Deterministic block reductions shared by the loss, optimizer and elementwise families.
// No float atomics anywhere: a reduction is a fixed tree over a fixed assignment of elements to
// threads, so the same inputs give the same bits on every run (and in every block that performs
// the same reduction, which the fused optimizer relies on: each block reduces the gradient-norm
// partials itself and they must all find the same norm).
#pragma once
#include <cstdint>

namespace ember::cuda {

constexpr int kWarp = 32;

// Butterfly (xor) all-reduce over aligned groups of G <= 32 lanes: every lane ends with the same
// bits, because each level combines the same two operands (in either order) and `op` is
// commutative. All 32 lanes of the warp must call it.
template <int G, class T, class Op>
__device__ __forceinline__ T lanes_allreduce(T v, Op op) {
  static_assert(G >= 1 && G <= kWarp && (G & (G - 1)) == 0, "G must be a power of two <= 32");
#pragma unroll
  for (int off = G / 2; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off, G));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
// `scratch` holds at least blockDim.x / 32 values. Ends with a barrier, so scratch can be reused.
template <class T>
__device__ __forceinline__ T block_allreduce_sum(T v, T* scratch) {
  v = lanes_allreduce<kWarp>(v, [](T a, T b) { return a + b; });
  const int warps = blockDim.x / kWarp;
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < warps; ++w) total += scratch[w];  // the same order in every thread
  __syncthreads();
  return total;
}

// Sum of partials[0..n) in double, identical in every block and thread that calls it: thread t
// sums t, t + blockDim.x, ... in order, then the fixed block tree.
__device__ __forceinline__ double sum_in_order(const double* partials, int64_t n, double* scratch) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  return block_allreduce_sum(s, scratch);
}

}  // namespace ember::cuda
