"""ember.ops.gemm / linear_forward / linear_backward against float64 NumPy references."""
from __future__ import annotations


import numpy as np
import pytest

import ember
import ember.ops as ops
from ember import _cpu
from conftest import ODD_SIZES, act_grad_ref, act_ref, check_op, poisoned


def f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    before = ember.get_num_threads()
    yield
    ember.set_num_threads(before)


def random_problem(rng, m, n, k, trans_a, trans_b):
    a = f32(rng, *((k, m) if trans_a else (m, k)))
    b = f32(rng, *((n, k) if trans_b else (k, n)))
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, ref


# ---------------------------------------------------------------------------------------------
# gemm: accuracy


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_odd_shapes(isa, rng, trans_a, trans_b):
    sizes = ODD_SIZES
    for _ in range(25):
        m, n, k = (int(rng.choice(sizes)) for _ in range(3))
        a, b, ref = random_problem(rng, m, n, k, trans_a, trans_b)
        out = poisoned((m, n))
        got = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out)
        assert got is out
        check_op(got, ref, what=f"{isa} {m}x{n}x{k} ta={trans_a} tb={trans_b}")


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 300, 700), (300, 1, 700), (64, 64, 1),
                                   (130, 70, 600), (257, 129, 1031)])
def test_gemm_edges_and_k_blocks(isa, rng, m, n, k):
    """Single rows/columns, k = 1, and k spanning several K blocks (partial sums kept in C)."""
    for ta in (False, True):
        for tb in (False, True):
            a, b, ref = random_problem(rng, m, n, k, ta, tb)
            check_op(ops.gemm(a, b, trans_a=ta, trans_b=tb), ref, what=f"{m}x{n}x{k} {ta} {tb}")


@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_epilogue(isa, rng, activation, with_bias):
    for m, n, k in [(13, 33, 17), (65, 97, 257), (7, 129, 600)]:
        for tb in (False, True):
            a, b, prod = random_problem(rng, m, n, k, False, tb)
            bias = f32(rng, n) if with_bias else None
            z = prod + (bias if with_bias else 0)
            y, pre = ops.gemm(a, b, trans_b=tb, bias=bias, activation=activation,
                              negative_slope=0.2, out=poisoned((m, n)),
                              preact_out=poisoned((m, n)))
            check_op(pre, z, what=f"preact {activation}")
            check_op(y, act_ref(z, activation, 0.2), what=f"{activation} {m}x{n}x{k}")


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0), (-1.5, 0.25), (2.0, 0.0)])
def test_gemm_alpha_beta(isa, rng, alpha, beta):
    for m, n, k in [(5, 7, 3), (97, 65, 31), (33, 257, 700)]:
        a, b, prod = random_problem(rng, m, n, k, True, False)
        c0 = f32(rng, m, n)
        bias = f32(rng, n)
        out = c0.copy()
        y, pre = ops.gemm(a, b, trans_a=True, bias=bias, alpha=alpha, beta=beta,
                          activation="tanh", out=out, save_preact=True)
        z = alpha * prod + beta * c0.astype(np.float64) + bias
        check_op(pre, z, what=f"preact alpha={alpha} beta={beta}")
        check_op(y, np.tanh(z), what=f"alpha={alpha} beta={beta}")


def test_gemm_beta_zero_ignores_nan(rng):
    a, b, ref = random_problem(rng, 40, 50, 60, False, False)
    out = poisoned((40, 50))
    y = ops.gemm(a, b, out=out, beta=0.0)
    assert np.isfinite(y).all()
    check_op(y, ref)


def test_gemm_save_preact_allocates(rng):
    a, b, ref = random_problem(rng, 9, 11, 13, False, True)
    y, z = ops.linear_forward(a, b, activation="relu", save_preact=True)
    check_op(z, ref)
    check_op(y, np.maximum(ref, 0))
    assert ops.matmul(a, b.T.copy()).shape == (9, 11)


def test_gemm_precision_modes_compute_fp32_on_cpu(rng):
    a, b, ref = random_problem(rng, 20, 30, 40, False, False)
    for p in ("fp32", "tf32", "bf16"):
        check_op(ops.gemm(a, b, precision=p), ref, what=p)


def test_gemm_large_random(rng):
    for m, n, k in [(128, 784, 256), (128, 10, 256), (513, 515, 517)]:
        for tb in (False, True):
            a, b, ref = random_problem(rng, m, n, k, False, tb)
            check_op(ops.gemm(a, b, trans_b=tb), ref, what=f"{m}x{n}x{k}")


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("m,n,k", [(128, 256, 784), (301, 177, 530), (128, 10, 256),
                                   (10, 700, 128)])
