// ember's CUDA backend: host-side launchers declared here are defined in csrc/cuda/*.cu and called
// by the bindings (csrc/bindings/cuda_*.cpp). Launchers run on the stream they are given (CuPy's
// current stream), allocate nothing, check every launch and throw ember::CudaError on failure.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ember/common.h"

namespace ember {

// A failed CUDA call: what was called, where, and the runtime's error name and text.
// The bindings turn it into the Python exception ember.CudaError (a RuntimeError).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace cuda {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  int64_t total_memory = 0;
};

// Number of usable devices; 0 (never an exception) when there is no GPU or no driver, with the
// reason in *why.
int device_count(std::string* why);
DeviceInfo device_info(int device);
int runtime_version();
int driver_version();  // 0 when no driver is installed
int current_device();

// How a GEMM multiplies. fp32: exact float32 on the CUDA cores. tf32 / bf16: tensor cores
// (mma.sync) on operands rounded to TF32 / bfloat16 as they are staged in shared memory; inputs
// and outputs stay float32 arrays and accumulation is float32. The values are ember's API.
enum class Precision : int { fp32 = 0, tf32 = 1, bf16 = 2 };

// The stream launchers run on: a cudaStream_t passed as an opaque pointer so that this header
// needs no CUDA headers (0 = the legacy default stream; CuPy's `Stream.ptr` converts directly).
using Stream = void*;

// C = act(alpha * op(A) op(B) + beta * C + bias) (GemmArgs in ember/common.h). Any m, n, k >= 1,
// any leading dimensions and alignment (16-byte loads where the layout allows, scalar otherwise).
// Throws std::invalid_argument on a malformed GemmArgs, CudaError on a failed launch.
// `workspace` (gemm_workspace_floats(m, n, k) floats, 16-byte aligned, or null) lets a product
// whose output is too small to fill the GPU split its k range over more blocks (split-K, the
// slices added in a fixed order); without it the product runs unsplit.
void gemm(const GemmArgs& args, Precision precision, Stream stream, float* workspace = nullptr);
// Floats of workspace gemm() can use for an m x n x k product (0: it would not split).
int64_t gemm_workspace_floats(int64_t m, int64_t n, int64_t k);

// Floats of scratch `partials` for linear_backward: the bias gradient's per-block column sums
// (reduced in a fixed order, so the result is the same bits every run), then the split-K
// workspace of its two products (see gemm).
int64_t linear_backward_partials_size(int64_t batch, int64_t in_features, int64_t out_features);

// LinearBackwardArgs (ember/common.h): one kernel for dZ = dY * act'(Z) and the bias gradient's
// partial sums, a tiny kernel reducing them, then dX = dZ W and dW = dZ^T X with gemm().
// `partials` (linear_backward_partials_size floats) is needed when args.grad_bias is set; given
// otherwise too, the products may use it for split-K.
void linear_backward(const LinearBackwardArgs& args, Precision precision, float* partials,
                     Stream stream);

// ---- losses and metrics (loss.cu) ----------------------------------------------------------------
// The batch value is reduced deterministically: each block writes a partial sum (double) and a
// last one-block kernel adds them in a fixed order. Labels are int64 and range-checked on the
// device: a bad label makes its row's loss and gradient NaN, and the lowest bad row is reported
// in the result, which the caller reads (host-side checks would need a sync before the launch).
// Workspace layout, in 8-byte words (`loss_workspace_words`): [0] the result (loss as a double,
// or the number of correct rows for count_correct), [1] the lowest row with a bad label (-1:
// none), [2..] scratch. It needs no initialisation.
int64_t loss_workspace_words();

// SoftmaxCrossEntropyArgs (ember/common.h) forward and backward in one kernel per row (online
// softmax). `loss_out` (a device float, or null) and `loss_out64` (a device double, or null)
// receive the reduced loss too, for callers that must not synchronise (CUDA graphs).
void softmax_cross_entropy(const SoftmaxCrossEntropyArgs& args, void* workspace, float* loss_out,
                           double* loss_out64, Stream stream);
