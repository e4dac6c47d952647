// Error checking for every CUDA call and launch. Errors throw ember::CudaError (never exit()),
// after reading the error with cudaGetLastError so that a non-sticky error does not leak into the
// next, unrelated call.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "ember/cuda.h"

namespace ember::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file,
                                          int line) {
  cudaGetLastError();  // clear the (non-sticky) error state
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

}  // namespace ember::cuda

#define EMBER_CUDA_CHECK(call)                                                     \
  do {                                                                             \
    cudaError_t ember_err_ = (call);                                               \
    if (ember_err_ != cudaSuccess)                                                 \
      ::ember::cuda::throw_cuda_error(ember_err_, #call, __FILE__, __LINE__);      \
  } while (0)

// After a <<<...>>> launch: configuration errors are reported by cudaGetLastError.
#define EMBER_CUDA_CHECK_LAUNCH(name)                                              \
  do {                                                                             \
    cudaError_t ember_err_ = cudaGetLastError();                                   \
    if (ember_err_ != cudaSuccess)                                                 \
      ::ember::cuda::throw_cuda_error(ember_err_, name, __FILE__, __LINE__);       \
  } while (0)
