// The argument library of ember's bindings, CPU and CUDA alike: one array-argument type (Arr) built
// from a NumPy array (ember._cpu) or from any object exposing __cuda_array_interface__ (ember._cuda;
// CuPy, PyTorch, Numba; protocol v2 and v3), and the checks every op makes on its arguments,
// written once: dtype, rank, shape, C-contiguity, alignment, emptiness, writable outputs, memory
// overlap, lists of arrays, scalars. The per-family contract headers (<family>_args.h) state each
// op's checks with these, and both bindings of the op call them: the same call gets the same
// error on either device.
//
// Every message names the function and the argument: "gemm: b must have dtype float32, got
// float64". Wrong type or dtype -> TypeError; wrong rank, shape, layout, read-only or empty ->
// ValueError. Three things are spelled the way the array's own library spells them: the kind
// expected ("a numpy.ndarray" / "a CUDA array ..."), the dtype found (NumPy's name, "float64", or
// the interface's typestr, "<f8") and the copy hint (numpy. / cupy.ascontiguousarray).
//
// CUDA arrays are checked here from their interface dict only (no CUDA call), so these checks run
// on a machine without a GPU on fake objects; cuda_device.h then asks the runtime where the
// memory is and orders the work after the producers' streams.
#pragma once
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "ember/common.h"

namespace ember::bind {
namespace py = pybind11;

// Types holding Python objects have pybind11's (hidden) visibility.
#define EMBER_BIND_HIDDEN __attribute__((visibility("hidden")))

// f64 only for the CUDA losses' device-side result (loss_out).
enum class DType { f32, i64, f64 };
enum class Device { cpu, cuda };

inline const char* dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::i64 ? "int64" : "float64";
}
inline const char* dtype_typestr(DType t) {
  return t == DType::f32 ? "<f4" : t == DType::i64 ? "<i8" : "<f8";
}
inline int64_t dtype_size(DType t) { return t == DType::f32 ? 4 : 8; }

// The NumPy name of an interface typestr ("<f8" -> "float64"): a wrong dtype is named in the
// same words on both devices. The typestr itself when NumPy does not know it.
inline std::string typestr_name(const std::string& typestr) {
  try {
    return py::str(py::module_::import("numpy").attr("dtype")(typestr)).cast<std::string>();
  } catch (const py::error_already_set&) {
    return typestr;
  }
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

inline std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>();
}

// One call of one op: its name, the device its arrays live on and, for CUDA, the allocator of
// outputs passed as None (`alloc(shape[, dtype])`, the Python layer's: CuPy's memory pool).
struct EMBER_BIND_HIDDEN Call {
  const char* fn;
  Device device = Device::cpu;
  py::object alloc = py::none();

  bool cuda() const { return device == Device::cuda; }
  std::string at(const std::string& name) const { return std::string(fn) + ": " + name; }
};

inline Call cpu_call(const char* fn) { return Call{fn, Device::cpu, py::none()}; }
inline Call cuda_call(const char* fn, const py::object& alloc) {
  return Call{fn, Device::cuda, alloc};
}

[[noreturn]] inline void value_error(const Call& c, const std::string& what) {
  throw py::value_error(std::string(c.fn) + ": " + what);
}
inline void require(bool ok, const Call& c, const std::string& what) {
  if (!ok) value_error(c, what);
}
inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw py::value_error(std::string(fn) + ": " + what);
}

// A checked array argument (either device). Empty (ptr 0) when an optional argument was None.
struct EMBER_BIND_HIDDEN Arr {
  py::object obj;  // the caller's object (returned as-is for outputs); the py::array on the CPU
  std::string name;
  Device device = Device::cpu;
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  int64_t size = 0;  // elements
  int64_t itemsize = 4;
  bool readonly = false;
  bool has_stream = false;  // CUDA v3 "stream": the producer's stream, to order our work after
  uintptr_t stream = 0;

  bool given() const { return ptr != 0; }
  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t nbytes() const { return size * itemsize; }
  float* f32() const { return reinterpret_cast<float*>(ptr); }
  const float* cf32() const { return reinterpret_cast<const float*>(ptr); }
  int64_t* i64() const { return reinterpret_cast<int64_t*>(ptr); }
  const int64_t* ci64() const { return reinterpret_cast<const int64_t*>(ptr); }
};

