// Helpers shared by the CUDA bindings of the loss, elementwise, dropout and optimizer families
// (on top of cuda_checks.h): int64 outputs, 8-byte-word workspaces from the caller's allocator,
// lists of arrays, and reading results back to the host.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "cuda_checks.h"
#include "ember/cuda.h"

namespace ember::bind {

// An int64 output: None -> alloc(shape, "int64"); otherwise checked like cuda_out_arg.
inline CudaArray cuda_out_i64(const char* fn, py::handle obj, const char* name,
                              const std::vector<int64_t>& shape, const py::object& alloc) {
  py::object o = py::reinterpret_borrow<py::object>(obj);
  if (o.is_none()) {
    if (alloc.is_none()) throw py::value_error(std::string(fn) + ": " + name + " is required");
    o = alloc(py::tuple(py::cast(shape)), "int64");
  }
  CudaArray a = cuda_array_arg(fn, o, name, DType::i64, static_cast<int>(shape.size()), true);
  expect_shape(fn, a, shape);
  return a;
}

// Scratch of `words` 8-byte words (doubles / int64) from the allocator (CuPy's pool: freed when
// the call returns, which is safe because the pool reuses it only for work on the same stream).
inline CudaArray cuda_workspace(const char* fn, int64_t words, const py::object& alloc) {
  CudaArray w = cuda_out_i64(fn, py::none(), "workspace", {words}, alloc);
  return w;
}

inline double* words(const CudaArray& a) { return reinterpret_cast<double*>(a.ptr); }

// Reads `n` 8-byte words from device memory after the stream's work (synchronises the stream).
inline std::vector<int64_t> read_words(const void* device, int n, uintptr_t stream) {
  std::vector<int64_t> host(static_cast<size_t>(n));
  cuda::copy_to_host(host.data(), device, 8 * n, reinterpret_cast<cuda::Stream>(stream));
  return host;
}

inline double as_double(int64_t bits) {
  double d;
  static_assert(sizeof(d) == sizeof(bits));
  std::memcpy(&d, &bits, sizeof(d));
  return d;
}

// A list (or tuple) of CUDA arrays: `expected` of them (< 0: at least one), each float32,
// C-contiguous, non-empty, writable when `output`.
struct CudaArrayList {
  const char* name = nullptr;
  bool output = false;
  std::vector<CudaArray> arrays;
  std::deque<std::string> names;  // "params[3]": CudaArray::name points into these (a deque
                                  // keeps their addresses when the list is moved)
};

inline CudaArrayList cuda_array_list(const char* fn, py::handle obj, const char* name, bool output,
                                     py::ssize_t expected) {
  if (obj.is_none()) throw py::value_error(std::string(fn) + ": " + name + " is required (got None)");
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a list of arrays, got " +
                         type_name(obj));
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  const auto n = static_cast<py::ssize_t>(seq.size());
  if (expected < 0 && n == 0) {
    throw py::value_error(std::string(fn) + ": " + name + " must hold at least one array");
  }
  if (expected >= 0 && n != expected) {
    throw py::value_error(std::string(fn) + ": " + name + " has " + std::to_string(n) +
                          " arrays but params has " + std::to_string(expected));
  }
  CudaArrayList l;
  l.name = name;
  l.output = output;
  for (py::ssize_t i = 0; i < n; ++i) {
    l.names.push_back(std::string(name) + "[" + std::to_string(i) + "]");
    l.arrays.push_back(cuda_array_arg(fn, seq[i], l.names.back().c_str(), DType::f32, -1, output));
  }
  return l;
}

inline void same_shapes(const char* fn, const CudaArrayList& like, const CudaArrayList& list) {
  for (size_t i = 0; i < list.arrays.size(); ++i) {
    if (list.arrays[i].shape != like.arrays[i].shape) {
      throw py::value_error(std::string(fn) + ": " + list.names[i] + " must have shape " +
                            shape_str(like.arrays[i].shape) + " like " + like.names[i] + ", got " +
                            shape_str(list.arrays[i].shape));
    }
  }
}

// No array a kernel writes may share memory with any other array of the call; arrays only read
// may overlap each other. One sort and a sweep.
inline void no_shared_memory(const char* fn, const std::vector<const CudaArrayList*>& lists) {
  struct Span {
    uintptr_t lo, hi;
    bool output;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const CudaArrayList* l : lists) {
    for (size_t i = 0; i < l->arrays.size(); ++i) {
      const CudaArray& a = l->arrays[i];
      spans.push_back({a.ptr, a.ptr + static_cast<uintptr_t>(a.nbytes()), l->output, &l->names[i]});
    }
  }
  std::stable_sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) { return x.lo < y.lo; });
  const Span* reach_any = nullptr;
  const Span* reach_out = nullptr;
  for (const Span& s : spans) {
    const Span* hit = s.output ? reach_any : reach_out;
    if (hit != nullptr && hit->hi > s.lo) {
      const Span& written = s.output ? s : *hit;
      const Span& other = s.output ? *hit : s;
      throw py::value_error(std::string(fn) + ": " + *written.name + " must not share memory with " +
                            *other.name);
    }
    if (reach_any == nullptr || s.hi > reach_any->hi) reach_any = &s;
    if (s.output && (reach_out == nullptr || s.hi > reach_out->hi)) reach_out = &s;
  }
}

inline std::vector<int64_t> sizes_of(const CudaArrayList& l) {
  std::vector<int64_t> s;
  for (const CudaArray& a : l.arrays) s.push_back(a.size);
  return s;
}

template <class T>
std::vector<T> list_pointers(const CudaArrayList& l) {
  std::vector<T> out;
  for (const CudaArray& a : l.arrays) out.push_back(reinterpret_cast<T>(a.ptr));
  return out;
}

inline void add_all(std::vector<const CudaArray*>& to, const CudaArrayList& l) {
  for (const CudaArray& a : l.arrays) to.push_back(&a);
}

// Phase 2 for every array of a call: on the current device, ordered after its producers.
inline void device_phase(const char* fn, const std::vector<const CudaArray*>& arrays,
                         uintptr_t stream) {
  on_current_device(fn, arrays);
  wait_for_producers(fn, stream, arrays);
}

}  // namespace ember::bind
