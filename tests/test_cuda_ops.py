"""CUDA losses, optimizers, dropout, activations and reductions on CuPy arrays.

Tests marked ``gpu`` compare with float64 NumPy references (and with the CPU kernels where one
exists), on outputs poisoned with NaN and on odd sizes. The others check the bindings' argument
validation with fake ``__cuda_array_interface__`` objects; they run without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import _cpu, backend, ops

from conftest import check_op
from test_cuda_gemm import F, act_grad_ref, act_ref, needs_cuda_module

_cuda = pytest.importorskip("ember._cuda") if backend.cuda_built() else None


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def _rand(rng, cp, shape, scale=1.0):
    return cp.asarray((scale * rng.standard_normal(shape)).astype(np.float32))


def _nan(cp, shape):
    return cp.full(shape, cp.nan, dtype=cp.float32)


def _h(a):
    import cupy
    return cupy.asnumpy(a).astype(np.float64)


def _same_bits(cp, a, b):
    return bool(cp.array_equal(a.view(cp.uint32), b.view(cp.uint32)))


# ---------------------------------------------------------------------------------------------
# float64 references


def xent_ref(x, y, w=None, eps=0.0, reduction="mean"):
    """(loss, dloss/dx, per-row losses) with torch.nn.functional.cross_entropy's semantics."""
    rows, c = x.shape
    w = np.ones(c) if w is None else w
    m = x.max(1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(1, keepdims=True))
    logp = x - lse
    p = np.exp(logp)
    wy = w[y]
    rl = (1 - eps) * wy * -logp[np.arange(rows), y] + eps / c * -(w * logp).sum(1)
    onehot = np.zeros_like(x)
    onehot[np.arange(rows), y] = 1.0
    g = (1 - eps) * wy[:, None] * (p - onehot) + eps / c * (w.sum() * p - w[None, :])
    den = wy.sum() if reduction == "mean" else 1.0
    return rl.sum() / den, g / den, rl


# ---------------------------------------------------------------------------------------------
# softmax cross-entropy


XENT_SHAPES = [(1, 1), (1, 2), (7, 3), (13, 10), (31, 17), (97, 33), (5, 64), (257, 65),
               (64, 1000), (3, 2049), (2, 5003)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", XENT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_matches_float64(cp, rng, shape, weighted, eps, reduction):
    rows, c = shape
    x = _rand(rng, cp, shape, 3.0)
    y = cp.asarray(rng.integers(0, c, rows))
    w = cp.asarray(rng.uniform(0.2, 2.0, c).astype(np.float32)) if weighted else None
    grad, rl = _nan(cp, shape), _nan(cp, (rows,))
    loss, g = ops.softmax_cross_entropy(x, y, weight=w, label_smoothing=eps, reduction=reduction,
                                        grad_scale=0.5, grad=grad, row_loss=rl)
    ref, gref, rlref = xent_ref(_h(x), cp.asnumpy(y), None if w is None else _h(w), eps, reduction)
    assert isinstance(loss, float) and g is grad
    check_op(np.array([loss]), np.array([ref]), 1e-5, "loss")
    check_op(_h(g), 0.5 * gref, 1e-5, "grad")
    check_op(_h(rl), rlref, 1e-5, "row_loss")


@pytest.mark.gpu
def test_softmax_cross_entropy_in_place_device_loss_and_int32_labels(cp, rng):
    from ember import _cuda_ops
    x = _rand(rng, cp, (300, 10), 2.0)
    y = cp.asarray(rng.integers(0, 10, 300).astype(np.int32))
    ref, gref, _ = xent_ref(_h(x), cp.asnumpy(y).astype(np.int64))
    loss, g = ops.softmax_cross_entropy(x, y, grad=x)  # in place
    assert g is x
    check_op(_h(g), gref, 1e-5, "in-place grad")
    x = _rand(rng, cp, (300, 10), 2.0)
    ref, _, _ = xent_ref(_h(x), cp.asnumpy(y).astype(np.int64))
    dev, g = _cuda_ops.softmax_cross_entropy(x, y, None, 0.0, "mean", 1.0, False, None, None,
                                             device_loss=True)
    assert g is None and dev.shape == (1,) and dev.dtype == cp.float32
    check_op(_h(dev), np.array([ref]), 1e-6, "device loss")


@pytest.mark.gpu
def test_softmax_cross_entropy_bad_label_raises_and_device_loss_is_nan(cp, rng):
    from ember import _cuda_ops
    x = _rand(rng, cp, (50, 7))
    y = cp.asarray(rng.integers(0, 7, 50))
    y[31] = 7
    y[40] = -1
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\), got labels\[31\] = 7"):
        ops.softmax_cross_entropy(x, y)
    dev, _ = _cuda_ops.softmax_cross_entropy(x, y, None, 0.0, "mean", 1.0, True, None, None,
                                             device_loss=True)
    assert np.isnan(float(dev[0]))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8192, 10), (4099, 1000), (33, 40000)])
