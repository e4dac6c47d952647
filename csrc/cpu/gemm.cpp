// CPU GEMM with a fused epilogue, and the backward of a Linear layer built on it.
//
// GotoBLAS/BLIS structure: op(B) is packed into KC x NR column panels (an L2-sized block of them),
// a transposed A into MR x KC row panels (one at a time, it stays in L1; a row-major A is read in
// place, see gemm_block), and a register-blocked micro-kernel computes an MR x NR tile of C with
// MR*NR/VL vector accumulators: for every k it loads NR/VL vectors of B and broadcasts MR values
// of A. The transpose of B is absorbed by the packing. The epilogue (alpha, beta*C, bias, saved
// pre-activation, activation, or the product with an activation derivative) runs on the
// accumulators of the last K block while the tile is still in registers: one pass over C.
//
// Determinism: every element of C is one chain of FMAs over k in order, split into K blocks that
// depend only on k; threads split M and N (never K), so results are bit-identical run to run and
// for any thread count. Edge tiles run the same kernel (with fewer rows, or on a padded copy of a
// narrow tile), so they do the same arithmetic as interior tiles.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "activation_math.h"
#include "ember/common.h"
#include "ember/pool.h"

namespace ember::cpu::EMBER_ISA {

// reduce.cpp, activation.cpp
void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate);
void activation_backward(int64_t n, const float* grad_out, const float* preact, float* grad_in,
                         Activation act, float param);

