"""The benchmark workloads: one definition of each measured figure, shared by the scripts
(``bench_gemm.py``, ``bench_elementwise.py``, ``bench_optim.py``, ``bench_checkpoint.py``, which
print the README's tables) and the pytest-benchmark suite (``test_*.py`` beside this file).

A :class:`Case` is one figure: the same computation by each contender (``"ember"``, ``"numpy"``,
``"torch"``...), each a zero-argument call that returns its result, and a float64 reference
(the NumPy formula evaluated on float64 copies of the inputs). :meth:`Case.check` runs a
contender's call and compares its result with the reference (``np.testing.assert_allclose``);
both front-ends call it before timing anything, so a broken kernel fails instead of being
timed. PyTorch contenders are present only where ``import torch`` works.

The front-ends differ only in the clock around the call: the scripts take medians of
interleaved sample blocks, the suite lets pytest-benchmark time the same call.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

import ember
import ember.ops as ops

F32 = np.float32
#: Seconds to wait before timing a library, so that the idle workers of the one timed before it
#: (OpenBLAS spins up to ~0.1 s after a call) are asleep and do not share the cores.
SETTLE = 0.3


def torch_or_none():
    """The ``torch`` module, or None where PyTorch is not installed (its contenders are left
    out)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _as_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, np.float64)


def rel_error(got, ref) -> float:
    """``||got - ref|| / ||ref||`` in float64."""
    got, ref = _as_numpy(got), _as_numpy(ref)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def assert_close(got, ref, rtol: float, what: str = "") -> None:
    """``np.testing.assert_allclose`` elementwise with ``atol = rtol * max|ref|`` (entries near
    zero of a float32 result carry the error of its largest terms); tuples and lists compare
    item by item, ``None`` must match ``None``."""
    if ref is None:
        assert got is None, f"{what}: expected None, got {type(got).__name__}"
        return
    if isinstance(ref, (tuple, list)):
        assert len(got) == len(ref), f"{what}: {len(got)} results, expected {len(ref)}"
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_close(g, r, rtol, f"{what}[{i}]")
        return
    got, ref = _as_numpy(got), _as_numpy(ref)
    atol = rtol * float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=what)


@dataclass
class Case:
    """One measured figure.

    ``calls`` maps each contender to a factory that builds its state (PyTorch tensors, an
    optimizer) and returns the zero-argument call to time; ``reference`` returns the float64
    result. ``work`` is the arithmetic (FLOP) or the memory traffic (bytes, ``unit="B"``) of one
    call, for the scripts' GFLOP/s or GB/s columns. A stateful call (an optimizer step) is
    checked after ``check_calls`` calls from its initial state."""

    name: str
    calls: Dict[str, Callable[[], Callable[[], Any]]]
    reference: Callable[[], Any]
    rtol: float = 1e-5
    work: float = 0.0
    unit: str = "FLOP"
    check_calls: int = 1
    compare: Optional[Callable[[Any, Any, str], None]] = None
    _built: Dict[str, Callable[[], Any]] = field(default_factory=dict, repr=False)
    _ref: Any = field(default=None, repr=False)

    @property
    def contenders(self) -> list:
        return list(self.calls)

    def prepare(self, who: str) -> Callable[[], Any]:
        """The call to time for contender ``who`` (built once per case)."""
        if who not in self._built:
            self._built[who] = self.calls[who]()
        return self._built[who]

    def check(self, who: str) -> None:
        """Runs ``who``'s call (``check_calls`` times) and asserts its result matches the float64
        reference; raises AssertionError naming the case and the contender otherwise."""
        fn = self.prepare(who)
        for _ in range(self.check_calls):
            got = fn()
        if self._ref is None:
            self._ref = self.reference()
        what = f"{self.name}: {who} vs the float64 reference"
        (self.compare or (lambda g, r, w: assert_close(g, r, self.rtol, w)))(got, self._ref, what)


def _fixed(fn: Callable[[], Any]) -> Callable[[], Callable[[], Any]]:
    """A factory for a stateless call."""
    return lambda: fn


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# GEMM family (bench_gemm.py, test_gemm.py)


