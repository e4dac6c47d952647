// Argument checks for the CUDA bindings: arrays arrive as any object exposing
// __cuda_array_interface__ (CuPy, PyTorch, Numba; v2 and v3 of the protocol) and are checked as
// checks.h checks NumPy arrays, with the same messages ("gemm: b must have dtype float32, got <f8").
// Wrong type or dtype -> TypeError; wrong rank, shape, layout, read-only or empty -> ValueError.
//
// Two phases, in this order: cuda_array_arg() and the shape / overlap checks read only Python
// objects, so they can be tested on a machine without a GPU with fake objects carrying an
// interface dict; on_current_device() and wait_for_producers() then ask the CUDA runtime.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "checks.h"
#include "ember/cuda.h"

namespace ember::bind {
namespace py = pybind11;

// A validated view of one CUDA array argument.
struct CudaArray {
  py::object obj;  // the caller's object (returned as-is for outputs)
  const char* name = "";
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  int64_t size = 0;      // elements
  int64_t itemsize = 4;
  bool has_stream = false;  // v3 "stream": the producer's stream, to order our work after
  uintptr_t stream = 0;

  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t nbytes() const { return size * itemsize; }
  float* f32() const { return reinterpret_cast<float*>(ptr); }
  const float* cf32() const { return reinterpret_cast<const float*>(ptr); }
};

inline const char* cuda_typestr(DType t) {
  return t == DType::f32 ? "<f4" : t == DType::i64 ? "<i8" : "<f8";
}

// Checks `obj` as a CUDA array of `dtype`, rank `ndim` (any when < 0), C-contiguous, aligned,
// non-empty, and writable when it is an output. Reads only the interface dict.
inline CudaArray cuda_array_arg(const char* fn, py::handle obj, const char* name, DType dtype,
                                int ndim, bool writable = false) {
  const std::string where = std::string(fn) + ": " + name;
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    throw py::type_error(where + " must be a CUDA array (CuPy, or any object exposing "
                         "__cuda_array_interface__), got " + type_name(obj));
  }
  py::object iface_obj = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(iface_obj)) {
    throw py::type_error(where + ": __cuda_array_interface__ must be a dict, got " +
                         type_name(iface_obj));
  }
  auto iface = py::reinterpret_borrow<py::dict>(iface_obj);
  for (const char* key : {"typestr", "shape", "data"}) {
    if (!iface.contains(key)) {
      throw py::value_error(where + ": __cuda_array_interface__ lacks '" + key + "'");
    }
  }
  CudaArray a;
  a.obj = py::reinterpret_borrow<py::object>(obj);
  a.name = name;

  const std::string typestr = py::str(iface["typestr"]).cast<std::string>();
  if (typestr != cuda_typestr(dtype)) {
    throw py::type_error(where + " must have dtype " + dtype_name(dtype) + ", got " + typestr);
  }
  a.itemsize = dtype == DType::f32 ? 4 : 8;

  for (py::handle d : py::tuple(py::object(iface["shape"]))) {
    const int64_t v = d.cast<int64_t>();
    if (v < 0) throw py::value_error(where + ": negative extent in shape");
    a.shape.push_back(v);
  }
  if (ndim >= 0 && static_cast<int>(a.shape.size()) != ndim) {
    throw py::value_error(where + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(a.shape));
  }
  a.size = 1;
  for (int64_t v : a.shape) a.size *= v;

  // strides: None means C-contiguous; otherwise they must equal the C-contiguous strides, except
  // on extents of 1, whose stride never matters (NumPy's rule).
  if (iface.contains("strides") && !iface["strides"].is_none()) {
    py::tuple strides{py::object(iface["strides"])};
    bool ok = strides.size() == a.shape.size();
    int64_t expect = a.itemsize;
    for (size_t i = a.shape.size(); ok && i-- > 0;) {
      if (a.shape[i] != 1 && strides[i].cast<int64_t>() != expect) ok = false;
      expect *= a.shape[i];
    }
    if (!ok) {
      throw py::value_error(where + " must be C-contiguous (use cupy.ascontiguousarray), got strides " +
                            py::str(strides).cast<std::string>());
    }
  }
  if (iface.contains("mask") && !iface["mask"].is_none()) {
    throw py::value_error(where + " must not be a masked array");
  }

  py::tuple data{py::object(iface["data"])};
  if (data.size() != 2) throw py::value_error(where + ": 'data' must be (pointer, read_only)");
  a.ptr = data[0].cast<uintptr_t>();
  const bool readonly = data[1].cast<bool>();
  if (a.ptr % static_cast<uintptr_t>(a.itemsize) != 0) {
    throw py::value_error(where + " must be aligned to its dtype");
  }
  if (a.size == 0) {
    throw py::value_error(where + " must not be empty, got shape " + shape_str(a.shape));
  }
  if (a.ptr == 0) throw py::value_error(where + " has a null data pointer");
  if (writable && readonly) {
    throw py::value_error(where + " is an output and must be writable (it is read-only)");
  }

  // v3: the stream the producer last used, which our work must follow. None: no ordering needed;
  // 0 is forbidden by the protocol (ambiguous); 1 / 2: legacy / per-thread default stream.
  if (iface.contains("stream") && !iface["stream"].is_none()) {
    const auto s = iface["stream"].cast<uintptr_t>();
    if (s == 0) throw py::value_error(where + ": __cuda_array_interface__ stream 0 is not allowed");
    a.has_stream = true;
    a.stream = s;
  }
  return a;
}

