"""ember.ops.activation_forward / activation_backward against float64 NumPy references."""
import math

import numpy as np
import pytest

import ember
import ember.ops as ops
from conftest import ODD_SIZES, check_op, poisoned

ACTS = ops.ACTIVATIONS
SLOPE = 0.07
_erfc = np.frompyfunc(math.erfc, 1, 1)
K = math.sqrt(2.0 / math.pi)


def _phi_cdf(x):
    return 0.5 * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _sigmoid(x):
    # float64, no overflow warning: exp of -|x| only
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def ref_forward(x, act, slope=SLOPE):
    x = np.asarray(x, np.float64)
    if act == "identity":
        return x.copy()
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "leaky_relu":
        return np.where(x > 0, x, x * slope)
    if act == "gelu":
        return x * _phi_cdf(x)
    if act == "gelu_tanh":
        return x * _sigmoid(2.0 * K * (x + 0.044715 * x ** 3))
    if act == "tanh":
        return np.tanh(x)
    if act == "sigmoid":
        return _sigmoid(x)
    if act == "silu":
        return x * _sigmoid(x)
    raise AssertionError(act)


def ref_derivative(x, act, slope=SLOPE):
    x = np.asarray(x, np.float64)
    if act == "identity":
        return np.ones_like(x)
    if act == "relu":
        return (x > 0).astype(np.float64)
    if act == "leaky_relu":
        return np.where(x > 0, 1.0, slope)
    if act == "gelu":
        return _phi_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if act == "gelu_tanh":
        u2 = 2.0 * K * (x + 0.044715 * x ** 3)
        s = _sigmoid(u2)
        return s + x * s * _sigmoid(-u2) * 2 * K * (1 + 3 * 0.044715 * x * x)
    if act == "tanh":
        return 1.0 / np.cosh(x) ** 2  # not 1 - tanh^2, which is 0 in float64 for |x| > 19
    if act == "sigmoid":
        return _sigmoid(x) * _sigmoid(-x)  # 1 - s would cancel for large x
    if act == "silu":
        s = _sigmoid(x)
        return s * (1 + x * _sigmoid(-x))
    raise AssertionError(act)


def _shapes(rng):
    shapes = [(n,) for n in ODD_SIZES] + [(1, 1), (3, 5), (7, 13, 2), (2, 3, 5, 7), (129, 33)]
    shapes += [tuple(int(v) for v in rng.integers(1, 40, size=rng.integers(1, 4)))
               for _ in range(5)]
    return shapes


@pytest.mark.parametrize("act", ACTS)
def test_forward_and_backward_match_float64(act, isa, rng):
    for shape in _shapes(rng):
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        y = ops.activation_forward(x, act, negative_slope=SLOPE, out=poisoned(shape))
        check_op(y, ref_forward(x, act), 1e-5, f"{act} forward {shape}")
        assert ops.activation_forward(x, act, negative_slope=SLOPE).shape == shape
        gi = ops.activation_backward(g, x, act, negative_slope=SLOPE, out=poisoned(shape))
        check_op(gi, g * ref_derivative(x, act), 1e-5, f"{act} backward {shape}")


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "tanh", "sigmoid", "silu"])
def test_elementwise_relative_error_over_a_dense_sweep(act, isa):
    # Every float32 value on a fine grid, elementwise (not just in norm): the approximations of
    # exp / tanh / the normal CDF hold a few ulp everywhere, tails included.
    x = np.linspace(-30, 30, 600_001, dtype=np.float32)
    tol = 6e-7
    if act == "gelu_tanh":
        # gelu_tanh(x) for x << 0 is ~exp(-2u(x)) with u ~ x^3: its condition number grows like
        # x^3, so float32 rounding of u alone costs ~|2u| ulp there (1e-5 relative at x = -9).
        x = x[x > -4]
        tol = 2e-6
    ref = ref_forward(x, act)
    got = ops.activation_forward(x, act).astype(np.float64)
    big = np.abs(ref) > 1e-35
    err = np.max(np.abs(got[big] - ref[big]) / np.abs(ref[big]))
    assert err < tol, f"{act} forward max elementwise relative error {err:.2e}"
    # The derivatives of gelu, gelu_tanh and silu cross zero (near x = -0.75 and -1.28) as a
    # difference of two O(0.2) terms: there the error is measured against 0.1, elsewhere (and for
    # tanh and sigmoid everywhere, tails included) relative to the value.
    dref = ref_derivative(x, act)
    dgot = ops.activation_backward(np.ones_like(x), x, act).astype(np.float64)
    floor = 0.1 if act in ("gelu", "gelu_tanh", "silu") else 1e-35
    derr = np.max(np.abs(dgot - dref) / np.maximum(np.abs(dref), floor))
    assert derr < 1e-6, f"{act} derivative max relative error {derr:.2e}"


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -100.0, 100.0, 88.8, -88.8, -104.0,
                    1e30, -1e30, 1e-30, -1e-30], np.float32)


