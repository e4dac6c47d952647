"""The CPU and CUDA bindings of every op check the same things with the same messages.

Each case is one bad call, made on ``ember._cpu`` with NumPy arrays and on ``ember._cuda`` with
fake objects whose ``__cuda_array_interface__`` mirrors each NumPy array (shape, strides, typestr,
read-only flag, and its address as the "device pointer", so overlaps are the same). The CUDA
bindings check arguments from the interface dict alone, so this runs without a GPU. Both calls
must raise the same exception type with the same message, up to the copy hint, which names each
array's own library (see :func:`cuda_spelling`); a contract made to differ on purpose would be
listed in ``CUDA_MESSAGE`` with the exact CUDA text (none is), so any drift fails.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import _cpu, backend

if not backend.cuda_built():
    pytest.skip("ember._cuda was not built", allow_module_level=True)
_cuda = pytest.importorskip("ember._cuda")

F32, F64, I32, I64 = np.float32, np.float64, np.int32, np.int64


class Fake:
    """A CUDA array as far as the bindings' argument checks can tell: the interface of ``a``."""

    def __init__(self, a: np.ndarray):
        self._a = a  # keeps the memory (and so the address) alive
        contiguous = a.flags.c_contiguous
        self.__cuda_array_interface__ = {
            "shape": a.shape, "typestr": a.dtype.str,
            "strides": None if contiguous else a.strides,
            "data": (a.__array_interface__["data"][0], not a.flags.writeable),
            "version": 3, "stream": None}


def mirror(v):
    if isinstance(v, np.ndarray):
        return Fake(v)
    if isinstance(v, (list, tuple)):
        return type(v)(mirror(x) for x in v)
    return v


def fake_alloc(shape, dtype="float32"):
    return Fake(np.empty(shape, dtype))


# The arguments ember._cuda takes after ember._cpu's: loss_out; state, result, advance_step.
CUDA_EXTRA = {"softmax_cross_entropy": (None,), "mse": (None,), "sgd_step": (None, None, False),
              "adam_step": (None, None, False)}


def call_cpu(op, args):
    return getattr(_cpu, op)(*args)


def call_cuda(op, args):
    if op == "OptimPlan":
        return _cuda.OptimPlan(*mirror(args), 0)
    kw = {}
    if op == "softmax_cross_entropy" and isinstance(args[2], np.ndarray):
        kw["weight_values"] = args[2]  # the host copy ember._cuda_ops passes
    return getattr(_cuda, op)(*mirror(args), *CUDA_EXTRA.get(op, ()), 0, fake_alloc, **kw)


def cuda_spelling(msg: str) -> str:
    """The CPU message as the CUDA binding words it: the copy hint names CuPy (a wrong dtype is
    named as NumPy names it on both, "got float64")."""
    return msg.replace("numpy.ascontiguousarray", "cupy.ascontiguousarray")


rng = np.random.default_rng(1729)


