// Losses and metrics on the GPU: softmax cross-entropy (forward and backward in one kernel), MSE,
// argmax and accuracy. The semantics are csrc/cpu/loss.cpp's (PyTorch's), see ember/common.h.
//
// Softmax cross-entropy: a group of G lanes owns a row (G = 4..32 lanes of a warp for rows of up
// to 2048 classes, the whole 256-thread block beyond). Pass 1 is the online softmax: each lane
// keeps a running max m and a sum s of exp(x - m) rescaled whenever m grows, and the lanes'
// (m, s) pairs are merged with a commutative combine. Pass 2 re-reads the row (from L1/L2) and
// writes the gradient, which may overwrite the logits: every lane has read x[label] before pass 1.
// The batch loss: each group adds its rows' losses in double, each block its groups' in group
// order into one partial, and a one-block kernel adds the partials in a fixed order.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "reduce.cuh"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;  // blocks of a reducing launch (and partial sums)
constexpr int64_t kNoBadRow = INT64_MAX;

// Workspace words: [0] result, [1] bad row, [2] denominator (weighted mean), [3] sum of class
// weights, [4, 4 + P) partial sums, [4 + P, 4 + 2P) partial bad rows.
constexpr int64_t kHeader = 4;

struct Workspace {
  double* w;
  int64_t partials;
  __host__ __device__ double* result() const { return w; }
  __host__ __device__ int64_t* bad() const { return reinterpret_cast<int64_t*>(w + 1); }
  __host__ __device__ double* denom() const { return w + 2; }
  __host__ __device__ double* weight_sum() const { return w + 3; }
  __host__ __device__ double* sums() const { return w + kHeader; }
  __host__ __device__ int64_t* bads() const { return reinterpret_cast<int64_t*>(w + kHeader + partials); }
};

int blocks_for(int64_t units) {
  return static_cast<int>(units < kMaxPartials ? (units < 1 ? 1 : units) : kMaxPartials);
}

// ---- the batch reduction ------------------------------------------------------------------------

// result = (sum of partials) * scale / denominator (denominator from `denom_ptr` when set), bad =
// the lowest bad row or -1 (then the result is NaN); loss_out gets the result as a float,
// loss_out64 as the double it is.
__global__ void __launch_bounds__(kThreads) finalize_kernel(Workspace ws, int nparts, double scale,
                                                            const double* denom_ptr,
                                                            float* loss_out, double* loss_out64) {
  __shared__ double scratch[kThreads / kWarp];
  __shared__ int64_t bad_s[kThreads / kWarp];
  const double total = sum_in_order(ws.sums(), nparts, scratch);
  int64_t bad = kNoBadRow;
  for (int i = threadIdx.x; i < nparts; i += kThreads) bad = ws.bads()[i] < bad ? ws.bads()[i] : bad;
  bad = lanes_allreduce<kWarp>(bad, [](int64_t a, int64_t b) { return a < b ? a : b; });
  if (threadIdx.x % kWarp == 0) bad_s[threadIdx.x / kWarp] = bad;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kThreads / kWarp; ++w) bad = bad_s[w] < bad ? bad_s[w] : bad;
  double r = total * scale;
  if (denom_ptr) r /= *denom_ptr;
  if (bad != kNoBadRow) r = NAN;
  *ws.result() = r;
  *ws.bad() = bad == kNoBadRow ? -1 : bad;
  if (loss_out) *loss_out = static_cast<float>(r);
  if (loss_out64) *loss_out64 = r;
}

// Writes one block's partial sum and lowest bad row (thread 0 passes its values; the others'
// are ignored).
__device__ __forceinline__ void write_partial(Workspace ws, double sum, int64_t bad) {
  if (threadIdx.x == 0) {
    ws.sums()[blockIdx.x] = sum;
    ws.bads()[blockIdx.x] = bad;
  }
}

// ---- softmax cross-entropy ----------------------------------------------------------------------