namespace {

// Register tile: MR rows x NV vectors of VL floats. MR*NV accumulators + NV B vectors + one
// broadcast must fit the register file (32 zmm / 16 ymm / 16 xmm).
#if defined(__AVX512F__)
constexpr int kVL = 16, kMR = 8, kNV = 2;   // 16 zmm accumulators
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kVL = 8, kMR = 6, kNV = 2;    // the classic 6x16 Haswell tile: 12 ymm accumulators
#else
constexpr int kVL = 4, kMR = 4, kNV = 3;    // SSE2: 12 xmm accumulators
#endif
constexpr int kNR = kVL * kNV;

// Cache blocking (tuned on Zen 4: 32 KiB L1d, 1 MiB L2). An MR x KC panel of A (16 KiB at
// KC=512, MR=8) stays in L1 while the kernel streams KC x NR panels of B from the KC x NC block
// (512 KiB), which stays in L2. K up to 512 is one block: no partial sums through C.
constexpr int64_t kKC = 512;
constexpr int64_t kNC = 256;
// Below this many multiply-adds a problem runs on the calling thread. A parallel call on the warm
// (spinning) pool costs ~1 us on Zen 4 (measured with GOMP; ember's own pool, ember/pool.h, is
// no slower), ~40K multiply-adds of one core's work, so in a training loop splitting pays from
// ~64K on (200x64x100 on 2 cores: 30 -> 19.5 us); a worker asleep after an idle spell takes
// 50-150 us to arrive (the caller runs its share meanwhile), so problems that would save under
// ~2 us stay on one thread.
constexpr int64_t kParallelWork = int64_t(1) << 17;
// linear_backward runs dX and dW side by side, one thread each, below this many multiply-adds
// each (a 2-way split of each pays two fork/joins and packs B twice), and at any size when the
// pool has exactly two threads: the two products have the same multiply-adds, and each on one
// core beats both split over two (64-256-256-10 MLP step at batch 200, 2 cores: ~518 vs
// ~532 us, medians of alternating runs).
constexpr int64_t kTaskParallelWork = int64_t(1) << 21;

typedef float vf __attribute__((vector_size(kVL * sizeof(float))));

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf load_aligned(const float* p) { return *reinterpret_cast<const vf*>(p); }

// The first n (may be <= 0 or >= kVL) floats at p, zeros after them; reads nothing beyond p[n-1].
inline vf load_partial(const float* p, int n) {
  if (n >= kVL) return loadu(p);
  if (n <= 0) return vf{};
#if defined(__AVX512F__)
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
#elif defined(__AVX2__)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
#else
  vf v = vf{};
  std::memcpy(&v, p, size_t(n) * sizeof(float));
  return v;
#endif
}

// Stores the first n (may be >= kVL) floats of v at p; writes nothing beyond p[n-1].
inline void store_partial(float* p, vf v, int n) {
  if (n >= kVL) return storeu(p, v);
  if (n <= 0) return;
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
#elif defined(__AVX2__)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), v);
#else
  std::memcpy(p, &v, size_t(n) * sizeof(float));
#endif
}

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

bool in_register_act(Activation a) {
  return a == Activation::identity || a == Activation::relu || a == Activation::leaky_relu;
}

// What the kernel does with the accumulators of one tile.
struct Epilogue {
  float alpha = 1.0f;
  float beta = 0.0f;
  bool load_c = false;            // t += beta * C (beta*C on the first K block, 1*partial later)
  const float* bias = nullptr;    // last K block only; already offset to the tile's first column
  float* preact = nullptr;        // last K block only; tile origin
  int64_t ldp = 0;
  Activation act = Activation::identity;  // relu / leaky_relu applied in registers
  float slope = 0.0f;
  // Last K block only: t *= act'(dz) with dact relu or leaky_relu (slope dslope); dz is the
  // tile's origin in an array of row stride lddz (see LinearBackwardArgs::input_preact).
  const float* dz = nullptr;
  int64_t lddz = 0;
  Activation dact = Activation::identity;
  float dslope = 0.0f;
};

// An activation derivative for the epilogue to apply (a whole C-shaped array; null: none).
struct DAct {
  const float* z = nullptr;
  int64_t ld = 0;
  Activation act = Activation::identity;
  float slope = 0.0f;
};

// One vector of a row of C: t = alpha*sum (+ beta*C) (+ bias), saved as the pre-activation,
// activated in registers (relu, leaky_relu), times act'(dz) when dz is given, stored. n < kVL
// touches only the first n columns. The derivative is activation_math.h's act_der (1 for z > 0,
// else 0 or the slope) and the product the one activation_backward forms: the same bits.
inline void epilogue(vf sum, float* c, const float* bias, float* preact, const float* dz, int n,
                     const Epilogue& e) {
  const vf zero = vf{};
  vf t = sum * e.alpha;
  if (e.load_c) t += load_partial(c, n) * e.beta;
  if (bias) t += load_partial(bias, n);
  if (dz) {
    const vf one = zero + 1.0f, low = zero + (e.dact == Activation::leaky_relu ? e.dslope : 0.0f);
    t = t * (load_partial(dz, n) > zero ? one : low);
  }
  if (preact) store_partial(preact, t, n);
  if (e.act == Activation::relu) {
    t = t < zero ? zero : t;  // as act_fwd: NaN passes through (t > 0 ? t : 0 made it 0)
  } else if (e.act == Activation::leaky_relu) {
    t = t > zero ? t : t * e.slope;
  }
  store_partial(c, t, n);
}

// C[0:R, 0:NV*kVL] = epilogue(sum_k A[i][k] * B[k][j]) for R <= kMR rows. B is packed (NV*kVL
// floats per k, 64-byte aligned). A is read as a[i*rs + k*cs]: packed (rs = 1, cs = kMR), or in
// place when packing would cost more than it saves (see gemm_block); both do the same arithmetic.
// An edge tile of R < kMR rows runs the R-row kernel rather than padding to kMR.
template <int R, int NV, bool kPackedA>
inline void micro_kernel(int64_t kc, const float* __restrict a, int64_t rs, int64_t cs,
                         const float* __restrict b, float* c, int64_t ldc, const Epilogue& e) {
  if constexpr (kPackedA) {
    rs = 1;
    cs = kMR;
  }
  vf acc[R][NV];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vf{};
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load_aligned(b + v * kVL);
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      const float ai = a[i * rs];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += bv[v] * ai;
    }
    a += cs;
    b += NV * kVL;
  }
  // The plain case (C = the sums: a weight gradient, a K block before the last) is stores only:
  // the same bits as the epilogue's (t * 1 = t). (No local copy of `e`: a struct copy is vector
  // loads of the fields the caller has just stored one by one, which the store buffer cannot
  // forward: a stall per tile.)
  if (!e.load_c && !e.bias && !e.preact && !e.dz && e.act == Activation::identity &&
      e.alpha == 1.0f) {
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) storeu(c + i * ldc + v * kVL, acc[i][v]);
    }
    return;
  }
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      epilogue(acc[i][v], c + i * ldc + v * kVL, e.bias ? e.bias + v * kVL : nullptr,
               e.preact ? e.preact + i * e.ldp + v * kVL : nullptr,
               e.dz ? e.dz + i * e.lddz + v * kVL : nullptr, kVL, e);
    }
  }
}

// One row of C across P full panels (P*NV*kVL columns) at once: what micro_kernel<1, NV> computes
// panel by panel, element for element the same FMA chain over k, but with P*NV independent
// accumulators, so a matrix-vector product (batch 1) is not bound by the FMA latency of NV
// chains. a is read as a[k*cs]; panel p is b[p], its C columns at c + p*kNR, its epilogue e[p].
template <int P, int NV>
inline void row_kernel(int64_t kc, const float* __restrict a, int64_t cs,
                       const float* const* b, float* c, const Epilogue* e) {
  vf acc[P][NV];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = vf{};
  const float* bp[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) bp[p] = b[p];
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const float ai = a[k * cs];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[p][v] += load_aligned(bp[p] + k * (NV * kVL) + v * kVL) * ai;
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    const Epilogue& ep = e[p];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      epilogue(acc[p][v], c + p * (NV * kVL) + v * kVL, ep.bias ? ep.bias + v * kVL : nullptr,
               ep.preact ? ep.preact + v * kVL : nullptr, ep.dz ? ep.dz + v * kVL : nullptr, kVL,
               ep);
    }
  }
}
constexpr int kRowPanels = 4;

