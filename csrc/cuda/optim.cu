// Fused multi-tensor SGD / Adam / AdamW with global-norm clipping and the non-finite skip, and the
// global gradient norm, on the GPU. Update rules and rounding: csrc/cpu/optim.cpp (torch.optim's
// _single_tensor_* rules, float math, step-dependent scalars in double rounded once).
//
// Tensors are described by value (Apex multi_tensor_apply style): a TensorList holds up to
// kMaxTensorsPerLaunch tensors' pointers and sizes, laid end to end in a "virtual" index space in
// which each tensor starts at a multiple of 4 (so a block's range starts 16-byte aligned in every
// tensor whose pointers are). A block owns one fixed-size range of that space, which may span
// several small tensors: no launch is wasted on a bias of 10 elements.
//
// Launch 1 (sumsq_kernel): each block adds the squares of its range of the gradients in double into
// one partial. Launch 2 (update_kernel): each block first adds all partials in one fixed order
// (sum_in_order: the same bits in every block), takes the square root, decides skip / clip, and
// updates its range. More tensors than one TensorList holds take more launches of each kind; the
// partials of all of them are reduced by every update block.
// Step and learning rate are read from device memory: launch 1's block 0 copies the caller's
// state into the workspace (the snapshot), launch 2 reads only the snapshot, so the last update
// launch may advance the caller's step without racing with blocks that have not read it yet.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "check.cuh"
#include "reduce.cuh"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxT = kMaxTensorsPerLaunch;
// Workspace words: [0, 2) snapshot {step, lr bits}, [2, 4) host-path result {norm bits, skipped},
// [4, ...) partials.
constexpr int64_t kHeader = 4;
constexpr int64_t kMinSumChunk = 1 << 14;   // elements per sumsq block, at least
constexpr int64_t kMaxSumBlocks = 512;      // partials per launch, at most
// Elements per update block, at least: 4096 (not 16384) so that 10M parameters make ~2,600
// blocks, ~5 waves, instead of 640 (1.2 waves: on an H200 the update then ran at half the copy
// bandwidth, 0.140 ms for 10.5M parameters, the second wave's SMs mostly idle).
constexpr int64_t kUpdateChunk = 1 << 12;
constexpr int64_t kMaxUpdateBlocks = 32768;

