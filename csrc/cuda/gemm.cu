// GEMM with a fused epilogue, and the linear layer's backward, on the GPU.
//
// One kernel template serves the three precisions. A block computes a BM x BN tile of C over k
// tiles that are staged through shared memory twice buffered: while the block multiplies tile t,
// each thread holds tile t+1's global loads in registers and stores them to the other buffer,
// so one __syncthreads per k tile suffices. Staging through registers (rather than
// cp.async) is what lets one shared-memory layout serve every transpose: a row-major operand whose
// contiguous dimension is k is transposed on its way into shared memory, and the operands are
// rounded to TF32 / packed to bfloat16 there, once per block instead of once per warp.
//
// Shared memory holds 32-bit words, k-major: word (kw, x) of a BX-wide operand tile is at
// kw * (BX + kPad) + x. fp32 and tf32 keep one k value per word; bf16 packs two consecutive k
// values (the lower k in the low half), which is exactly the pairing mma.m16n8k16 wants, so the
// fragment reads of the tf32 and bf16 paths are the same code.
//
// fp32: each thread owns an 8x8 (4x4 for the small tile) block of C split into 4x4 pieces
// BM/2 apart, read from shared memory as float4 (the classic 2-D register blocking).
// tf32/bf16: 8 warps in a 2 x 4 grid, each computing (BM/2) x (BN/4) with mma.sync.
// Fragment layouts: PTX ISA, "Matrix fragments for mma.m16n8k8" (.tf32) and "mma.m16n8k16"
// (.bf16): lane = 4*group + t; A a0:(g, t) a1:(g+8, t) a2:(g, t+4) a3:(g+8, t+4) in words;
// B b0:(t, g) b1:(t+4, g); C c0,c1:(g, 2t..2t+1) c2,c3:(g+8, 2t..2t+1).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "activation.cuh"
#include "check.cuh"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWordRows = 16;  // k-tile depth in shared-memory words
// Row padding in words: keeps rows 16-byte aligned for float4 access, and a row stride of
// 8 (mod 32) words puts the 32 lanes of an mma fragment read (t*stride + g) in 32 distinct banks.
constexpr int kPad = 8;

// k values per shared-memory word.
template <Precision P>
constexpr int kKPack = P == Precision::bf16 ? 2 : 1;

// ---- global -> registers -------------------------------------------------------------------

// Four consecutive floats at p[off..off+3] of which `avail` (<= 0: none) are inside the matrix;
// the rest read as zero so that padded k and edge tiles contribute nothing.
__device__ __forceinline__ float4 load4(const float* __restrict__ p, int64_t off, int64_t avail,
                                        bool vec) {
  if (vec && avail >= 4) return __ldg(reinterpret_cast<const float4*>(p + off));
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (avail > 0) v.x = __ldg(p + off);
  if (avail > 1) v.y = __ldg(p + off + 1);
  if (avail > 2) v.z = __ldg(p + off + 2);
  if (avail > 3) v.w = __ldg(p + off + 3);
  return v;
}

// An operand tile of BX (m or n) by BK = kWordRows * KPACK (k) values.
//   kcontig == false: element (k, x) at p[k * ld + x] (contiguous along x: A^T, or B);
//   kcontig == true:  element (k, x) at p[x * ld + k] (contiguous along k: A, or B^T).
// Both are "element (v, f) at p[v * ld + f]" with f the contiguous coordinate (x, resp. k) and
// v the strided one (k, resp. x). A thread loads float4s along f at one f offset and NV rows v,
// so its addresses are one pointer plus compile-time multiples of two strides: few registers
// (the 128 x 128 bf16 kernel spilled when each address was computed from scratch). A warp's
// loads cover whole 32-byte sectors in both layouts.
template <int BX, int KPACK>
struct OperandTile {
  static constexpr int BK = kWordRows * KPACK;
  static constexpr int NV = BX * BK / (4 * kThreads);  // float4 loads per thread
  static constexpr int S = BX + kPad;                  // shared row stride, words
  static_assert(NV >= 1 && NV % KPACK == 0, "tile does not divide among the threads");

