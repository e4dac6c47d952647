// Activation functions and their derivatives, shared by the elementwise kernels (activation.cpp),
// the GEMM epilogues (gemm.cpp) and the loss kernels (loss.cpp). Included inside each ISA build.
//
// Speed: every function here is branch-free (selects, not jumps) and calls no libm function, so
// GCC vectorises a loop over any of them (`-fopt-info-vec` shows it). exp, tanh and the normal CDF
// are our own float approximations, accurate to a few ulp (max relative error < 4e-7 over all
// finite floats; tests/test_ops_activation.py measures it against float64), with IEEE behaviour at
// the edges: overflow gives +Inf, underflow gives (denormal, then) 0, ±Inf give the limits
// (sigmoid(-Inf) = 0, tanh(±Inf) = ±1, gelu(-Inf) = silu(-Inf) = 0) and NaN propagates.
// The derivatives of relu / leaky_relu follow PyTorch: 1 for z > 0, else 0 / slope (z = 0 and
// z = NaN included); the smooth ones propagate NaN.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {
namespace math {

inline uint32_t as_u32(float x) { return __builtin_bit_cast(uint32_t, x); }
inline float as_f32(uint32_t u) { return __builtin_bit_cast(float, u); }

// exp(hi + lo) where lo is a small correction to hi (|lo| <= 2^-11 |hi|), so that callers can pass
// an argument carrying more than 24 bits (see sq_split). Cody-Waite reduction x = n ln2 + r,
// |r| <= ln2/2, then Cephes' degree-6 polynomial for exp(r) (max error ~1 ulp) and a scale by 2^n
// done in two halves so that results down in the denormals and up to FLT_MAX are rounded once.
inline float exp_hilo(float hi, float lo) {
  // Clamp so that n stays in [-150, 128]: below, the result rounds to 0; above, to +Inf. The
  // comparisons send NaN to the bound; NaN is restored at the end.
  float h = hi > -104.0f ? hi : -104.0f;
  h = h < 89.0f ? h : 89.0f;
  const float l = h == hi ? lo : 0.0f;
  // Round (h + l) / ln2 to an integer with the 1.5 * 2^23 trick: the integer lands in the low
  // mantissa bits of kf, no float-to-int conversion (and no UB on NaN) needed.
  const float kMagic = 12582912.0f;
  const float kf = (h + l) * 1.44269504088896341f + kMagic;
  const float nf = kf - kMagic;
  const int32_t n = static_cast<int32_t>(as_u32(kf) - as_u32(kMagic));
  // ln2 split in a 9-bit head (n * head is exact) and a tail.
  const float r = ((h - nf * 0.693359375f) - nf * -2.12194440e-4f) + l;
  const float r2 = r * r;
  const float poly =
      (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
         4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * r2 + r + 1.0f;
  const int32_t n1 = n >> 1, n2 = n - n1;  // both in [-75, 64]: normal powers of two
  const float s1 = as_f32(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = as_f32(static_cast<uint32_t>(n2 + 127) << 23);
  const float y = poly * s1 * s2;
  return hi == hi ? y : hi;
}

inline float exp_f(float x) { return exp_hilo(x, 0.0f); }

// a*a = hi + lo exactly up to ~2^-35 relative: the head of a keeps its top 12 mantissa bits so
// that head*head is exact. Without this, exp(-a*a) would be off by ~a*a*2^-24 relative (6e-6 at
// a = 10) from the rounding of a*a alone.
inline void sq_split(float a, float& hi, float& lo) {
  const float ah = as_f32(as_u32(a) & 0xFFFFF000u);
  hi = ah * ah;
  lo = (a - ah) * (a + ah);
}

// tanh(x) and its derivative 1 - tanh(x)^2. Below |x| = 0.625 an odd polynomial (fitted, degree
// 9, relative error < 5e-9), where 1 - 2/(exp(2|x|)+1) would cancel; that formula above, which goes
// to exactly 1 (exp overflows to +Inf) for large |x|. There 1 - tanh^2 = w (2 - w) with
// w = 1 - |tanh| = 2/(exp(2|x|)+1) computed directly, not as 1 - t*t, which would cancel.
// The sign is copied back, so tanh(-0) = -0 and NaN stays NaN.
inline float tanh_f(float x, float& deriv) {
  const float a = std::fabs(x);
  const float z = a * a;
  const float small =
      a + a * z *
              ((((-5.691985663e-3f * z + 2.062629182e-2f) * z - 5.373531885e-2f) * z +
                1.333138135e-1f) * z - 3.333327921e-1f);
  const float w = 2.0f / (exp_f(2.0f * a) + 1.0f);
  const bool is_small = a < 0.625f;
  deriv = is_small ? 1.0f - small * small : w * (2.0f - w);
  return std::copysign(is_small ? small : 1.0f - w, x);
}

inline float tanh_f(float x) {
  float unused;
  return tanh_f(x, unused);
}

// sigmoid(x) and 1 - sigmoid(x) = sigmoid(-x), both to full relative precision (1 - s would
// cancel for large x): with e = exp(-|x|) <= 1, sigmoid(|x|) = 1/(1+e), sigmoid(-|x|) = e/(1+e).
inline float sigmoid_f(float x, float& complement) {
  const float e = exp_f(-std::fabs(x));
  const float r = 1.0f / (1.0f + e);
  const float small = e * r;
  complement = x < 0.0f ? r : small;
  return x < 0.0f ? small : r;  // NaN: e, r and small are NaN
}

inline float sigmoid_f(float x) {
  float unused;
  return sigmoid_f(x, unused);
}

// The standard normal CDF Phi(x) and e = exp(-x^2/2) (so that pdf = e / sqrt(2 pi)).
// |x| < 0.5: Phi = 0.5 + x P(x^2) (fitted, relative error < 1e-8).
// |x| >= 0.5: Phi(-|x|) = e * t Q(t) with t = 1/(1 + 0.3|x|): t Q(t) fits the Mills ratio
// Phi(-a)/exp(-a^2/2) to 4e-9 relative on the whole half-line, so the far tail (Phi(-13) ~ 6e-39)
// keeps full relative precision — unlike 0.5 * (1 + erf(x/sqrt 2)), which cancels to 0.
inline float norm_cdf(float x, float& e) {
  const float a = std::fabs(x);
  float hi, lo;
  sq_split(a, hi, lo);
  e = exp_hilo(-0.5f * hi, -0.5f * lo);
  const float t = 1.0f / (1.0f + 0.3f * a);
  const float q =
      t * (((((((((((-1.783772505e-02f * t + 6.943623375e-02f) * t - 8.633500072e-02f) * t +
                   2.374497953e-02f) * t - 1.085779310e-02f) * t + 2.837158100e-02f) * t +
                5.783280806e-02f) * t + 8.736476693e-02f) * t + 1.089121546e-01f) * t +
             1.196826537e-01f) * t + 1.196826843e-01f));
  const float tail = e * q;  // Phi(-a)
  const float z = x * x;
  const float core =
      0.5f + x * (((-1.131235916e-03f * z + 9.964876320e-03f) * z - 6.648994811e-02f) * z +
                  3.989422770e-01f);
  const float cdf = a < 0.5f ? core : (x < 0.0f ? tail : 1.0f - tail);
  return x == x ? cdf : x;  // a NaN with a low-bits-only payload would otherwise lose it in sq_split
}

constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kGeluTanhK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluTanhC = 0.044715f;

// x * s with the limit 0 when s == 0 (x = -Inf in silu / gelu would otherwise give -Inf*0 = NaN).
inline float times_or_zero(float x, float s) { return s == 0.0f ? 0.0f : x * s; }

}  // namespace math

// act(z) for one value, the activation fixed at compile time (the form to use inside loops).
template <Activation A>
inline float act_fwd(float z, float p) {
  using namespace math;
  if constexpr (A == Activation::identity) {
    return z;
  } else if constexpr (A == Activation::relu) {
    return z < 0.0f ? 0.0f : z;  // NaN passes through
  } else if constexpr (A == Activation::leaky_relu) {
    return z > 0.0f ? z : z * p;
  } else if constexpr (A == Activation::gelu_erf) {
    float e;
    return times_or_zero(z, norm_cdf(z, e));
  } else if constexpr (A == Activation::gelu_tanh) {
    // 0.5 z (1 + tanh(u)) = z * sigmoid(2u): no cancellation for z << 0.
    const float u = kGeluTanhK * z * (1.0f + kGeluTanhC * z * z);
    return times_or_zero(z, sigmoid_f(2.0f * u));
  } else if constexpr (A == Activation::tanh) {
    return tanh_f(z);
  } else if constexpr (A == Activation::sigmoid) {
    return sigmoid_f(z);
  } else {
    static_assert(A == Activation::silu);
    return times_or_zero(z, sigmoid_f(z));
  }
}

// d act / dz at z, the activation fixed at compile time.
template <Activation A>
inline float act_der(float z, float p) {
  using namespace math;
  if constexpr (A == Activation::identity) {
    return 1.0f;
  } else if constexpr (A == Activation::relu) {
    return z > 0.0f ? 1.0f : 0.0f;
  } else if constexpr (A == Activation::leaky_relu) {
    return z > 0.0f ? 1.0f : p;
  } else if constexpr (A == Activation::gelu_erf) {
    float e;
    const float cdf = norm_cdf(z, e);
    return cdf + times_or_zero(z, e * kInvSqrt2Pi);  // Phi(z) + z phi(z)
  } else if constexpr (A == Activation::gelu_tanh) {
    // d/dz [z s(2u)] = s + z s (1-s) 2 u'(z),  u' = k (1 + 3 c z^2)
    const float u = kGeluTanhK * z * (1.0f + kGeluTanhC * z * z);
    float sc;
    const float s = sigmoid_f(2.0f * u, sc);
    const float ss = s * sc;
    return s + times_or_zero(z * (2.0f * kGeluTanhK) * (1.0f + 3.0f * kGeluTanhC * z * z), ss);
  } else if constexpr (A == Activation::tanh) {
    float d;
    tanh_f(z, d);
    return d;
  } else if constexpr (A == Activation::sigmoid) {
    float sc;
    const float s = sigmoid_f(z, sc);
    return s * sc;
  } else {
    static_assert(A == Activation::silu);
    float sc;
    const float s = sigmoid_f(z, sc);  // d/dz [z s(z)] = s + z s (1-s)
    return s + times_or_zero(z, s * sc);
  }
}

// Calls f(std::integral_constant<Activation, A>{}) for the runtime value a, so that a loop written
// once inside f is compiled (and vectorised) once per activation:
//   with_activation(a, [&](auto A) { for (...) y[i] = act_fwd<decltype(A)::value>(z[i], p); });
template <class F>
inline decltype(auto) with_activation(Activation a, F&& f) {
  using A = Activation;
  switch (a) {
    case A::relu: return f(std::integral_constant<A, A::relu>{});
    case A::leaky_relu: return f(std::integral_constant<A, A::leaky_relu>{});
    case A::gelu_erf: return f(std::integral_constant<A, A::gelu_erf>{});
    case A::gelu_tanh: return f(std::integral_constant<A, A::gelu_tanh>{});
    case A::tanh: return f(std::integral_constant<A, A::tanh>{});
    case A::sigmoid: return f(std::integral_constant<A, A::sigmoid>{});
    case A::silu: return f(std::integral_constant<A, A::silu>{});
    case A::identity: break;
  }
  return f(std::integral_constant<A, A::identity>{});
}

// act(z) for one value (the switch is hoisted out of loops only if the compiler unswitches; in a
// loop prefer with_activation + act_fwd<A>).
inline float act_forward(float z, Activation a, float p) {
  return with_activation(a, [&](auto A) { return act_fwd<decltype(A)::value>(z, p); });
}

// d act / dz at z.
inline float act_derivative(float z, Activation a, float p) {
  return with_activation(a, [&](auto A) { return act_der<decltype(A)::value>(z, p); });
}

// y[i] = act(z[i]) over a contiguous span (y may alias z). Single-threaded: callers parallelise.
void act_forward_span(const float* z, float* y, int64_t n, Activation a, float p);
// out[i] = g[i] * act'(z[i]) (out may alias g or z). Single-threaded.
void act_backward_span(const float* g, const float* z, float* out, int64_t n, Activation a, float p);

}  // namespace ember::cpu::EMBER_ISA