template <int R, int NV>
inline void run_kernel(int64_t kc, const float* a, int64_t rs, int64_t cs, const float* b,
                       float* c, int64_t ldc, const Epilogue& e) {
  if (rs) {
    micro_kernel<R, NV, false>(kc, a, rs, cs, b, c, ldc, e);
  } else {
    micro_kernel<R, NV, true>(kc, a, 1, kMR, b, c, ldc, e);
  }
}

// One tile of R rows x `cols` (<= NV*kVL) columns; `a` is packed unless rs != 0. A tile narrower
// than its vectors runs the kernel on a padded copy, so it computes exactly what a full tile would.
template <int R, int NV>
void tile(int cols, int64_t kc, const float* a, int64_t rs, int64_t cs, const float* b, float* c,
          int64_t ldc, const Epilogue& e) {
  constexpr int W = NV * kVL;
  if (cols == W) {
    run_kernel<R, NV>(kc, a, rs, cs, b, c, ldc, e);
    return;
  }
  alignas(64) float ct[R * W];  // written by the kernel before it is read unless load_c
  alignas(64) float pt[R * W];
  alignas(64) float bt[W];
  alignas(64) float zt[R * W];  // the derivative's input, padded like C (only with e.dz)
  Epilogue le = e;
  if (e.load_c) {
    for (int i = 0; i < R; ++i) {
      std::memcpy(ct + i * W, c + i * ldc, cols * sizeof(float));
      std::memset(ct + i * W + cols, 0, (W - cols) * sizeof(float));
    }
  }
  if (e.bias) {
    std::memcpy(bt, e.bias, cols * sizeof(float));
    std::memset(bt + cols, 0, (W - cols) * sizeof(float));
    le.bias = bt;
  }
  if (e.preact) {
    le.preact = pt;
    le.ldp = W;
  }
  if (e.dz) {
    for (int i = 0; i < R; ++i) {
      std::memcpy(zt + i * W, e.dz + i * e.lddz, cols * sizeof(float));
      std::memset(zt + i * W + cols, 0, (W - cols) * sizeof(float));
    }
    le.dz = zt;
    le.lddz = W;
  }
  run_kernel<R, NV>(kc, a, rs, cs, b, ct, W, le);
  for (int i = 0; i < R; ++i) {
    std::memcpy(c + i * ldc, ct + i * W, cols * sizeof(float));
    if (e.preact) std::memcpy(e.preact + i * e.ldp, pt + i * W, cols * sizeof(float));
  }
}

using TileFn = void (*)(int, int64_t, const float*, int64_t, int64_t, const float*, float*,
                        int64_t, const Epilogue&);

// kTiles[R-1][NV-1]
template <int R, int... NV>
constexpr std::array<TileFn, kNV> tile_row(std::integer_sequence<int, NV...>) {
  return {&tile<R, NV + 1>...};
}
template <int... R>
constexpr std::array<std::array<TileFn, kNV>, kMR> tile_table(std::integer_sequence<int, R...>) {
  return {tile_row<R + 1>(std::make_integer_sequence<int, kNV>())...};
}
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kMR>());