def test_gemm_bit_identical_across_runs_and_threads(rng, threads, m, n, k):
    for ta, tb in [(False, False), (False, True), (True, False), (True, True)]:
        a, b, _ = random_problem(rng, m, n, k, ta, tb)
        bias = f32(rng, n)
        results = []
        for t in (1, 2, 1, 2):
            ember.set_num_threads(t)
            results.append(ops.gemm(a, b, trans_a=ta, trans_b=tb, bias=bias, activation="gelu"))
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])


# Below 2M multiply-adds per GEMM, dX and dW run side by side (one thread each); above, each is
# split over the threads.
@pytest.mark.parametrize("batch, fin, fout", [(256, 300, 130), (200, 100, 10), (37, 29, 11)])
def test_linear_backward_bit_identical_across_threads(rng, threads, batch, fin, fout):
    x, w = f32(rng, batch, fin), f32(rng, fout, fin)
    gy, z = f32(rng, batch, fout), f32(rng, batch, fout)
    results = []
    for t in (1, 2, 2):
        ember.set_num_threads(t)
        results.append(ops.linear_backward(gy, x, w, preact=z, activation="silu"))
    for r in results[1:]:
        for got, ref in zip(r, results[0]):
            np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------------
# linear_forward / linear_backward


@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_linear_forward_backward(isa, rng, activation):
    for batch, fin, fout in [(1, 1, 1), (7, 13, 5), (33, 65, 17), (128, 97, 10), (64, 257, 129)]:
        x, w, bias = f32(rng, batch, fin), f32(rng, fout, fin), f32(rng, fout)
        y, z = ops.linear_forward(x, w, bias, activation=activation, save_preact=True,
                                  negative_slope=0.1)
        zr = x.astype(np.float64) @ w.T.astype(np.float64) + bias
        check_op(z, zr, what="preact")
        check_op(y, act_ref(zr, activation, 0.1), what=f"y {activation}")

        gy = f32(rng, batch, fout)
        dz = gy * act_grad_ref(z.astype(np.float64), activation, 0.1)
        gx, gw, gb = ops.linear_backward(
            gy, x, w, preact=z, activation=activation, negative_slope=0.1,
            grad_input=poisoned((batch, fin)), grad_weight=poisoned((fout, fin)),
            grad_bias=poisoned((fout,)), workspace=poisoned((batch, fout)))
        what = f"{activation} {batch}x{fin}->{fout}"
        check_op(gx, dz @ w.astype(np.float64), what="dX " + what)
        check_op(gw, dz.T @ x.astype(np.float64), what="dW " + what)
        check_op(gb, dz.sum(0), what="db " + what)