  float4 r[NV];
  const float* ptr;      // this thread's first element in the current k tile
  int64_t hi_stride;     // between loads i and i + KPACK
  int64_t lo_stride;     // between loads i and i + 1 within a KPACK group (bf16 only)
  int64_t tile_stride;   // from one k tile to the next
  int64_t v_rem, f_rem;  // extent left from this thread's first (v, f) (<= 0: outside)
  int vbase, vstep, vstep_lo, fl;  // local tile coordinates, for the shared-memory store
  bool kcontig, vec;

  __device__ __forceinline__ void init(const float* p, int64_t ld, bool kc, bool vec_ok,
                                       int64_t x0, int64_t X, int64_t K) {
    kcontig = kc;
    vec = vec_ok;
    const int tid = threadIdx.x;
    if (!kc) {  // v = k, f = x. bf16 loads come in pairs of consecutive k (one packed word).
      constexpr int per_row = BX / 4;
      fl = (tid % per_row) * 4;
      vbase = (tid / per_row) * KPACK;
      vstep = (kThreads / per_row) * KPACK;
      vstep_lo = 1;
      ptr = p + vbase * ld + x0 + fl;
      tile_stride = BK * ld;
      v_rem = K - vbase;
      f_rem = X - x0 - fl;
    } else {  // v = x, f = k
      constexpr int per_row = BK / 4;
      constexpr int rows = kThreads / per_row;
      fl = (tid % per_row) * 4;
      vbase = tid / per_row;
      vstep = rows * KPACK;
      vstep_lo = rows;
      ptr = p + (x0 + vbase) * ld + fl;
      tile_stride = BK;
      v_rem = X - x0 - vbase;
      f_rem = K - fl;
    }
    hi_stride = vstep * ld;
    lo_stride = vstep_lo * ld;
  }

  __device__ __forceinline__ void load() {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int hi = i / KPACK, lo = i % KPACK;
      const int dv = hi * vstep + lo * vstep_lo;
      r[i] = load4(ptr, hi * hi_stride + lo * lo_stride, dv < v_rem ? f_rem : 0, vec);
    }
  }

  __device__ __forceinline__ void next_tile() {
    ptr += tile_stride;
    if (kcontig) {
      f_rem -= BK;
    } else {
      v_rem -= BK;
    }
  }

  template <Precision P>
  __device__ __forceinline__ void store(uint32_t* __restrict__ s) const {
    if (!kcontig) {  // a float4 along x: one 16-byte store of 4 words (bf16: two loads packed)
#pragma unroll
      for (int q = 0; q < NV / KPACK; ++q) {
        uint4 w;
        if constexpr (P == Precision::bf16) {
          w = make_uint4(pack_bf16(r[2 * q].x, r[2 * q + 1].x), pack_bf16(r[2 * q].y, r[2 * q + 1].y),
                         pack_bf16(r[2 * q].z, r[2 * q + 1].z), pack_bf16(r[2 * q].w, r[2 * q + 1].w));
        } else {
          w = make_uint4(word<P>(r[q].x), word<P>(r[q].y), word<P>(r[q].z), word<P>(r[q].w));
        }
        *reinterpret_cast<uint4*>(s + ((vbase + q * vstep) / KPACK) * S + fl) = w;
      }
    } else {  // a float4 along k: transposed into 4 (bf16: 2) word rows
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int x = vbase + (i / KPACK) * vstep + (i % KPACK) * vstep_lo;
        uint32_t* d = s + (fl / KPACK) * S + x;
        if constexpr (P == Precision::bf16) {
          d[0] = pack_bf16(r[i].x, r[i].y);
          d[S] = pack_bf16(r[i].z, r[i].w);
        } else {
          d[0] = word<P>(r[i].x);
          d[S] = word<P>(r[i].y);
          d[2 * S] = word<P>(r[i].z);
          d[3 * S] = word<P>(r[i].w);
        }
      }
    }
  }

  // bfloat16x2 with `lo` in the low half (cvt puts its first source in the upper half).
  static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
  }

  template <Precision P>
  static __device__ __forceinline__ uint32_t word(float v) {
    if constexpr (P == Precision::tf32) {
      uint32_t d;  // round to nearest (the tensor cores would otherwise truncate the low bits)
      asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(d) : "f"(v));
      return d;
    } else {
      return __float_as_uint(v);
    }
  }
};