@pytest.mark.parametrize("act", ACTS)
def test_special_values_follow_ieee_limits(act, isa):
    with np.errstate(all="ignore"):
        ref = ref_forward(SPECIAL, act)
        dref = ref_derivative(SPECIAL, act)
    # The limits at -Inf (0 * -Inf in the formulas above) and the derivatives at +-Inf.
    lim = {"gelu": (0.0, 0.0, 1.0), "gelu_tanh": (0.0, 0.0, 1.0), "silu": (0.0, 0.0, 1.0),
           "sigmoid": (0.0, 0.0, 0.0), "tanh": (-1.0, 0.0, 0.0)}
    if act in lim:
        ninf, dninf, dpinf = lim[act]
        ref[3], dref[3], dref[2] = ninf, dninf, dpinf
    if act in ("relu", "leaky_relu"):
        dref[4] = 0.0 if act == "relu" else SLOPE  # PyTorch: NaN is not > 0
    y = ops.activation_forward(SPECIAL, act, negative_slope=SLOPE)
    d = ops.activation_backward(np.ones_like(SPECIAL), SPECIAL, act, negative_slope=SLOPE)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref), err_msg=f"{act} forward NaN")
    # denormal results (silu(-100) ~ -4e-42) carry few bits: atol covers them
    np.testing.assert_allclose(y, ref.astype(np.float32), rtol=1e-6, atol=1e-37, err_msg=act)
    np.testing.assert_array_equal(np.isnan(d), np.isnan(dref), err_msg=f"{act} derivative NaN")
    np.testing.assert_allclose(d, dref.astype(np.float32), rtol=1e-6, atol=1e-37, err_msg=act)


@pytest.mark.parametrize("act", ACTS)
def test_finite_difference_spot_check(act, rng):
    # The derivative is that of the forward ember computes (central differences in float64 on
    # the float32 forward, away from relu's kink).
    x = rng.uniform(-4, 4, size=64).astype(np.float32)
    x = x[np.abs(x) > 0.05]
    h = np.float32(1e-2)
    fp = ops.activation_forward(x + h, act, negative_slope=SLOPE).astype(np.float64)
    fm = ops.activation_forward(x - h, act, negative_slope=SLOPE).astype(np.float64)
    fd = (fp - fm) / (2 * float(h))
    d = ops.activation_backward(np.ones_like(x), x, act, negative_slope=SLOPE)
    check_op(d, fd, 2e-4, f"{act} finite differences")


@pytest.mark.parametrize("act", ACTS)
def test_in_place_large_and_thread_independent(act, rng):
    n = 300_007  # above the parallel threshold, not a multiple of any block
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    before = ember.get_num_threads()
    try:
        ember.set_num_threads(1)
        y1 = ops.activation_forward(x, act, negative_slope=SLOPE)
        d1 = ops.activation_backward(g, x, act, negative_slope=SLOPE)
        ember.set_num_threads(2)
        y2 = ops.activation_forward(x, act, negative_slope=SLOPE)
        d2 = ops.activation_backward(g, x, act, negative_slope=SLOPE)
    finally:
        ember.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(d1, d2)
    check_op(y1, ref_forward(x, act), 1e-5, act)
    xi = x.copy()
    assert ops.activation_forward(xi, act, negative_slope=SLOPE, out=xi) is xi
    np.testing.assert_array_equal(xi, y1)
    gi = g.copy()
    assert ops.activation_backward(gi, x, act, negative_slope=SLOPE, out=gi) is gi
    np.testing.assert_array_equal(gi, d1)
    zi = x.copy()  # out may also be preact
    ops.activation_backward(g, zi, act, negative_slope=SLOPE, out=zi)
    np.testing.assert_array_equal(zi, d1)