def test_softmax_cross_entropy_large_is_deterministic(cp, rng, shape):
    x = _rand(rng, cp, shape, 4.0)
    y = cp.asarray(rng.integers(0, shape[1], shape[0]))
    w = cp.asarray(rng.uniform(0.5, 1.5, shape[1]).astype(np.float32))
    runs = [ops.softmax_cross_entropy(x, y, weight=w, label_smoothing=0.05) for _ in range(2)]
    assert runs[0][0] == runs[1][0] and _same_bits(cp, runs[0][1], runs[1][1])
    ref, gref, _ = xent_ref(_h(x), cp.asnumpy(y), _h(w), 0.05)
    check_op(np.array([runs[0][0]]), np.array([ref]), 1e-5, "loss")
    check_op(_h(runs[0][1]), gref, 1e-5, "grad")


# ---------------------------------------------------------------------------------------------
# MSE, argmax, accuracy


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 5), (278011,), (3, 1031, 2)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_float64(cp, rng, shape, reduction):
    p, t = _rand(rng, cp, shape), _rand(rng, cp, shape)
    d = _h(p) - _h(t)
    n = d.size if reduction == "mean" else 1
    loss, g = ops.mse(p, t, reduction=reduction, grad_scale=2.0, grad=_nan(cp, shape))
    check_op(np.array([loss]), np.array([(d * d).sum() / n]), 1e-5, "loss")
    check_op(_h(g), 2.0 * 2.0 * d / n, 1e-5, "grad")
    again, g2 = ops.mse(p, t, reduction=reduction, grad_scale=2.0)
    assert again == loss and _same_bits(cp, g, g2)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (97, 31), (1000, 1000), (3, 5003)], ids=str)
def test_argmax_and_accuracy(cp, rng, shape):
    x = _rand(rng, cp, shape)
    x[0, :] = 1.0  # ties: the first index wins
    out = cp.full(shape[0], -7, dtype=cp.int64)
    got = ops.argmax(x, out=out)
    assert got is out and np.array_equal(cp.asnumpy(got), np.argmax(cp.asnumpy(x), 1))
    y = cp.asarray(rng.integers(0, shape[1], shape[0]))
    y[: shape[0] // 2] = got[: shape[0] // 2]
    assert ops.accuracy(x, y) == float(np.mean(np.argmax(cp.asnumpy(x), 1) == cp.asnumpy(y)))


# ---------------------------------------------------------------------------------------------
# activations and reductions


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 7, 4096, 278011])
def test_activations_match_float64(cp, rng, activation, n):
    z, g = _rand(rng, cp, (n,), 3.0), _rand(rng, cp, (n,))
    y = ops.activation_forward(z, activation, negative_slope=0.2, out=_nan(cp, (n,)))
    check_op(_h(y), act_ref(_h(z), activation, 0.2), 1e-5, "forward")
    d = ops.activation_backward(g, z, activation, negative_slope=0.2, out=_nan(cp, (n,)))
    check_op(_h(d), _h(g) * act_grad_ref(_h(z), activation, 0.2), 1e-5, "backward")
    # in place, on an unaligned view
    buf = _rand(rng, cp, (n + 1,), 3.0)
    view, ref = buf[1:], act_ref(_h(buf[1:]), activation, 0.2)
    assert ops.activation_forward(view, activation, negative_slope=0.2, out=view) is view
    check_op(_h(view), ref, 1e-5, "in place, unaligned")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (256, 33), (257, 1), (1031, 129), (70000, 3)],
                         ids=str)
