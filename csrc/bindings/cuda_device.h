// What the CUDA bindings do after the argument checks (args.h and the family contracts), with the
// CUDA runtime: the device phase (every array is device memory of the current device; the work is
// ordered after the streams the inputs were produced on), 8-byte-word workspaces from the caller's
// allocator, and reading results back to the host. Not a check library: nothing here can be
// reached by a call whose arguments break a contract.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "ember/cuda.h"

namespace ember::bind {

inline cuda::Stream as_stream(uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

inline cuda::Precision cuda_precision(Precision p) {
  return p == Precision::fp32 ? cuda::Precision::fp32
         : p == Precision::tf32 ? cuda::Precision::tf32
                                : cuda::Precision::bf16;
}

// Every array must be device (or managed) memory of the current device.
inline void on_current_device(const char* fn, const std::vector<const Arr*>& arrays) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw CudaError(std::string(fn) + ": cudaGetDevice failed: " + cudaGetErrorName(err) + ": " +
                    cudaGetErrorString(err));
  }
  for (const Arr* a : arrays) {
    if (!a->given()) continue;
    cudaPointerAttributes attr{};
    err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(a->ptr));
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw py::value_error(std::string(fn) + ": " + a->name + " is not CUDA memory (" +
                            cudaGetErrorName(err) + ")");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
      throw py::value_error(std::string(fn) + ": " + a->name + " is not device memory");
    }
    if (attr.device != dev) {
      throw py::value_error(std::string(fn) + ": " + a->name + " is on device " +
                            std::to_string(attr.device) + " but the current device is " +
                            std::to_string(dev) + " (use `with cupy.cuda.Device(" +
                            std::to_string(attr.device) + "):`)");
    }
  }
}

// Make `consumer` wait for the streams the inputs were produced on (protocol v3), when they differ
// from it. CuPy exports its current stream, which is `consumer`, so this is free in the common case.
inline void wait_for_producers(const char* fn, uintptr_t consumer,
                               const std::vector<const Arr*>& arrays) {
  std::vector<uintptr_t> done;
  for (const Arr* a : arrays) {
    if (!a->given() || !a->has_stream) continue;
    uintptr_t s = a->stream;
    if (s == reinterpret_cast<uintptr_t>(cudaStreamLegacy) && consumer == 0) continue;
    if (s == consumer) continue;
    bool seen = false;
    for (uintptr_t d : done) seen = seen || d == s;
    if (seen) continue;
    done.push_back(s);
    cudaEvent_t ev = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(ev, reinterpret_cast<cudaStream_t>(s));
    if (err == cudaSuccess) err = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(consumer), ev, 0);
    if (ev) cudaEventDestroy(ev);  // released once the wait no longer needs it
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw CudaError(std::string(fn) + ": waiting for the stream of " + a->name + " failed: " +
                      cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
    }
  }
}

// Both, for every array of a call (arrays not given are skipped).
inline void device_phase(const char* fn, const std::vector<const Arr*>& arrays, uintptr_t stream) {
  on_current_device(fn, arrays);
  wait_for_producers(fn, stream, arrays);
}

inline void add_all(std::vector<const Arr*>& to, const ArrList& l) {
  for (const Arr& a : l.arrays) to.push_back(&a);
}

// Scratch of `words` 8-byte words (doubles / int64) from the allocator (CuPy's pool: freed when
// the call returns, which is safe because the pool reuses it only for work on the same stream).
inline Arr cuda_workspace(const Call& c, int64_t words, const char* name = "workspace") {
  return out_arg(c, py::none(), name, {words}, DType::i64);
}

// Float scratch (GEMM split-K slices, linear_backward partials).
inline Arr cuda_float_workspace(const Call& c, int64_t floats, const char* name) {
  return out_arg(c, py::none(), name, {floats}, DType::f32);
}

inline double* words(const Arr& a) { return reinterpret_cast<double*>(a.ptr); }

// Reads `n` 8-byte words from device memory after the stream's work (synchronises the stream).
inline std::vector<int64_t> read_words(const void* device, int n, uintptr_t stream) {
  std::vector<int64_t> host(static_cast<size_t>(n));
  cuda::copy_to_host(host.data(), device, 8 * n, as_stream(stream));
  return host;
}

inline double as_double(int64_t bits) {
  double d;
  static_assert(sizeof(d) == sizeof(bits));
  std::memcpy(&d, &bits, sizeof(d));
  return d;
}

}  // namespace ember::bind
