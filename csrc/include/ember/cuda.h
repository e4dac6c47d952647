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
void gemm(const GemmArgs& args, Precision precision, Stream stream);

// Floats of scratch `partials` that linear_backward needs for the bias gradient (per-block column
// sums reduced in a fixed order, so the result is the same bits every run).
int64_t linear_backward_partials_size(int64_t batch, int64_t out_features);

// LinearBackwardArgs (ember/common.h): one kernel for dZ = dY * act'(Z) and the bias gradient's
// partial sums, a tiny kernel reducing them, then dX = dZ W and dW = dZ^T X with gemm().
// `partials` (linear_backward_partials_size floats) is needed only when args.grad_bias is set.
void linear_backward(const LinearBackwardArgs& args, Precision precision, float* partials,
                     Stream stream);

}  // namespace cuda
}  // namespace ember