// dst[k*W + r] = src[r*ld + k] for r < rows, 0 for rows <= r < W; k < kc. (Packing a k-contiguous
// operand: A as stored, or B^T.)
void pack_transposed(const float* src, int64_t ld, int rows, int64_t kc, float* dst, int W) {
  int64_t k = 0;
#if defined(__AVX__)
  // 8x8 transposes: 8 rows x 8 k in, 8 k-rows of 8 out.
  for (; k + 8 <= kc; k += 8) {
    for (int r0 = 0; r0 < W; r0 += 8) {
      const int g = std::min(8, rows - r0);
      __m256 v[8];
      for (int r = 0; r < 8; ++r) {
        v[r] = r < g ? _mm256_loadu_ps(src + (r0 + r) * ld + k) : _mm256_setzero_ps();
      }
      const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
      const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
      const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      __m256 o[8];
      o[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
      o[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
      o[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
      o[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
      o[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
      o[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
      o[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
      o[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
      if (r0 + 8 <= W) {
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (k + t) * W + r0, o[t]);
      } else {
        alignas(32) float tmp[8];
        for (int t = 0; t < 8; ++t) {
          _mm256_store_ps(tmp, o[t]);
          std::memcpy(dst + (k + t) * W + r0, tmp, (W - r0) * sizeof(float));
        }
      }
    }
  }
#endif
  for (; k < kc; ++k) {
    float* d = dst + k * W;
    for (int r = 0; r < rows; ++r) d[r] = src[r * ld + k];
    for (int r = rows; r < W; ++r) d[r] = 0.0f;
  }
}

// dst[k*W + j] = src[k*ld + j] for j < cols, 0 for cols <= j < W. (Packing an operand that is
// contiguous along the packed panel's width: B as stored, or A^T.)
// W is a multiple of kVL (a B panel) or kMR (an A panel).
void pack_rows(const float* src, int64_t ld, int cols, int64_t kc, float* dst, int W) {
  if (W % kVL == 0) {
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * W;
      const float* s = src + k * ld;
      for (int j = 0; j < W; j += kVL) storeu(d + j, load_partial(s + j, cols - j));
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * W;
    const float* s = src + k * ld;
    for (int j = 0; j < cols; ++j) d[j] = s[j];
    for (int j = cols; j < W; ++j) d[j] = 0.0f;
  }
}

// Per-thread packing buffers: 64-byte aligned, grown when a larger problem comes, kept for the
// life of the thread (the pool's workers live as long as the process), so calls after warm-up
// never allocate.
struct Buffer {
  float* p = nullptr;
  size_t cap = 0;  // floats
  ~Buffer() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, round_up(int64_t(n) * sizeof(float), 64)));
      cap = p ? n : 0;
    }
    return p;
  }
};
thread_local Buffer t_apack, t_bpack;

// The K blocks depend on k only (never on threads): ceil(k/kKC) blocks of nearly equal size.
struct KBlocks {
  int64_t count, size;
  explicit KBlocks(int64_t k) {
    count = std::max<int64_t>(1, (k + kKC - 1) / kKC);
    size = round_up((k + count - 1) / count, 8);
  }
};

// The activations that are not applied in registers (gelu, tanh, sigmoid, silu), on a tile that
// is still in L1, by activation.cpp's vectorised span routine. Column tiles start at multiples of
// kNR whatever the thread count, so every element meets the same code path.
void apply_act_rows(float* c, int64_t ldc, int rows, int cols, Activation act, float p) {
  for (int i = 0; i < rows; ++i) act_forward_span(c + i * ldc, c + i * ldc, cols, act, p);
}

// All of C on the calling thread. Returns false if the packing buffers cannot be allocated.
bool gemm_block(const GemmArgs& g, const DAct& d) {
  const int64_t m0 = 0, m1 = g.m, n0 = 0, n1 = g.n;
  const KBlocks kb(g.k);
  float* apack = t_apack.get(size_t(kMR) * kb.size);
  float* bpack = g.packed_b ? nullptr
                            : t_bpack.get(size_t(kb.size) *
                                          std::min<int64_t>(kNC, round_up(n1 - n0, kNR)));
  if (!apack || (!g.packed_b && !bpack)) return false;
  const bool post_act = !in_register_act(g.act);

  // A packed B has its panels at multiples of kNR: column blocks must be whole panels then
  // (kNC = 256 is not a multiple of the SSE2 build's kNR = 12). Blocking changes no result.
  const int64_t nc_max = g.packed_b ? kNC / kNR * kNR : kNC;
  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n1 - jc);
    for (int64_t blk = 0; blk < kb.count; ++blk) {
      const int64_t k0 = blk * kb.size;
      const int64_t kc = std::max<int64_t>(0, std::min(kb.size, g.k - k0));
      const bool first = blk == 0, last = blk == kb.count - 1;

      // Pack op(B)[k0:k0+kc, jc:jc+nc] into panels of width kNR (the last rounded up to kVL),
      // unless it came packed (then panel(jr) points into that copy: the same floats).
      auto panel = [&](int64_t jr) -> const float* {
        if (!g.packed_b) return bpack + jr * kc;
        const int64_t j = g.packed_n0 + jc + jr;  // a multiple of kNR
        return g.packed_b + j * g.k + round_up(std::min<int64_t>(kNR, nc - jr), kVL) * k0;
      };
      for (int64_t jr = 0; jr < nc && !g.packed_b; jr += kNR) {
        const int cols = int(std::min<int64_t>(kNR, nc - jr));
        const int w = int(round_up(cols, kVL));
        float* dst = bpack + jr * kc;
        if (g.trans_b) {
          pack_transposed(g.b + (jc + jr) * g.ldb + k0, g.ldb, cols, kc, dst, w);
        } else {
          pack_rows(g.b + k0 * g.ldb + jc + jr, g.ldb, cols, kc, dst, w);
        }
      }

      Epilogue e;
      e.alpha = g.alpha;
      e.load_c = first ? g.beta != 0.0f : true;
      e.beta = first ? g.beta : 1.0f;
      if (last) {
        e.act = g.act;
        e.slope = g.act_param;
        e.dact = d.act;
        e.dslope = d.slope;
        e.lddz = d.ld;
        e.ldp = g.ldc;
      }
      Epilogue te = e;  // e with each tile's pointers (set in the tile loop)

      for (int64_t ic = m0; ic < m1; ic += kMR) {
        const int rows = int(std::min<int64_t>(kMR, m1 - ic));
        // A panel is used by nc/kNR tiles; when that is one or two, packing it costs as much as the
        // kernel saves, so full panels are read in place. So is an A stored row-major (not
        // transposed) at any width: its kMR rows of kc floats stay in L1 through the panel's
        // tiles and the kernel broadcasts from them as well as from a packed copy, so the packing
        // (repeated by every thread of an N split) is pure cost: one thread, 200x64 -> 256
        // forward 79 -> 69 us, 200x256 -> 256 266 -> 254 us; strides of 4 and 16 KiB (1024- and
        // 4096-wide A) showed no set-conflict penalty.
        const float* ap = apack;
        int64_t rs = 0, cs = 0;
        if (nc <= 2 * kNR || !g.trans_a) {
          ap = g.trans_a ? g.a + k0 * g.lda + ic : g.a + ic * g.lda + k0;
          rs = g.trans_a ? 1 : g.lda;
          cs = g.trans_a ? g.lda : 1;
        } else {
          pack_rows(g.a + k0 * g.lda + ic, g.lda, rows, kc, apack, kMR);
        }
        auto tile_epilogue = [&](int64_t j) {
          Epilogue te = e;
          if (last) {
            te.bias = g.bias ? g.bias + j : nullptr;
            te.preact = g.preact ? g.preact + ic * g.ldc + j : nullptr;
            te.ldp = g.ldc;
            te.dz = d.z ? d.z + ic * d.ld + j : nullptr;
          }
          return te;
        };
        int64_t jr = 0;
        if (rows == 1 && rs != 0) {  // one row, A in place: kRowPanels full panels at a time
          for (; jr + kRowPanels * kNR <= nc; jr += kRowPanels * kNR) {
            const float* bps[kRowPanels];
            Epilogue tes[kRowPanels];
            for (int q = 0; q < kRowPanels; ++q) {
              bps[q] = panel(jr + q * kNR);
              tes[q] = tile_epilogue(jc + jr + q * kNR);
            }
            float* c = g.c + ic * g.ldc + jc + jr;
            row_kernel<kRowPanels, kNV>(kc, ap, cs, bps, c, tes);
            if (last && post_act) apply_act_rows(c, g.ldc, 1, kRowPanels * kNR, g.act, g.act_param);
          }
        }
        for (; jr < nc; jr += kNR) {
          const int cols = int(std::min<int64_t>(kNR, nc - jr));
          const int64_t j = jc + jr;
          float* c = g.c + ic * g.ldc + j;
          if (last) {  // (only the tile's pointers change: no struct copy per tile, see micro_kernel)
            te.bias = g.bias ? g.bias + j : nullptr;
            te.preact = g.preact ? g.preact + ic * g.ldc + j : nullptr;
            te.dz = d.z ? d.z + ic * d.ld + j : nullptr;
          }
          kTiles[rows - 1][(cols + kVL - 1) / kVL - 1](cols, kc, ap, rs, cs, panel(jr), c,
                                                       g.ldc, te);
          if (last && post_act) apply_act_rows(c, g.ldc, rows, cols, g.act, g.act_param);
        }
      }
    }
  }
  return true;
}

// Narrow C (n < kNarrow columns, A not transposed). The register tile above puts C's columns along
// the lanes, so it fills n of its NV*kVL lanes (10 of 16 for the MLP's output layer, 1 of 16 for a
// matrix-vector product). Here each element is instead a dot product with k along the lanes: a
// vector accumulator per element sums A[i][k:k+VL] * B^T[j][k:k+VL], so every lane is busy but in
// the last k step; A is read in place and B^T (n x k: packed once when B is stored k x n) stays
// in L1. A tile of R rows x n columns keeps R*n accumulators, and the tile's accumulators are then
// summed across lanes, kVL at a time, by a shuffle tree into one vector of kVL results.
// Determinism: every element is one FMA chain over k per lane (lane l sums k = l mod kVL) and
// then the same halving tree (lane l + lane l+kVL/2, then +kVL/4, ...), whatever the tile, its
// slot in the tree, the row count or the thread; so any split of the rows gives the same bits.
constexpr int kNarrow = 16;
#if defined(__AVX512F__)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif

constexpr int bit_reverse(int x, int bits) {
  int r = 0;
  for (int i = 0; i < bits; ++i) r |= ((x >> i) & 1) << (bits - 1 - i);
  return r;
}
constexpr int log2_int(int x) { return x <= 1 ? 0 : 1 + log2_int(x / 2); }

// Lane p of fold<H>(x, y): lanes form segments of 2H; a segment of the result holds the H sums
// lane + lane+H of x's segment, then those of y's. (Index >= kVL picks from y.)
template <int H, bool kHigh>
constexpr int fold_index(int p) {
  const int seg = p / (2 * H) * (2 * H), r = p % (2 * H), hi = kHigh ? H : 0;
  return r < H ? seg + r + hi : kVL + seg + (r - H) + hi;
}
template <int H, size_t... P>
inline vf fold(vf x, vf y, std::index_sequence<P...>) {
  return __builtin_shufflevector(x, y, fold_index<H, false>(P)...) +
         __builtin_shufflevector(x, y, fold_index<H, true>(P)...);
}
// v[0:2H] -> the lane sums of all of them. After log2(kVL) folds lane p holds the sum of the
// vector that was in slot bit_reverse(p).
template <int H>
inline vf fold_tree(vf* v) {
#pragma GCC unroll 16
  for (int i = 0; i < H; ++i) v[i] = fold<H>(v[2 * i], v[2 * i + 1], std::make_index_sequence<kVL>());
  if constexpr (H == 1) {
    return v[0];
  } else {
    return fold_tree<H / 2>(v);
  }
}

// Rows [m0, m1) of C for n = N columns; bt[j*ldbt + k] = op(B)[k][j].
template <int N>
void narrow_rows(const GemmArgs& g, const DAct& d, const float* bt, int64_t ldbt, int64_t m0,
                 int64_t m1) {
  // R*N accumulators, R rows of A and one vector of B^T must fit the register file.
  constexpr int R = std::max(1, std::min(8, (kVecRegs - 1) / (N + 1)));
  constexpr int kAcc = R * N, kGroups = (kAcc + kVL - 1) / kVL, kBits = log2_int(kVL);
  Epilogue e;
  e.alpha = g.alpha;
  e.beta = g.beta;
  e.load_c = g.beta != 0.0f;
  e.act = g.act;
  e.slope = g.act_param;
  e.dact = d.act;
  e.dslope = d.slope;
  const bool post_act = !in_register_act(g.act);
  const float* br[N];
  for (int j = 0; j < N; ++j) br[j] = bt + j * ldbt;
  for (int64_t i0 = m0; i0 < m1; i0 += R) {
    const int rows = int(std::min<int64_t>(R, m1 - i0));
    // A last tile of fewer rows repeats its last row in the missing ones (computed, not stored).
    const float* ar[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) ar[r] = g.a + (i0 + std::min(r, rows - 1)) * g.lda;
    vf acc[kAcc];
#pragma GCC unroll 32
    for (int q = 0; q < kAcc; ++q) acc[q] = vf{};
    auto step = [&](int64_t k, int n) __attribute__((always_inline)) {
      vf av[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) av[r] = load_partial(ar[r] + k, n);
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        vf bv = load_partial(br[j] + k, n);
        // Load B^T once into a register: GCC would fold it into each of the R FMAs as a memory
        // operand, and R loads per FMA row make the loop load-bound (Zen 4: one zmm load/cycle).
#if defined(__AVX512F__)
        asm("" : "+v"(bv));
#else
        asm("" : "+x"(bv));
#endif
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r * N + j] += av[r] * bv;
      }
    };
    int64_t k = 0;
    for (; k + kVL <= g.k; k += kVL) step(k, kVL);
    if (k < g.k) step(k, int(g.k - k));

    alignas(64) float sums[kGroups * kVL];  // sums[r*N + j] = C[i0+r][j] before the epilogue
#pragma GCC unroll 4
    for (int grp = 0; grp < kGroups; ++grp) {
      vf v[kVL];
#pragma GCC unroll 16
      for (int q = 0; q < kVL; ++q) {
        const int idx = grp * kVL + bit_reverse(q, kBits);
        v[q] = idx < kAcc ? acc[idx] : vf{};
      }
      storeu(sums + grp * kVL, fold_tree<kVL / 2>(v));
    }
    float* c = g.c + i0 * g.ldc;
    for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 4
      for (int j = 0; j < N; j += kVL) {
        epilogue(load_partial(sums + r * N + j, N - j), c + r * g.ldc + j,
                 g.bias ? g.bias + j : nullptr,
                 g.preact ? g.preact + (i0 + r) * g.ldc + j : nullptr,
                 d.z ? d.z + (i0 + r) * d.ld + j : nullptr, N - j, e);
      }
    }
    if (post_act) apply_act_rows(c, g.ldc, rows, N, g.act, g.act_param);
  }
}