def test_column_sum_and_sum(cp, rng, shape):
    x = _rand(rng, cp, shape)
    out = ops.column_sum(x, out=_nan(cp, (shape[1],)))
    check_op(_h(out), _h(x).sum(0), 1e-6, "column_sum")
    acc = _rand(rng, cp, (shape[1],))
    ref = _h(acc) + _h(x).sum(0)
    ops.column_sum(x, out=acc, accumulate=True)
    check_op(_h(acc), ref, 1e-6, "accumulate")
    assert _same_bits(cp, ops.column_sum(x), ops.column_sum(x))
    s = ops.sum(x)
    assert abs(s - _h(x).sum()) <= 1e-9 * np.abs(_h(x)).sum() + 1e-12
    assert s == ops.sum(x)


@pytest.mark.gpu
def test_gather_rows_matches_the_cpu_and_checks_indices(cp, rng):
    x = rng.standard_normal((37, 5)).astype(np.float32)
    idx = rng.integers(0, 37, 61)
    got = ops.gather_rows(cp.asarray(x), cp.asarray(idx))
    np.testing.assert_array_equal(cp.asnumpy(got), ops.gather_rows(x, idx))
    out = _nan(cp, (3, 5))
    assert ops.gather_rows(cp.asarray(x), cp.asarray(np.array([36, 0, 36], np.int32)), out=out) is out
    np.testing.assert_array_equal(cp.asnumpy(out), x[[36, 0, 36]])
    with pytest.raises(ValueError, match=r"gather_rows: index holds 37, out of range \[0, 37\)"):
        ops.gather_rows(cp.asarray(x), cp.asarray(np.array([0, 37])))
    with pytest.raises(ValueError, match="gather_rows: index holds -1"):
        ops.gather_rows(cp.asarray(x), cp.asarray(np.array([-1])))
    with pytest.raises(TypeError, match="gather_rows: index must be a cupy.ndarray"):
        ops.gather_rows(cp.asarray(x), idx)
    with pytest.raises(ValueError, match="gather_rows: out must be a C-contiguous float32"):
        ops.gather_rows(cp.asarray(x), cp.asarray(idx), out=cp.zeros((61, 4), cp.float32))


@pytest.mark.gpu
def test_global_norm(cp, rng):
    arrays = [_rand(rng, cp, s) for s in [(1,), (278011,), (13, 7), (1000, 10), (10,)]]
    ref = np.sqrt(sum((_h(a) ** 2).sum() for a in arrays))
    got = ops.global_norm(arrays)
    assert abs(got - ref) <= 1e-12 * ref and got == ops.global_norm(arrays)


# ---------------------------------------------------------------------------------------------
# dropout


def philox_dropout_ref(n, p, seed, offset):
    """The stream of ember/philox.h in NumPy: (keep mask, scale)."""
    g = (np.uint64(offset) + np.arange(n, dtype=np.uint64))
    blk = g >> np.uint64(2)
    c = [(blk & np.uint64(0xffffffff)).astype(np.uint64), blk >> np.uint64(32),
         np.zeros(n, np.uint64), np.zeros(n, np.uint64)]
    k0, k1 = np.uint64(seed & 0xffffffff), np.uint64(seed >> 32)
    m32 = np.uint64(0xffffffff)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & m32, p1 & m32,
             ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & m32, p0 & m32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m32, (k1 + np.uint64(0xBB67AE85)) & m32
    r = np.choose((g & np.uint64(3)).astype(np.int64), c)
    thr = int(np.ceil(np.float64(np.float32(p)) * 2**24))
    # p = 1 keeps nothing (the kernel writes zeros); 1 / (1 - p) would divide by zero.
    scale = np.float32(1) / (np.float32(1) - np.float32(p)) if p < 1 else np.float32(0)
    return (r >> np.uint64(8)) >= np.uint64(thr), scale


@pytest.mark.gpu
@pytest.mark.parametrize("n, p, seed, offset", [
    (1, 0.5, 0, 0), (7, 0.3, 1, 1), (13, 0.5, 2**40 + 3, 6), (4096, 0.1, 12345, 0),
    (278011, 0.5, 2**63 + 5, 2**33 + 3), (1000, 0.0, 9, 2), (1000, 1.0, 9, 2)])
