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

}  // namespace cuda
}  // namespace ember
