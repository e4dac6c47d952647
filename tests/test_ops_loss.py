"""softmax_cross_entropy, mse, argmax and accuracy against float64 NumPy (and PyTorch) references."""
import numpy as np
import pytest

import ember
import ember.ops as ops
from conftest import ODD_SIZES, check_op, poisoned, rel_error


def ref_ce(logits, labels, weight=None, eps=0.0, reduction="mean", grad_scale=1.0):
    """(loss, grad, row_loss) in float64, PyTorch's formula (see ops.softmax_cross_entropy)."""
    x = logits.astype(np.float64)
    rows, classes = x.shape
    w = np.ones(classes) if weight is None else weight.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    nlogp = lse - x  # -log p
    p = np.exp(-nlogp)
    r = np.arange(rows)
    wy = w[labels]
    row = (1 - eps) * wy * nlogp[r, labels]
    if eps:  # (-log p = inf for a -inf logit: only the smoothing term sees it)
        row = row + eps / classes * (nlogp * w).sum(axis=1)
    div = wy.sum() if reduction == "mean" else 1.0
    dl = p * ((1 - eps) * wy + eps / classes * w.sum())[:, None] - eps / classes * w[None, :]
    dl[r, labels] -= (1 - eps) * wy
    return row.sum() / div, grad_scale * dl / div, row