struct XentParams {
  SoftmaxCrossEntropyArgs a;
  Workspace ws;
  float eps_over_c;  // label_smoothing / classes
  double grad_den;   // unweighted mean: rows; otherwise 1 (weighted mean: *ws.denom())
  bool weighted_mean;
};

struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  // m == -inf on both sides (no element yet) must not give (-inf) - (-inf) = NaN.
  const float sa = a.m == m ? a.s : a.s * expf(a.m - m);
  const float sb = b.m == m ? b.s : b.s * expf(b.m - m);
  return {m, sa + sb};
}

// Shared scratch of one block for the group reductions of the G == kThreads (one row per block)
// kernel; unused for G <= 32.
struct GroupScratch {
  float m[kThreads / kWarp], s[kThreads / kWarp];
  double d[kThreads / kWarp];
};

template <int G>
__device__ __forceinline__ MaxSum group_maxsum(MaxSum v, GroupScratch& sh) {
  constexpr int L = G < kWarp ? G : kWarp;
  const float vm = lanes_allreduce<L>(v.m, [](float a, float b) { return fmaxf(a, b); });
  v.s = v.m == vm ? v.s : v.s * expf(v.m - vm);  // -inf == -inf keeps s = 0
  v.m = vm;
  v.s = lanes_allreduce<L>(v.s, [](float a, float b) { return a + b; });
  if constexpr (G > kWarp) {
    if (threadIdx.x % kWarp == 0) sh.m[threadIdx.x / kWarp] = v.m, sh.s[threadIdx.x / kWarp] = v.s;
    __syncthreads();
    MaxSum t{sh.m[0], sh.s[0]};
    for (int w = 1; w < G / kWarp; ++w) t = combine(t, MaxSum{sh.m[w], sh.s[w]});
    __syncthreads();
    return t;
  } else {
    return v;
  }
}

template <int G>
__device__ __forceinline__ double group_sum(double v, GroupScratch& sh) {
  if constexpr (G > kWarp) {
    return block_allreduce_sum(v, sh.d);
  } else {
    return lanes_allreduce<G>(v, [](double a, double b) { return a + b; });
  }
}