namespace detail {

// What a reader found about an argument, for the checks below.
struct EMBER_BIND_HIDDEN Found {
  bool dtype_ok = false;
  std::string dtype;    // as the array's library spells it
  bool contiguous = true;
  std::string strides;  // str(strides), when not contiguous
  bool aligned = true;
};

inline void read_numpy(const Call& c, py::handle obj, const std::string& where, DType dtype,
                       Arr& a, Found& f) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(where + " must be a numpy.ndarray, got " + type_name(obj));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  // normalized_num() folds platform aliases (long vs long long) and rejects non-native byte order.
  const int want = dtype == DType::f32   ? py::dtype::of<float>().normalized_num()
                   : dtype == DType::i64 ? py::dtype::of<int64_t>().normalized_num()
                                         : py::dtype::of<double>().normalized_num();
  f.dtype_ok = arr.dtype().normalized_num() == want && arr.dtype().byteorder() != '>';
  if (!f.dtype_ok) {
    f.dtype = py::str(arr.dtype()).cast<std::string>();
    return;
  }
  a.obj = arr;
  a.ptr = reinterpret_cast<uintptr_t>(arr.data());
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) a.shape.push_back(arr.shape(i));
  a.size = arr.size();
  a.itemsize = dtype_size(dtype);
  a.readonly = !arr.writeable();
  f.contiguous = (arr.flags() & py::array::c_style) != 0;
  if (!f.contiguous) f.strides = py::str(py::getattr(arr, "strides")).cast<std::string>();
  f.aligned = (arr.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0;
  (void)c;
}

inline void read_cuda(py::handle obj, const std::string& where, DType dtype, Arr& a, Found& f) {
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
  const std::string typestr = py::str(iface["typestr"]).cast<std::string>();
  f.dtype_ok = typestr == dtype_typestr(dtype);
  if (!f.dtype_ok) {
    f.dtype = typestr_name(typestr);
    return;
  }
  a.obj = py::reinterpret_borrow<py::object>(obj);
  a.itemsize = dtype_size(dtype);
  for (py::handle d : py::tuple(py::object(iface["shape"]))) {
    const int64_t v = d.cast<int64_t>();
    if (v < 0) throw py::value_error(where + ": negative extent in shape");
    a.shape.push_back(v);
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
    f.contiguous = ok;
    if (!ok) f.strides = py::str(strides).cast<std::string>();
  }
  py::tuple data{py::object(iface["data"])};
  if (data.size() != 2) throw py::value_error(where + ": 'data' must be (pointer, read_only)");
  a.ptr = data[0].cast<uintptr_t>();
  a.readonly = data[1].cast<bool>();
  f.aligned = a.ptr % static_cast<uintptr_t>(a.itemsize) == 0;
  if (iface.contains("mask") && !iface["mask"].is_none()) {
    throw py::value_error(where + " must not be a masked array");
  }
  // v3: the stream the producer last used, which our work must follow. None: no ordering needed;
  // 0 is forbidden by the protocol (ambiguous); 1 / 2: legacy / per-thread default stream.
  if (iface.contains("stream") && !iface["stream"].is_none()) {
    const auto s = iface["stream"].cast<uintptr_t>();
    if (s == 0) throw py::value_error(where + ": __cuda_array_interface__ stream 0 is not allowed");
    a.has_stream = true;
    a.stream = s;
  }
}

}  // namespace detail

// The checks every array argument passes, in this order: an array of the call's device, of the
// dtype, of rank `ndim` (any rank when ndim < 0), C-contiguous, aligned, non-empty, and writable
// when it is an output.
inline Arr array_arg(const Call& c, py::handle obj, const std::string& name, DType dtype, int ndim,
                     bool writable = false) {
  const std::string where = c.at(name);
  Arr a;
  a.name = name;
  a.device = c.device;
  detail::Found f;
  if (c.cuda()) {
    detail::read_cuda(obj, where, dtype, a, f);
  } else {
    detail::read_numpy(c, obj, where, dtype, a, f);
  }
  if (!f.dtype_ok) {
    throw py::type_error(where + " must have dtype " + dtype_name(dtype) + ", got " + f.dtype);
  }
  if (ndim >= 0 && a.ndim() != ndim) {
    throw py::value_error(where + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(a.shape));
  }
  if (!f.contiguous) {
    throw py::value_error(where + " must be C-contiguous (use " + (c.cuda() ? "cupy" : "numpy") +
                          ".ascontiguousarray), got strides " + f.strides);
  }
  if (!f.aligned) throw py::value_error(where + " must be aligned to its dtype");
  if (a.size == 0) {
    throw py::value_error(where + " must not be empty, got shape " + shape_str(a.shape));
  }
  if (a.ptr == 0) throw py::value_error(where + " has a null data pointer");
  if (writable && a.readonly) {
    throw py::value_error(where + " is an output and must be writable (it is read-only)");
  }
  return a;
}