def test_dropout_matches_philox_stream_and_cpu(cp, rng, n, p, seed, offset):
    x = _rand(rng, cp, (n,))
    y = ops.dropout_forward(x, p, seed, offset, out=_nan(cp, (n,)))
    keep, scale = philox_dropout_ref(n, p, seed, offset)
    xh = cp.asnumpy(x)
    ref = np.where(keep, xh * scale, np.float32(0)) if p < 1 else np.zeros(n, np.float32)
    assert np.array_equal(cp.asnumpy(y).view(np.uint32), ref.astype(np.float32).view(np.uint32))
    if hasattr(_cpu, "dropout_forward"):
        cpu = ops.dropout_forward(xh, p, seed, offset)
        assert np.array_equal(cp.asnumpy(y).view(np.uint32), cpu.view(np.uint32))
    g = ops.dropout_backward(x, p, seed, offset)
    assert _same_bits(cp, g, y)
    assert ops.dropout_forward(x, p, seed, offset, out=x) is x and _same_bits(cp, x, y)


# ---------------------------------------------------------------------------------------------
# optimizers: 20 steps against the published rules (float64) and against ember's CPU kernels

OPT_SHAPES = [(1,), (278011,), (13, 7), (31,), (4, 5, 3), (1000, 10)]


def _adam_ref(p, g, m, v, vmax, t, lr, b1, b2, eps, wd, amsgrad, decoupled, maximize, gscale):
    g = g * gscale * (-1 if maximize else 1)
    if wd and not decoupled:
        g = g + wd * p
    if wd and decoupled:
        p = p * (1 - lr * wd)
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    vv = np.maximum(vmax, v) if amsgrad else v
    p = p - lr / (1 - b1**t) * m / (np.sqrt(vv) / np.sqrt(1 - b2**t) + eps)
    return p, m, v, vv


def _sgd_ref(p, g, buf, t, lr, mom, damp, wd, nesterov, maximize, gscale):
    g = g * gscale * (-1 if maximize else 1)
    if wd:
        g = g + wd * p
    if mom:
        buf = g if t == 1 else mom * buf + (1 - damp) * g
        g = g + mom * buf if nesterov else buf
    return p - lr * g, buf


def _clip(grads, max_norm):
    norm = np.sqrt(sum((g**2).sum() for g in grads))
    return norm, (min(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0)


ADAM_CASES = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True),
              dict(amsgrad=True, maximize=True, max_grad_norm=0.5), dict(lr=0.1, betas=(0.5, 0.9))]


@pytest.mark.gpu
@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda k: ",".join(k) or "plain")
def test_adam_20_steps_vs_float64_and_cpu(cp, rng, kw):
    kw = dict(kw)
    amsgrad = kw.get("amsgrad", False)
    params = [rng.standard_normal(s).astype(np.float32) for s in OPT_SHAPES]
    dev = [cp.asarray(a) for a in params]
    cpu = [a.copy() for a in params]
    st = {k: [cp.zeros_like(a) for a in dev] for k in ("m", "v", "vm")}
    cst = {k: [np.zeros_like(a) for a in cpu] for k in ("m", "v", "vm")}
    ref = [a.astype(np.float64) for a in params]
    rst = {k: [np.zeros_like(a) for a in ref] for k in ("m", "v", "vm")}
    lr, (b1, b2) = kw.get("lr", 1e-3), kw.get("betas", (0.9, 0.999))
    for t in range(1, 21):
        grads = [rng.standard_normal(s).astype(np.float32) for s in OPT_SHAPES]
        norm, skipped = ops.adam_step(dev, [cp.asarray(g) for g in grads], st["m"], st["v"],
                                      st["vm"] if amsgrad else None, step=t, **kw)
        cnorm, _ = ops.adam_step(cpu, grads, cst["m"], cst["v"], cst["vm"] if amsgrad else None,
                                 step=t, **kw)
        rnorm, gscale = _clip([g.astype(np.float64) for g in grads], kw.get("max_grad_norm"))
        assert not skipped and abs(norm - rnorm) <= 1e-12 * rnorm and abs(norm - cnorm) <= 1e-12 * rnorm
        for i, g in enumerate(grads):
            ref[i], rst["m"][i], rst["v"][i], rst["vm"][i] = _adam_ref(
                ref[i], g.astype(np.float64), rst["m"][i], rst["v"][i], rst["vm"][i], t, lr, b1,
                b2, 1e-8, kw.get("weight_decay", 0.0), amsgrad,
                kw.get("decoupled_weight_decay", False), kw.get("maximize", False), gscale)
    for i in range(len(params)):
        check_op(_h(dev[i]), ref[i], 1e-5, f"param {i} vs float64")
        check_op(_h(dev[i]), cpu[i], 1e-6, f"param {i} vs CPU")
        check_op(_h(st["v"][i]), rst["v"][i], 1e-5, f"exp_avg_sq {i}")