CE_SHAPES = [(1, 1), (1, 2), (1, 7), (2, 1), (3, 5), (13, 10), (31, 17), (64, 33), (127, 129),
             (5, 1000), (257, 3), (1, 4099)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_cross_entropy_matches_float64(reduction, weighted, eps, isa, rng):
    for rows, classes in CE_SHAPES:
        logits = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
        labels = rng.integers(0, classes, rows)
        weight = rng.uniform(0.2, 2.0, classes).astype(np.float32) if weighted else None
        scale = 0.37
        ref_loss, ref_grad, ref_row = ref_ce(logits, labels, weight, eps, reduction, scale)
        grad, row = poisoned((rows, classes)), poisoned(rows)
        loss, g = ops.softmax_cross_entropy(logits, labels, weight=weight, label_smoothing=eps,
                                            reduction=reduction, grad_scale=scale, grad=grad,
                                            row_loss=row)
        what = f"{rows}x{classes} w={weighted} eps={eps} {reduction}"
        assert g is grad
        assert isinstance(loss, float)
        check_op(loss, ref_loss, 1e-5, what + " loss")
        check_op(g, ref_grad, 1e-5, what + " grad")
        check_op(row, ref_row, 1e-5, what + " row_loss")
        loss2, none = ops.softmax_cross_entropy(logits, labels, weight=weight, label_smoothing=eps,
                                                reduction=reduction, compute_grad=False)
        assert none is None and loss2 == loss


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for rows, classes in [(1, 1), (7, 3), (64, 10), (33, 257)]:
        for weighted in (False, True):
            for eps in (0.0, 0.25):
                for reduction in ("mean", "sum"):
                    logits = (rng.standard_normal((rows, classes)) * 2).astype(np.float32)
                    labels = rng.integers(0, classes, rows)
                    w = rng.uniform(0.1, 3, classes).astype(np.float32) if weighted else None
                    t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
                    tl = F.cross_entropy(t, torch.tensor(labels),
                                         weight=None if w is None else torch.tensor(w, dtype=torch.float64),
                                         reduction=reduction, label_smoothing=eps)
                    tl.backward()
                    loss, g = ops.softmax_cross_entropy(logits, labels, weight=w, label_smoothing=eps,
                                                        reduction=reduction)
                    what = f"torch {rows}x{classes} w={weighted} eps={eps} {reduction}"
                    check_op(loss, tl.item(), 1e-5, what)
                    check_op(g, t.grad.numpy(), 1e-5, what)


def test_cross_entropy_finite_differences(rng):
    rows, classes = 6, 9
    logits = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    w = rng.uniform(0.5, 2, classes).astype(np.float32)
    kw = dict(weight=w, label_smoothing=0.2, reduction="mean")
    _, g = ops.softmax_cross_entropy(logits, labels, **kw)
    h = 1e-2
    for r, c in [(0, 0), (1, int(labels[1])), (5, 8), (3, 4)]:
        xp, xm = logits.copy(), logits.copy()
        xp[r, c] += h
        xm[r, c] -= h
        step = float(xp[r, c]) - float(xm[r, c])  # the float32 step actually taken
        fd = (ops.softmax_cross_entropy(xp, labels, compute_grad=False, **kw)[0] -
              ops.softmax_cross_entropy(xm, labels, compute_grad=False, **kw)[0]) / step
        assert abs(fd - g[r, c]) <= 1e-3 * max(abs(fd), 1e-2), (r, c, fd, g[r, c])


# Above the parallel threshold, rows not a multiple of the chunks. Fewer than 16 classes take the
# row-block path (7681 x 10: each chunk spans two blocks of 102 rows; 5003 x 1: one column).
@pytest.mark.parametrize("rows, classes", [(3001, 37), (7681, 10), (5003, 1)])
def test_cross_entropy_in_place_large_and_thread_independent(rows, classes, rng):
    logits = (rng.standard_normal((rows, classes)) * 5).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    w = rng.uniform(0.1, 1, classes).astype(np.float32)
    before = ember.get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            ember.set_num_threads(n)
            out[n] = ops.softmax_cross_entropy(logits, labels, weight=w, label_smoothing=0.1)
    finally:
        ember.set_num_threads(before)
    assert out[1][0] == out[2][0]
    np.testing.assert_array_equal(out[1][1], out[2][1])
    ref_loss, ref_grad, _ = ref_ce(logits, labels, w, 0.1)
    check_op(out[1][0], ref_loss, 1e-5, "large loss")
    check_op(out[1][1], ref_grad, 1e-5, "large grad")
    inplace = logits.copy()
    loss, g = ops.softmax_cross_entropy(inplace, labels, weight=w, label_smoothing=0.1, grad=inplace)
    assert g is inplace and loss == out[1][0]
    np.testing.assert_array_equal(inplace, out[1][1])


def test_cross_entropy_extreme_logits(isa, rng):
    # Large logits must not overflow (max subtraction); -inf in a non-label column is p = 0.
    logits = np.array([[1e4, -1e4, 0.0], [-1e30, 3e4, 3e4], [0.0, -np.inf, 1.0]], np.float32)
    labels = np.array([0, 1, 2])
    loss, g = ops.softmax_cross_entropy(logits, labels, reduction="sum")
    ref_loss, ref_grad, _ = ref_ce(logits, labels, reduction="sum")
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    check_op(loss, ref_loss, 1e-5)
    check_op(g, ref_grad, 1e-5)


def test_cross_entropy_nan_propagates_per_row():
    logits = np.array([[0.0, np.nan, 1.0], [0.5, 0.2, 0.1]], np.float32)
    row = poisoned(2)
    loss, g = ops.softmax_cross_entropy(logits, np.array([0, 1]), row_loss=row)
    assert np.isnan(loss) and np.isnan(row[0]) and np.isfinite(row[1])
    assert np.all(np.isnan(g[0])) and np.all(np.isfinite(g[1]))


def test_cross_entropy_zero_label_weight_mean_is_nan_like_torch():
    logits = np.zeros((2, 3), np.float32)
    loss, g = ops.softmax_cross_entropy(logits, np.array([0, 1]),
                                        weight=np.array([0, 0, 1], np.float32))
    assert np.isnan(loss) and np.all(np.isnan(g))
    loss, g = ops.softmax_cross_entropy(logits, np.array([0, 1]), reduction="sum",
                                        weight=np.array([0, 0, 1], np.float32))
    assert loss == 0.0 and np.all(g == 0)


def test_cross_entropy_widens_integer_labels():
    logits = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    a = ops.softmax_cross_entropy(logits, np.array([0, 2, 1, 1], np.int64))
    b = ops.softmax_cross_entropy(logits, np.array([0, 2, 1, 1], np.uint8))
    assert a[0] == b[0]


L = np.zeros((4, 5), np.float32)
Y = np.array([0, 1, 2, 3])


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(labels=np.array([0, 1, 7, 2])), ValueError,
     r"softmax_cross_entropy: labels\[2\] = 7 is out of range \[0, 5\)"),
    (dict(labels=np.array([0, -1, 0, 2])), ValueError,
     r"softmax_cross_entropy: labels\[1\] = -1 is out of range \[0, 5\)"),
    (dict(labels=np.array([0.0, 1, 2, 3])), TypeError,
     "softmax_cross_entropy: labels must be an integer array"),
    (dict(labels=np.array([True, False, True, True])), TypeError,
     "softmax_cross_entropy: labels must be an integer array"),
    (dict(labels=[0, 1, 2, 3]), TypeError, "softmax_cross_entropy: labels must be a numpy.ndarray"),
    (dict(labels=np.array([0, 1, 2])), ValueError,
     r"softmax_cross_entropy: labels must have shape \(4,\), got \(3,\)"),
    (dict(labels=Y.reshape(2, 2)), ValueError, "softmax_cross_entropy: labels must be 1-D"),
    (dict(logits=np.zeros(5, np.float32)), ValueError,
     "softmax_cross_entropy: logits must be 2-D, got shape"),
    (dict(logits=L.astype(np.float64)), TypeError,
     "softmax_cross_entropy: logits must have dtype float32, got float64"),
    (dict(logits=np.zeros((4, 10), np.float32)[:, ::2]), ValueError,
     "softmax_cross_entropy: logits must be C-contiguous"),
    (dict(weight=np.ones(4, np.float32)), ValueError,
     r"softmax_cross_entropy: weight must have shape \(5,\), got \(4,\)"),
    (dict(weight=np.array([1, 1, -1, 1, 1], np.float32)), ValueError,
     r"softmax_cross_entropy: weight must be finite and >= 0, got weight\[2\]"),
    (dict(weight=np.array([1, 1, 1, np.nan, 1], np.float32)), ValueError,
     r"softmax_cross_entropy: weight must be finite and >= 0, got weight\[3\]"),
    (dict(weight=np.ones(5)), TypeError, "softmax_cross_entropy: weight must have dtype float32"),
    (dict(label_smoothing=1.5), ValueError,
     r"softmax_cross_entropy: label_smoothing must be in \[0, 1\], got 1.5"),
    (dict(label_smoothing=float("nan")), ValueError,
     r"softmax_cross_entropy: label_smoothing must be in \[0, 1\]"),
    (dict(label_smoothing=None), TypeError,
     "softmax_cross_entropy: label_smoothing must be a real number, got NoneType"),
    (dict(reduction="avg"), ValueError,
     "softmax_cross_entropy: reduction must be 'mean' or 'sum', got 'avg'"),
    (dict(reduction="none"), ValueError, "softmax_cross_entropy: reduction must be 'mean' or 'sum'"),
    (dict(grad_scale=float("inf")), ValueError, "softmax_cross_entropy: grad_scale must be finite"),
    (dict(compute_grad=1), TypeError, "softmax_cross_entropy: compute_grad must be a bool, got int"),
    (dict(compute_grad=False, grad=np.zeros((4, 5), np.float32)), ValueError,
     "softmax_cross_entropy: grad is given but compute_grad is False"),
    (dict(grad=np.zeros((5, 4), np.float32)), ValueError,
     r"softmax_cross_entropy: grad must have shape \(4, 5\), got \(5, 4\)"),
    (dict(grad=np.broadcast_to(np.zeros(5, np.float32), (4, 5))), ValueError,
     "softmax_cross_entropy: grad"),
    (dict(row_loss=np.zeros(3, np.float32)), ValueError,
     r"softmax_cross_entropy: row_loss must have shape \(4,\), got \(3,\)"),
    (dict(row_loss=np.zeros(4, np.float64)), TypeError,
     "softmax_cross_entropy: row_loss must have dtype float32"),
])
def test_cross_entropy_bad_input(kw, exc, msg):
    args = dict(logits=L, labels=Y)
    args.update(kw)
    logits, labels = args.pop("logits"), args.pop("labels")
    with pytest.raises(exc, match=msg):
        ops.softmax_cross_entropy(logits, labels, **args)


