// Argument checks shared by ember's pybind11 bindings. Every message names the argument and what
// was expected, so a user sees e.g. "gemm: b must have dtype float32, got float64".
// Wrong type or dtype -> TypeError; wrong rank, shape, layout, read-only or empty -> ValueError.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "ember/common.h"

namespace ember::bind {
namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
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

// f64 only for the CUDA losses' device-side result (see cuda_loss.cpp).
enum class DType { f32, i64, f64 };

inline const char* dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::i64 ? "int64" : "float64";
}

inline bool dtype_matches(const py::array& a, DType t) {
  // normalized_num() folds platform aliases (long vs long long) and rejects non-native byte order.
  const int want = t == DType::f32   ? py::dtype::of<float>().normalized_num()
                   : t == DType::i64 ? py::dtype::of<int64_t>().normalized_num()
                                     : py::dtype::of<double>().normalized_num();
  return a.dtype().normalized_num() == want && a.dtype().byteorder() != '>';
}

// The checks every array argument passes: an ndarray of the dtype, of rank `ndim` (or any rank when
// ndim < 0), C-contiguous, aligned, non-empty, and writable when it is an output.
inline py::array array_arg(const char* fn, py::handle obj, const char* name, DType dtype, int ndim,
                           bool writable = false) {
  const std::string where = std::string(fn) + ": " + name;
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(where + " must be a numpy.ndarray, got " + type_name(obj));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!dtype_matches(a, dtype)) {
    throw py::type_error(where + " must have dtype " + dtype_name(dtype) + ", got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  if (ndim >= 0 && a.ndim() != ndim) {
    throw py::value_error(where + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(where + " must be C-contiguous (use numpy.ascontiguousarray), got strides " +
                          py::str(py::getattr(a, "strides")).cast<std::string>());
  }
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    throw py::value_error(where + " must be aligned to its dtype");
  }
  if (a.size() == 0) {
    throw py::value_error(where + " must not be empty, got shape " + shape_str(a));
  }
  if (writable && !a.writeable()) {
    throw py::value_error(where + " is an output and must be writable (it is read-only)");
  }
  return a;
}

inline void expect_shape(const char* fn, const py::array& a, const char* name,
                         const std::vector<int64_t>& shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok) {
    throw py::value_error(std::string(fn) + ": " + name + " must have shape " + shape_str(shape) +
                          ", got " + shape_str(a));
  }
}

// An output argument: None -> a new array of `dtype` and `shape`; otherwise checked (dtype,
// shape, contiguous, writable).
inline py::array out_arg(const char* fn, py::handle obj, const char* name,
                         const std::vector<int64_t>& shape, DType dtype = DType::f32) {
  if (obj.is_none()) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    if (dtype == DType::f32) return py::array_t<float>(s);
    if (dtype == DType::f64) return py::array_t<double>(s);
    return py::array_t<int64_t>(s);
  }
  py::array a = array_arg(fn, obj, name, dtype, static_cast<int>(shape.size()), true);
  expect_shape(fn, a, name, shape);
  return a;
}

inline bool overlaps(const py::array& a, const py::array& b) {
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* b0 = static_cast<const char*>(b.data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// An output that the kernel writes while still reading `input` must not share memory with it.
inline void no_overlap(const char* fn, const py::array& out, const char* out_name,
                       const py::array& input, const char* in_name) {
  if (overlaps(out, input)) {
    throw py::value_error(std::string(fn) + ": " + out_name + " must not share memory with " +
                          in_name);
  }
}

// An output that may be `input` itself (same buffer: elementwise kernels work in place) but must
// not otherwise share memory with it.
inline void same_or_no_overlap(const char* fn, const py::array& out, const char* out_name,
                               const py::array& input, const char* in_name) {
  if (out.data() == input.data() && out.nbytes() == input.nbytes()) return;
  if (overlaps(out, input)) {
    throw py::value_error(std::string(fn) + ": " + out_name + " must be " + in_name +
                          " itself or not share memory with it");
  }
}

inline float* f32(py::array& a) { return static_cast<float*>(a.mutable_data()); }
inline const float* cf32(const py::array& a) { return static_cast<const float*>(a.data()); }
inline int64_t* i64(py::array& a) { return static_cast<int64_t*>(a.mutable_data()); }
inline const int64_t* ci64(const py::array& a) { return static_cast<const int64_t*>(a.data()); }

// Integer labels: int64, 1-D, one per row, each in [0, classes). O(rows), before any kernel runs.
inline py::array labels_arg(const char* fn, py::handle obj, int64_t rows, int64_t classes) {
  py::array labels = array_arg(fn, obj, "labels", DType::i64, 1);
  expect_shape(fn, labels, "labels", {rows});
  const int64_t* y = static_cast<const int64_t*>(labels.data());
  for (int64_t i = 0; i < rows; ++i) {
    if (y[i] < 0 || y[i] >= classes) {
      throw py::value_error(std::string(fn) + ": labels[" + std::to_string(i) + "] = " +
                            std::to_string(y[i]) + " is out of range [0, " +
                            std::to_string(classes) + ")");
    }
  }
  return labels;
}

inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw py::value_error(std::string(fn) + ": " + what);
}

inline float finite_scalar(const char* fn, double v, const char* name) {
  if (!std::isfinite(v)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be finite, got " +
                          std::to_string(v));
  }
  return static_cast<float>(v);
}

// Python scalars. Each accepts only its own kind (no bool for numbers, no str for anything) and
// names the argument: "dropout_forward: p must be a real number, got NoneType" (TypeError).

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

}  // namespace ember::bind