OPTIMIZER_CASES = [("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, amsgrad=True, max_grad_norm=0.5)),
                   ("AdamW", dict(lr=1e-2, weight_decay=0.1)), ("SGD", dict(lr=0.1)),
                   ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3))]


@pytest.mark.gpu
@pytest.mark.parametrize("name, kw", OPTIMIZER_CASES, ids=lambda v: str(v))
def test_optimizer_plan_matches_the_checked_call(cp, rng, name, kw):
    """ember.optim on CuPy parameters steps through an OptimPlan (lists checked once); the same
    bits as the functional call that checks every array, before and after a parameter is
    reassigned (which makes a new plan)."""
    from ember import optim
    from ember.nn import Parameter

    shapes = [(13, 7), (31,), (1,), (64, 65)]
    ps = [Parameter(cp.asarray(rng.standard_normal(s).astype(np.float32))) for s in shapes]
    ref = [cp.array(p.data) for p in ps]
    opt = getattr(optim, name)(ps, **kw)
    keys = opt._state_keys
    ref_state = {k: [cp.zeros_like(a) for a in ref] for k in keys}
    plans = []  # kept alive, so that their ids stay distinct
    for t in range(1, 21):
        grads = [cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        if t == 11:  # reassigned: the optimizer must not keep stepping the old arrays
            ps[2].data = cp.array(ps[2].data)
        for p, g in zip(ps, grads):  # in place, as backward writes them (a new array would
            if p.grad is None:       # be a reassignment, and a new plan)
                p.grad = cp.empty_like(g)
            p.grad[...] = g
        norm, skipped = opt.step()
        plans.append(opt._lists[4])
        if name == "SGD":
            rnorm, _ = ops.sgd_step(ref, grads, ref_state.get("momentum_buffer"), step=t,
                                    **{k: v for k, v in kw.items()})
        else:
            kk = {k: v for k, v in kw.items()}
            rnorm, _ = ops.adam_step(ref, grads, ref_state["exp_avg"], ref_state["exp_avg_sq"],
                                     ref_state.get("max_exp_avg_sq"), step=t,
                                     decoupled_weight_decay=name == "AdamW", **kk)
        assert not skipped and norm == rnorm
    assert len({id(p) for p in plans}) == 2  # one plan, then a new one after the reassignment
    assert plans[9] is plans[0] and plans[10] is not plans[9]
    for p, r in zip(ps, ref):
        assert _same_bits(cp, p.data, r)
    assert opt.__getstate__()["_lists"] is None  # picklable: the plan is a cache


@pytest.mark.gpu
def test_optimizer_plan_validation(cp, rng):
    from ember import _cuda
    from ember import _cuda_ops

    p = [cp.zeros(3, cp.float32)]
    with pytest.raises(TypeError, match="states must be a list"):
        _cuda.OptimPlan(p, p, None, 0)
    with pytest.raises(ValueError, match="grads must not share memory|params.*share memory"):
        _cuda_ops.optim_plan(p, p, [])
    plan = _cuda_ops.optim_plan(p, [cp.ones(3, cp.float32)], [[cp.zeros(3, cp.float32)]])
    assert plan.state_lists == 1
    with pytest.raises(ValueError, match="holds 1 state list"):
        _cuda_ops.plan_adam_step(plan, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 0.0)
    with pytest.raises(ValueError, match="lr"):
        _cuda_ops.plan_sgd_step(plan, -1.0, 0.9, 0.0, 0.0, False, False, 1, 0.0)
    norm, skipped = _cuda_ops.plan_sgd_step(plan, 0.1, 0.9, 0.0, 0.0, False, False, 1, 0.0)
    assert norm == pytest.approx(3 ** 0.5) and not skipped
    assert cp.allclose(p[0], -0.1)


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True,
             weight_decay=0.01), dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True,
             max_grad_norm=1.0)]