def test_linear_backward_accumulate_in_place_and_options(rng):
    batch, fin, fout = 37, 53, 29
    x, w = f32(rng, batch, fin), f32(rng, fout, fin)
    gy, z = f32(rng, batch, fout), f32(rng, batch, fout)
    dz = gy * (z > 0)
    gw0, gb0 = f32(rng, fout, fin), f32(rng, fout)
    gw, gb = gw0.copy(), gb0.copy()
    work = gy.copy()
    gx, gw_r, gb_r = ops.linear_backward(work, x, w, preact=z, activation="relu",
                                         accumulate=True, grad_weight=gw, grad_bias=gb,
                                         workspace=work)
    assert gw_r is gw and gb_r is gb
    check_op(work, dz, what="dZ in place")
    check_op(gx, dz.astype(np.float64) @ w.astype(np.float64))
    check_op(gw, gw0 + dz.T.astype(np.float64) @ x.astype(np.float64), what="dW accumulate")
    check_op(gb, gb0 + dz.sum(0, dtype=np.float64), what="db accumulate")

    # identity: no preact, no workspace; first layer: no grad_input; no bias
    gx, gw, gb = ops.linear_backward(gy, x, w, need_grad_input=False, bias=False)
    assert gx is None and gb is None
    check_op(gw, gy.T.astype(np.float64) @ x.astype(np.float64))
    _, _, gb = ops.linear_backward(gy, x, w)
    check_op(gb, gy.sum(0, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# argument errors: raised before any work, naming the argument


def test_gemm_errors(rng):
    a, b = f32(rng, 4, 5), f32(rng, 5, 6)
    with pytest.raises(TypeError, match="gemm: a must have dtype float32, got float64"):
        ops.gemm(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="gemm: b must be a numpy.ndarray, got list"):
        ops.gemm(a, b.tolist())
    with pytest.raises(ValueError, match=r"gemm: a must be 2-D, got shape \(20,\)"):
        ops.gemm(a.ravel(), b)
    with pytest.raises(ValueError, match=r"gemm: b must have shape \(5, n\) to match op\(a\)'s 5 columns, got \(6, 6\)"):
        ops.gemm(a, f32(rng, 6, 6))
    with pytest.raises(ValueError, match=r"gemm: b must have shape \(n, 5\) with trans_b=True .*got \(5, 6\)"):
        ops.gemm(a, b, trans_b=True)
    with pytest.raises(ValueError, match="gemm: b must be C-contiguous"):
        ops.gemm(a, f32(rng, 6, 5).T)
    with pytest.raises(ValueError, match=r"gemm: a must not be empty, got shape \(0, 5\)"):
        ops.gemm(np.zeros((0, 5), np.float32), b)
    with pytest.raises(ValueError, match=r"gemm: bias must have shape \(6,\), got \(5,\)"):
        ops.gemm(a, b, bias=f32(rng, 5))
    with pytest.raises(ValueError, match=r"gemm: out must have shape \(4, 6\), got \(6, 4\)"):
        ops.gemm(a, b, out=np.empty((6, 4), np.float32))
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="gemm: out is an output and must be writable"):
        ops.gemm(a, b, out=ro)
    with pytest.raises(ValueError, match="gemm: preact_out is an output and must be writable"):
        ops.gemm(a, b, preact_out=ro)
    sq = f32(rng, 5, 5)
    with pytest.raises(ValueError, match="gemm: out must not share memory with a"):
        ops.gemm(sq, sq.copy(), out=sq)
    with pytest.raises(ValueError, match="gemm: preact_out must not share memory with out"):
        out = np.empty((4, 6), np.float32)
        ops.gemm(a, b, out=out, preact_out=out)
    with pytest.raises(ValueError, match="gemm: beta != 0 needs out"):
        ops.gemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match="gemm: activation must be one of .*got 'swish'"):
        ops.gemm(a, b, activation="swish")
    with pytest.raises(ValueError, match="gemm: precision must be 'fp32', 'tf32' or 'bf16', got 'fp16'"):
        ops.gemm(a, b, precision="fp16")
    with pytest.raises(ValueError, match="gemm: alpha must be finite"):
        ops.gemm(a, b, alpha=float("nan"))
    with pytest.raises(ValueError, match="gemm: negative_slope must be finite"):
        ops.gemm(a, b, activation="leaky_relu", negative_slope=float("inf"))


def test_linear_backward_errors(rng):
    x, w, gy, z = f32(rng, 8, 5), f32(rng, 3, 5), f32(rng, 8, 3), f32(rng, 8, 3)
    fn = ops.linear_backward
    with pytest.raises(TypeError, match="linear_backward: x must have dtype float32, got int64"):
        fn(gy, np.ones((8, 5), np.int64), w)
    with pytest.raises(ValueError, match=r"linear_backward: grad_out must be 2-D, got shape \(24,\)"):
        fn(gy.ravel(), x, w)
    with pytest.raises(ValueError, match=r"linear_backward: x must have shape \(8, 5\), got \(7, 5\)"):
        fn(gy, x[:7].copy(), w)
    with pytest.raises(ValueError, match=r"linear_backward: weight must have shape \(3, 5\), got \(3, 4\)"):
        fn(gy, x, f32(rng, 3, 4))
    with pytest.raises(ValueError, match=r"linear_backward: preact must have shape \(8, 3\)"):
        fn(gy, x, w, preact=f32(rng, 8, 4), activation="relu")
    with pytest.raises(ValueError, match="linear_backward: preact is required when activation is 'relu'"):
        fn(gy, x, w, activation="relu")
    with pytest.raises(ValueError, match="linear_backward: accumulate=True needs grad_weight"):
        fn(gy, x, w, accumulate=True)
    with pytest.raises(ValueError, match="linear_backward: accumulate=True with bias=True needs grad_bias"):
        fn(gy, x, w, accumulate=True, grad_weight=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="linear_backward: weight must be C-contiguous"):
        fn(gy, x, f32(rng, 5, 3).T)
    with pytest.raises(ValueError, match=r"linear_backward: grad_input must have shape \(8, 5\)"):
        fn(gy, x, w, grad_input=np.empty((5, 8), np.float32))
    with pytest.raises(ValueError, match="linear_backward: grad_weight must not share memory with x"):
        big = f32(rng, 8, 5)
        fn(gy, big, f32(rng, 3, 5), grad_weight=big[:3])
    with pytest.raises(ValueError, match="linear_backward: workspace must not share memory with preact"):
        fn(gy, x, w, preact=z, activation="relu", workspace=z)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="linear_backward: grad_bias is an output and must be writable"):
        fn(gy, x, w, grad_bias=ro)
    gro = gy.copy()
    gro.flags.writeable = False
    with pytest.raises(ValueError, match="linear_backward: workspace is grad_out .* must be writable"):
        fn(gro, x, w, preact=z, activation="tanh", workspace=gro)
    with pytest.raises(ValueError, match=r"linear_backward: grad_out must not be empty, got shape \(8, 0\)"):
        fn(gy[:, :0], x, w)
    with pytest.raises(ValueError, match="linear_backward: activation must be one of"):
        fn(gy, x, w, activation="elu")
    with pytest.raises(ValueError, match="linear_backward: precision must be"):
        fn(gy, x, w, precision="fp64")


