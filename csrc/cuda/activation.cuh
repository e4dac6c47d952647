// Device versions of the activations and their derivatives: the formulas and edge behaviour of
// csrc/cpu/activation_math.h (relu passes NaN through; relu'/leaky_relu' are 1 for z > 0, else
// 0 / slope; gelu, gelu_tanh and silu tend to 0 at -Inf instead of -Inf*0 = NaN; gelu_tanh is
// computed as z * sigmoid(2u), which equals 0.5 z (1 + tanh u) without its cancellation for
// z << 0). CUDA's own erfcf / expf / tanhf (a few ulp; no fast-math) stand in for the CPU's
// approximations, so the two backends agree to rounding, not bit for bit.
// Used by the GEMM epilogue and the linear backward (and later the elementwise kernels).
#pragma once
#include "ember/common.h"

namespace ember::cuda {

constexpr float kGeluTanhK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluTanhC = 0.044715f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// x * s with the limit 0 when s == 0 (x = -Inf in silu / gelu would otherwise give NaN).
__device__ __forceinline__ float times_or_zero(float x, float s) { return s == 0.0f ? 0.0f : x * s; }

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

// Phi(z) = erfc(-z / sqrt 2) / 2: accurate in the lower tail, where 1 + erf would cancel.
__device__ __forceinline__ float norm_cdf(float z) { return 0.5f * erfcf(-z * 0.70710678118654752f); }

// act(z) for one value. `a` is uniform across a launch, so the switch does not diverge.
__device__ __forceinline__ float act_forward(float z, Activation a, float p) {
  switch (a) {
    case Activation::identity: return z;
    case Activation::relu: return z < 0.0f ? 0.0f : z;
    case Activation::leaky_relu: return z > 0.0f ? z : z * p;
    case Activation::gelu_erf: return times_or_zero(z, norm_cdf(z));
    case Activation::gelu_tanh: {
      const float u = kGeluTanhK * z * (1.0f + kGeluTanhC * z * z);
      return times_or_zero(z, sigmoid(2.0f * u));
    }
    case Activation::tanh: return tanhf(z);
    case Activation::sigmoid: return sigmoid(z);
    case Activation::silu: return times_or_zero(z, sigmoid(z));
  }
  return z;
}

// d act / dz at z.
__device__ __forceinline__ float act_derivative(float z, Activation a, float p) {
  switch (a) {
    case Activation::identity: return 1.0f;
    case Activation::relu: return z > 0.0f ? 1.0f : 0.0f;
    case Activation::leaky_relu: return z > 0.0f ? 1.0f : p;
    case Activation::gelu_erf:  // Phi(z) + z phi(z)
      return norm_cdf(z) + times_or_zero(z, kInvSqrt2Pi * expf(-0.5f * z * z));
    case Activation::gelu_tanh: {  // d/dz [z s(2u)] = s + z s (1 - s) 2 u'(z), u' = k (1 + 3 c z^2)
      const float u = kGeluTanhK * z * (1.0f + kGeluTanhC * z * z);
      const float s = sigmoid(2.0f * u);
      return s + times_or_zero(z * (2.0f * kGeluTanhK) * (1.0f + 3.0f * kGeluTanhC * z * z),
                               s * (1.0f - s));
    }
    case Activation::tanh: {
      const float t = tanhf(z);
      return 1.0f - t * t;
    }
    case Activation::sigmoid: {
      const float s = sigmoid(z);
      return s * (1.0f - s);
    }
    case Activation::silu: {  // d/dz [z s(z)] = s + z s (1 - s)
      const float s = sigmoid(z);
      return s + times_or_zero(z, s * (1.0f - s));
    }
  }
  return 1.0f;
}

}  // namespace ember::cuda