@pytest.mark.gpu
@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda k: ",".join(k))
def test_sgd_20_steps_vs_float64_and_cpu(cp, rng, kw):
    mom = kw.get("momentum", 0.0)
    params = [rng.standard_normal(s).astype(np.float32) for s in OPT_SHAPES]
    dev, cpu = [cp.asarray(a) for a in params], [a.copy() for a in params]
    bufs, cbufs = [cp.zeros_like(a) for a in dev], [np.zeros_like(a) for a in cpu]
    ref = [a.astype(np.float64) for a in params]
    rbufs = [np.zeros_like(a) for a in ref]
    for t in range(1, 21):
        grads = [rng.standard_normal(s).astype(np.float32) for s in OPT_SHAPES]
        ops.sgd_step(dev, [cp.asarray(g) for g in grads], bufs if mom else None, step=t, **kw)
        ops.sgd_step(cpu, grads, cbufs if mom else None, step=t, **kw)
        _, gscale = _clip([g.astype(np.float64) for g in grads], kw.get("max_grad_norm"))
        for i, g in enumerate(grads):
            ref[i], rbufs[i] = _sgd_ref(ref[i], g.astype(np.float64), rbufs[i], t, kw["lr"], mom,
                                        kw.get("dampening", 0.0), kw.get("weight_decay", 0.0),
                                        kw.get("nesterov", False), kw.get("maximize", False), gscale)
    for i in range(len(params)):
        check_op(_h(dev[i]), ref[i], 1e-5, f"param {i} vs float64")
        check_op(_h(dev[i]), cpu[i], 1e-6, f"param {i} vs CPU")


@pytest.mark.gpu
def test_optimizer_skips_non_finite_and_is_deterministic(cp, rng):
    p = [_rand(rng, cp, s) for s in OPT_SHAPES]
    g = [_rand(rng, cp, s) for s in OPT_SHAPES]
    m, v = [cp.zeros_like(a) for a in p], [cp.zeros_like(a) for a in p]
    g[1][1234] = cp.inf
    before = [a.copy() for a in p]
    norm, skipped = ops.adam_step(p, g, m, v, step=1)
    assert skipped and not np.isfinite(norm)
    assert all(_same_bits(cp, a, b) for a, b in zip(p, before))
    assert all(not bool(cp.any(x)) for x in m + v)
    g[1][1234] = 0.5
    outs = []
    for _ in range(2):
        q = [a.copy() for a in before]
        mm, vv = [cp.zeros_like(a) for a in p], [cp.zeros_like(a) for a in p]
        outs.append((ops.adam_step(q, g, mm, vv, step=3, max_grad_norm=1.0), q))
    assert outs[0][0] == outs[1][0]
    assert all(_same_bits(cp, a, b) for a, b in zip(outs[0][1], outs[1][1]))


@pytest.mark.gpu
def test_adam_many_tensors_and_device_state(cp, rng):
    """More tensors than one launch holds; the graph-friendly path (state on the device, step
    advanced on the device, nothing synchronised) gives the same bits as the host path."""
    from ember import _cuda_ops
    shapes = [(int(rng.integers(1, 300)),) for _ in range(250)]
    p1 = [_rand(rng, cp, s) for s in shapes]
    p2 = [a.copy() for a in p1]
    st1 = [[cp.zeros_like(a) for a in p1] for _ in range(2)]
    st2 = [[cp.zeros_like(a) for a in p1] for _ in range(2)]
    state = _cuda_ops.step_state(1, 1e-2)
    for t in range(1, 4):
        g = [_rand(rng, cp, s) for s in shapes]
        ops.adam_step(p1, g, *st1, step=t, lr=1e-2, max_grad_norm=3.0)
        norm, skipped = _cuda_ops.adam_step(p2, g, *st2, None, 1e-9, 0.9, 0.999, 1e-8, 0.0, False,
                                            False, False, 1, 3.0, state=state, advance_step=True)
        assert int(skipped[0]) == 0 and float(norm[0]) > 0
    assert int(state[0]) == 4
    assert all(_same_bits(cp, a, b) for a, b in zip(p1, p2))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_same_cupy_lists_step_through_a_kept_plan_with_the_same_bits(cp, rng, name):
    """ops.adam_step / sgd_step called again with the same CuPy arrays go through a kept plan
    (ember._plan_cache) from the second call on: the same bits as the checked binding every
    step, and the plan is gone once an array is freed."""
    import gc
    from ember import _cuda_ops
    shapes = [(int(rng.integers(1, 3000)),) for _ in range(40)]
    p1 = [_rand(rng, cp, s) for s in shapes]
    p2 = [a.copy() for a in p1]
    g = [_rand(rng, cp, s) for s in shapes]
    st1 = [[cp.zeros_like(a) for a in p1] for _ in range(2)]
    st2 = [[cp.zeros_like(a) for a in p1] for _ in range(2)]
    made = _cuda_ops._plans.made
    for t in range(1, 6):
        if name == "adam":
            r1 = ops.adam_step(p1, g, *st1, step=t, lr=1e-2)
            r2 = _cuda_ops.adam_step(p2, g, *st2, None, 1e-2, 0.9, 0.999, 1e-8, 0.0, False,
                                     False, False, t, 0.0)
        else:
            r1 = ops.sgd_step(p1, g, st1[0], step=t, lr=1e-2, momentum=0.9)
            r2 = _cuda_ops.sgd_step(p2, g, st2[0], 1e-2, 0.9, 0.0, 0.0, False, False, t, 0.0)
        assert r1 == r2
        assert all(_same_bits(cp, a, b) for a, b in zip(p1, p2))
    assert _cuda_ops._plans.made == made + 1
    kept = len(_cuda_ops._plans)
    del g[3]
    gc.collect()
    assert len(_cuda_ops._plans) == kept - 1