// ---- epilogue --------------------------------------------------------------------------------

struct GemmParams {
  GemmArgs g;
  bool vec_a, vec_b;  // 16-byte loads allowed (leading dimension and base pointer)
  bool vec_c;         // float4/float2 access to C, preact and bias allowed
  // Split-K (k_chunk > 0): block z multiplies k range [z * k_chunk, (z + 1) * k_chunk) into its
  // own m x n slice of `partial` (no epilogue); splitk_reduce_kernel then adds the slices in
  // order and applies the epilogue.
  int64_t k_chunk = 0;
  float* partial = nullptr;
};

template <int R>
__device__ __forceinline__ void load_vec(const float* p, float (&v)[R]) {
  if constexpr (R == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x, v[1] = t.y;
  }
}

template <int R>
__device__ __forceinline__ void store_vec(float* p, const float (&v)[R]) {
  if constexpr (R == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  }
}

// R consecutive outputs (row, col..col+R-1), col a multiple of R: z = alpha*acc + beta*C + bias,
// preact = z, C = act(z). C is read only when beta != 0 (beta == 0 ignores even NaN in C).
template <int R>
__device__ __forceinline__ void epilogue(const GemmParams& p, int64_t row, int64_t col,
                                         const float (&acc)[R]) {
  const GemmArgs& g = p.g;
  if (row >= g.m || col >= g.n) return;
  float* c = g.c + row * g.ldc + col;
  float* pre = g.preact ? g.preact + row * g.ldc + col : nullptr;
  if (p.vec_c && col + R <= g.n) {
    float z[R], t[R];
#pragma unroll
    for (int j = 0; j < R; ++j) z[j] = g.alpha * acc[j];
    if (g.beta != 0.0f) {
      load_vec<R>(c, t);
#pragma unroll
      for (int j = 0; j < R; ++j) z[j] += g.beta * t[j];
    }
    if (g.bias) {
      load_vec<R>(g.bias + col, t);
#pragma unroll
      for (int j = 0; j < R; ++j) z[j] += t[j];
    }
    if (pre) store_vec<R>(pre, z);
#pragma unroll
    for (int j = 0; j < R; ++j) z[j] = act_forward(z[j], g.act, g.act_param);
    store_vec<R>(c, z);
  } else {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (col + j >= g.n) break;
      float z = g.alpha * acc[j];
      if (g.beta != 0.0f) z += g.beta * c[j];
      if (g.bias) z += g.bias[col + j];
      if (pre) pre[j] = z;
      c[j] = act_forward(z, g.act, g.act_param);
    }
  }
}

// Split-K: four raw products (row, col..col+3) into this block's m x n slice of the partials
// (splitk_reduce_kernel adds the slices in order and applies the epilogue).
__device__ __forceinline__ void partial_store(const GemmParams& p, int64_t row, int64_t col,
                                              const float (&v)[4]) {
  const GemmArgs& g = p.g;
  if (row >= g.m || col >= g.n) return;
  float* d = p.partial + static_cast<int64_t>(blockIdx.z) * g.m * g.n + row * g.n + col;
  if (g.n % 4 == 0) {
    store_vec<4>(d, v);  // col is a multiple of 4, so col + 4 <= n and d is 16-byte aligned
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (col + j < g.n) d[j] = v[j];
    }
  }
}

// ---- the block's product ---------------------------------------------------------------------

// fp32 on the CUDA cores: thread (tx, ty) owns rows {h*BM/2 + ty*4 + i} and columns
// {h*BN/2 + tx*4 + j}, h in {0, 1} (for a 128 tile; one 4x4 piece for a 64 tile).
template <int BM, int BN>
struct Fp32Math {
  static constexpr int TM = BM / 16, TN = BN / 16;  // 16 x 16 threads
  static constexpr int GM = TM / 4, GN = TN / 4;    // 4-wide pieces per thread
  float acc[TM][TN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  }

