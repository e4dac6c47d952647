// Activation functions and their derivatives, shared by the elementwise kernels (activation.cpp)
// and the GEMM epilogues (gemm.cpp). Included inside each ISA build.
#pragma once
#include <cmath>
#include <cstdint>

#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {

// act(z) for one value.
inline float act_forward(float z, Activation a, float p) {
  switch (a) {
    case Activation::identity: return z;
    case Activation::relu: return z > 0.0f ? z : 0.0f;
    case Activation::leaky_relu: return z > 0.0f ? z : z * p;
    case Activation::gelu_erf: return 0.5f * z * (1.0f + std::erf(z * 0.70710678118654752f));
    case Activation::gelu_tanh: {
      const float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
      return 0.5f * z * (1.0f + std::tanh(u));
    }
    case Activation::tanh: return std::tanh(z);
    case Activation::sigmoid: return 1.0f / (1.0f + std::exp(-z));
    case Activation::silu: return z / (1.0f + std::exp(-z));
  }
  return z;
}

// d act / dz at z.
inline float act_derivative(float z, Activation a, float p) {
  switch (a) {
    case Activation::identity: return 1.0f;
    case Activation::relu: return z > 0.0f ? 1.0f : 0.0f;
    case Activation::leaky_relu: return z > 0.0f ? 1.0f : p;
    case Activation::gelu_erf: {
      const float cdf = 0.5f * (1.0f + std::erf(z * 0.70710678118654752f));
      const float pdf = 0.3989422804014327f * std::exp(-0.5f * z * z);
      return cdf + z * pdf;
    }
    case Activation::gelu_tanh: {
      const float k = 0.7978845608028654f;
      const float u = k * (z + 0.044715f * z * z * z);
      const float t = std::tanh(u);
      return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * z * z);
    }
    case Activation::tanh: {
      const float t = std::tanh(z);
      return 1.0f - t * t;
    }
    case Activation::sigmoid: {
      const float s = 1.0f / (1.0f + std::exp(-z));
      return s * (1.0f - s);
    }
    case Activation::silu: {
      const float s = 1.0f / (1.0f + std::exp(-z));
      return s * (1.0f + z * (1.0f - s));
    }
  }
  return 1.0f;
}

// y[i] = act(z[i]) over a contiguous span (y may alias z). Single-threaded: callers parallelise.
void act_forward_span(const float* z, float* y, int64_t n, Activation a, float p);
// out[i] = g[i] * act'(z[i]) (out may alias g). Single-threaded.
void act_backward_span(const float* g, const float* z, float* out, int64_t n, Activation a, float p);

}  // namespace ember::cpu::EMBER_ISA
