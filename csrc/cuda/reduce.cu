// Deterministic reductions on the GPU: column_sum, sum (the CPU side: csrc/cpu/reduce.cpp). They
// add in double, over a fixed assignment of elements to threads that depends only on the sizes,
// then in a fixed tree. (global_norm's kernel shares the optimizers' first launch: optim.cu.)
#include <cstdint>
#include <stdexcept>

#include "check.cuh"
#include "reduce.cuh"

namespace ember::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- column_sum ---------------------------------------------------------------------------------

constexpr int kCols = 32, kRowThreads = 8;
constexpr int64_t kMinChunkRows = 256;
constexpr int64_t kMaxChunks = 1024;

struct ColChunks {
  int64_t chunks, rows_per_chunk;
};

ColChunks col_chunks(int64_t rows) {
  int64_t c = (rows + kMinChunkRows - 1) / kMinChunkRows;
  if (c > kMaxChunks) c = kMaxChunks;
  return {c, (rows + c - 1) / c};
}

// Block (x: 32 columns, y: chunk of rows): each of 8 row-threads adds every 8th row of the chunk
// in double, then the 8 are added in order. One chunk: the block writes the output itself.
__global__ void __launch_bounds__(kCols* kRowThreads)
    column_partials_kernel(int64_t rows, int64_t cols, const float* __restrict__ x,
                           int64_t rows_per_chunk, double* __restrict__ partials,
                           float* __restrict__ out, bool accumulate) {
  __shared__ double red[kRowThreads][kCols + 1];
  const int tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double s = 0.0;
  if (col < cols) {
    for (int64_t r = r0 + ty; r < r1; r += kRowThreads) s += x[r * cols + col];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty != 0 || col >= cols) return;
  double total = red[0][tx];
#pragma unroll
  for (int i = 1; i < kRowThreads; ++i) total += red[i][tx];
  if (out) {
    out[col] = static_cast<float>(accumulate ? static_cast<double>(out[col]) + total : total);
  } else {
    partials[blockIdx.y * cols + col] = total;
  }
}

__global__ void column_reduce_kernel(const double* __restrict__ partials, int64_t chunks,
                                     int64_t cols, float* __restrict__ out, bool accumulate) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partials[c * cols + col];
  out[col] = static_cast<float>(accumulate ? static_cast<double>(out[col]) + s : s);
}

// ---- sum ----------------------------------------------------------------------------------------

constexpr int64_t kSumPerBlock = 8 * kThreads * 4;

__global__ void __launch_bounds__(kThreads) sum_partials_kernel(int64_t n, const float* __restrict__ x,
                                                                bool vec, double* __restrict__ partials) {
  __shared__ double scratch[kThreads / kWarp];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  double s = 0.0;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      s += (static_cast<double>(v.x) + v.y) + (static_cast<double>(v.z) + v.w);
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + t0; i < n; i += stride) s += x[i];
  s = block_allreduce_sum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kThreads) sum_final_kernel(const double* partials, int64_t n,
                                                             double* result) {
  __shared__ double scratch[kThreads / kWarp];
  const double s = sum_in_order(partials, n, scratch);
  if (threadIdx.x == 0) *result = s;
}

int sum_grid(int64_t n) {
  const int64_t g = (n + kSumPerBlock - 1) / kSumPerBlock;
  return static_cast<int>(g > kMaxBlocks ? kMaxBlocks : g);
}

}  // namespace

int64_t column_sum_workspace_words(int64_t rows, int64_t cols) {
  const ColChunks c = col_chunks(rows);
  return c.chunks > 1 ? c.chunks * cols : 1;
}

void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate,
                double* workspace, Stream stream) {
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("column_sum: rows and cols must be >= 1");
  const ColChunks c = col_chunks(rows);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t gx = (cols + kCols - 1) / kCols;
  if (gx > 0x7fffffff) throw std::invalid_argument("column_sum: cols is too large");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(c.chunks));
  const bool one = c.chunks == 1;
  column_partials_kernel<<<grid, kCols * kRowThreads, 0, s>>>(rows, cols, x, c.rows_per_chunk, workspace,
                                                              one ? out : nullptr, accumulate);
  EMBER_CUDA_CHECK_LAUNCH("column_partials_kernel");
  if (one) return;
  column_reduce_kernel<<<static_cast<unsigned>((cols + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      workspace, c.chunks, cols, out, accumulate);
  EMBER_CUDA_CHECK_LAUNCH("column_reduce_kernel");
}

int64_t sum_workspace_words(int64_t n) { return 1 + sum_grid(n); }

void sum(int64_t n, const float* x, double* workspace, Stream stream) {
  if (n <= 0) throw std::invalid_argument("sum: n must be >= 1");
  auto s = static_cast<cudaStream_t>(stream);
  const int grid = sum_grid(n);
  sum_partials_kernel<<<grid, kThreads, 0, s>>>(n, x, aligned16(x), workspace + 1);
  EMBER_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  sum_final_kernel<<<1, kThreads, 0, s>>>(workspace + 1, grid, workspace);
  EMBER_CUDA_CHECK_LAUNCH("sum_final_kernel");
}

}  // namespace ember::cuda