  // Word rows [KB, KE) of the staged tiles.
  template <int KB, int KE>
  __device__ __forceinline__ void mma_rows(const uint32_t* As, const uint32_t* Bs) {
    constexpr int SA = BM + kPad, SB = BN + kPad;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const float* af = reinterpret_cast<const float*>(As);
    const float* bf = reinterpret_cast<const float*>(Bs);
#pragma unroll
    for (int kw = KB; kw < KE; ++kw) {
      float a[TM], b[TN];
#pragma unroll
      for (int h = 0; h < GM; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(af + kw * SA + h * (BM / GM) + ty * 4);
        a[4 * h] = v.x, a[4 * h + 1] = v.y, a[4 * h + 2] = v.z, a[4 * h + 3] = v.w;
      }
#pragma unroll
      for (int h = 0; h < GN; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(bf + kw * SB + h * (BN / GN) + tx * 4);
        b[4 * h] = v.x, b[4 * h + 1] = v.y, b[4 * h + 2] = v.z, b[4 * h + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  // Copies this thread's accumulators of rows [pass * 64, pass * 64 + 64) to cs (row stride
  // BN + kPad): rows h * 64 + ty * 4 + i belong to pass h.
  __device__ __forceinline__ void stage(float* cs, int pass) const {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      if (i / 4 != pass) continue;
#pragma unroll
      for (int h = 0; h < GN; ++h) {
        *reinterpret_cast<float4*>(cs + (ty * 4 + i % 4) * (BN + kPad) + h * (BN / GN) + tx * 4) =
            make_float4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
      }
    }
  }
};

// tf32 / bf16 on the tensor cores: warp (wm, wn) of a 2 x 4 grid owns a (BM/2) x (BN/4) tile.
template <Precision P, int BM, int BN>
struct TensorMath {
  static constexpr int WTM = BM / 2, WTN = BN / 4;
  static constexpr int MT = WTM / 16, NT = WTN / 8;  // mma tiles per warp
  float acc[MT][NT][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  }

  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    if constexpr (P == Precision::tf32) {
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }

  // Word rows [KB, KE) of the staged tiles; one mma k-step is 8 word rows.
  template <int KB, int KE>
  __device__ __forceinline__ void mma_rows(const uint32_t* As, const uint32_t* Bs) {
    constexpr int SA = BM + kPad, SB = BN + kPad;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int ks = KB; ks < KE; ks += 8) {
      // All B fragments, then one A fragment at a time: fewer live registers than holding
      // every A fragment too (the 128 x 128 bf16 kernel spilled that way).
      uint32_t b[NT][2];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint32_t* s = Bs + (ks + t) * SB + wn * WTN + j * 8 + g;
        b[j][0] = s[0];
        b[j][1] = s[4 * SB];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint32_t* s = As + (ks + t) * SA + wm * WTM + i * 16 + g;
        const uint32_t a[4] = {s[0], s[8], s[4 * SA], s[4 * SA + 8]};
#pragma unroll
        for (int j = 0; j < NT; ++j) mma(acc[i][j], a, b[j]);
      }
    }
  }

  // Copies the accumulators of rows [pass * 64, pass * 64 + 64) to cs (row stride BN + kPad,
  // which is 8 (mod 32) words: the float2 stores of a half-warp hit distinct banks).
  __device__ __forceinline__ void stage(float* cs, int pass) const {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp / 4, wn = warp % 4;
    const int r0 = wm * WTM - pass * 64;  // this warp's first row, relative to the pass
    if (r0 < 0 || r0 >= 64) return;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          *reinterpret_cast<float2*>(cs + (r0 + i * 16 + g + 8 * h) * (BN + kPad) + wn * WTN + j * 8 +
                                     2 * t) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
        }
  }
};

template <Precision P, int BM, int BN>
using BlockMath = std::conditional_t<P == Precision::fp32, Fp32Math<BM, BN>, TensorMath<P, BM, BN>>;

// Two blocks per SM (<= 128 registers a thread, 2 x 34 KB shared) so one block's loads and
// barriers overlap the other's math; except the 128 x 128 bf16 kernel, whose twice-deeper k tile
// needs more staging registers: at 128 it spilled inside the main loop, so it runs one block of
// up to 255 registers per SM.
template <Precision P, int BM, int BN>
constexpr int kMinBlocks = (P == Precision::bf16 && BM == 128) ? 1 : 2;