def f(*shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def ro(a):
    a.setflags(write=False)
    return a


def noncontig(rows, cols):
    return f(cols, rows).T


def misaligned(rows, cols):
    buf = np.zeros(4 * rows * cols + 4, np.uint8)
    return np.ndarray((rows, cols), F32, buffer=buf, offset=1)


def shifted(rows, cols, by):
    """Two (rows, cols) views of one buffer, `by` elements apart (they overlap when by < size)."""
    base = np.zeros(rows * cols + by, F32)
    return base[:rows * cols].reshape(rows, cols), base[by:by + rows * cols].reshape(rows, cols)


def labels(n, classes, dtype=I64):
    return rng.integers(0, classes, n).astype(dtype)


# ---------------------------------------------------------------------------------------------
# The cases: (id, op, positional arguments of ember._cpu's binding)


def gemm(a, b, bias=None, out=None, preact=None, trans_a=False, trans_b=False, act="identity",
         slope=0.01, alpha=1.0, beta=0.0, save_preact=False, precision="fp32"):
    return ("gemm", (a, b, bias, out, preact, trans_a, trans_b, act, slope, alpha, beta,
                     save_preact, precision))


def lb(dy, x, w, preact=None, act="identity", need_grad_input=True, has_bias=True,
       accumulate=False, gx=None, gw=None, gb=None, ws=None, precision="fp32"):
    return ("linear_backward", (dy, x, w, preact, act, 0.01, need_grad_input, has_bias,
                                accumulate, gx, gw, gb, ws, precision))


def xent(x, y, w=None, eps=0.0, reduction="mean", scale=1.0, compute_grad=True, grad=None,
         row_loss=None):
    return ("softmax_cross_entropy", (x, y, w, eps, reduction, scale, compute_grad, grad,
                                      row_loss))


def mse(p, t, reduction="mean", scale=1.0, compute_grad=True, grad=None):
    return ("mse", (p, t, reduction, scale, compute_grad, grad))


def sgd(p, g, bufs=None, lr=0.1, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False,
        maximize=False, step=1, clip=0.0):
    return ("sgd_step", (p, g, bufs, lr, momentum, dampening, wd, nesterov, maximize, step, clip))


def adam(p, g, m, v, vmax=None, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, amsgrad=False,
         decoupled=False, maximize=False, step=1, clip=0.0):
    return ("adam_step", (p, g, m, v, vmax, lr, b1, b2, eps, wd, amsgrad, decoupled, maximize,
                          step, clip))


def _overlap_gemm():
    base = np.zeros(45, F32)
    return gemm(base[:15].reshape(5, 3), f(3, 7), out=base[10:].reshape(5, 7))


def _overlap_lb():
    x = f(9, 5)
    return lb(f(9, 3), x, f(3, 5), gx=x, gw=f(3, 5), gb=f(3))


def _inplace_ro_lb():
    dy = ro(f(9, 3))
    return lb(dy, f(9, 5), f(3, 5), preact=f(9, 3), act="relu", ws=dy)


def _act_partial():
    x, out = shifted(4, 5, 3)
    return ("activation_forward", (x, "relu", 0.01, out))


def _xent_partial():
    x, g = shifted(6, 5, 2)
    return xent(x, labels(6, 5), grad=g)


def _row_loss_overlaps_grad():
    g = f(6, 5)
    return xent(f(6, 5), labels(6, 5), grad=g, row_loss=g[0])


def _mse_partial():
    p, g = shifted(3, 7, 5)
    return mse(p, f(3, 7), grad=g)


def _colsum_overlap():
    x = f(6, 5)
    return ("column_sum", (x, x[0], False))


def _dropout_partial():
    x, out = shifted(1, 33, 1)
    return ("dropout_backward", (x.reshape(-1), 0.5, 7, 0, out.reshape(-1)))


def _sgd_overlap():
    p = f(2, 8)
    return sgd([p[0], p[1]], [f(8), f(8)], bufs=[p[1], f(8)], momentum=0.9)


def _plan_overlap():
    p = f(6)
    return ("OptimPlan", ([p], [f(6)], [[p]]))


CASES = [
    # GEMM family
    ("gemm-b-dtype", *gemm(f(5, 3), f(3, 7, dtype=F64))),
    ("gemm-a-ndim", *gemm(f(15), f(3, 7))),
    ("gemm-b-noncontiguous", *gemm(f(5, 3), noncontig(3, 7))),
    ("gemm-a-misaligned", *gemm(misaligned(5, 3), f(3, 7))),
    ("gemm-a-empty", *gemm(f(0, 3), f(3, 7))),
    ("gemm-inner-dims", *gemm(f(5, 3), f(4, 7))),
    ("gemm-inner-dims-trans-b", *gemm(f(5, 3), f(7, 4), trans_b=True)),
    ("gemm-bad-activation", *gemm(f(5, 3), f(3, 7), act="elu")),
    ("gemm-bad-precision", *gemm(f(5, 3), f(3, 7), precision="fp16")),
    ("gemm-slope-inf", *gemm(f(5, 3), f(3, 7), act="leaky_relu", slope=float("inf"))),
    ("gemm-alpha-nan", *gemm(f(5, 3), f(3, 7), alpha=float("nan"))),
    ("gemm-beta-needs-out", *gemm(f(5, 3), f(3, 7), beta=1.0)),
    ("gemm-bias-shape", *gemm(f(5, 3), f(3, 7), bias=f(5))),
    ("gemm-bias-dtype", *gemm(f(5, 3), f(3, 7), bias=f(7, dtype=F64))),
    ("gemm-out-shape", *gemm(f(5, 3), f(3, 7), out=f(5, 6))),
    ("gemm-out-readonly", *gemm(f(5, 3), f(3, 7), out=ro(f(5, 7)))),
    ("gemm-out-overlaps-a", *_overlap_gemm()),
    ("gemm-preact-dtype", *gemm(f(5, 3), f(3, 7), preact=f(5, 7).astype(I64))),
    ("gemm-preact-is-out", *(lambda o: gemm(f(5, 3), f(3, 7), out=o, preact=o))(f(5, 7))),
    ("lb-x-dtype", *lb(f(9, 3), f(9, 5, dtype=F64), f(3, 5))),
    ("lb-x-rows", *lb(f(9, 3), f(8, 5), f(3, 5))),
    ("lb-weight-shape", *lb(f(9, 3), f(9, 5), f(5, 3))),
    ("lb-preact-required", *lb(f(9, 3), f(9, 5), f(3, 5), act="relu")),
    ("lb-preact-shape", *lb(f(9, 3), f(9, 5), f(3, 5), preact=f(9, 4), act="tanh")),
    ("lb-accumulate-needs-grad-weight", *lb(f(9, 3), f(9, 5), f(3, 5), accumulate=True)),
    ("lb-accumulate-needs-grad-bias",
     *lb(f(9, 3), f(9, 5), f(3, 5), accumulate=True, gw=f(3, 5))),
    ("lb-grad-input-not-needed", *lb(f(9, 3), f(9, 5), f(3, 5), need_grad_input=False, gx=f(9, 5))),
    ("lb-grad-bias-without-bias", *lb(f(9, 3), f(9, 5), f(3, 5), has_bias=False, gb=f(3))),
    ("lb-workspace-shape", *lb(f(9, 3), f(9, 5), f(3, 5), preact=f(9, 3), act="relu", ws=f(9, 4))),
    ("lb-workspace-shape-identity", *lb(f(9, 3), f(9, 5), f(3, 5), ws=f(8, 3))),
    ("lb-in-place-read-only", *_inplace_ro_lb()),
    ("lb-grad-input-overlaps-x", *_overlap_lb()),
    ("lb-grad-weight-readonly", *lb(f(9, 3), f(9, 5), f(3, 5), gw=ro(f(3, 5)))),
    # activation family
    ("act-x-dtype", "activation_forward", (f(4, 5, dtype=F64), "relu", 0.01, None)),
    ("act-bad-name", "activation_forward", (f(4, 5), "elu", 0.01, None)),
    ("act-name-not-str", "activation_forward", (f(4, 5), 3, 0.01, None)),
    ("act-slope-not-number", "activation_forward", (f(4, 5), "leaky_relu", "0.1", None)),
    ("act-slope-nan", "activation_forward", (f(4, 5), "leaky_relu", float("nan"), None)),
    ("act-slope-float32-inf", "activation_forward", (f(4, 5), "leaky_relu", 1e300, None)),
    ("act-out-shape", "activation_forward", (f(4, 5), "relu", 0.01, f(5, 4))),
    ("act-out-dtype", "activation_forward", (f(4, 5), "relu", 0.01, f(4, 5, dtype=F64))),
    ("act-out-partial-overlap", *_act_partial()),
    ("act-noncontiguous", "activation_forward", (noncontig(4, 5), "silu", 0.01, None)),
    ("actb-preact-shape", "activation_backward", (f(4, 5), f(5, 4), "relu", 0.01, None)),
    ("actb-out-readonly", "activation_backward", (f(4, 5), f(4, 5), "gelu", 0.01, ro(f(4, 5)))),
    # loss family
    ("xent-logits-ndim", *xent(f(6), labels(6, 5))),
    ("xent-labels-dtype", *xent(f(6, 5), labels(6, 5, I32))),
    ("xent-labels-shape", *xent(f(6, 5), labels(7, 5))),
    ("xent-label-out-of-range", *xent(f(6, 5), np.array([0, 1, 5, 2, 3, 4]))),
    ("xent-label-negative", *xent(f(6, 5), np.array([0, -1, 2, 2, 3, 4]))),
    ("xent-weight-shape", *xent(f(6, 5), labels(6, 5), w=np.ones(4, F32))),
    ("xent-weight-dtype", *xent(f(6, 5), labels(6, 5), w=np.ones(5, F64))),
    ("xent-weight-negative", *xent(f(6, 5), labels(6, 5), w=np.array([1, 1, -2, 1, 1], F32))),
    ("xent-weight-nan", *xent(f(6, 5), labels(6, 5), w=np.array([1, 1, 1, np.nan, 1], F32))),
    ("xent-weight-inf", *xent(f(6, 5), labels(6, 5), w=np.array([np.inf, 1, 1, 1, 1], F32))),
    ("xent-label-smoothing", *xent(f(6, 5), labels(6, 5), eps=1.5)),
    ("xent-label-smoothing-type", *xent(f(6, 5), labels(6, 5), eps=None)),
    ("xent-reduction", *xent(f(6, 5), labels(6, 5), reduction="none")),
    ("xent-reduction-type", *xent(f(6, 5), labels(6, 5), reduction=0)),
    ("xent-grad-scale-inf", *xent(f(6, 5), labels(6, 5), scale=float("inf"))),
    ("xent-compute-grad-type", *xent(f(6, 5), labels(6, 5), compute_grad=1)),
    ("xent-grad-without-compute-grad", *xent(f(6, 5), labels(6, 5), compute_grad=False,
                                              grad=f(6, 5))),
    ("xent-grad-shape", *xent(f(6, 5), labels(6, 5), grad=f(5, 6))),
    ("xent-grad-partial-overlap", *_xent_partial()),
    ("xent-row-loss-shape", *xent(f(6, 5), labels(6, 5), row_loss=f(5))),
    ("xent-row-loss-overlaps-grad", *_row_loss_overlaps_grad()),
    ("mse-target-shape", *mse(f(3, 7), f(7, 3))),
    ("mse-pred-dtype", *mse(f(3, 7, dtype=F64), f(3, 7))),
    ("mse-reduction", *mse(f(3, 7), f(3, 7), reduction="max")),
    ("mse-grad-partial-overlap", *_mse_partial()),
    ("mse-grad-without-compute-grad", *mse(f(3, 7), f(3, 7), compute_grad=False, grad=f(3, 7))),
    ("argmax-out-dtype", "argmax", (f(6, 5), np.zeros(6, I32))),
    ("argmax-out-shape", "argmax", (f(6, 5), np.zeros(5, I64))),
    ("argmax-x-ndim", "argmax", (f(6, 5, 1), None)),
    ("accuracy-labels-dtype", "accuracy", (f(6, 5), f(6))),
    ("accuracy-labels-shape", "accuracy", (f(6, 5), labels(3, 5))),
    ("accuracy-label-out-of-range", "accuracy", (f(6, 5), np.array([0, 1, 2, 3, 4, 9]))),
    # reduce family
    ("colsum-accumulate-needs-out", "column_sum", (f(6, 5), None, True)),
    ("colsum-out-shape", "column_sum", (f(6, 5), f(6), False)),
    ("colsum-x-ndim", "column_sum", (f(6, 5, 2), None, False)),
    ("colsum-out-overlaps-x", *_colsum_overlap()),
    ("sum-dtype", "sum", (f(11, dtype=F64),)),
    ("sum-empty", "sum", (f(0),)),
    ("global-norm-empty", "global_norm", ([],)),
    ("global-norm-item-dtype", "global_norm", ([f(3), f(4, dtype=F64)],)),
    ("global-norm-item-noncontiguous", "global_norm", ([f(3), noncontig(2, 3)],)),
    # dropout family
    ("dropout-p-range", "dropout_forward", (f(33), 1.5, 1, 0, None)),
    ("dropout-p-bool", "dropout_forward", (f(33), True, 1, 0, None)),
    ("dropout-seed-negative", "dropout_forward", (f(33), 0.5, -1, 0, None)),
    ("dropout-seed-float", "dropout_forward", (f(33), 0.5, 1.0, 0, None)),
    ("dropout-offset-too-large", "dropout_backward", (f(33), 0.5, 1, 2 ** 64, None)),
    ("dropout-out-shape", "dropout_backward", (f(33), 0.5, 1, 0, f(32))),
    ("dropout-in-dtype", "dropout_backward", (f(33, dtype=F64), 0.5, 1, 0, None)),
    ("dropout-out-partial-overlap", *_dropout_partial()),
    # optimizer family
    ("sgd-params-none", *sgd(None, [f(3)])),
    ("sgd-params-not-list", *sgd({"w": f(3)}, [f(3)])),
    ("sgd-params-empty", *sgd([], [])),
    ("sgd-grads-count", *sgd([f(3)], [f(3), f(3)])),
    ("sgd-grads-shape", *sgd([f(3)], [f(4)])),
    ("sgd-params-readonly", *sgd([ro(f(3))], [f(3)])),
    ("sgd-momentum-needs-buffers", *sgd([f(3)], [f(3)], momentum=0.9)),
    ("sgd-nesterov", *sgd([f(3)], [f(3)], nesterov=True)),
    ("sgd-lr-negative", *sgd([f(3)], [f(3)], lr=-1.0)),
    ("sgd-step-zero", *sgd([f(3)], [f(3)], step=0)),
    ("sgd-step-float", *sgd([f(3)], [f(3)], step=1.0)),
    ("sgd-buffers-overlap-params", *_sgd_overlap()),
    ("adam-state-shape", *adam([f(3)], [f(3)], [f(3)], [f(4)])),
    ("adam-amsgrad-needs-vmax", *adam([f(3)], [f(3)], [f(3)], [f(3)], amsgrad=True)),
    ("adam-beta2", *adam([f(3)], [f(3)], [f(3)], [f(3)], b2=1.0)),
    ("adam-eps-zero", *adam([f(3)], [f(3)], [f(3)], [f(3)], eps=0.0)),
    ("adam-exp-avgs-count", *adam([f(3), f(2)], [f(3), f(2)], [f(3)], [f(3), f(2)])),
    ("adam-state-dtype", *adam([f(3)], [f(3)], [f(3, dtype=F64)], [f(3)])),
    ("plan-states-not-list", "OptimPlan", ([f(3)], [f(3)], None)),
    ("plan-params-overlap-state", *_plan_overlap()),
]

# Contracts whose CUDA wording differs on purpose, with the exact CUDA message: none (the gemm
# inner-dimension and cross-entropy gradient-overlap wordings were made one).
CUDA_MESSAGE: dict[str, str] = {}

# Checked by the CUDA kernel that reads the values (labels): the binding's checks pass, and the
# call fails only at the device step (no GPU here: CudaError; with one: the fake's host address
# is not device memory).
CHECKED_ON_DEVICE = {"xent-label-out-of-range", "xent-label-negative",
                     "accuracy-label-out-of-range"}


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


@pytest.mark.parametrize("case_id, op, args", CASES, ids=[c[0] for c in CASES])
def test_same_error_on_both_devices(case_id, op, args):
    cpu = _raised(lambda: call_cpu(op, args))
    assert isinstance(cpu, (TypeError, ValueError)), f"{case_id}: CPU raised {cpu!r}"
    cuda = _raised(lambda: call_cuda(op, args))
    if case_id in CHECKED_ON_DEVICE:
        assert isinstance(cuda, ember.CudaError) or "device memory" in str(cuda) or \
            "CUDA memory" in str(cuda), repr(cuda)
        return
    expected = CUDA_MESSAGE.get(case_id, cuda_spelling(str(cpu)))
    assert type(cuda) is type(cpu), f"{case_id}: CPU {cpu!r}, CUDA {cuda!r}"
    assert str(cuda) == expected, f"{case_id}: CPU {str(cpu)!r}"


def test_every_op_bound_on_both_devices_has_cases():
    ops = {op for _, op, _ in CASES}
    both = {name for name in dir(_cpu) if not name.startswith("_") and hasattr(_cuda, name)}
    both -= {"__version__"}
    assert both - ops == set(), f"ops without parity cases: {sorted(both - ops)}"


def test_cuda_only_spellings_are_the_only_rewrites():
    """cuda_spelling touches only the copy hint."""
    assert cuda_spelling("gemm: b must have dtype float32, got float64") == \
        "gemm: b must have dtype float32, got float64"
    assert cuda_spelling("x must be C-contiguous (use numpy.ascontiguousarray), got strides (4, 8)") \
        == "x must be C-contiguous (use cupy.ascontiguousarray), got strides (4, 8)"
    assert cuda_spelling("p must be in [0, 1], got 1.5") == "p must be in [0, 1], got 1.5"