inline void expect_shape(const char* fn, const CudaArray& a, const std::vector<int64_t>& shape) {
  if (a.shape != shape) {
    throw py::value_error(std::string(fn) + ": " + a.name + " must have shape " + shape_str(shape) +
                          ", got " + shape_str(a.shape));
  }
}

inline bool overlaps(const CudaArray& a, const CudaArray& b) {
  return a.ptr < b.ptr + static_cast<uintptr_t>(b.nbytes()) &&
         b.ptr < a.ptr + static_cast<uintptr_t>(a.nbytes());
}

inline bool same_memory(const CudaArray& a, const CudaArray& b) {
  return a.ptr == b.ptr && a.nbytes() == b.nbytes();
}

// An output that the kernel writes while still reading `input` must not share memory with it.
inline void no_overlap(const char* fn, const CudaArray& out, const CudaArray& input) {
  if (overlaps(out, input)) {
    throw py::value_error(std::string(fn) + ": " + out.name + " must not share memory with " +
                          input.name);
  }
}

// An output argument: None -> alloc(shape) (the Python layer's allocator: CuPy's memory pool);
// otherwise checked (dtype, shape, contiguous, writable).
inline CudaArray cuda_out_arg(const char* fn, py::handle obj, const char* name,
                              const std::vector<int64_t>& shape, const py::object& alloc) {
  py::object o = py::reinterpret_borrow<py::object>(obj);
  if (o.is_none()) {
    if (alloc.is_none()) throw py::value_error(std::string(fn) + ": " + name + " is required");
    o = alloc(py::tuple(py::cast(shape)));
  }
  CudaArray a = cuda_array_arg(fn, o, name, DType::f32, static_cast<int>(shape.size()), true);
  expect_shape(fn, a, shape);
  return a;
}

// Phase 2: every array must be device (or managed) memory of the current device.
inline void on_current_device(const char* fn, const std::vector<const CudaArray*>& arrays) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw CudaError(std::string(fn) + ": cudaGetDevice failed: " + cudaGetErrorName(err) + ": " +
                    cudaGetErrorString(err));
  }
  for (const CudaArray* a : arrays) {
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

// Phase 2: make `consumer` wait for the streams the inputs were produced on (protocol v3), when
// they differ from it. CuPy exports its current stream, which is `consumer`, so this is free in
// the common case.
inline void wait_for_producers(const char* fn, uintptr_t consumer,
                               const std::vector<const CudaArray*>& arrays) {
  std::vector<uintptr_t> done;
  for (const CudaArray* a : arrays) {
    if (!a->has_stream) continue;
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

inline cuda::Precision parse_precision(const char* fn, const std::string& s) {
  if (s == "fp32") return cuda::Precision::fp32;
  if (s == "tf32") return cuda::Precision::tf32;
  if (s == "bf16") return cuda::Precision::bf16;
  throw py::value_error(std::string(fn) + ": precision must be 'fp32', 'tf32' or 'bf16', got '" +
                        s + "'");
}

}  // namespace ember::bind