// D arrays per tensor: [0] the gradient (read), [1] the parameter, [2..] optimizer state.
template <int D>
struct TensorList {
  float* ptr[D][kMaxT];
  int64_t size[kMaxT];
  int64_t start[kMaxT + 1];  // virtual offsets; start[count] is the end of the space
  int count;
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct Plan {  // one launch's share of the tensors
  int64_t t0, count, total;
  int64_t sum_chunk, sum_blocks, upd_chunk, upd_blocks;
};

std::vector<Plan> plan(int64_t count, const int64_t* sizes) {
  std::vector<Plan> out;
  for (int64_t t0 = 0; t0 < count; t0 += kMaxT) {
    Plan p{};
    p.t0 = t0;
    p.count = count - t0 < kMaxT ? count - t0 : kMaxT;
    for (int64_t i = 0; i < p.count; ++i) p.total = round_up(p.total, 4) + sizes[t0 + i];
    p.sum_chunk = round_up((p.total + kMaxSumBlocks - 1) / kMaxSumBlocks, 1024);
    if (p.sum_chunk < kMinSumChunk) p.sum_chunk = kMinSumChunk;
    p.sum_blocks = (p.total + p.sum_chunk - 1) / p.sum_chunk;
    p.upd_chunk = round_up((p.total + kMaxUpdateBlocks - 1) / kMaxUpdateBlocks, 1024);
    if (p.upd_chunk < kUpdateChunk) p.upd_chunk = kUpdateChunk;
    p.upd_blocks = (p.total + p.upd_chunk - 1) / p.upd_chunk;
    out.push_back(p);
  }
  return out;
}

template <int D>
TensorList<D> make_list(const Plan& p, const float* const* const (&lists)[D], const int64_t* sizes) {
  TensorList<D> tl;
  std::memset(&tl, 0, sizeof(tl));
  tl.count = static_cast<int>(p.count);
  int64_t off = 0;
  for (int64_t i = 0; i < p.count; ++i) {
    for (int d = 0; d < D; ++d) tl.ptr[d][i] = const_cast<float*>(lists[d][p.t0 + i]);
    tl.size[i] = sizes[p.t0 + i];
    off = round_up(off, 4);
    tl.start[i] = off;
    off += sizes[p.t0 + i];
  }
  tl.start[p.count] = off;
  return tl;
}

// Calls f(t, lo, hi) for the pieces [lo, hi) (tensor-local indices) of tensor t that lie in the
// virtual range [r0, r1); lo is a multiple of 4 whenever r0 is.
template <int D, class F>
__device__ __forceinline__ void for_each_piece(const TensorList<D>& tl, int64_t r0, int64_t r1, F&& f) {
  for (int t = 0; t < tl.count; ++t) {
    const int64_t s = tl.start[t];
    if (s >= r1) break;
    const int64_t e = s + tl.size[t];
    if (e <= r0) continue;
    f(t, (r0 > s ? r0 : s) - s, (r1 < e ? r1 : e) - s);
  }
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// ---- launch 1: sums of squares ---------------------------------------------------------------

__global__ void __launch_bounds__(kThreads) sumsq_kernel(const TensorList<1> tl, int64_t chunk,
                                                         double* __restrict__ partials,
                                                         const int64_t* state, int64_t* snapshot) {
  __shared__ double scratch[kThreads / kWarp];
  if (state && blockIdx.x == 0 && threadIdx.x < 2) snapshot[threadIdx.x] = state[threadIdx.x];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * chunk;
  double s = 0.0;
  for_each_piece(tl, r0, r0 + chunk, [&](int t, int64_t lo, int64_t hi) {
    const float* g = tl.ptr[0][t];
    int64_t i = lo;
    if (aligned16(g)) {
      const int64_t n4 = (hi - lo) / 4;
      const float4* g4 = reinterpret_cast<const float4*>(g + lo);
      for (int64_t k = threadIdx.x; k < n4; k += kThreads) {
        const float4 v = g4[k];
        s += (static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y) +
             (static_cast<double>(v.z) * v.z + static_cast<double>(v.w) * v.w);
      }
      i = lo + n4 * 4;
    }
    for (int64_t k = i + threadIdx.x; k < hi; k += kThreads) s += static_cast<double>(g[k]) * g[k];
  });
  s = block_allreduce_sum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

void sumsq_all(int64_t count, const float* const* grads, const int64_t* sizes, double* ws,
               const int64_t* state, cudaStream_t s) {
  int64_t base = 0;
  const float* const* lists[1] = {grads};
  for (const Plan& p : plan(count, sizes)) {
    const TensorList<1> tl = make_list<1>(p, lists, sizes);
    sumsq_kernel<<<static_cast<unsigned>(p.sum_blocks), kThreads, 0, s>>>(
        tl, p.sum_chunk, ws + kHeader + base, p.t0 == 0 ? state : nullptr,
        reinterpret_cast<int64_t*>(ws));
    EMBER_CUDA_CHECK_LAUNCH("sumsq_kernel");
    base += p.sum_blocks;
  }
}

int64_t total_partials(int64_t count, const int64_t* sizes) {
  int64_t n = 0;
  for (const Plan& p : plan(count, sizes)) n += p.sum_blocks;
  return n;
}

// ---- launch 2: the updates -------------------------------------------------------------------

struct StepContext {
  const double* partials;
  int64_t nparts;
  const int64_t* snapshot;  // {step, lr bits}
  double max_grad_norm;
  bool maximize;
  int64_t* result;          // {norm bits, skipped}, written by block 0 of the first launch
  int64_t* advance;         // the caller's step, advanced by block 0 of the last launch (or null)
};

// torch.optim.SGD (_single_tensor_sgd); x = {grad, param} or, with momentum, {grad, param, buf}.
template <int Dd>
struct SgdOp {
  static constexpr int D = Dd;
  float wd, momentum, one_minus_dampening;
  bool has_wd, nesterov;
  // set per block from the device state
  float gscale, lr;
  bool first;  // step 1: a new momentum buffer starts as the gradient

  __device__ void prepare(int64_t step, double lr_d, float gs) {
    gscale = gs;
    lr = static_cast<float>(lr_d);
    first = step == 1;
  }
  __device__ __forceinline__ void apply(float (&x)[D]) const {
    float g = x[0] * gscale;
    if (has_wd) g = g + wd * x[1];
    if constexpr (D == 3) {
      const float b = first ? g : x[2] * momentum + one_minus_dampening * g;
      x[2] = b;
      g = nesterov ? g + momentum * b : b;
    }
    x[1] = x[1] - lr * g;
  }
};

// torch.optim.Adam / AdamW (_single_tensor_adam); x = {grad, param, exp_avg, exp_avg_sq, max}.
template <int Dd>
struct AdamOp {
  static constexpr int D = Dd;  // 5 with amsgrad, else 4
  float wd, w1, beta2, w2, eps;
  double beta1_d, beta2_d, wd_d;
  bool l2, decoupled;
  // set per block from the device state
  float gscale, decay, bc2_sqrt, neg_step_size;

  __device__ void prepare(int64_t step, double lr, float gs) {
    gscale = gs;
    // In double, rounded once, as the CPU kernel (and PyTorch with Python floats) computes them.
    const double t = static_cast<double>(step);
    const double bc1 = 1.0 - pow(beta1_d, t), bc2 = 1.0 - pow(beta2_d, t);
    decay = static_cast<float>(1.0 - lr * wd_d);
    bc2_sqrt = static_cast<float>(sqrt(bc2));
    neg_step_size = static_cast<float>(-(lr / bc1));
  }
  __device__ __forceinline__ void apply(float (&x)[D]) const {
    float pi = x[1];
    float g = x[0] * gscale;
    if (l2) g = g + wd * pi;
    if (decoupled) pi = pi * decay;
    const float mi = x[2] + w1 * (g - x[2]);
    float vi = x[3] * beta2 + w2 * g * g;
    x[2] = mi;
    x[3] = vi;
    if constexpr (D == 5) {
      vi = fmaxf(x[4], vi);
      x[4] = vi;
    }
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    x[1] = pi + neg_step_size * (mi / denom);
  }
};

template <class Op>
__global__ void __launch_bounds__(kThreads) update_kernel(const TensorList<Op::D> tl, int64_t chunk,
                                                          Op op, const StepContext ctx) {
  constexpr int D = Op::D;
  __shared__ double scratch[kThreads / kWarp];
  const double norm = sqrt(sum_in_order(ctx.partials, ctx.nparts, scratch));
  const bool skip = !isfinite(norm);
  const int64_t step = ctx.snapshot[0];
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (ctx.result) {
      ctx.result[0] = __double_as_longlong(norm);
      ctx.result[1] = skip ? 1 : 0;
    }
    if (ctx.advance && !skip) *ctx.advance = step + 1;
  }
  if (skip) return;  // uniform: every block found the same norm
  double s = 1.0;
  if (ctx.max_grad_norm > 0.0) s = fmin(1.0, ctx.max_grad_norm / (norm + 1e-6));
  const float scale = static_cast<float>(s);
  op.prepare(step, __longlong_as_double(ctx.snapshot[1]), ctx.maximize ? -scale : scale);

  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * chunk;
  for_each_piece(tl, r0, r0 + chunk, [&](int t, int64_t lo, int64_t hi) {
    bool vec = true;
#pragma unroll
    for (int d = 0; d < D; ++d) vec = vec && aligned16(tl.ptr[d][t]);
    int64_t i = lo;
    if (vec) {
      const int64_t n4 = (hi - lo) / 4;
      for (int64_t k = threadIdx.x; k < n4; k += kThreads) {
        float4 v[D];
#pragma unroll
        for (int d = 0; d < D; ++d) v[d] = reinterpret_cast<const float4*>(tl.ptr[d][t] + lo)[k];
#pragma unroll
        for (int c = 0; c < 4; ++c) {  // compile-time component indices: v stays in registers
          float x[D];
#pragma unroll
          for (int d = 0; d < D; ++d) x[d] = reinterpret_cast<const float*>(&v[d])[c];
          op.apply(x);
#pragma unroll
          for (int d = 1; d < D; ++d) reinterpret_cast<float*>(&v[d])[c] = x[d];
        }
#pragma unroll
        for (int d = 1; d < D; ++d) reinterpret_cast<float4*>(tl.ptr[d][t] + lo)[k] = v[d];
      }
      i = lo + n4 * 4;
    }
    for (int64_t k = i + threadIdx.x; k < hi; k += kThreads) {
      float x[D];
#pragma unroll
      for (int d = 0; d < D; ++d) x[d] = tl.ptr[d][t][k];
      op.apply(x);
#pragma unroll
      for (int d = 1; d < D; ++d) tl.ptr[d][t][k] = x[d];
    }
  });
}

// Launch 1 then launch 2 for every TensorList. lists[0] = grads, [1] = params, [2..] = state.
template <class Op>
void run_step(int64_t count, const float* const* const (&lists)[Op::D], const int64_t* sizes,
              const Op& op, double max_grad_norm, bool maximize, const int64_t* state,
              bool advance_step, int64_t* result, double* ws, cudaStream_t s) {
  if (count <= 0) throw std::invalid_argument("optimizer step: no tensors");
  if (!state || !ws) throw std::invalid_argument("optimizer step: state and workspace are required");
  sumsq_all(count, lists[0], sizes, ws, state, s);
  const std::vector<Plan> plans = plan(count, sizes);
  const StepContext base{ws + kHeader, total_partials(count, sizes),
                         reinterpret_cast<const int64_t*>(ws), max_grad_norm, maximize,
                         result ? result : reinterpret_cast<int64_t*>(ws + 2), nullptr};
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    StepContext ctx = base;
    if (i != 0) ctx.result = nullptr;
    if (advance_step && i + 1 == plans.size()) ctx.advance = const_cast<int64_t*>(state);
    const TensorList<Op::D> tl = make_list<Op::D>(p, lists, sizes);
    update_kernel<Op><<<static_cast<unsigned>(p.upd_blocks), kThreads, 0, s>>>(tl, p.upd_chunk, op, ctx);
    EMBER_CUDA_CHECK_LAUNCH("update_kernel");
  }
}

__global__ void set_state_kernel(int64_t* state, int64_t step, double lr) {
  state[0] = step;
  state[1] = __double_as_longlong(lr);
}

__global__ void __launch_bounds__(kThreads) norm_final_kernel(const double* partials, int64_t n,
                                                              double* result) {
  __shared__ double scratch[kThreads / kWarp];
  const double s = sum_in_order(partials, n, scratch);
  if (threadIdx.x == 0) *result = sqrt(s);
}

}  // namespace