template <int G>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(const XentParams p) {
  constexpr int kGroups = kThreads / G;
  __shared__ GroupScratch sh;
  __shared__ double loss_s[kGroups];
  __shared__ int64_t bad_s[kGroups];
  const SoftmaxCrossEntropyArgs& a = p.a;
  const int lane = threadIdx.x % G, group = threadIdx.x / G;
  const int64_t C = a.classes;
  const float eps = a.label_smoothing;
  const float* w = a.class_weight;
  const double W = w ? *p.ws.weight_sum() : static_cast<double>(C);
  const double den = p.weighted_mean ? *p.ws.denom() : p.grad_den;
  const float scale = static_cast<float>(a.grad_scale / den);
  double loss_acc = 0.0;
  int64_t bad = kNoBadRow;

  // The loop bound is uniform across the block, so every lane takes part in every reduction.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kGroups; base < a.rows;
       base += static_cast<int64_t>(gridDim.x) * kGroups) {
    const int64_t row = base + group;
    const bool live = row < a.rows;
    const float* x = a.logits + (live ? row : 0) * C;
    const int64_t y = live ? a.labels[row] : 0;
    const bool ok = live && y >= 0 && y < C;
    const float xy = ok ? x[y] : 0.0f;  // read by every lane before any gradient is written

    MaxSum ms{-INFINITY, 0.0f};
    double wx = 0.0;  // sum_c w_c x_c, only for label smoothing
    if (live) {
      for (int64_t c = lane; c < C; c += G) {
        const float v = x[c];
        if (v > ms.m) {
          ms.s = ms.s * expf(ms.m - v) + 1.0f;  // exp(-inf) = 0 for the first element
          ms.m = v;
        } else {
          ms.s += expf(v - ms.m);  // NaN logits propagate through here
        }
        if (eps != 0.0f) wx += static_cast<double>(w ? w[c] : 1.0f) * v;
      }
    }
    ms = group_maxsum<G>(ms, sh);
    if (eps != 0.0f) wx = group_sum<G>(wx, sh);  // eps is uniform: no divergence

    if (!live) continue;  // the last barrier-holding reduction is behind us
    if (!ok) {
      bad = bad < row ? bad : row;
      if (a.row_loss && lane == 0) a.row_loss[row] = NAN;
      if (a.grad) {
        for (int64_t c = lane; c < C; c += G) a.grad[row * C + c] = NAN;
      }
      continue;
    }
    const float wy = w ? w[y] : 1.0f;
    if (lane == 0) {
      // In double: lse - x_y and W lse - sum w x would lose digits to cancellation in float.
      const double lse = static_cast<double>(ms.m) + log(static_cast<double>(ms.s));
      double l = (1.0 - eps) * wy * (lse - xy);
      if (eps != 0.0f) l += static_cast<double>(p.eps_over_c) * (W * lse - wx);
      if (a.row_loss) a.row_loss[row] = static_cast<float>(l);
      loss_acc += l;
    }
    if (a.grad) {
      // d l / d x_c = p_c ((1-eps) w_y + eps W / C) - (1-eps) w_y [c == y] - (eps / C) w_c
      const float lse = ms.m + logf(ms.s);
      const float A = scale * static_cast<float>((1.0 - eps) * wy + p.eps_over_c * W);
      const float B = scale * ((1.0f - eps) * wy);
      const float E = scale * p.eps_over_c;
      float* g = a.grad + row * C;
      for (int64_t c = lane; c < C; c += G) {
        float v = expf(x[c] - lse) * A;
        if (c == y) v -= B;
        if (E != 0.0f) v -= E * (w ? w[c] : 1.0f);
        g[c] = v;
      }
    }
  }
  if (lane == 0) loss_s[group] = loss_acc, bad_s[group] = bad;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = loss_s[0];
    int64_t b = bad_s[0];
    for (int i = 1; i < kGroups; ++i) s += loss_s[i], b = b < bad_s[i] ? b : bad_s[i];
    write_partial(p.ws, s, b);
  }
}

// Weighted mean: sum_i w[y_i] over rows with valid labels (the denominator) and sum_c w[c] (for
// label smoothing), by one block in a fixed order.
__global__ void __launch_bounds__(kThreads) class_weight_sums_kernel(const SoftmaxCrossEntropyArgs a,
                                                                     Workspace ws) {
  __shared__ double scratch[kThreads / kWarp];
  double d = 0.0, W = 0.0;
  for (int64_t i = threadIdx.x; i < a.rows; i += kThreads) {
    const int64_t y = a.labels[i];
    if (y >= 0 && y < a.classes) d += a.class_weight[y];
  }
  for (int64_t c = threadIdx.x; c < a.classes; c += kThreads) W += a.class_weight[c];
  d = block_allreduce_sum(d, scratch);
  W = block_allreduce_sum(W, scratch);
  if (threadIdx.x == 0) *ws.denom() = d, *ws.weight_sum() = W;
}

// Returns the grid (= the number of partials): it depends only on the shape.
template <int G>
int launch_xent(const XentParams& p, cudaStream_t s) {
  const int grid = blocks_for((p.a.rows + kThreads / G - 1) / (kThreads / G));
  softmax_xent_kernel<G><<<grid, kThreads, 0, s>>>(p);
  EMBER_CUDA_CHECK_LAUNCH("softmax_xent_kernel");
  return grid;
}

// ---- MSE ----------------------------------------------------------------------------------------

struct MseParams {
  int64_t n;
  const float* pred;
  const float* target;
  float* grad;
  float coef;  // grad_scale * 2 / n (mean) or grad_scale * 2 (sum)
  bool vec;
  Workspace ws;
};

__device__ __forceinline__ float mse_one(const MseParams& p, float pv, float tv, double& acc) {
  const float d = pv - tv;
  acc += static_cast<double>(d) * d;
  return p.coef * d;
}