def matmul(m: int, n: int, k: int, *, name: Optional[str] = None, seed: int = 0) -> Case:
    """``(m, k) @ (k, n)`` into a preallocated output: ember.ops.gemm vs np.matmul."""
    rng = _rng(seed)
    a = rng.standard_normal((m, k), dtype=F32)
    b = rng.standard_normal((k, n), dtype=F32)
    out_e, out_n = np.empty((m, n), F32), np.empty((m, n), F32)
    return Case(
        name=name or (f"matmul {m}^3" if m == n == k else f"matmul {m}x{k}.{k}x{n}"),
        calls={"ember": _fixed(lambda: ops.gemm(a, b, out=out_e)),
               "numpy": _fixed(lambda: np.matmul(a, b, out=out_n))},
        reference=lambda: a.astype(np.float64) @ b.astype(np.float64),
        rtol=1e-5, work=2.0 * m * n * k)


def _relu64(z):
    return np.maximum(z, 0)


def linear_forward(batch: int, fan_in: int, fan_out: int, *, seed: int = 0) -> Case:
    """``relu(x @ W.T + b)``: ember's fused GEMM epilogue vs NumPy's matmul, add, maximum."""
    rng = _rng(seed)
    x = rng.standard_normal((batch, fan_in), dtype=F32)
    w = (rng.standard_normal((fan_out, fan_in), dtype=F32) / np.sqrt(fan_in)).astype(F32)
    bias = rng.standard_normal(fan_out, dtype=F32)
    y = np.empty((batch, fan_out), F32)

    def numpy_linear():
        return np.maximum(x @ w.T + bias, 0)

    return Case(
        name=f"linear+bias+relu fwd {batch}x{fan_in}->{fan_out}",
        calls={"ember": _fixed(lambda: ops.linear_forward(x, w, bias, activation="relu", out=y)),
               "numpy": _fixed(numpy_linear)},
        reference=lambda: _relu64(x.astype(np.float64) @ w.T.astype(np.float64) + bias),
        rtol=1e-5, work=2.0 * batch * fan_in * fan_out)


def linear_backward(batch: int, fan_in: int, fan_out: int, *, seed: int = 0) -> Case:
    """Backward of a ReLU linear layer (dX, dW, db): one ember call vs NumPy's three products."""
    rng = _rng(seed)
    x = rng.standard_normal((batch, fan_in), dtype=F32)
    w = (rng.standard_normal((fan_out, fan_in), dtype=F32) / np.sqrt(fan_in)).astype(F32)
    gy = rng.standard_normal((batch, fan_out), dtype=F32)
    zz = rng.standard_normal((batch, fan_out), dtype=F32)
    ws, gb = np.empty_like(gy), np.empty(fan_out, F32)
    gx, gw = np.empty((batch, fan_in), F32), np.empty((fan_out, fan_in), F32)

    def ember_backward():
        return ops.linear_backward(gy, x, w, preact=zz, activation="relu", grad_input=gx,
                                   grad_weight=gw, grad_bias=gb, workspace=ws)

    def numpy_backward():
        d = gy * (zz > 0)
        return d @ w, d.T @ x, d.sum(0)

    def reference():
        d = gy.astype(np.float64) * (zz > 0)
        return d @ w.astype(np.float64), d.T @ x.astype(np.float64), d.sum(0)

    return Case(name=f"linear+relu bwd {batch}x{fan_in}->{fan_out}",
                calls={"ember": _fixed(ember_backward), "numpy": _fixed(numpy_backward)},
                reference=reference, rtol=1e-5, work=4.0 * batch * fan_in * fan_out)


# ---------------------------------------------------------------------------------------------
# Elementwise: activations, losses (bench_elementwise.py, test_elementwise.py)

_GELU_C = math.sqrt(2.0 / math.pi)


def numpy_gelu_tanh(x):
    """GELU, tanh form, in the precision of ``x``."""
    c = x.dtype.type(_GELU_C)
    return x.dtype.type(0.5) * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))