// An optional array argument: None -> an empty Arr (given() is false).
inline Arr optional_arg(const Call& c, py::handle obj, const std::string& name, DType dtype,
                        int ndim) {
  if (obj.is_none()) return Arr{};
  return array_arg(c, obj, name, dtype, ndim);
}

inline void expect_shape(const Call& c, const Arr& a, const std::vector<int64_t>& shape) {
  if (a.shape != shape) {
    value_error(c, a.name + " must have shape " + shape_str(shape) + ", got " +
                       shape_str(a.shape));
  }
}

// An output argument: None -> a new array of `dtype` and `shape` (NumPy on the CPU; the call's
// allocator on CUDA); otherwise checked (dtype, rank, contiguous, writable, shape).
inline Arr out_arg(const Call& c, py::handle obj, const std::string& name,
                   const std::vector<int64_t>& shape, DType dtype = DType::f32) {
  py::object o = py::reinterpret_borrow<py::object>(obj);
  if (o.is_none()) {
    if (c.cuda()) {
      if (c.alloc.is_none()) value_error(c, name + " is required");
      o = dtype == DType::f32 ? c.alloc(py::tuple(py::cast(shape)))
                              : c.alloc(py::tuple(py::cast(shape)), dtype_name(dtype));
    } else {
      std::vector<py::ssize_t> s(shape.begin(), shape.end());
      if (dtype == DType::f32) {
        o = py::array_t<float>(s);
      } else if (dtype == DType::f64) {
        o = py::array_t<double>(s);
      } else {
        o = py::array_t<int64_t>(s);
      }
    }
  }
  Arr a = array_arg(c, o, name, dtype, static_cast<int>(shape.size()), true);
  expect_shape(c, a, shape);
  return a;
}

inline bool overlaps(const Arr& a, const Arr& b) {
  return a.ptr < b.ptr + static_cast<uintptr_t>(b.nbytes()) &&
         b.ptr < a.ptr + static_cast<uintptr_t>(a.nbytes());
}

inline bool same_memory(const Arr& a, const Arr& b) {
  return a.ptr == b.ptr && a.nbytes() == b.nbytes();
}

// An output that the kernel writes while still reading `input` must not share memory with it
// (an input not given is skipped).
inline void no_overlap(const Call& c, const Arr& out, const Arr& input) {
  if (out.given() && input.given() && overlaps(out, input)) {
    value_error(c, out.name + " must not share memory with " + input.name);
  }
}

inline void no_overlap_all(const Call& c, const Arr& out, std::initializer_list<const Arr*> inputs) {
  for (const Arr* in : inputs) no_overlap(c, out, *in);
}

// An output that may be `input` itself (same buffer: elementwise kernels work in place) but must
// not otherwise share memory with it.
inline void same_or_no_overlap(const Call& c, const Arr& out, const Arr& input) {
  if (same_memory(out, input)) return;
  if (overlaps(out, input)) {
    value_error(c, out.name + " must be " + input.name + " itself or not share memory with it");
  }
}

// Integer labels: int64, 1-D, one per row, each in [0, classes). The range is checked here, in
// O(rows) before any kernel runs, for host memory; CUDA labels are checked on the device, by the
// kernel that reads them (cuda_device.h: labels_range_error).
inline Arr labels_arg(const Call& c, py::handle obj, int64_t rows, int64_t classes) {
  Arr labels = array_arg(c, obj, "labels", DType::i64, 1);
  expect_shape(c, labels, {rows});
  if (!c.cuda()) {
    const int64_t* y = labels.ci64();
    for (int64_t i = 0; i < rows; ++i) {
      if (y[i] < 0 || y[i] >= classes) {
        value_error(c, "labels[" + std::to_string(i) + "] = " + std::to_string(y[i]) +
                           " is out of range [0, " + std::to_string(classes) + ")");
      }
    }
  }
  return labels;
}