__global__ void __launch_bounds__(kThreads) mse_kernel(const MseParams p) {
  __shared__ double scratch[kThreads / kWarp];
  double acc = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int64_t tail = 0;
  if (p.vec) {
    const int64_t n4 = p.n / 4;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 a = reinterpret_cast<const float4*>(p.pred)[i];
      const float4 b = reinterpret_cast<const float4*>(p.target)[i];
      float4 g;
      g.x = mse_one(p, a.x, b.x, acc);
      g.y = mse_one(p, a.y, b.y, acc);
      g.z = mse_one(p, a.z, b.z, acc);
      g.w = mse_one(p, a.w, b.w, acc);
      if (p.grad) reinterpret_cast<float4*>(p.grad)[i] = g;
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + t0; i < p.n; i += stride) {
    const float g = mse_one(p, p.pred[i], p.target[i], acc);
    if (p.grad) p.grad[i] = g;
  }
  acc = block_allreduce_sum(acc, scratch);
  write_partial(p.ws, acc, kNoBadRow);
}

// ---- argmax and accuracy --------------------------------------------------------------------

struct ValIdx {
  float v;
  int64_t i;
};

// The better of two candidates: larger value, NaN above everything, lower index on ties.
__device__ __forceinline__ ValIdx better(ValIdx a, ValIdx b) {
  const bool an = a.v != a.v, bn = b.v != b.v;
  if (an != bn) return an ? a : b;
  if (!an && a.v != b.v) return a.v > b.v ? a : b;
  return a.i < b.i ? a : b;
}

// One warp per row; returns the row's argmax to every lane (-1 for an empty row: never, rows
// have >= 1 column).
__device__ __forceinline__ int64_t warp_argmax(const float* x, int64_t cols, int lane) {
  ValIdx best{-INFINITY, -1};
  for (int64_t c = lane; c < cols; c += kWarp) best = better(best, ValIdx{x[c], c});
  if (best.i < 0) best.i = INT64_MAX;  // lanes that saw nothing lose every tie
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    ValIdx o{__shfl_xor_sync(0xffffffffu, best.v, off), __shfl_xor_sync(0xffffffffu, best.i, off)};
    best = better(best, o);
  }
  return best.i;
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int64_t rows, int64_t cols,
                                                          const float* __restrict__ x,
                                                          int64_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / kWarp);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
       r < rows; r += warps) {
    const int64_t i = warp_argmax(x + r * cols, cols, lane);
    if (lane == 0) out[r] = i;
  }
}

__global__ void __launch_bounds__(kThreads) count_correct_kernel(int64_t rows, int64_t cols,
                                                                 const float* __restrict__ x,
                                                                 const int64_t* __restrict__ labels,
                                                                 Workspace ws) {
  __shared__ double cnt_s[kThreads / kWarp];
  __shared__ int64_t bad_s[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / kWarp);
  double cnt = 0.0;  // exact: counts stay far below 2^53
  int64_t bad = kNoBadRow;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + warp; r < rows;
       r += warps) {
    const int64_t i = warp_argmax(x + r * cols, cols, lane);
    const int64_t y = labels[r];
    if (y < 0 || y >= cols) {
      bad = bad < r ? bad : r;
    } else if (i == y) {
      cnt += 1.0;
    }
  }
  if (lane == 0) cnt_s[warp] = cnt, bad_s[warp] = bad;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / kWarp; ++w) cnt += cnt_s[w], bad = bad < bad_s[w] ? bad : bad_s[w];
    write_partial(ws, cnt, bad);
  }
}

int warp_grid(int64_t rows) { return blocks_for((rows + kThreads / kWarp - 1) / (kThreads / kWarp)); }

void finalize(const Workspace& ws, int nparts, double scale, const double* denom_ptr,
              float* loss_out, double* loss_out64, cudaStream_t s) {
  finalize_kernel<<<1, kThreads, 0, s>>>(ws, nparts, scale, denom_ptr, loss_out, loss_out64);
  EMBER_CUDA_CHECK_LAUNCH("finalize_kernel");
}

}  // namespace