using NarrowFn = void (*)(const GemmArgs&, const DAct&, const float*, int64_t, int64_t, int64_t);
template <int... N>
constexpr std::array<NarrowFn, kNarrow - 1> narrow_table(std::integer_sequence<int, N...>) {
  return {&narrow_rows<N + 1>...};
}
constexpr auto kNarrowRows = narrow_table(std::make_integer_sequence<int, kNarrow - 1>());

// Where the narrow path wins (Zen 4, one thread, against the register tile): k >= 128 (below, the
// cross-lane sums and the per-tile overhead outweigh the busier lanes), B^T of up to 64 KiB (L1,
// or streamed from L2 without loss), and with AVX the register tile leaving over 1/5 of its lanes
// idle (v4: n <= 12, ~80 vs 52-79 GFLOP/s; at n = 13 they tie). Without AVX the register tile is
// slower at every n < 16 (SSE2: 40 vs 12-28 GFLOP/s). The choice depends on n and k only, never
// on m: a row's bits do not depend on the batch it is in.
bool use_narrow(const GemmArgs& g) {
  if (g.n >= kNarrow || g.trans_a || g.k < 128 || g.n * g.k > 16384) return false;
#if defined(__AVX2__)
  return g.n * 5 <= round_up(g.n, kVL) * 4;
#else
  return true;
#endif
}