// ---- lists of arrays ----------------------------------------------------------------------------

// A list (or tuple) argument after its arrays passed array_arg: `expected` of them (< 0: at least
// one), each float32, C-contiguous, non-empty, writable when `output`. Items are named "params[3]".
struct EMBER_BIND_HIDDEN ArrList {
  std::string name;
  bool output = false;
  std::vector<Arr> arrays;

  template <class T>
  std::vector<T> pointers() const {
    std::vector<T> out;
    out.reserve(arrays.size());
    for (const Arr& a : arrays) out.push_back(reinterpret_cast<T>(a.ptr));
    return out;
  }
  std::vector<int64_t> sizes() const {
    std::vector<int64_t> s;
    s.reserve(arrays.size());
    for (const Arr& a : arrays) s.push_back(a.size);
    return s;
  }
};

inline ArrList array_list(const Call& c, py::handle obj, const std::string& name, bool output,
                          py::ssize_t expected, const char* expected_from = "params") {
  if (obj.is_none()) value_error(c, name + " is required (got None)");
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
    throw py::type_error(c.at(name) + " must be a list of arrays, got " + type_name(obj));
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  const auto n = static_cast<py::ssize_t>(seq.size());
  if (expected < 0 && n == 0) value_error(c, name + " must hold at least one array");
  if (expected >= 0 && n != expected) {
    value_error(c, name + " has " + std::to_string(n) + " arrays but " + expected_from + " has " +
                       std::to_string(expected));
  }
  ArrList l{name, output, {}};
  l.arrays.reserve(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    l.arrays.push_back(
        array_arg(c, seq[i], name + "[" + std::to_string(i) + "]", DType::f32, -1, output));
  }
  return l;
}

inline void same_shapes(const Call& c, const ArrList& like, const ArrList& list) {
  for (size_t i = 0; i < list.arrays.size(); ++i) {
    if (list.arrays[i].shape != like.arrays[i].shape) {
      value_error(c, list.arrays[i].name + " must have shape " + shape_str(like.arrays[i].shape) +
                         " like " + like.arrays[i].name + ", got " +
                         shape_str(list.arrays[i].shape));
    }
  }
}

// No array a kernel writes may share memory with any other array of the call (threads update
// different tensors at once), while arrays only read may overlap each other. One sort and a
// sweep: O(n log n) in the number of arrays.
inline void no_shared_memory(const Call& c, const std::vector<const ArrList*>& lists) {
  struct Span {
    uintptr_t lo, hi;
    bool output;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const ArrList* l : lists) {
    for (const Arr& a : l->arrays) {
      spans.push_back({a.ptr, a.ptr + static_cast<uintptr_t>(a.nbytes()), l->output, &a.name});
    }
  }
  // Stable, so that of two arrays at one address the later argument is named first in the error.
  std::stable_sort(spans.begin(), spans.end(),
                   [](const Span& x, const Span& y) { return x.lo < y.lo; });
  const Span* reach_any = nullptr;  // the earlier span reaching furthest
  const Span* reach_out = nullptr;  // the earlier output span reaching furthest
  for (const Span& s : spans) {
    const Span* hit = s.output ? reach_any : reach_out;
    if (hit != nullptr && hit->hi > s.lo) {
      const Span& written = s.output ? s : *hit;
      const Span& other = s.output ? *hit : s;
      value_error(c, *written.name + " must not share memory with " + *other.name);
    }
    if (reach_any == nullptr || s.hi > reach_any->hi) reach_any = &s;
    if (s.output && (reach_out == nullptr || s.hi > reach_out->hi)) reach_out = &s;
  }
}

// ---- scalars ------------------------------------------------------------------------------------
// Each accepts only its own kind (no bool for numbers, no str for anything) and names the
// argument: "dropout_forward: p must be a real number, got NoneType" (TypeError).