def test_leaky_relu_uses_negative_slope():
    x = np.array([-2.0, -0.5, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(ops.activation_forward(x, "leaky_relu", negative_slope=0.2),
                                  np.array([-0.4, -0.1, 0.0, 3.0], np.float32))
    np.testing.assert_array_equal(
        ops.activation_backward(np.ones(4, np.float32), x, "leaky_relu", negative_slope=0.2),
        np.array([0.2, 0.2, 0.2, 1.0], np.float32))


def test_identity_aliases_accepted():
    x = np.arange(5, dtype=np.float32)
    assert ops.activation_forward(x, "linear") is not x
    np.testing.assert_array_equal(ops.activation_forward(x, "none"), x)


X = np.ones((4, 3), np.float32)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.activation_forward(X.astype(np.float64), "relu"), TypeError,
     "activation_forward: x must have dtype float32, got float64"),
    (lambda: ops.activation_forward([1.0, 2.0], "relu"), TypeError,
     "activation_forward: x must be a numpy.ndarray or a CUDA array"),
    (lambda: ops.activation_forward(X, "swish"), ValueError,
     "activation_forward: activation must be one of 'identity', .*got 'swish'"),
    (lambda: ops.activation_forward(X, None), TypeError,
     "activation_forward: activation must be a str, got NoneType"),
    (lambda: ops.activation_forward(X, "leaky_relu", negative_slope=float("nan")), ValueError,
     "activation_forward: negative_slope must be finite"),
    (lambda: ops.activation_forward(X, "leaky_relu", negative_slope=1e300), ValueError,
     "activation_forward: negative_slope must be finite in float32"),
    (lambda: ops.activation_forward(X, "relu", negative_slope="0.1"), TypeError,
     "activation_forward: negative_slope must be a real number, got str"),
    (lambda: ops.activation_forward(X[:, ::2], "relu"), ValueError,
     "activation_forward: x must be C-contiguous"),
    (lambda: ops.activation_forward(np.ones((0, 3), np.float32), "relu"), ValueError,
     r"activation_forward: x must not be empty, got shape \(0, 3\)"),
    (lambda: ops.activation_forward(X, "relu", out=np.ones((3, 4), np.float32)), ValueError,
     r"activation_forward: out must have shape \(4, 3\), got \(3, 4\)"),
    (lambda: ops.activation_forward(X, "relu", out=np.ones((4, 3))), TypeError,
     "activation_forward: out must have dtype float32, got float64"),
    (lambda: ops.activation_forward(X, "relu", out=np.ones((4, 3), np.float32)[:, :]
                                    .copy().view()[::1].copy().__class__(
                                        (4, 3), np.float32, np.zeros(12, np.float32).tobytes())),
     ValueError, "activation_forward: out is an output and must be writable"),
    (lambda: ops.activation_backward(X, np.ones((4, 4), np.float32), "relu"), ValueError,
     r"activation_backward: preact must have shape \(4, 3\), got \(4, 4\)"),
    (lambda: ops.activation_backward(X, X.astype(np.float16), "relu"), TypeError,
     "activation_backward: preact must have dtype float32, got float16"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_partial_overlap_rejected():
    buf = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="activation_forward: out must be x itself or not share"):
        ops.activation_forward(buf[:8], "relu", out=buf[2:])
    with pytest.raises(ValueError, match="activation_backward: out must be grad_out itself"):
        ops.activation_backward(buf[:8], np.ones(8, np.float32), "relu", out=buf[1:9])