# ---------------------------------------------------------------------------------------------
# validation on fake CUDA arrays (no GPU needed)


def _xent(x, y, w=None, grad=None, row_loss=None, loss_out=None, **kw):
    a = dict(label_smoothing=0.0, reduction="mean", grad_scale=1.0, compute_grad=True)
    a.update(kw)
    return _cuda.softmax_cross_entropy(x, y, w, a["label_smoothing"], a["reduction"],
                                       a["grad_scale"], a["compute_grad"], grad, row_loss,
                                       loss_out, 0, None)


def _adam(p, g, m, v, vmax=None, state=None, **kw):
    a = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
             decoupled=False, maximize=False, step=1, max_grad_norm=0.0)
    a.update(kw)
    return _cuda.adam_step(p, g, m, v, vmax, a["lr"], a["beta1"], a["beta2"], a["eps"],
                           a["weight_decay"], a["amsgrad"], a["decoupled"], a["maximize"],
                           a["step"], a["max_grad_norm"], state, None, False, 0, None)


def _sgd(p, g, b=None, **kw):
    a = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, step=1, max_grad_norm=0.0)
    a.update(kw)
    return _cuda.sgd_step(p, g, b, a["lr"], a["momentum"], a["dampening"], a["weight_decay"],
                          a["nesterov"], a["maximize"], a["step"], a["max_grad_norm"], None, None,
                          False, 0, None)


I8 = "<i8"