int64_t optim_workspace_words(int64_t count, const int64_t* sizes) {
  return kHeader + total_partials(count, sizes);
}

void set_step_state(int64_t* state, int64_t step, double lr, Stream stream) {
  set_state_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(state, step, lr);
  EMBER_CUDA_CHECK_LAUNCH("set_state_kernel");
}

void sgd_step(const SgdArgs& a, const int64_t* state, bool advance_step, int64_t* result,
              double* workspace, Stream stream) {
  auto fill = [&](auto& op) {
    op.wd = static_cast<float>(a.weight_decay);
    op.momentum = static_cast<float>(a.momentum);
    op.one_minus_dampening = static_cast<float>(1.0 - a.dampening);
    op.has_wd = a.weight_decay != 0.0;
    op.nesterov = a.nesterov;
  };
  auto s = static_cast<cudaStream_t>(stream);
  if (a.momentum != 0.0) {
    if (!a.momentum_buffers) {
      throw std::invalid_argument("sgd_step: momentum buffers are required when momentum != 0");
    }
    SgdOp<3> op{};
    fill(op);
    const float* const* lists[3] = {a.grads, a.params, a.momentum_buffers};
    run_step(a.count, lists, a.sizes, op, a.max_grad_norm, a.maximize, state, advance_step, result,
             workspace, s);
  } else {
    SgdOp<2> op{};
    fill(op);
    const float* const* lists[2] = {a.grads, a.params};
    run_step(a.count, lists, a.sizes, op, a.max_grad_norm, a.maximize, state, advance_step, result,
             workspace, s);
  }
}