def test_cross_entropy_read_only_and_overlapping_outputs():
    ro = np.zeros((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="softmax_cross_entropy: grad is an output and must be writable"):
        ops.softmax_cross_entropy(L, Y, grad=ro)
    buf = np.zeros(25, np.float32)
    logits = buf[:20].reshape(4, 5)
    with pytest.raises(ValueError, match="softmax_cross_entropy: grad must be logits itself or not share"):
        ops.softmax_cross_entropy(logits, Y, grad=buf[5:].reshape(4, 5))
    with pytest.raises(ValueError, match="softmax_cross_entropy: row_loss must not share memory with logits"):
        ops.softmax_cross_entropy(logits, Y, row_loss=buf[:4])


# ---------------------------------------------------------------------------------------------
# mse


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_float64(reduction, isa, rng):
    shapes = [(n,) for n in ODD_SIZES] + [(3, 7), (2, 3, 5), (129, 65), (100_003,)]
    for shape in shapes:
        pred = rng.standard_normal(shape).astype(np.float32)
        target = rng.standard_normal(shape).astype(np.float32)
        d = pred.astype(np.float64) - target
        n = d.size if reduction == "mean" else 1
        loss, g = ops.mse(pred, target, reduction=reduction, grad_scale=0.5, grad=poisoned(shape))
        check_op(loss, (d * d).sum() / n, 1e-5, f"mse {shape} loss")
        check_op(g, 0.5 * 2 * d / n, 1e-5, f"mse {shape} grad")
        loss2, none = ops.mse(pred, target, reduction=reduction, compute_grad=False)
        assert none is None and loss2 == loss


def test_mse_matches_torch(rng):
    torch = pytest.importorskip("torch")
    pred = rng.standard_normal((17, 3)).astype(np.float32)
    target = rng.standard_normal((17, 3)).astype(np.float32)
    t = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    tl = torch.nn.functional.mse_loss(t, torch.tensor(target, dtype=torch.float64))
    tl.backward()
    loss, g = ops.mse(pred, target)
    check_op(loss, tl.item(), 1e-6)
    check_op(g, t.grad.numpy(), 1e-6)


def test_mse_in_place_and_thread_independent(rng):
    pred = rng.standard_normal(300_001).astype(np.float32)
    target = rng.standard_normal(300_001).astype(np.float32)
    before = ember.get_num_threads()
    try:
        ember.set_num_threads(1)
        l1, g1 = ops.mse(pred, target)
        ember.set_num_threads(2)
        l2, g2 = ops.mse(pred, target)
    finally:
        ember.set_num_threads(before)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)
    p = pred.copy()
    assert ops.mse(p, target, grad=p)[1] is p
    np.testing.assert_array_equal(p, g1)
    t = target.copy()
    ops.mse(pred, t, grad=t)
    np.testing.assert_array_equal(t, g1)