template <Precision P, int BM, int BN>
__global__ void __launch_bounds__(kThreads, (kMinBlocks<P, BM, BN>)) gemm_kernel(const GemmParams p) {
  constexpr int KP = kKPack<P>;
  using TileA = OperandTile<BM, KP>;
  using TileB = OperandTile<BN, KP>;
  constexpr int BK = TileA::BK;
  static_assert(TileB::BK == BK);
  // Two stages of A and B tiles; after the main loop the same memory stages C for the epilogue.
  constexpr int kStageA = kWordRows * TileA::S, kStageB = kWordRows * TileB::S;
  __shared__ __align__(16) uint32_t smem[2 * (kStageA + kStageB)];
  // Stage s of A at smem + s * kStageA, of B at Bs0 + s * kStageB (arithmetic, not a pointer
  // array: indexing an array with the run-time stage would put it in local memory).
  uint32_t* const Bs0 = smem + 2 * kStageA;

  const GemmArgs& g = p.g;
  // Split-K: this block's k range (it starts at a multiple of 64, so operand pointers keep
  // their 16-byte alignment); its products go to its slice of the partials (see the epilogue).
  const float* a_ptr = g.a;
  const float* b_ptr = g.b;
  int64_t kk = g.k;
  if (p.k_chunk) {
    const int64_t k0 = static_cast<int64_t>(blockIdx.z) * p.k_chunk;
    kk = g.k - k0 < p.k_chunk ? g.k - k0 : p.k_chunk;
    a_ptr += g.trans_a ? k0 * g.lda : k0;
    b_ptr += g.trans_b ? k0 : k0 * g.ldb;
  }
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  // A is stored m x k unless trans_a (then k x m); B is k x n unless trans_b (then n x k).
  const bool a_kcontig = !g.trans_a, b_kcontig = g.trans_b;

  BlockMath<P, BM, BN> math;
  math.zero();
  TileA ta;
  TileB tb;
  ta.init(a_ptr, g.lda, a_kcontig, p.vec_a, m0, g.m, kk);
  tb.init(b_ptr, g.ldb, b_kcontig, p.vec_b, n0, g.n, kk);
  ta.load();
  tb.load();
  ta.template store<P>(smem);
  tb.template store<P>(Bs0);
  __syncthreads();

  // The next tile's A loads fly during the first half of this tile's math and its B loads
  // during the second half, so only one operand's staging registers are live at a time (the
  // 128 x 128 bf16 kernel spilled when both were). The other buffer was last read before the
  // previous barrier, so it can be written at any point of this iteration.
  constexpr int kHalf = kWordRows / 2;
  const int64_t tiles = (kk + BK - 1) / BK;
  for (int64_t t = 0; t < tiles; ++t) {
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < tiles;
    if (more) {
      ta.next_tile();
      ta.load();
    }
    math.template mma_rows<0, kHalf>(smem + cur * kStageA, Bs0 + cur * kStageB);
    if (more) {
      ta.template store<P>(smem + (cur ^ 1) * kStageA);
      tb.next_tile();
      tb.load();
    }
    math.template mma_rows<kHalf, kWordRows>(smem + cur * kStageA, Bs0 + cur * kStageB);
    if (more) tb.template store<P>(Bs0 + (cur ^ 1) * kStageB);
    __syncthreads();
  }

  // Epilogue, 64 rows at a time: the accumulators go through shared memory so that one rolled
  // loop applies alpha/beta/bias/activation with whole-row float4 stores (coalesced), and the
  // epilogue's code exists once instead of once per accumulator (which made the kernel 40k
  // instructions long and slow to compile).
  constexpr int kPassRows = 64, kCStride = BN + kPad;
  static_assert(kPassRows * kCStride <= 2 * (kStageA + kStageB), "C staging does not fit");
  float* cs = reinterpret_cast<float*>(smem);
  for (int pass = 0; pass < BM / kPassRows; ++pass) {
    const int64_t row0 = m0 + pass * kPassRows;
    if (row0 >= g.m) break;  // uniform across the block
    math.stage(cs, pass);
    __syncthreads();
#pragma unroll 1
    for (int idx = threadIdx.x; idx < kPassRows * BN / 4; idx += kThreads) {
      const int r = idx / (BN / 4), c = (idx % (BN / 4)) * 4;
      const float4 v4 = *reinterpret_cast<const float4*>(cs + r * kCStride + c);
      const float v[4] = {v4.x, v4.y, v4.z, v4.w};
      if (p.k_chunk) {
        partial_store(p, row0 + r, n0 + c, v);
      } else {
        epilogue<4>(p, row0 + r, n0 + c, v);
      }
    }
    __syncthreads();
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

int multiprocessors() {
  // Read per call (cheap: a cached attribute) so that a change of current device is honoured.
  int dev = 0, sms = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&dev));
  EMBER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

template <Precision P, int BM, int BN>
void launch(const GemmParams& p, int64_t splits, cudaStream_t stream) {
  const int64_t gy = (p.g.m + BM - 1) / BM, gx = (p.g.n + BN - 1) / BN;
  if (gy > 65535) throw std::invalid_argument("gemm: m = " + std::to_string(p.g.m) + " is too large");
  if (gx > 0x7fffffff) throw std::invalid_argument("gemm: n = " + std::to_string(p.g.n) + " is too large");
  gemm_kernel<P, BM, BN><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                                static_cast<unsigned>(splits)),
                           kThreads, 0, stream>>>(p);
  EMBER_CUDA_CHECK_LAUNCH("gemm_kernel");
}