inline float finite_scalar(const char* fn, double v, const char* name) {
  if (!std::isfinite(v)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be finite, got " +
                          std::to_string(v));
  }
  return static_cast<float>(v);
}

// A real number (int, float or NumPy scalar) as a double; may be +-Inf/NaN (see finite_scalar).
inline double real_arg(const char* fn, py::handle obj, const char* name) {
  const bool numpy_number =
      py::isinstance(obj, py::module_::import("numpy").attr("number")) &&
      !py::isinstance(obj, py::module_::import("numpy").attr("complexfloating"));
  if (py::isinstance<py::bool_>(obj) ||
      !(py::isinstance<py::float_>(obj) || py::isinstance<py::int_>(obj) || numpy_number)) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a real number, got " +
                         type_name(obj));
  }
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) {  // an int too large for a double
    PyErr_Clear();
    throw py::value_error(std::string(fn) + ": " + name + " must be finite, got " +
                          py::repr(obj).cast<std::string>());
  }
  return v;
}

// A real number that is finite as a float32 (what the kernels compute with).
inline float finite_f32_arg(const char* fn, py::handle obj, const char* name) {
  const double v = real_arg(fn, obj, name);
  const float f = finite_scalar(fn, v, name);
  if (!std::isfinite(f)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be finite in float32, got " +
                          py::repr(obj).cast<std::string>());
  }
  return f;
}

// A non-negative integer below 2**64 (int or NumPy integer), e.g. a seed or a counter offset.
inline uint64_t uint64_arg(const char* fn, py::handle obj, const char* name) {
  const std::string where = std::string(fn) + ": " + name;
  if (py::isinstance<py::bool_>(obj) ||
      !(py::isinstance<py::int_>(obj) ||
        py::isinstance(obj, py::module_::import("numpy").attr("integer")))) {
    throw py::type_error(where + " must be an int, got " + type_name(obj));
  }
  py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (!v) throw py::error_already_set();
  if (v < py::int_(0)) {
    throw py::value_error(where + " must be >= 0, got " + py::repr(v).cast<std::string>());
  }
  const unsigned long long u = PyLong_AsUnsignedLongLong(v.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(where + " must be < 2**64, got " + py::repr(v).cast<std::string>());
  }
  return static_cast<uint64_t>(u);
}

inline bool bool_arg(const char* fn, py::handle obj, const char* name) {
  if (!py::isinstance<py::bool_>(obj) && !py::isinstance(obj, py::module_::import("numpy").attr("bool_"))) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a bool, got " + type_name(obj));
  }
  return py::cast<bool>(obj);
}

inline std::string str_arg(const char* fn, py::handle obj, const char* name) {
  if (!py::isinstance<py::str>(obj)) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a str, got " + type_name(obj));
  }
  return obj.cast<std::string>();
}

inline Activation parse_activation(const char* fn, const std::string& s) {
  if (s == "identity" || s == "linear" || s == "none") return Activation::identity;
  if (s == "relu") return Activation::relu;
  if (s == "leaky_relu") return Activation::leaky_relu;
  if (s == "gelu") return Activation::gelu_erf;
  if (s == "gelu_tanh") return Activation::gelu_tanh;
  if (s == "tanh") return Activation::tanh;
  if (s == "sigmoid") return Activation::sigmoid;
  if (s == "silu") return Activation::silu;
  throw py::value_error(std::string(fn) + ": activation must be one of 'identity', 'relu', "
                        "'leaky_relu', 'gelu', 'gelu_tanh', 'tanh', 'sigmoid', 'silu', got '" + s + "'");
}

inline Reduction parse_reduction(const char* fn, const std::string& s) {
  if (s == "mean") return Reduction::mean;
  if (s == "sum") return Reduction::sum;
  throw py::value_error(std::string(fn) + ": reduction must be 'mean' or 'sum', got '" + s + "'");
}

// GEMM precision: the CPU computes in float32 for every one; tf32 and bf16 select GPU tensor cores.
enum class Precision { fp32, tf32, bf16 };

inline Precision parse_precision(const char* fn, const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "tf32") return Precision::tf32;
  if (s == "bf16") return Precision::bf16;
  throw py::value_error(std::string(fn) + ": precision must be 'fp32', 'tf32' or 'bf16', got '" +
                        s + "'");
}

}  // namespace ember::bind