def test_mse_finite_differences(rng):
    pred = rng.standard_normal(7).astype(np.float32)
    target = rng.standard_normal(7).astype(np.float32)
    _, g = ops.mse(pred, target)
    for i in range(7):
        xp, xm = pred.copy(), pred.copy()
        xp[i] += 1e-2
        xm[i] -= 1e-2
        fd = (ops.mse(xp, target)[0] - ops.mse(xm, target)[0]) / (float(xp[i]) - float(xm[i]))
        assert abs(fd - g[i]) <= 1e-4 * max(1.0, abs(fd))


P = np.zeros((3, 4), np.float32)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.mse(P, np.zeros((4, 3), np.float32)), ValueError,
     r"mse: target must have shape \(3, 4\), got \(4, 3\)"),
    (lambda: ops.mse(P, P.astype(np.float64)), TypeError, "mse: target must have dtype float32"),
    (lambda: ops.mse(P, P, reduction="max"), ValueError, "mse: reduction must be 'mean' or 'sum'"),
    (lambda: ops.mse(P, P, reduction=1), TypeError, "mse: reduction must be a str, got int"),
    (lambda: ops.mse(P, P, grad_scale=float("nan")), ValueError, "mse: grad_scale must be finite"),
    (lambda: ops.mse(P, P, grad=np.zeros(12, np.float32)), ValueError,
     r"mse: grad must be 2-D, got shape \(12,\)"),
    (lambda: ops.mse(np.zeros(0, np.float32), np.zeros(0, np.float32)), ValueError,
     "mse: pred must not be empty"),
    (lambda: ops.mse(P.T, P.T), ValueError, "mse: pred must be C-contiguous"),
])
def test_mse_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# ---------------------------------------------------------------------------------------------
# argmax, accuracy