// Mean or summed squared error over n elements; grad (may alias pred) = grad_scale * dloss/dpred.
void mse(int64_t n, const float* pred, const float* target, float* grad, Reduction reduction,
         float grad_scale, void* workspace, float* loss_out, double* loss_out64, Stream stream);
// Index of each row's largest value (first on ties; NaN counts as largest, as in NumPy).
void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out, Stream stream);
// Rows whose argmax equals the label, into workspace word 0 (as a double); bad labels as above.
void count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                   void* workspace, Stream stream);

// ---- activations (activation.cu) ----------------------------------------------------------------
// y may alias x; grad_in may alias grad_out (each element is read before it is written).
void activation_forward(int64_t n, const float* x, float* y, Activation act, float param,
                        Stream stream);
void activation_backward(int64_t n, const float* grad_out, const float* preact, float* grad_in,
                         Activation act, float param, Stream stream);
// ---- reductions (reduce.cu; global_norm is in optim.cu) ------------------------------------------
// Column sums in double, deterministic (per-chunk partials summed in a fixed order).
int64_t column_sum_workspace_words(int64_t rows, int64_t cols);
void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate,
                double* workspace, Stream stream);
// Sum of n floats in double, deterministic; the result is workspace[0].
int64_t sum_workspace_words(int64_t n);
void sum(int64_t n, const float* x, double* workspace, Stream stream);
// Copies (device.cu) `bytes` of device memory to the host after everything queued on `stream` (a stream
// synchronisation: the one place the CPU-compatible signatures wait for the GPU).
void copy_to_host(void* host, const void* device, int64_t bytes, Stream stream);

// ---- dropout (dropout.cu) ------------------------------------------------------------------------
// Element i keeps with probability 1-p, from Philox4x32-10 at (seed, offset + i) (ember/philox.h):
// the same mask as the CPU kernel, bit for bit. y may alias x.
void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t offset,
                     Stream stream);
void dropout_backward(int64_t n, const float* grad_out, float* grad_in, float p, uint64_t seed,
                      uint64_t offset, Stream stream);

// ---- fused multi-tensor optimizers (optim.cu) ----------------------------------------------------
// Every parameter in (at most) two launches: (1) per-chunk sums of squares of all gradients
// (double) into workspace partials; (2) every block reduces all partials in the same fixed order,
// finds the global norm, the clip factor and the non-finite skip, and updates its chunks. More
// tensors than one launch's metadata holds (kMaxTensorsPerLaunch) take more launches of each kind.
//
// Step and learning rate come from device memory, so a step can be captured in a CUDA graph:
// `state` is int64[2] = {step (1-based number of this step), bit pattern of lr as a double}.
// With `advance_step`, a step that was not skipped adds 1 to state[0] (after every block has read
// it). `result` (device, int64[2]) receives {bit pattern of grad_norm as a double, skipped 0/1}.
// The args' `lr` and `step` fields are ignored (they are in `state`).
constexpr int kMaxTensorsPerLaunch = 96;
int64_t optim_workspace_words(int64_t count, const int64_t* sizes);
void sgd_step(const SgdArgs& args, const int64_t* state, bool advance_step, int64_t* result,
              double* workspace, Stream stream);
void adam_step(const AdamArgs& args, const int64_t* state, bool advance_step, int64_t* result,
               double* workspace, Stream stream);
// Writes {step, lr} into a state array (a tiny kernel: no host synchronisation, graph-safe).
void set_step_state(int64_t* state, int64_t step, double lr, Stream stream);
// L2 norm of all elements of all tensors (the optimizers' first launch plus a one-block kernel),
// as a double in workspace[0].
void global_norm(int64_t count, const float* const* tensors, const int64_t* sizes,
                 double* workspace, Stream stream);

}  // namespace cuda
}  // namespace ember