@pytest.mark.parametrize("kwargs, message", [
    (dict(activation=None), r"gemm: activation must be a str, got NoneType None"),
    (dict(alpha="x"), r"gemm: alpha must be a real number, got str 'x'"),
    (dict(trans_a="no"), r"gemm: trans_a must be a bool, got str 'no'"),
    (dict(precision=16), r"gemm: precision must be a str, got int 16"),
])
def test_wrongly_typed_scalars_are_named(kwargs, message):
    a = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match=message):
        ops.gemm(a, a, **kwargs)


def test_linear_backward_bias_flag_is_explained():
    g = np.ones((3, 2), np.float32)
    x = np.ones((3, 4), np.float32)
    w = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match=r"linear_backward: bias must be a bool \(whether to "
                                        r"compute the bias gradient\), got ndarray"):
        ops.linear_backward(g, x, w, bias=np.zeros(2, np.float32))
    with pytest.raises(TypeError, match=r"activation_forward: negative_slope must be a real "
                                        r"number, got str"):
        ops.activation_forward(x, "leaky_relu", negative_slope="0.1")
    with pytest.raises(TypeError, match=r"dropout_forward: seed must be an int, got float"):
        ops.dropout_forward(x, 0.5, 1.5)
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: reduction must be a str"):
        ops.softmax_cross_entropy(x, np.zeros(3, np.int64), reduction=None)


@pytest.mark.parametrize("shape", [(5, 7, 3), (17, 40, 33), (9, 130, 10)])
def test_fused_relu_passes_nan_like_activation_forward(shape):
    """The epilogue's ReLU is activation_forward's (and PyTorch's): NaN stays NaN, -0 stays -0
    (it made NaN 0, so a model with a NaN weight trained on with a finite loss)."""
    m, k, n = shape
    rng = np.random.default_rng(3)
    a = rng.standard_normal((m, k)).astype(np.float32)
    a[0, 0] = np.nan
    a[-1, :] = 0.0
    b = rng.standard_normal((n, k)).astype(np.float32)
    b[-1, :] = -1.0
    fused = ops.gemm(a, b, trans_b=True, activation="relu")
    plain = ops.activation_forward(ops.gemm(a, b, trans_b=True), "relu")
    assert np.isnan(fused[0]).all()
    np.testing.assert_array_equal(fused.view(np.uint32), plain.view(np.uint32))


def test_linear_forward_errors_name_its_own_arguments():
    """linear_forward(x_float64, w) said "gemm: a must have dtype float32": the README promises
    errors that name the caller's argument."""
    x64 = np.ones((4, 5))
    x = x64.astype(np.float32)
    w = np.ones((3, 5), np.float32)
    with pytest.raises(TypeError, match=r"^linear_forward: x must have dtype float32, got float64"):
        ops.linear_forward(x64, w)
    with pytest.raises(TypeError, match=r"^linear_forward: weight must have dtype float32"):
        ops.linear_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"^linear_forward: weight must have shape "
                                         r"\(out_features, 5\) to match x's 5 columns, got \(3, 6\)"):
        ops.linear_forward(x, np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match=r"^linear_forward: x must be C-contiguous"):
        ops.linear_forward(np.ones((4, 10), np.float32)[:, ::2], w)
    sq = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"^linear_forward: out must not share memory with x"):
        ops.linear_forward(sq, np.ones((3, 3), np.float32), out=sq)
    with pytest.raises(ValueError, match=r"^linear_forward: bias must have shape \(3,\)"):
        ops.linear_forward(x, w, np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"^matmul: a must have dtype float32"):
        ops.matmul(x64, w.T.copy())