def activation_gelu_tanh(rows: int, cols: int, *, seed: int = 0) -> Case:
    """Elementwise GELU (tanh form): ember vs the NumPy formula vs ``F.gelu(approximate='tanh')``."""
    x = _rng(seed).standard_normal((rows, cols), dtype=F32) * 2
    out = np.empty_like(x)
    calls = {"ember": _fixed(lambda: ops.activation_forward(x, "gelu_tanh", out=out)),
             "numpy": _fixed(lambda: numpy_gelu_tanh(x))}
    torch = torch_or_none()
    if torch is not None:
        def torch_call():
            xt = torch.from_numpy(x)
            return lambda: torch.nn.functional.gelu(xt, approximate="tanh")
        calls["torch"] = torch_call
    return Case(name=f"gelu_tanh fwd {rows}x{cols}", calls=calls,
                reference=lambda: numpy_gelu_tanh(x.astype(np.float64)), rtol=1e-5,
                work=2.0 * x.nbytes, unit="B")


def numpy_ce(logits, labels):
    """Mean softmax cross-entropy and its gradient wrt the logits, vectorised NumPy."""
    rows = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    idx = np.arange(rows)
    loss = float(np.mean(np.log(s[:, 0]) - (logits[idx, labels] - m[:, 0])))
    grad = e / s
    grad[idx, labels] -= 1.0
    grad /= rows
    return loss, grad


def torch_ce(torch, logits_t, labels_t):
    x = logits_t.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x, labels_t)
    loss.backward()
    return loss.item(), x.grad


def softmax_cross_entropy(rows: int, classes: int, *, seed: int = 0) -> Case:
    """Fused softmax cross-entropy, loss and gradient for integer labels: ember vs NumPy vs
    ``F.cross_entropy`` + autograd."""
    rng = _rng(seed)
    logits = (rng.standard_normal((rows, classes)) * 2).astype(F32)
    labels = rng.integers(0, classes, rows)
    grad = np.empty_like(logits)
    calls = {"ember": _fixed(lambda: ops.softmax_cross_entropy(logits, labels, grad=grad)),
             "numpy": _fixed(lambda: numpy_ce(logits, labels))}
    torch = torch_or_none()
    if torch is not None:
        def torch_call():
            xt, yt = torch.from_numpy(logits), torch.from_numpy(labels)
            return lambda: torch_ce(torch, xt, yt)
        calls["torch"] = torch_call
    return Case(name=f"softmax CE fwd+bwd {rows}x{classes}", calls=calls,
                reference=lambda: numpy_ce(logits.astype(np.float64), labels), rtol=1e-5,
                work=2.0 * logits.nbytes, unit="B")  # read logits, write grad


def numpy_mse(pred, target):
    d = pred - target
    return float(np.mean(d * d)), d * (2.0 / d.size)


def mse(rows: int, cols: int, *, seed: int = 0) -> Case:
    """Mean squared error and its gradient: ember vs NumPy vs ``F.mse_loss`` + autograd."""
    rng = _rng(seed)
    pred = rng.standard_normal((rows, cols), dtype=F32)
    target = rng.standard_normal((rows, cols), dtype=F32)
    grad = np.empty_like(pred)
    calls = {"ember": _fixed(lambda: ops.mse(pred, target, grad=grad)),
             "numpy": _fixed(lambda: numpy_mse(pred, target))}
    torch = torch_or_none()
    if torch is not None:
        def torch_call():
            pt, tt = torch.from_numpy(pred), torch.from_numpy(target)

            def step():
                x = pt.detach().requires_grad_(True)
                loss = torch.nn.functional.mse_loss(x, tt)
                loss.backward()
                return loss.item(), x.grad
            return step
        calls["torch"] = torch_call
    return Case(name=f"mse fwd+bwd {rows}x{cols}", calls=calls,
                reference=lambda: numpy_mse(pred.astype(np.float64), target.astype(np.float64)),
                rtol=1e-5, work=3.0 * pred.nbytes, unit="B")


# ---------------------------------------------------------------------------------------------
# Deterministic reductions (test_elementwise.py)