int64_t loss_workspace_words() { return kHeader + 2 * kMaxPartials; }

void softmax_cross_entropy(const SoftmaxCrossEntropyArgs& args, void* workspace, float* loss_out,
                           double* loss_out64, Stream stream) {
  if (args.rows <= 0 || args.classes <= 0) {
    throw std::invalid_argument("softmax_cross_entropy: rows and classes must be >= 1");
  }
  if (!args.logits || !args.labels || !workspace) {
    throw std::invalid_argument("softmax_cross_entropy: logits, labels and workspace are required");
  }
  auto s = static_cast<cudaStream_t>(stream);
  const Workspace ws{static_cast<double*>(workspace), kMaxPartials};
  const bool mean = args.reduction == Reduction::mean;
  XentParams p{args, ws, static_cast<float>(static_cast<double>(args.label_smoothing) / args.classes),
               mean && !args.class_weight ? static_cast<double>(args.rows) : 1.0,
               mean && args.class_weight};
  if (args.class_weight) {
    class_weight_sums_kernel<<<1, kThreads, 0, s>>>(args, ws);
    EMBER_CUDA_CHECK_LAUNCH("class_weight_sums_kernel");
  }
  // Lanes per row: about 4 classes a lane for small rows, a warp up to 2048, then the block.
  const int64_t C = args.classes;
  const int grid = C <= 16   ? launch_xent<4>(p, s)
                   : C <= 32 ? launch_xent<8>(p, s)
                   : C <= 64 ? launch_xent<16>(p, s)
                   : C <= 2048 ? launch_xent<32>(p, s)
                               : launch_xent<kThreads>(p, s);
  const double scale = mean && !args.class_weight ? 1.0 / static_cast<double>(args.rows) : 1.0;
  finalize(ws, grid, scale, p.weighted_mean ? ws.denom() : nullptr, loss_out, loss_out64, s);
}

void mse(int64_t n, const float* pred, const float* target, float* grad, Reduction reduction,
         float grad_scale, void* workspace, float* loss_out, double* loss_out64, Stream stream) {
  if (n <= 0 || !pred || !target || !workspace) {
    throw std::invalid_argument("mse: n >= 1, pred, target and workspace are required");
  }
  auto s = static_cast<cudaStream_t>(stream);
  const Workspace ws{static_cast<double*>(workspace), kMaxPartials};
  const bool mean = reduction == Reduction::mean;
  const double coef = 2.0 * grad_scale / (mean ? static_cast<double>(n) : 1.0);
  auto a16 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  const MseParams p{n, pred, target, grad, static_cast<float>(coef),
                    a16(pred) && a16(target) && (!grad || a16(grad)), ws};
  const int grid = blocks_for((n + 4 * kThreads * 4 - 1) / (4 * kThreads * 4));
  mse_kernel<<<grid, kThreads, 0, s>>>(p);
  EMBER_CUDA_CHECK_LAUNCH("mse_kernel");
  finalize(ws, grid, mean ? 1.0 / static_cast<double>(n) : 1.0, nullptr, loss_out, loss_out64, s);
}

void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out, Stream stream) {
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("argmax: rows and cols must be >= 1");
  argmax_kernel<<<warp_grid(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(rows, cols, x, out);
  EMBER_CUDA_CHECK_LAUNCH("argmax_kernel");
}

void count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                   void* workspace, Stream stream) {
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("accuracy: rows and cols must be >= 1");
  auto s = static_cast<cudaStream_t>(stream);
  const Workspace ws{static_cast<double*>(workspace), kMaxPartials};
  const int grid = warp_grid(rows);
  count_correct_kernel<<<grid, kThreads, 0, s>>>(rows, cols, logits, labels, ws);
  EMBER_CUDA_CHECK_LAUNCH("count_correct_kernel");
  finalize(ws, grid, 1.0, nullptr, nullptr, nullptr, s);
}

}  // namespace ember::cuda