// How a product is cut up: tile size, and the number of k slices (1: no split-K).
struct Split {
  int tile;
  int64_t splits, k_chunk;
};

constexpr int64_t kSplitMinK = 256;  // k per slice, at least
constexpr int64_t kMaxSplits = 128;

int64_t clamp_splits(int64_t want, int64_t k) {
  int64_t s = want < k / kSplitMinK ? want : k / kSplitMinK;
  s = s < kMaxSplits ? s : kMaxSplits;
  return s < 1 ? 1 : s;
}

Split split_for(int64_t m, int64_t n, int64_t k, int sms) {
  // 128 x 128 tiles when they fill the GPU. Otherwise the output is too small for the machine
  // (a weight gradient dZ^T X: out x in, with the batch as k): when k is long, each tile's k is
  // cut into slices multiplied by separate blocks, aiming at two blocks per SM; 128 tiles if
  // that gives every SM a block, else 64 x 64 tiles (4x the blocks, e.g. a 256 x 1024 layer).
  const int64_t big = ((m + 127) / 128) * ((n + 127) / 128);
  const int64_t small = ((m + 63) / 64) * ((n + 63) / 64);
  // A side of at most 64 would leave half of every 128 x 128 tile idle (a 64-wide layer at a
  // large batch): 64 x 64 tiles then, as long as they fill the GPU.
  if (big >= sms) return {(m <= 64 || n <= 64) ? 64 : 128, 1, 0};
  const int64_t s128 = clamp_splits(2 * sms / big, k);
  if (s128 > 1 && big * s128 >= sms) {
    const int64_t chunk = (k + s128 - 1) / s128;
    const int64_t c = (chunk + 63) / 64 * 64;
    return {128, (k + c - 1) / c, c};
  }
  const int64_t s64 = small >= sms ? 1 : clamp_splits(2 * sms / small, k);
  if (s64 <= 1) return {64, 1, 0};
  const int64_t c = ((k + s64 - 1) / s64 + 63) / 64 * 64;
  return {64, (k + c - 1) / c, c};
}

// C = epilogue(sum over the k slices of the partial products), the slices added in order (the
// same bits on every run). R = 4: four consecutive outputs (n % 4 == 0); R = 1 otherwise (then
// p.vec_c is false, so the epilogue takes its scalar path).
template <int R>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const GemmParams p, int64_t splits) {
  const int64_t m = p.g.m, n = p.g.n, mn = m * n, groups = mn / R;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[R];
    if constexpr (R == 4) {
      float4 s = reinterpret_cast<const float4*>(p.partial)[i];
      for (int64_t z = 1; z < splits; ++z) {
        const float4 t = reinterpret_cast<const float4*>(p.partial + z * mn)[i];
        s.x += t.x, s.y += t.y, s.z += t.z, s.w += t.w;
      }
      v[0] = s.x, v[1] = s.y, v[2] = s.z, v[3] = s.w;
    } else {
      float s = p.partial[i];
      for (int64_t z = 1; z < splits; ++z) s += p.partial[z * mn + i];
      v[0] = s;
    }
    const int64_t e = i * R;
    epilogue<R>(p, e / n, e % n, v);
  }
}