def column_sum(rows: int, cols: int, *, seed: int = 0) -> Case:
    """Sum of each column (a bias gradient): ember vs ``np.add.reduce(x, axis=0)``."""
    x = _rng(seed).standard_normal((rows, cols), dtype=F32)
    out_e, out_n = np.empty(cols, F32), np.empty(cols, F32)
    return Case(name=f"column_sum {rows}x{cols}",
                calls={"ember": _fixed(lambda: ops.column_sum(x, out=out_e)),
                       "numpy": _fixed(lambda: np.add.reduce(x, axis=0, out=out_n))},
                reference=lambda: x.astype(np.float64).sum(0), rtol=1e-4,
                work=float(x.nbytes), unit="B")


def total_sum(size: int, *, seed: int = 0) -> Case:
    """Sum of all elements (ember accumulates in float64): ember vs ``np.sum``."""
    x = _rng(seed).random(size, dtype=F32)
    return Case(name=f"sum {size}",
                calls={"ember": _fixed(lambda: ops.sum(x)), "numpy": _fixed(lambda: float(x.sum()))},
                reference=lambda: float(x.astype(np.float64).sum()), rtol=1e-5,
                work=float(x.nbytes), unit="B")


def global_norm(shapes: Sequence[tuple], *, seed: int = 0) -> Case:
    """L2 norm of several arrays together (gradient clipping): ember vs ``sqrt(sum(vdot))``."""
    rng = _rng(seed)
    arrays = [rng.standard_normal(s, dtype=F32) for s in shapes]
    n = sum(a.size for a in arrays)

    def numpy_norm():
        return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))

    return Case(name=f"global_norm {n} in {len(arrays)} arrays",
                calls={"ember": _fixed(lambda: ops.global_norm(arrays)),
                       "numpy": _fixed(numpy_norm)},
                reference=lambda: math.sqrt(sum(float(np.vdot(a, a))
                                                for a in (x.astype(np.float64) for x in arrays))),
                rtol=1e-5, work=4.0 * n, unit="B")


# ---------------------------------------------------------------------------------------------
# The Adam step (bench_optim.py, test_optim.py)

#: (out, in) weights and biases of a 784-1024-200-10 MLP: 1,010,850 parameters in 6 tensors.
ADAM_SHAPES = [(1024, 784), (1024,), (200, 1024), (200,), (10, 200), (10,)]
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


