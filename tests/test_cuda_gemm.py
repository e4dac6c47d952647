"""CUDA GEMM family: gemm / linear_forward / linear_backward on CuPy arrays vs float64 NumPy.

Tests marked ``gpu`` need a device (conftest skips them otherwise). The others check the binding's
argument validation with fake objects that carry a ``__cuda_array_interface__`` dict: those
checks read only Python objects, so they run on a machine without a GPU whenever ``ember._cuda``
was built.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import backend, ops

from conftest import ODD_SIZES, act_grad_ref, act_ref, check_op

_cuda = pytest.importorskip("ember._cuda") if backend.cuda_built() else None

TOL = {"fp32": 1e-5, "tf32": 1e-3, "bf16": 1e-2}
PRECISIONS = tuple(TOL)

# ---------------------------------------------------------------------------------------------
# GPU tests


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def _rand(rng, cp, shape):
    return cp.asarray(rng.standard_normal(shape).astype(np.float32))


def _nan(cp, shape):
    return cp.full(shape, cp.nan, dtype=cp.float32)


def _operands(rng, cp, m, n, k, trans_a, trans_b):
    a = _rand(rng, cp, (k, m) if trans_a else (m, k))
    b = _rand(rng, cp, (n, k) if trans_b else (k, n))
    a64 = cp.asnumpy(a).astype(np.float64)
    b64 = cp.asnumpy(b).astype(np.float64)
    return a, b, (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)


SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 13), (3, 5, 1), (17, 31, 3), (33, 65, 127),
          (127, 129, 257), (128, 128, 128), (64, 64, 16), (257, 97, 1031), (2, 300, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("mnk", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_float64(cp, rng, precision, trans_a, trans_b, mnk):
    m, n, k = mnk
    a, b, ref = _operands(rng, cp, m, n, k, trans_a, trans_b)
    out = _nan(cp, (m, n))
    got = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out, precision=precision)
    assert got is out
    check_op(cp.asnumpy(got), ref, TOL[precision], f"{precision} {mnk} ta={trans_a} tb={trans_b}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mnk", [(1000, 1000, 1000), (2048, 1536, 1024), (4099, 257, 515)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_large(cp, rng, precision, mnk):
    m, n, k = mnk
    a, b, ref = _operands(rng, cp, m, n, k, False, True)
    got = ops.gemm(a, b, trans_b=True, out=_nan(cp, (m, n)), precision=precision)
    check_op(cp.asnumpy(got), ref, TOL[precision], f"{precision} {mnk}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_gemm_epilogue(cp, rng, precision, activation):
    """act(alpha * A B + beta * C + bias) and the saved pre-activation, odd sizes."""
    m, n, k = 67, 45, 93
    a, b, ab = _operands(rng, cp, m, n, k, False, False)
    bias = _rand(rng, cp, (n,))
    c0 = _rand(rng, cp, (m, n))
    out = c0.copy()
    pre = _nan(cp, (m, n))
    alpha, beta, slope = 0.75, -0.5, 0.1
    got, got_pre = ops.gemm(a, b, bias=bias, activation=activation, negative_slope=slope,
                            alpha=alpha, beta=beta, out=out, preact_out=pre, precision=precision)
    assert got is out and got_pre is pre
    z = alpha * ab + beta * cp.asnumpy(c0).astype(np.float64) + cp.asnumpy(bias)[None, :]
    check_op(cp.asnumpy(got_pre), z, TOL[precision], f"preact {activation}")
    check_op(cp.asnumpy(got), act_ref(z, activation, slope), TOL[precision], activation)


# Outputs too small to fill the GPU, with a long k: the product is split over k (split-K),
# the slices added in order by a second kernel that applies the epilogue (n % 4 == 0 takes its
# 4-wide path, other n the scalar one).
SPLIT_SHAPES = [(10, 1024, 4096), (64, 64, 65536), (3, 5, 3001), (257, 97, 1031), (1, 1, 600)]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True)],
                         ids=["nn", "tn", "nt"])
@pytest.mark.parametrize("mnk", SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_split_k_matches_float64(cp, rng, precision, trans, mnk):
    m, n, k = mnk
    a, b, ref = _operands(rng, cp, m, n, k, *trans)
    got = ops.gemm(a, b, trans_a=trans[0], trans_b=trans[1], out=_nan(cp, (m, n)),
                   precision=precision)
    # Against the size of the terms, |A| |B| (the bound GEMM error analysis gives): a 1 x 1
    # output of 600 random-sign products can cancel to far below its terms, and tf32's rounding
    # of each term then exceeds 1e-3 of the result (seen on an H200, split or not).
    a64 = np.abs(cp.asnumpy(a).astype(np.float64))
    b64 = np.abs(cp.asnumpy(b).astype(np.float64))
    scale = (a64.T if trans[0] else a64) @ (b64.T if trans[1] else b64)
    err = np.linalg.norm(cp.asnumpy(got) - ref) / np.linalg.norm(scale)
    assert np.isfinite(cp.asnumpy(got)).all() and err <= TOL[precision], (precision, mnk, err)
    again = ops.gemm(a, b, trans_a=trans[0], trans_b=trans[1], precision=precision)
    assert cp.array_equal(got.view(cp.uint32), again.view(cp.uint32))  # fixed order: same bits


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "leaky_relu"])
@pytest.mark.parametrize("n", [44, 45])
def test_gemm_split_k_epilogue(cp, rng, precision, activation, n):
    m, k = 37, 4093
    a, b, ab = _operands(rng, cp, m, n, k, True, False)
    bias, c0 = _rand(rng, cp, (n,)), _rand(rng, cp, (m, n))
    out, pre = c0.copy(), _nan(cp, (m, n))
    got, got_pre = ops.gemm(a, b, trans_a=True, bias=bias, activation=activation,
                            negative_slope=0.1, alpha=0.75, beta=-0.5, out=out, preact_out=pre,
                            precision=precision)
    z = 0.75 * ab - 0.5 * cp.asnumpy(c0).astype(np.float64) + cp.asnumpy(bias)[None, :]
    check_op(cp.asnumpy(got_pre), z, TOL[precision], f"preact {activation}")
    check_op(cp.asnumpy(got), act_ref(z, activation, 0.1), TOL[precision], activation)


@pytest.mark.gpu
def test_linear_backward_split_k_large_batch(cp, rng):
    """A narrow layer at a large batch: dW = dZ^T X has k = batch (split-K), dX has k = 17."""
    batch, n_in, n_out = 20011, 33, 17
    x, w = _rand(rng, cp, (batch, n_in)), _rand(rng, cp, (n_out, n_in))
    z, dy = _rand(rng, cp, (batch, n_out)), _rand(rng, cp, (batch, n_out))
    dx, dw, db = ops.linear_backward(dy, x, w, preact=z, activation="tanh",
                                     grad_input=_nan(cp, (batch, n_in)),
                                     grad_weight=_nan(cp, (n_out, n_in)), grad_bias=_nan(cp, (n_out,)))
    x64, w64 = cp.asnumpy(x).astype(np.float64), cp.asnumpy(w).astype(np.float64)
    dz = cp.asnumpy(dy).astype(np.float64) * act_grad_ref(cp.asnumpy(z).astype(np.float64),
                                                          "tanh", 0.01)
    check_op(cp.asnumpy(dx), dz @ w64, 1e-5, "grad_input")
    check_op(cp.asnumpy(dw), dz.T @ x64, 1e-5, "grad_weight")
    check_op(cp.asnumpy(db), dz.sum(0), 1e-5, "grad_bias")


@pytest.mark.gpu
def test_gemm_beta_zero_ignores_nan_in_out(cp, rng):
    a, b, ref = _operands(rng, cp, 19, 23, 29, False, False)
    got = ops.gemm(a, b, out=_nan(cp, (19, 23)), beta=0.0)
    check_op(cp.asnumpy(got), ref, TOL["fp32"])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gemm_unaligned_pointers_fall_back(cp, rng, precision):
    """Views starting one float into a buffer: no 16-byte loads, same results."""
    m, n, k = 70, 66, 130
    buf_a = _rand(rng, cp, (m * k + 1,))
    buf_b = _rand(rng, cp, (k * n + 1,))
    buf_c = _nan(cp, (m * n + 1,))
    a, b, c = buf_a[1:].reshape(m, k), buf_b[1:].reshape(k, n), buf_c[1:].reshape(m, n)
    bias = _rand(rng, cp, (n + 1,))[1:]
    got = ops.gemm(a, b, bias=bias, activation="relu", out=c, precision=precision)
    ref = np.maximum(cp.asnumpy(a).astype(np.float64) @ cp.asnumpy(b) + cp.asnumpy(bias), 0)
    check_op(cp.asnumpy(got), ref, TOL[precision])


@pytest.mark.gpu
def test_gemm_allocates_and_returns_cupy(cp, rng):
    x, w = _rand(rng, cp, (33, 17)), _rand(rng, cp, (9, 17))
    bias = _rand(rng, cp, (9,))
    y, z = ops.linear_forward(x, w, bias, activation="tanh", save_preact=True)
    assert isinstance(y, cp.ndarray) and isinstance(z, cp.ndarray) and y.shape == (33, 9)
    z_ref = cp.asnumpy(x).astype(np.float64) @ cp.asnumpy(w).T + cp.asnumpy(bias)
    check_op(cp.asnumpy(z), z_ref)
    check_op(cp.asnumpy(y), np.tanh(z_ref))
    assert isinstance(ops.matmul(x, w.T.copy()), cp.ndarray)


@pytest.mark.gpu
def test_gemm_sizes_sweep(cp, rng):
    for m in ODD_SIZES[::3]:
        for n in ODD_SIZES[1::4]:
            k = ODD_SIZES[(m + n) % len(ODD_SIZES)]
            a, b, ref = _operands(rng, cp, m, n, k, False, False)
            check_op(cp.asnumpy(ops.gemm(a, b, out=_nan(cp, (m, n)))), ref, 1e-5, f"{m}x{n}x{k}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gemm_runs_on_current_stream(cp, rng, precision):
    a, b, ref = _operands(rng, cp, 300, 200, 500, False, False)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        out = _nan(cp, (300, 200))
        got = ops.gemm(a, b, out=out, precision=precision)
        host = cp.asnumpy(got, stream=stream)
    stream.synchronize()
    check_op(host, ref, TOL[precision])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gemm_is_deterministic(cp, rng, precision):
    a, b, _ = _operands(rng, cp, 513, 257, 1000, True, False)
    bias = _rand(rng, cp, (257,))
    one = ops.gemm(a, b, trans_a=True, bias=bias, activation="gelu", precision=precision)
    two = ops.gemm(a, b, trans_a=True, bias=bias, activation="gelu", precision=precision)
    assert cp.array_equal(one.view(cp.uint32), two.view(cp.uint32))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_linear_backward_matches_float64(cp, rng, precision, activation):
    batch, n_in, n_out = 97, 45, 33
    x, w = _rand(rng, cp, (batch, n_in)), _rand(rng, cp, (n_out, n_in))
    z, dy = _rand(rng, cp, (batch, n_out)), _rand(rng, cp, (batch, n_out))
    dx, dw, db = ops.linear_backward(
        dy, x, w, preact=z, activation=activation, negative_slope=0.2, precision=precision,
        grad_input=_nan(cp, (batch, n_in)), grad_weight=_nan(cp, (n_out, n_in)),
        grad_bias=_nan(cp, (n_out,)))
    x64, w64 = cp.asnumpy(x).astype(np.float64), cp.asnumpy(w).astype(np.float64)
    dz = cp.asnumpy(dy).astype(np.float64) * act_grad_ref(cp.asnumpy(z).astype(np.float64),
                                                          activation, 0.2)
    tol = TOL[precision]
    check_op(cp.asnumpy(dx), dz @ w64, tol, "grad_input")
    check_op(cp.asnumpy(dw), dz.T @ x64, tol, "grad_weight")
    check_op(cp.asnumpy(db), dz.sum(0), 1e-5, "grad_bias")


@pytest.mark.gpu
def test_linear_backward_accumulate_in_place_and_options(cp, rng):
    batch, n_in, n_out = 1000, 129, 65
    x, w = _rand(rng, cp, (batch, n_in)), _rand(rng, cp, (n_out, n_in))
    z, dy = _rand(rng, cp, (batch, n_out)), _rand(rng, cp, (batch, n_out))
    dy_host = cp.asnumpy(dy).astype(np.float64)
    gw0, gb0 = _rand(rng, cp, (n_out, n_in)), _rand(rng, cp, (n_out,))
    gw, gb = gw0.copy(), gb0.copy()
    dz = dy_host * (cp.asnumpy(z) > 0)
    dx, dw, db = ops.linear_backward(dy, x, w, preact=z, activation="relu", accumulate=True,
                                     need_grad_input=False, grad_weight=gw, grad_bias=gb,
                                     workspace=dy)  # in place: dy becomes dZ
    assert dx is None and dw is gw and db is gb
    check_op(cp.asnumpy(dy), dz, 1e-6, "workspace holds dZ")
    check_op(cp.asnumpy(gw), cp.asnumpy(gw0) + dz.T @ cp.asnumpy(x), 1e-5, "accumulated dW")
    check_op(cp.asnumpy(gb), cp.asnumpy(gb0) + dz.sum(0), 1e-5, "accumulated db")
    dx, dw, db = ops.linear_backward(_rand(rng, cp, (batch, n_out)), x, w, bias=False)
    assert db is None and dx.shape == (batch, n_in) and dw.shape == (n_out, n_in)


@pytest.mark.gpu
def test_linear_backward_is_deterministic(cp, rng):
    batch, n_in, n_out = 4099, 300, 129
    x, w = _rand(rng, cp, (batch, n_in)), _rand(rng, cp, (n_out, n_in))
    z, dy = _rand(rng, cp, (batch, n_out)), _rand(rng, cp, (batch, n_out))
    runs = [ops.linear_backward(dy, x, w, preact=z, activation="silu") for _ in range(2)]
    for one, two in zip(*runs):
        assert cp.array_equal(one.view(cp.uint32), two.view(cp.uint32))


@pytest.mark.gpu
def test_mixing_numpy_and_cupy_is_a_type_error(cp, rng):
    a = _rand(rng, cp, (4, 5))
    with pytest.raises(TypeError, match="gemm: b must be a CUDA array"):
        ops.gemm(a, np.ones((5, 3), np.float32))


@pytest.mark.gpu
def test_array_on_another_device_is_rejected(cp, rng):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(1):
        b = _rand(rng, cp, (5, 3))
    a = _rand(rng, cp, (4, 5))
    with pytest.raises(ValueError, match="gemm: b is on device 1"):
        ops.gemm(a, b)


# ---------------------------------------------------------------------------------------------
# Validation on fake CUDA arrays (no GPU needed)

needs_cuda_module = pytest.mark.skipif(not backend.cuda_built(), reason="ember._cuda not built")


class FakeCudaArray:
    """Carries only a __cuda_array_interface__ dict (protocol v3)."""

    _next_ptr = 1 << 20

    def __init__(self, shape, typestr="<f4", strides=None, readonly=False, ptr=None, **extra):
        if ptr is None:  # distinct, 256-byte aligned, non-overlapping fake addresses
            ptr = FakeCudaArray._next_ptr
            FakeCudaArray._next_ptr += 1 << 20
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                         "data": (ptr, readonly), "strides": strides,
                                         "version": 3, "stream": 1, **extra}


F = FakeCudaArray


def _gemm(a, b, out=None, bias=None, preact=None, **kw):
    args = dict(trans_a=False, trans_b=False, activation="identity", negative_slope=0.01,
                alpha=1.0, beta=0.0, save_preact=False, precision="fp32")
    args.update(kw)
    return _cuda.gemm(a, b, bias, out, preact, args["trans_a"], args["trans_b"],
                      args["activation"], args["negative_slope"], args["alpha"], args["beta"],
                      args["save_preact"], args["precision"], 0, None)


@needs_cuda_module
@pytest.mark.parametrize("case, exc, message", [
    (lambda: _gemm(F((2, 3)), F((3, 4), typestr="<f8"), F((2, 4))), TypeError,
     "gemm: b must have dtype float32, got float64"),
    (lambda: _gemm(np.ones((2, 3), np.float32), F((3, 4)), F((2, 4))), TypeError,
     "gemm: a must be a CUDA array"),
    (lambda: _gemm(F((2, 3)), F((3,)), F((2, 4))), ValueError, r"gemm: b must be 2-D, got shape \(3,\)"),
    (lambda: _gemm(F((2, 3)), F((3, 4), strides=(4, 12)), F((2, 4))), ValueError,
     "gemm: b must be C-contiguous"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4), readonly=True)), ValueError,
     "gemm: out is an output and must be writable"),
    (lambda: _gemm(F((0, 3)), F((3, 4)), F((0, 4))), ValueError, "gemm: a must not be empty"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 5))), ValueError,
     r"gemm: out must have shape \(2, 4\), got \(2, 5\)"),
    (lambda: _gemm(F((2, 3)), F((4, 4)), F((2, 4))), ValueError,
     r"gemm: b must have shape \(3, n\) to match op\(a\)'s 3 columns, got \(4, 4\)"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4)), bias=F((5,))), ValueError,
     r"gemm: bias must have shape \(4,\)"),
    (lambda: _gemm(F((2, 3), ptr=1 << 12), F((3, 4)), F((2, 4), ptr=(1 << 12) + 8)), ValueError,
     "gemm: out must not share memory with a"),
    (lambda: _gemm(F((2, 3), ptr=(1 << 12) + 2), F((3, 4)), F((2, 4))), ValueError,
     "gemm: a must be aligned"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), None, beta=1.0), ValueError, "gemm: beta != 0 needs out"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4)), precision="fp16"), ValueError,
     "gemm: precision must be"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4)), activation="elu"), ValueError,
     "gemm: activation must be one of"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4)), alpha=float("nan")), ValueError,
     "gemm: alpha must be finite"),
    (lambda: _gemm(F((2, 3)), F((3, 4)), F((2, 4)), preact=F((2, 4), typestr="<i8")), TypeError,
     "gemm: preact_out must have dtype float32, got int64"),
])
def test_gemm_validation(case, exc, message):
    with pytest.raises(exc, match=message):
        case()


@needs_cuda_module
def test_gemm_strides_of_unit_extents_are_ignored_and_list_shapes_accepted():
    """C-contiguity ignores the stride of an extent-1 axis (NumPy's rule): such arrays reach the
    device check, which fails here either as not-device-memory or for want of a GPU."""
    a = F((1, 3), strides=(999, 4))
    b = F([3, 4])
    with pytest.raises((ValueError, ember.CudaError)) as info:
        _gemm(a, b, F((1, 4)))
    assert "C-contiguous" not in str(info.value)


def _lb(dy, x, w, preact=None, activation="identity", **kw):
    args = dict(need_grad_input=True, has_bias=True, accumulate=False, grad_input=None,
                grad_weight=None, grad_bias=None, workspace=None)
    args.update(kw)
    return _cuda.linear_backward(dy, x, w, preact, activation, 0.01, args["need_grad_input"],
                                 args["has_bias"], args["accumulate"], args["grad_input"],
                                 args["grad_weight"], args["grad_bias"], args["workspace"],
                                 "fp32", 0, None)


@needs_cuda_module
@pytest.mark.parametrize("case, exc, message", [
    (lambda: _lb(F((8, 3)), F((8, 5), typestr="<f8"), F((3, 5))), TypeError,
     "linear_backward: x must have dtype float32, got float64"),
    (lambda: _lb(F((8, 3)), F((7, 5)), F((3, 5))), ValueError,
     r"linear_backward: x must have shape \(8, 5\), got \(7, 5\)"),
    (lambda: _lb(F((8, 3)), F((8, 5)), F((5, 3))), ValueError,
     r"linear_backward: weight must have shape \(3, 5\)"),
    (lambda: _lb(F((8, 3)), F((8, 5)), F((3, 5)), activation="relu"), ValueError,
     "linear_backward: preact is required"),
    (lambda: _lb(F((8, 3)), F((8, 5)), F((3, 5)), accumulate=True), ValueError,
     "linear_backward: accumulate=True needs grad_weight"),
    (lambda: _lb(F((8, 3)), F((8, 5)), F((3, 5)), grad_weight=F((3, 5), readonly=True),
                 grad_input=F((8, 5)), grad_bias=F((3,))), ValueError,
     "linear_backward: grad_weight is an output and must be writable"),
    (lambda: _lb(F((8, 3)), F((8, 5)), F((3, 5)), preact=F((8, 3)), activation="relu",
                 workspace=F((8, 4))), ValueError,
     r"linear_backward: workspace must have shape \(8, 3\)"),
    (lambda: _lb(F((8, 3)), F((8, 5), ptr=1 << 12), F((3, 5)), grad_input=F((8, 5), ptr=1 << 12),
                 grad_weight=F((3, 5)), grad_bias=F((3,))), ValueError,
     "linear_backward: grad_input must not share memory with x"),
])
def test_linear_backward_validation(case, exc, message):
    with pytest.raises(exc, match=message):
        case()


@needs_cuda_module
def test_linear_backward_workspace_may_be_grad_out():
    """workspace == grad_out passes the Python-side checks (then fails at the device check)."""
    dy = F((8, 3))
    with pytest.raises((ValueError, ember.CudaError)) as info:
        _lb(dy, F((8, 5)), F((3, 5)), preact=F((8, 3)), activation="relu", workspace=dy,
            grad_input=F((8, 5)), grad_weight=F((3, 5)), grad_bias=F((3,)))
    assert "share memory" not in str(info.value)