def test_argmax_matches_numpy(rng):
    for rows, cols in [(1, 1), (1, 9), (7, 1), (13, 10), (129, 257), (4000, 17)]:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x[x > 1.5] = 1.5  # ties: the first one wins
        out = np.full(rows, -1, np.int64)
        assert ops.argmax(x, out=out) is out
        np.testing.assert_array_equal(out, np.argmax(x, axis=1))
        np.testing.assert_array_equal(ops.argmax(x), np.argmax(x, axis=1))


def test_argmax_nan_and_inf_like_numpy():
    x = np.array([[1.0, np.nan, 3.0, np.nan], [-np.inf, -np.inf, -np.inf, -np.inf],
                  [np.nan, 1.0, 2.0, 3.0], [0.0, np.inf, np.inf, 1.0], [2.0, 2.0, 1.0, 2.0]],
                 np.float32)
    np.testing.assert_array_equal(ops.argmax(x), np.argmax(x, axis=1))


@pytest.mark.parametrize("cols", [64, 65, 79, 1000, 1031])
def test_argmax_wide_rows_like_numpy(cols, isa, rng):
    # Rows of >= 64 values take the vectorised search: ties across lanes and with the tail, the
    # maximum in the tail, -inf rows, NaN in the vector part or only in the tail (first NaN wins).
    x = np.round(rng.standard_normal((40, cols)) * 2).astype(np.float32)  # many ties
    x[1] = 7.0                                  # all equal: position 0
    x[2] = -np.inf
    x[3, -1] = 50.0                             # maximum in the tail (or the last vector)
    x[4, [5, 37, cols - 1]] = 60.0              # tie: the first one
    x[5, [cols - 2, cols - 1]] = np.nan         # NaN at the end: the first NaN
    x[6, [3, 20]] = np.nan                      # NaN in the vector part
    x[7, cols // 2] = np.inf
    x[8, 17] = 60.0
    x[8, cols - 1] = 60.0                       # equal to a lane's maximum, later: not taken
    np.testing.assert_array_equal(ops.argmax(x), np.argmax(x, axis=1))
    y = np.argmax(x, axis=1)
    y[::3] = 0
    assert ops.accuracy(x, y) == np.mean(np.argmax(x, axis=1) == y)


def test_accuracy(rng):
    for rows, cols in [(1, 1), (1, 5), (33, 10), (5000, 11)]:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        y = rng.integers(0, cols, rows)
        y[: rows // 2] = np.argmax(x[: rows // 2], axis=1)
        acc = ops.accuracy(x, y)
        assert isinstance(acc, float)
        assert acc == np.mean(np.argmax(x, axis=1) == y)
        assert ops.accuracy(x, y.astype(np.int32)) == acc


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.argmax(np.zeros(3, np.float32)), ValueError, "argmax: x must be 2-D"),
    (lambda: ops.argmax(np.zeros((2, 3)), ), TypeError, "argmax: x must have dtype float32"),
    (lambda: ops.argmax(P, out=np.zeros(3, np.int32)), TypeError,
     "argmax: out must have dtype int64, got int32"),
    (lambda: ops.argmax(P, out=np.zeros(4, np.int64)), ValueError,
     r"argmax: out must have shape \(3,\), got \(4,\)"),
    (lambda: ops.accuracy(P, np.array([0, 1, 4])), ValueError,
     r"accuracy: labels\[2\] = 4 is out of range \[0, 4\)"),
    (lambda: ops.accuracy(P, np.array([0.0, 1.0, 1.0])), TypeError,
     "accuracy: labels must be an integer array"),
    (lambda: ops.accuracy(P, np.array([0, 1])), ValueError,
     r"accuracy: labels must have shape \(3,\), got \(2,\)"),
])
def test_argmax_accuracy_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_rel_error_helper_sanity():
    assert rel_error([1.0], [1.0]) == 0.0