class NumpyAdam:
    """Adam with in-place ufuncs only: what a careful NumPy user can write (13 passes over
    memory per tensor, one preallocated scratch buffer, no grad norm)."""

    def __init__(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.scratch = np.empty(max(p.size for p in params), np.float32)
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        b1, b2 = BETAS
        step_size = LR / (1 - b1 ** self.t)
        inv_bc2_sqrt = 1 / math.sqrt(1 - b2 ** self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            tmp = self.scratch[:p.size].reshape(p.shape)
            np.subtract(g, m, out=tmp)         # m += (1 - b1) * (g - m)
            tmp *= 1 - b1
            m += tmp
            v *= b2                            # v = b2 * v + (1 - b2) * g * g
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)                # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
            tmp *= inv_bc2_sqrt
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= -step_size
            p += tmp


class EmberAdam:
    """ember.ops.adam_step: one fused call (global grad norm + one pass per element)."""

    def __init__(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        ops.adam_step(params, grads, self.m, self.v, lr=LR, betas=BETAS, eps=EPS, step=self.t)


class TorchAdam:
    """torch.optim.Adam over tensors that share memory with the NumPy arrays."""

    def __init__(self, torch, params, grads, **kind):
        self.tp = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
        for tp, g in zip(self.tp, grads):
            tp.grad = torch.from_numpy(g)
        self.opt = torch.optim.Adam(self.tp, lr=LR, betas=BETAS, eps=EPS, **kind)
        self.torch = torch

    def step(self, params, grads):
        with self.torch.no_grad():
            self.opt.step()


def reference_adam(params, grads_seq):
    """float64 Adam from the published rule."""
    p = [x.astype(np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    b1, b2 = BETAS
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] -= LR / (1 - b1 ** t) * m[i] / (np.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + EPS)
    return p


def torch_fused_adam_error(torch) -> Optional[str]:
    """Why ``torch.optim.Adam(fused=True)`` does not run on the CPU here, or None if it does
    (fused Adam on the CPU arrived in PyTorch 2.4)."""
    p = [np.zeros(4, F32)]
    try:
        TorchAdam(torch, p, [np.ones(4, F32)], fused=True).step(None, None)
    except (RuntimeError, ValueError, TypeError) as exc:
        return str(exc)
    return None


ADAM_CHECK_STEPS = 3


def adam_step(shapes: Sequence[tuple] = ADAM_SHAPES, *, seed: int = 0) -> Case:
    """One Adam step over all the tensors, float32, in place: ember's fused call vs the NumPy
    Adam above vs ``torch.optim.Adam`` (``foreach=True``; ``fused=True`` where supported).
    Checked after 3 steps from the same state against float64 Adam: the parameters, and the
    update (the part Adam computes: small steps on O(0.05) parameters)."""
    rng = _rng(seed)
    init = [rng.standard_normal(s).astype(F32) * 0.05 for s in shapes]
    grads = [rng.standard_normal(s).astype(F32) * 0.01 for s in shapes]
    n = sum(p.size for p in init)

    def factory(make):
        def build():
            params = [x.copy() for x in init]
            opt = make(params)

            def step():
                opt.step(params, grads)
                return params
            return step
        return build

    calls = {"ember": factory(EmberAdam), "numpy": factory(NumpyAdam)}
    torch = torch_or_none()
    if torch is not None:
        calls["torch foreach"] = factory(lambda p: TorchAdam(torch, p, grads, foreach=True))
        if torch_fused_adam_error(torch) is None:
            calls["torch fused"] = factory(lambda p: TorchAdam(torch, p, grads, fused=True))

    def compare(got, ref, what):
        assert_close([g - i for g, i in zip(got, init)], [r - i for r, i in zip(ref, init)],
                     1e-4, what + " (update)")
        assert_close(got, ref, 1e-5, what + " (parameters)")

    return Case(name=f"adam step {n} params in {len(init)} tensors", calls=calls,
                reference=lambda: reference_adam(init, [grads] * ADAM_CHECK_STEPS),
                compare=compare, check_calls=ADAM_CHECK_STEPS,
                # one fused step reads p, g (twice: norm and update), m, v; writes p, m, v
                work=8.0 * 4 * n, unit="B")


# ---------------------------------------------------------------------------------------------
# Checkpoints (bench_checkpoint.py, test_checkpoint_io.py)

#: An MLP of 10.0M parameters: with Adam's two moments its checkpoint is ~120 MB.
CHECKPOINT_SIZES = (784, 2048, 2048, 2048, 10)


def checkpoint_trainer(sizes: Sequence[int] = CHECKPOINT_SIZES, seed: int = 0):
    """A Trainer of an MLP of ``sizes`` trained one step with Adam (so the checkpoint holds the
    weights and both moment arrays)."""
    from ember import nn
    model = nn.MLP(list(sizes), seed=seed)
    rng = _rng(seed)
    x = rng.standard_normal((64, sizes[0])).astype(F32)
    y = rng.integers(0, sizes[-1], 64)
    trainer = ember.Trainer(model, optimizer="adam")
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return trainer


def checkpoint_write(trainer, root: Path, i: int) -> Path:
    """save_checkpoint: serialise, SHA-256, fsync every file and directory, rename, pointer."""
    from ember.checkpoint import save_checkpoint
    return save_checkpoint(trainer, root, name=f"ckpt-e0001-s{i:08d}")


def checkpoint_load(path: Path):
    """load_checkpoint: read, verify every SHA-256, parse the three files (what resuming a run
    costs)."""
    from ember.checkpoint import load_checkpoint
    return load_checkpoint(path)


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir())


def checkpoint_check(trainer, path: Path, loaded) -> None:
    """The checkpoint at ``path`` (and ``loaded``, what checkpoint_load returned) holds the
    trainer's weights and its Adam state."""
    from ember.checkpoint import load_model
    model = trainer.model
    m = load_model(path)
    for name, ref in model.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[name], ref, err_msg=name)
    assert len(loaded["optimizer"]) == 2 * len(model.parameters())


def remove_checkpoint(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