// C by narrow_rows on `threads` threads, each a contiguous range of rows.
bool gemm_narrow(const GemmArgs& g, const DAct& d, int threads) {
  const float* bt = g.b;
  int64_t ldbt = g.ldb;
  if (!g.trans_b) {  // B^T, rows padded to whole vectors
    ldbt = round_up(g.k, kVL);
    float* p = t_bpack.get(size_t(g.n * ldbt));
    if (!p) return false;
    pack_transposed(g.b, g.ldb, int(g.k), g.n, p, int(ldbt));
    bt = p;
  }
  const NarrowFn fn = kNarrowRows[g.n - 1];
  auto run = [&](int nt, int id) {
    const int64_t m0 = g.m * id / nt / 8 * 8, m1 = id == nt - 1 ? g.m : g.m * (id + 1) / nt / 8 * 8;
    if (m0 < m1) fn(g, d, bt, ldbt, m0, m1);
  };
  if (threads <= 1) {
    run(1, 0);
  } else {
    parallel_tasks(threads, [&](int id) { run(threads, id); });
  }
  return true;
}

// The block C[m0:m1, n0:n1] of g as a problem of its own.
GemmArgs sub_problem(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  GemmArgs r = g;
  r.m = m1 - m0;
  r.n = n1 - n0;
  r.a = g.trans_a ? g.a + m0 : g.a + m0 * g.lda;
  r.b = g.trans_b ? g.b + n0 * g.ldb : g.b + n0;
  r.c = g.c + m0 * g.ldc + n0;
  if (g.bias) r.bias = g.bias + n0;
  if (g.preact) r.preact = g.preact + m0 * g.ldc + n0;
  r.packed_n0 = g.packed_n0 + n0;
  return r;
}