# -- ember.losses.CrossEntropy: its arguments are checked where they are given ---------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(label_smoothing="x"), ValueError,
     r"CrossEntropy: label_smoothing must be a number in \[0, 1\], got 'x'"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing must be a number"),
    (dict(label_smoothing=1.5), ValueError,
     r"label_smoothing must be a number in \[0, 1\], got 1.5"),
    (dict(label_smoothing=None), ValueError, "label_smoothing must be a number"),
    (dict(weight=[[1.0, 2.0]]), ValueError,
     r"CrossEntropy: weight must be 1-D with one entry per class, got shape \(1, 2\)"),
    (dict(weight=[]), ValueError, r"CrossEntropy: weight must be 1-D .* got shape \(0,\)"),
    (dict(weight=1.0), ValueError, r"CrossEntropy: weight must be 1-D .* got shape \(\)"),
    (dict(weight=[1.0, -2.0, 1.0]), ValueError,
     r"CrossEntropy: weight must be finite and >= 0, got weight\[1\] = -2.0"),
    (dict(weight=[1.0, 1.0, float("nan")]), ValueError,
     r"CrossEntropy: weight must be finite and >= 0, got weight\[2\] = nan"),
    (dict(weight=[1.0, 1e300]), ValueError,  # inf once in float32
     r"CrossEntropy: weight must be finite and >= 0, got weight\[1\] = 1e\+300"),
    (dict(weight=["a", "b"]), TypeError, "CrossEntropy: weight must hold numbers, got dtype <U1"),
    (dict(weight=[[1.0], [1.0, 2.0]]), TypeError, "CrossEntropy: weight must be a 1-D array"),
])
def test_cross_entropy_checks_its_arguments(kwargs, exc, msg):
    from ember.losses import CrossEntropy
    with pytest.raises(exc, match=msg):
        CrossEntropy(**kwargs)


def test_cross_entropy_weight_length_is_named_when_first_used():
    from ember import Trainer, nn
    from ember.losses import CrossEntropy, get_loss
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4), dtype=np.float32), rng.integers(0, 3, 40)
    msg = r"CrossEntropy: weight has 2 entries \(one per class\) but the logits have 3 classes"
    ce = CrossEntropy(weight=[1, 2])
    with pytest.raises(ValueError, match=msg):  # layer by layer
        ce.forward(rng.random((5, 3), dtype=np.float32), y[:5])
    for loss in (ce, get_loss({"type": "CrossEntropy", "weight": [1.0, 2.0]})):
        # Trainer's fused CPU step (ember._cpu.MlpPlan), and the layer-by-layer step (dropout)
        for model in (nn.MLP([4, 8, 3], seed=0), nn.MLP([4, 8, 3], dropout=0.1, seed=0)):
            with pytest.raises(ValueError, match=msg):
                Trainer(model, loss=loss, device="cpu").fit(x, y, epochs=1, batch_size=8,
                                                            verbose=0)
    good = CrossEntropy(weight=np.array([1, 2, 0.5]))  # integer/float64 input: float32 inside
    assert good.weight.dtype == np.float32 and good.weight.tolist() == [1.0, 2.0, 0.5]
    assert CrossEntropy(label_smoothing=np.float32(0.25)).label_smoothing == 0.25
    Trainer(nn.MLP([4, 8, 3], seed=0), loss=good, device="cpu").fit(x, y, epochs=1, batch_size=8,
                                                                     verbose=0)