@needs_cuda_module
@pytest.mark.parametrize("case, exc, message", [
    (lambda: _xent(F((4, 3)), F((4,), typestr="<i4"), grad=F((4, 3))), TypeError,
     "softmax_cross_entropy: labels must have dtype int64, got int32"),
    (lambda: _xent(F((4, 3)), F((5,), typestr=I8), grad=F((4, 3))), ValueError,
     r"softmax_cross_entropy: labels must have shape \(4,\), got \(5,\)"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), w=F((4,)), grad=F((4, 3))), ValueError,
     r"softmax_cross_entropy: weight must have shape \(3,\)"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), grad=F((4, 3)), label_smoothing=1.5),
     ValueError, r"softmax_cross_entropy: label_smoothing must be in \[0, 1\]"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), grad=F((4, 3)), reduction="none"), ValueError,
     "softmax_cross_entropy: reduction must be 'mean' or 'sum'"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), grad=F((4, 3)), grad_scale=float("inf")),
     ValueError, "softmax_cross_entropy: grad_scale must be finite"),
    (lambda: _xent(F((4, 3), ptr=1 << 12), F((4,), typestr=I8), grad=F((4, 3), ptr=(1 << 12) + 8)),
     ValueError, "softmax_cross_entropy: grad must be logits itself or not share memory with it"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), grad=F((4, 3)), row_loss=F((3,))), ValueError,
     r"softmax_cross_entropy: row_loss must have shape \(4,\)"),
    (lambda: _xent(F((4, 3)), F((4,), typestr=I8), grad=F((4, 3)), loss_out=F((2,))), ValueError,
     r"softmax_cross_entropy: loss_out must have shape \(1,\)"),
    (lambda: _cuda.mse(F((4, 3)), F((4, 2)), "mean", 1.0, True, F((4, 3)), None, 0, None),
     ValueError, r"mse: target must have shape \(4, 3\)"),
    (lambda: _cuda.argmax(F((4, 3)), F((4,)), 0, None), TypeError,
     "argmax: out must have dtype int64, got float32"),
    (lambda: _cuda.accuracy(F((4, 3)), F((4,)), 0, None), TypeError,
     "accuracy: labels must have dtype int64"),
    (lambda: _cuda.activation_forward(F((4, 3)), "elu", 0.01, F((4, 3)), 0, None), ValueError,
     "activation_forward: activation must be one of"),
    (lambda: _cuda.activation_backward(F((4, 3)), F((3, 4)), "relu", 0.01, F((4, 3)), 0, None),
     ValueError, r"activation_backward: preact must have shape \(4, 3\)"),
    (lambda: _cuda.column_sum(F((4, 3)), None, True, 0, None), ValueError,
     "column_sum: accumulate=True needs out"),
    (lambda: _cuda.column_sum(F((4, 3)), F((4,)), False, 0, None), ValueError,
     r"column_sum: out must have shape \(3,\)"),
    (lambda: _cuda.sum(F((4, 3), typestr="<f8"), 0, None), TypeError,
     "sum: x must have dtype float32"),
    (lambda: _cuda.dropout_forward(F((10,)), 1.5, 0, 0, F((10,)), 0, None), ValueError,
     r"dropout_forward: p must be in \[0, 1\]"),
    (lambda: _cuda.dropout_backward(F((10,)), 0.5, 0, 0, F((9,)), 0, None), ValueError,
     r"dropout_backward: out must have shape \(10,\)"),
    (lambda: _cuda.global_norm([], 0, None), ValueError,
     "global_norm: arrays must hold at least one array"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((4,))]), ValueError,
     r"adam_step: exp_avg_sqs\[0\] must have shape \(3,\) like params\[0\], got \(4,\)"),
    (lambda: _adam([F((3,))], [F((3,)), F((3,))], [F((3,))], [F((3,))]), ValueError,
     "adam_step: grads has 2 arrays but params has 1"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((3,))], amsgrad=True), ValueError,
     "adam_step: max_exp_avg_sqs is required when amsgrad=True"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((3,))], beta2=1.0), ValueError,
     r"adam_step: beta2 must be in \[0, 1\)"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((3,))], step=0), ValueError,
     "adam_step: step must be >= 1"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((3,))], step=1.0), TypeError,
     "adam_step: step must be an int"),
    (lambda: _adam([F((3,), ptr=1 << 12)], [F((3,))], [F((3,), ptr=(1 << 12) + 4)], [F((3,))]),
     ValueError, r"adam_step: exp_avgs\[0\] must not share memory with params\[0\]"),
    (lambda: _adam([F((3,))], [F((3,))], [F((3,))], [F((3,))], state=F((2,))), TypeError,
     "adam_step: state must have dtype int64"),
    (lambda: _adam([F((3,), readonly=True)], [F((3,))], [F((3,))], [F((3,))]), ValueError,
     r"adam_step: params\[0\] is an output and must be writable"),
    (lambda: _sgd([F((3,))], [F((3,))], momentum=0.9), ValueError,
     "sgd_step: momentum_buffers is required when momentum != 0"),
    (lambda: _sgd([F((3,))], [F((3,))], nesterov=True), ValueError,
     "sgd_step: nesterov requires momentum > 0"),
    (lambda: _sgd([F((3,))], [F((3,))], lr=-1.0), ValueError,
     "sgd_step: lr must be a finite number >= 0"),
])
def test_validation(case, exc, message):
    with pytest.raises(exc, match=message):
        case()


@needs_cuda_module
def test_grads_may_share_memory_and_in_place_outputs_pass_checks():
    """Read-only gradients may overlap; in-place outputs (grad is logits, out is x) are allowed:
    these reach the device check, which fails here (no GPU) as not-device-memory or CudaError."""
    g = F((3,))
    for call in (lambda: _adam([F((3,))], [g], [F((3,))], [F((3,))]),
                 lambda: _sgd([F((3,)), F((3,))], [g, g]),
                 lambda: (lambda x: _xent(x, F((4,), typestr=I8), grad=x))(F((4, 3))),
                 lambda: (lambda x: _cuda.dropout_forward(x, 0.5, 1, 0, x, 0, None))(F((10,)))):
        with pytest.raises((ValueError, ember.CudaError)) as info:
            call()
        assert "share memory" not in str(info.value)


@needs_cuda_module
def test_training_families_are_present():
    for name in ("softmax_cross_entropy", "mse", "adam_step", "sgd_step", "dropout_forward",
                 "activation_forward", "global_norm", "column_sum", "argmax", "accuracy"):
        assert hasattr(_cuda, name), name