template <Precision P>
void launch_sized(const GemmParams& p, float* workspace, cudaStream_t stream) {
  const int sms = multiprocessors();
  Split sp = split_for(p.g.m, p.g.n, p.g.k, sms);
  if (!workspace) sp.splits = 1;
  if (sp.splits == 1) {
    if (sp.tile == 128) {
      launch<P, 128, 128>(p, 1, stream);
    } else {
      launch<P, 64, 64>(p, 1, stream);
    }
    return;
  }
  GemmParams q = p;
  q.k_chunk = sp.k_chunk;
  q.partial = workspace;
  if (sp.tile == 128) {
    launch<P, 128, 128>(q, sp.splits, stream);
  } else {
    launch<P, 64, 64>(q, sp.splits, stream);
  }
  const int64_t mn = p.g.m * p.g.n;
  const bool four = p.g.n % 4 == 0;
  const int64_t groups = four ? mn / 4 : mn;
  int64_t blocks = (groups + 255) / 256;
  blocks = blocks < 8 * sms ? blocks : 8 * sms;
  if (four) {
    splitk_reduce_kernel<4><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(q, sp.splits);
  } else {
    GemmParams s = q;
    s.vec_c = false;
    splitk_reduce_kernel<1><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(s, sp.splits);
  }
  EMBER_CUDA_CHECK_LAUNCH("splitk_reduce_kernel");
}

// ---- linear backward helpers -------------------------------------------------------------------

constexpr int kColsPerBlock = 32;
constexpr int kRowThreads = 8;
constexpr int kRowsPerChunk = 256;

// dZ = dY * act'(Z) (written when dz != null) and, when partials != null, each block's column sums
// of dZ over its chunk of rows, summed in a fixed order.
__global__ void __launch_bounds__(kColsPerBlock* kRowThreads)
    dz_bias_partials_kernel(const float* grad_out, const float* __restrict__ preact,
                            float* dz, float* __restrict__ partials, int64_t batch, int64_t out,
                            Activation act, float act_param) {
  __shared__ float red[kRowThreads][kColsPerBlock + 1];
  const int tx = threadIdx.x % kColsPerBlock, ty = threadIdx.x / kColsPerBlock;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < batch ? r0 + kRowsPerChunk : batch;
  float s = 0.0f;
  if (col < out) {
    for (int64_t r = r0 + ty; r < r1; r += kRowThreads) {
      const int64_t i = r * out + col;
      float d = grad_out[i];
      if (dz) {  // may alias grad_out: this thread reads element i before writing it
        d *= act_derivative(preact[i], act, act_param);
        dz[i] = d;
      }
      s += d;
    }
  }
  if (!partials) return;  // uniform across the grid
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < out) {
    float total = red[0][tx];
#pragma unroll
    for (int i = 1; i < kRowThreads; ++i) total += red[i][tx];
    partials[blockIdx.y * out + col] = total;
  }
}

__global__ void bias_reduce_kernel(const float* __restrict__ partials, int64_t chunks, int64_t out,
                                   float* __restrict__ grad_bias, bool accumulate) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= out) return;
  float s = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) s += partials[c * out + col];
  grad_bias[col] = accumulate ? grad_bias[col] + s : s;
}

int64_t chunks_for(int64_t batch) { return (batch + kRowsPerChunk - 1) / kRowsPerChunk; }

}  // namespace

int64_t gemm_workspace_floats(int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const Split sp = split_for(m, n, k, multiprocessors());
  return sp.splits > 1 ? sp.splits * m * n : 0;
}

