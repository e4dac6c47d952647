// Elementwise activations on the GPU (the CPU side: csrc/cpu/activation.cpp). Activation math:
// activation.cuh (the GEMM epilogue's). out may alias its input (read before written, by the same
// thread).
#include <cstdint>
#include <stdexcept>

#include "activation.cuh"
#include "check.cuh"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int grid_for(int64_t work, int64_t per_block) {
  const int64_t g = (work + per_block - 1) / per_block;
  return static_cast<int>(g < 1 ? 1 : g > kMaxBlocks * 64 ? kMaxBlocks * 64 : g);
}

// ---- activations --------------------------------------------------------------------------------

// out[i] = f(i, a[i], b[i]) with float4 accesses when every pointer allows; out may alias a or b
// (each element is read before it is written, by the same thread).
template <class F>
__device__ __forceinline__ void map2(int64_t n, const float* a, const float* b, float* out, bool vec,
                                     F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 x = reinterpret_cast<const float4*>(a)[i];
      const float4 y = b ? reinterpret_cast<const float4*>(b)[i] : x;
      reinterpret_cast<float4*>(out)[i] = make_float4(f(x.x, y.x), f(x.y, y.y), f(x.z, y.z), f(x.w, y.w));
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + t0; i < n; i += stride) out[i] = f(a[i], b ? b[i] : a[i]);
}

__global__ void __launch_bounds__(kThreads) act_forward_kernel(int64_t n, const float* x, float* y,
                                                               Activation act, float param, bool vec) {
  map2(n, x, nullptr, y, vec, [=](float z, float) { return act_forward(z, act, param); });
}

__global__ void __launch_bounds__(kThreads) act_backward_kernel(int64_t n, const float* g,
                                                                const float* z, float* out,
                                                                Activation act, float param, bool vec) {
  map2(n, g, z, out, vec, [=](float gv, float zv) { return gv * act_derivative(zv, act, param); });
}

}  // namespace

void activation_forward(int64_t n, const float* x, float* y, Activation act, float param,
                        Stream stream) {
  if (n <= 0) throw std::invalid_argument("activation_forward: n must be >= 1");
  act_forward_kernel<<<grid_for(n, 4 * kThreads * 4), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      n, x, y, act, param, aligned16(x) && aligned16(y));
  EMBER_CUDA_CHECK_LAUNCH("act_forward_kernel");
}

void activation_backward(int64_t n, const float* grad_out, const float* preact, float* grad_in,
                         Activation act, float param, Stream stream) {
  if (n <= 0) throw std::invalid_argument("activation_backward: n must be >= 1");
  act_backward_kernel<<<grid_for(n, 4 * kThreads * 4), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      n, grad_out, preact, grad_in, act, param,
      aligned16(grad_out) && aligned16(preact) && aligned16(grad_in));
  EMBER_CUDA_CHECK_LAUNCH("act_backward_kernel");
}

}  // namespace ember::cuda