void adam_step(const AdamArgs& a, const int64_t* state, bool advance_step, int64_t* result,
               double* workspace, Stream stream) {
  if (a.amsgrad && !a.max_exp_avg_sq) {
    throw std::invalid_argument("adam_step: max_exp_avg_sq is required with amsgrad");
  }
  auto fill = [&](auto& op) {
    op.wd = static_cast<float>(a.weight_decay);
    op.w1 = static_cast<float>(1.0 - a.beta1);
    op.beta2 = static_cast<float>(a.beta2);
    op.w2 = static_cast<float>(1.0 - a.beta2);
    op.eps = static_cast<float>(a.eps);
    op.beta1_d = a.beta1, op.beta2_d = a.beta2, op.wd_d = a.weight_decay;
    const bool wd_on = a.weight_decay != 0.0;
    op.l2 = wd_on && !a.decoupled_weight_decay;
    op.decoupled = wd_on && a.decoupled_weight_decay;
  };
  auto s = static_cast<cudaStream_t>(stream);
  if (a.amsgrad) {
    AdamOp<5> op{};
    fill(op);
    const float* const* lists[5] = {a.grads, a.params, a.exp_avg, a.exp_avg_sq, a.max_exp_avg_sq};
    run_step(a.count, lists, a.sizes, op, a.max_grad_norm, a.maximize, state, advance_step, result,
             workspace, s);
  } else {
    AdamOp<4> op{};
    fill(op);
    const float* const* lists[4] = {a.grads, a.params, a.exp_avg, a.exp_avg_sq};
    run_step(a.count, lists, a.sizes, op, a.max_grad_norm, a.maximize, state, advance_step, result,
             workspace, s);
  }
}

void global_norm(int64_t count, const float* const* tensors, const int64_t* sizes,
                 double* workspace, Stream stream) {
  if (count <= 0) throw std::invalid_argument("global_norm: no tensors");
  auto s = static_cast<cudaStream_t>(stream);
  sumsq_all(count, tensors, sizes, workspace, nullptr, s);
  norm_final_kernel<<<1, kThreads, 0, s>>>(workspace + kHeader, total_partials(count, sizes),
                                           workspace + 2);
  EMBER_CUDA_CHECK_LAUNCH("norm_final_kernel");
}

}  // namespace ember::cuda