DAct sub_dact(const DAct& d, int64_t m0, int64_t n0) {
  DAct r = d;
  if (d.z) r.z = d.z + m0 * d.ld + n0;
  return r;
}

// Split C over a tm x tn grid of threads (MR/NR-aligned) to minimise the slowest thread's
// estimated time: its share of the multiply-adds plus the packing it repeats. Shares are counted
// as the kernel computes them: a last row tile of r rows costs r rows, a last column panel its
// width rounded up to whole vectors (so 100 columns split 64 + 36 on two threads are 64 vs 48
// lanes: splitting the rows instead, 104 + 96 rows of 112 lanes, is the better grid).
void choose_grid(const GemmArgs& g, int threads, int& tm, int& tn) {
  const int64_t mu = (g.m + kMR - 1) / kMR, nu = (g.n + kNR - 1) / kNR;
  // Rows (columns, in lanes) of row tiles (panels) [u0, u1).
  auto rows_of = [&](int64_t u0, int64_t u1) {
    return double(std::min(g.m, u1 * kMR) - std::min(g.m, u0 * kMR));
  };
  auto lanes_of = [&](int64_t u0, int64_t u1) {
    return double(round_up(std::min(g.n, u1 * kNR), kVL) - std::min(g.n, u0 * kNR));
  };
  double best = -1.0;
  tm = threads;
  tn = 1;
  for (int f = 1; f <= threads; ++f) {
    if (threads % f) continue;
    const int fm = f, fn = threads / f;
    if (fm > mu || fn > nu) continue;
    double rows = 0.0, cols = 0.0;  // the largest share of each (the grid is a product)
    for (int i = 0; i < fm; ++i) rows = std::max(rows, rows_of(mu * i / fm, mu * (i + 1) / fm));
    for (int j = 0; j < fn; ++j) cols = std::max(cols, lanes_of(nu * j / fn, nu * (j + 1) / fn));
    const double fma = rows * cols * double(g.k) / kVL;
    // B's share is packed by each thread; A is packed (per kNC block) only when transposed.
    const double pack = (cols + (g.trans_a ? rows * std::ceil(cols / kNC) : 0.0)) * double(g.k);
    const double cost = fma + pack;
    if (best < 0 || cost < best) {
      best = cost;
      tm = fm;
      tn = fn;
    }
  }
}