void gemm(const GemmArgs& args, Precision precision, Stream stream, float* workspace) {
  if (args.m <= 0 || args.n <= 0 || args.k <= 0) {
    throw std::invalid_argument("gemm: m, n and k must be >= 1");
  }
  if (!args.a || !args.b || !args.c) throw std::invalid_argument("gemm: a, b and c are required");
  const int64_t a_cols = args.trans_a ? args.m : args.k, b_cols = args.trans_b ? args.k : args.n;
  if (args.lda < a_cols || args.ldb < b_cols || args.ldc < args.n) {
    throw std::invalid_argument("gemm: a leading dimension is smaller than its row");
  }
  GemmParams p{args, args.lda % 4 == 0 && aligned16(args.a), args.ldb % 4 == 0 && aligned16(args.b),
               args.ldc % 4 == 0 && aligned16(args.c) && (!args.preact || aligned16(args.preact)) &&
                   (!args.bias || aligned16(args.bias))};
  if (workspace && !aligned16(workspace)) workspace = nullptr;  // split-K reads it as float4
  auto s = static_cast<cudaStream_t>(stream);
  switch (precision) {
    case Precision::fp32: return launch_sized<Precision::fp32>(p, workspace, s);
    case Precision::tf32: return launch_sized<Precision::tf32>(p, workspace, s);
    case Precision::bf16: return launch_sized<Precision::bf16>(p, workspace, s);
  }
  throw std::invalid_argument("gemm: unknown precision");
}

int64_t linear_backward_partials_size(int64_t batch, int64_t in_features, int64_t out_features) {
  // The bias gradient's per-chunk sums, then (the same memory, later in stream order) the
  // split-K slices of dX and dW.
  const int64_t bias = chunks_for(batch) * out_features;
  const int64_t dx = gemm_workspace_floats(batch, in_features, out_features);
  const int64_t dw = gemm_workspace_floats(out_features, in_features, batch);
  int64_t most = bias > dx ? bias : dx;
  return most > dw ? most : dw;
}

void linear_backward(const LinearBackwardArgs& a, Precision precision, float* partials,
                     Stream stream) {
  if (a.batch <= 0 || a.in_features <= 0 || a.out_features <= 0) {
    throw std::invalid_argument("linear_backward: batch, in_features and out_features must be >= 1");
  }
  const bool fused_act = a.act != Activation::identity;
  if (fused_act && (!a.preact || !a.grad_preact)) {
    throw std::invalid_argument("linear_backward: preact and grad_preact are required for an activation");
  }
  if (a.grad_bias && !partials) throw std::invalid_argument("linear_backward: partials are required");
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = chunks_for(a.batch);
  if (chunks > 65535) throw std::invalid_argument("linear_backward: batch is too large");

  if (fused_act || a.grad_bias) {
    const dim3 grid(static_cast<unsigned>((a.out_features + kColsPerBlock - 1) / kColsPerBlock),
                    static_cast<unsigned>(chunks));
    dz_bias_partials_kernel<<<grid, kColsPerBlock * kRowThreads, 0, s>>>(
        a.grad_out, a.preact, fused_act ? a.grad_preact : nullptr,
        a.grad_bias ? partials : nullptr, a.batch, a.out_features, a.act, a.act_param);
    EMBER_CUDA_CHECK_LAUNCH("dz_bias_partials_kernel");
  }
  if (a.grad_bias) {
    bias_reduce_kernel<<<static_cast<unsigned>((a.out_features + 255) / 256), 256, 0, s>>>(
        partials, chunks, a.out_features, a.grad_bias, a.accumulate);
    EMBER_CUDA_CHECK_LAUNCH("bias_reduce_kernel");
  }
  const float* dz = fused_act ? a.grad_preact : a.grad_out;
  if (a.grad_input) {  // dX = dZ W: (batch x out) (out x in)
    GemmArgs g;
    g.m = a.batch, g.n = a.in_features, g.k = a.out_features;
    g.a = dz, g.lda = a.out_features;
    g.b = a.weight, g.ldb = a.in_features;
    g.c = a.grad_input, g.ldc = a.in_features;
    gemm(g, precision, stream, partials);
  }
  if (a.grad_weight) {  // dW (+)= dZ^T X: (out x batch) (batch x in)
    GemmArgs g;
    g.m = a.out_features, g.n = a.in_features, g.k = a.batch;
    g.a = dz, g.lda = a.out_features, g.trans_a = true;
    g.b = a.x, g.ldb = a.in_features;
    g.c = a.grad_weight, g.ldc = a.in_features;
    g.beta = a.accumulate ? 1.0f : 0.0f;
    gemm(g, precision, stream, partials);
  }
}

}  // namespace ember::cuda
