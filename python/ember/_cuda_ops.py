"""The CUDA side of :mod:`ember.ops`: the same functions, with the same positional arguments as
the CPU module ``ember._cpu``, for arrays exposing ``__cuda_array_interface__``.

``ember.ops`` dispatches here for CUDA arrays. Each function passes the binding in ``ember._cuda``
two extra arguments: the stream to run on (CuPy's current stream, so kernels are ordered with the
caller's CuPy work) and an allocator for outputs left as ``None`` (``cupy.empty``: CuPy's memory
pool, so buffers are reused and a training step can be captured in a CUDA graph). The binding
checks every argument before allocating or launching anything it should not.

CuPy is imported on first use, so this module imports on a machine without it.
"""
from __future__ import annotations

from ember import _cuda

_cupy = None


def _cp():
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("ember's CUDA kernels need CuPy (pip install cupy-cuda13x)") from exc
        _cupy = cupy
    return _cupy


def _stream() -> int:
    """CuPy's current stream as an integer cudaStream_t (0: the legacy default stream)."""
    return _cp().cuda.get_current_stream().ptr


def _alloc(shape):
    """A new float32 array on the current device, from CuPy's memory pool."""
    cp = _cp()
    return cp.empty(shape, dtype=cp.float32)


# ---------------------------------------------------------------------------------------------
# GEMM family


def gemm(a, b, bias, out, preact_out, trans_a, trans_b, activation, negative_slope, alpha, beta,
         save_preact, precision):
    return _cuda.gemm(a, b, bias, out, preact_out, trans_a, trans_b, activation, negative_slope,
                      alpha, beta, save_preact, precision, _stream(), _alloc)


def linear_backward(grad_out, x, weight, preact, activation, negative_slope, need_grad_input,
                    has_bias, accumulate, grad_input, grad_weight, grad_bias, workspace, precision):
    return _cuda.linear_backward(grad_out, x, weight, preact, activation, negative_slope,
                                 need_grad_input, has_bias, accumulate, grad_input, grad_weight,
                                 grad_bias, workspace, precision, _stream(), _alloc)