// C = epilogue(op(A) op(B)) (see gemm), times act'(d.z) elementwise when d.z is given.
void gemm_dact(const GemmArgs& g, const DAct& d) {
  if (g.m <= 0 || g.n <= 0) return;
  // Thread `id` of `nt` computes one MR/NR-aligned block of C.
  auto run = [&](int nt, int id) {
    int tm, tn;
    choose_grid(g, nt, tm, tn);
    if (id >= tm * tn) return true;
    const int im = id / tn, in = id % tn;
    const int64_t mu = (g.m + kMR - 1) / kMR, nu = (g.n + kNR - 1) / kNR;
    const int64_t m0 = std::min(g.m, mu * im / tm * kMR), m1 = std::min(g.m, mu * (im + 1) / tm * kMR);
    const int64_t n0 = std::min(g.n, nu * in / tn * kNR), n1 = std::min(g.n, nu * (in + 1) / tn * kNR);
    if (m0 >= m1 || n0 >= n1) return true;
    return gemm_block(sub_problem(g, m0, m1, n0, n1), sub_dact(d, m0, n0));
  };
  const int64_t work = g.m * g.n * std::max<int64_t>(g.k, 1);
  // Inside a parallel region (linear_backward's two GEMMs side by side) a GEMM is one thread's.
  const int threads = work >= kParallelWork && !pool_in_task() ? pool_threads() : 1;
  if (use_narrow(g)) {
    if (!gemm_narrow(g, d, threads)) throw std::bad_alloc();
    return;
  }
  std::atomic<bool> ok{true};
  if (threads <= 1) {
    ok = run(1, 0);
  } else {
    parallel_tasks(threads, [&](int id) {
      if (!run(threads, id)) ok.store(false, std::memory_order_relaxed);
    });
  }
  if (!ok.load()) throw std::bad_alloc();
}

}  // namespace

void gemm(const GemmArgs& g) { gemm_dact(g, DAct{}); }

// The packed layout: column panels of kNR (the last one its width rounded up to kVL), panel p at
// p*kNR*k; in a panel of width w, K block b (KBlocks) at w*k0(b), as kc x w floats: what
// gemm_block packs into its buffer for that panel and block. Padding columns are zeros.
int64_t gemm_packed_b_size(int64_t n, int64_t k) {
  GemmArgs g;
  g.n = n;
  g.k = k;
  if (n <= 0 || k <= 0 || use_narrow(g)) return 0;
  return (n / kNR * kNR + round_up(n % kNR, kVL)) * k;
}

void gemm_pack_b(int64_t n, int64_t k, const float* b, int64_t ldb, bool trans_b, float* dst) {
  const KBlocks kb(k);
  for (int64_t j = 0; j < n; j += kNR) {
    const int cols = int(std::min<int64_t>(kNR, n - j));
    const int w = int(round_up(cols, kVL));
    for (int64_t blk = 0; blk < kb.count; ++blk) {
      const int64_t k0 = blk * kb.size;
      const int64_t kc = std::max<int64_t>(0, std::min(kb.size, k - k0));
      float* d = dst + j * k + w * k0;
      if (trans_b) {
        pack_transposed(b + j * ldb + k0, ldb, cols, kc, d, w);
      } else {
        pack_rows(b + k0 * ldb + j, ldb, cols, kc, d, w);
      }
    }
  }
}

void linear_backward(const LinearBackwardArgs& a) {
  const float* dz = a.grad_out;
  if (a.act != Activation::identity) {
    // dZ = dY * act'(Z) over the whole (contiguous) batch, then db = column sums of dZ. Two
    // passes, but each a long vectorised loop; dZ is still in L2 for the second. (One pass over
    // 64-column row segments was 4x slower at MLP sizes: a call and a copy per short segment.)
    activation_backward(a.batch * a.out_features, a.grad_out, a.preact, a.grad_preact, a.act,
                        a.act_param);
    dz = a.grad_preact;
    if (a.grad_bias) column_sum(a.batch, a.out_features, dz, a.grad_bias, a.accumulate);
  } else if (a.grad_bias) {
    column_sum(a.batch, a.out_features, a.grad_out, a.grad_bias, a.accumulate);
  }
  // dX = dZ W: (batch x out) (out x in); dW (+)= dZ^T x: (out x batch) (batch x in)
  const GemmArgs gx = gemm_operands(a.batch, a.in_features, a.out_features, dz, a.out_features,
                                    false, a.weight, a.in_features, false, a.grad_input,
                                    a.in_features);
  GemmArgs gw = gemm_operands(a.out_features, a.in_features, a.batch, dz, a.out_features, true,
                              a.x, a.in_features, false, a.grad_weight, a.in_features);
  const DAct dx_act = a.input_preact ? DAct{a.input_preact, a.in_features, a.input_act,
                                            a.input_act_param}
                                     : DAct{};
  gw.beta = a.accumulate ? 1.0f : 0.0f;
  // Both GEMMs small: side by side, one thread each (one parallel call instead of two, and no
  // duplicated packing). Each computes the same bits either way.
  const int64_t work = a.batch * a.in_features * a.out_features;  // multiply-adds of each
  const int threads = pool_threads();
  if (a.grad_input && a.grad_weight && (work < kTaskParallelWork || threads == 2) && threads >= 2 &&
      !pool_in_task()) {
    // Two tasks; inside a task a GEMM runs on its thread. A std::bad_alloc (packing buffers) is
    // rethrown by parallel_tasks.
    parallel_tasks(2, [&](int id) {
      if (id == 0) {
        gemm_dact(gx, dx_act);
      } else {
        gemm(gw);
      }
    });
    return;
  }
  if (a.grad_input) gemm_dact(gx, dx_act);
  if (a.grad_weight) gemm(gw);
}

}  // namespace ember::cpu::EMBER_ISA
