"""ember's kernels as functions on arrays: the drop-in backend for NumPy (and CuPy) code.

Every function takes float32, C-contiguous arrays (labels: integer arrays) and runs ember's fused
kernel for the device the first array lives on: NumPy arrays run on the CPU kernels
(``ember._cpu``), arrays exposing ``__cuda_array_interface__`` (CuPy) on the CUDA kernels
(``ember._cuda``), on CuPy's current stream.

Arrays of other libraries are taken without a copy through DLPack: PyTorch tensors, JAX arrays,
anything exposing ``__dlpack__``. Host ones become NumPy views (``np.from_dlpack``), GPU ones CuPy
arrays (``cupy.from_dlpack``; a PyTorch tensor's kernels run on ``torch.cuda.current_stream()``).
New results come back in the library of the call's first array (``torch.from_dlpack``: a tensor
in, a tensor out, sharing memory; scalars stay Python floats), outputs given (``out=``, ``grad=``,
...) are written in place and returned as they were passed. The same checks apply (a float64 or
non-contiguous tensor is refused by name; a JAX array is read-only, so it cannot be an output). A
tensor that requires grad is used detached: the kernels record no autograd.

Outputs are allocated when not given (``out=None``); pass ``out=`` to reuse a buffer. Arguments are
checked before any work: a wrong dtype or array type raises ``TypeError``; a wrong rank or shape, a
non-contiguous or read-only output, an empty array, labels out of range or a non-finite
hyperparameter raise ``ValueError``. Each message names the function and the argument.
Inputs are never converted silently (no float64 -> float32 copies), except integer labels, which
are widened to int64.

NaN and Inf in data propagate as IEEE arithmetic says (they are not searched for: that would cost a
pass over every array). The optimizer steps are the exception: a step whose gradients hold a NaN or
Inf is skipped and reported (see :func:`adam_step`).

Example:
    >>> import numpy as np, ember.ops as ops
    >>> x = np.random.rand(128, 784).astype(np.float32)
    >>> w = np.random.rand(256, 784).astype(np.float32)   # PyTorch layout: (out, in)
    >>> b = np.zeros(256, np.float32)
    >>> y, z = ops.linear_forward(x, w, b, activation="relu", save_preact=True)
"""
from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from typing import Any, Optional, Sequence

import numpy as np

from ember import _cpu, backend
from ember.backend import is_cuda_array

try:
    from ember import _cuda_ops
except ImportError:  # built without CUDA, or it does not load: CUDA arrays are refused
    _cuda_ops = None

__all__ = [
    "ACTIVATIONS", "gemm", "matmul", "linear_forward", "linear_backward",
    "activation_forward", "activation_backward", "softmax_cross_entropy", "mse", "argmax",
    "accuracy", "column_sum", "sum", "global_norm", "gather_rows", "dropout_forward",
    "dropout_backward", "sgd_step", "adam_step", "adamw_step", "kernels", "cpu_kernels",
    "MlpPlan", "OptimPlan", "ForwardPlan",
]

#: Activation names accepted by every ``activation=`` argument. ``"gelu"`` is the exact (erf) form,
#: ``"gelu_tanh"`` PyTorch's ``approximate="tanh"``; ``"leaky_relu"`` uses ``negative_slope``.
ACTIVATIONS = ("identity", "relu", "leaky_relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu")

# ---------------------------------------------------------------------------------------------
# The unchecked fast layer: what ember's own layers and optimizers call on their hot paths.
#
# A kernel namespace holds the kernels behind the functions here (gemm, linear_backward,
# activation_forward/backward, softmax_cross_entropy, mse, argmax, accuracy, column_sum, sum,
# global_norm, gather_rows, dropout_forward/backward, sgd_step, adam_step) under the same names,
# with every argument positional (in the order the functions here pass them) and nothing checked
# or converted in Python: labels and indices must already be int64, None is passed for every
# omitted output. The CPU namespace is the binding module itself, whose C++ checks every array
# (shapes, dtypes, contiguity, overlaps) and scalar before any work; the CUDA one is
# ember._cuda_ops, which passes its binding the stream and an allocator. Look the namespace up
# once per call (kernels(x, ...)) or once per loop, and call it directly: ember's layers and
# optimizers do, to save a Python call per kernel on the training path.

#: The CPU kernel namespace (see :func:`kernels`).
cpu_kernels = _cpu
#: ``MlpPlan(batch, in_features, weights, biases, activations, slopes, outputs, preacts,
#: grad_weights, grad_biases, grad_inputs, workspaces, loss_grad, class_weight, label_smoothing,
#: reduction, count_correct, loss)``: a whole Linear stack's training step (forward, loss,
#: backward) over fixed arrays, checked once; ``plan.step(x, y)`` returns ``(loss, correct)``.
#: CPU only (used by :meth:`ember.nn.Sequential.fused_plan`).
MlpPlan = _cpu.MlpPlan
#: ``ForwardPlan(in_features, weights, biases, activations, slopes, mean, std, block_rows)``: a
#: frozen Linear stack's eval forward in one call, the weights copied and packed once;
#: ``plan.run(x)`` checks x (float32 C-contiguous 2-D, the width, finite) and returns a new
#: array, the bits of the layer-by-layer forward. CPU only (used by
#: :class:`ember.inference.Predictor`).
ForwardPlan = _cpu.ForwardPlan
#: ``OptimPlan(params, grads, states)``: an optimizer's lists checked once; ``plan.sgd(...)`` and
#: ``plan.adam(...)`` take the hyperparameters positionally as :func:`sgd_step` and
#: :func:`adam_step` pass them. CPU; on the GPU, ``kernels(x, ...).optim_plan(params, grads,
#: states)`` makes one, which ``plan_sgd_step`` / ``plan_adam_step`` of that namespace step.
OptimPlan = _cpu.OptimPlan


def kernels(x: Any, fn: str, name: str):
    """The kernel namespace for the device ``x`` lives on: :data:`cpu_kernels` for a NumPy
    array, ``ember._cuda_ops`` for a CUDA array (see the notes above), and for another library's
    array (PyTorch, JAX, ``__dlpack__``) one that converts every call's arrays (_CallerArrays). ``fn`` and ``name``
    (the caller and its argument) name ``x`` in the error: TypeError for another type,
    ValueError for a CUDA array when ember was built without CUDA."""
    if type(x) is np.ndarray:
        return _cpu
    if backend.is_foreign_array(x):  # PyTorch, JAX, any __dlpack__ object: see _CallerArrays
        return _CallerArrays(x, fn, name)
    if is_cuda_array(x):
        if _cuda_ops is None:
            raise ValueError(f"{fn}: {name} is a CUDA array but {backend.NOT_BUILT_WITH_CUDA}")
        return _cuda_ops
    if isinstance(x, np.ndarray):  # subclasses (np.matrix, memmap): view as a plain ndarray
        return _cpu
    raise TypeError(
        f"{fn}: {name} must be a numpy.ndarray or a CUDA array (CuPy), got {type(x).__name__}")


def _cuda_refusal(fn: str, name: str) -> str:
    """Why a CUDA array cannot run here ("" when it can)."""
    if _cuda_ops is None:
        return f"{fn}: {name} is a CUDA array but {backend.NOT_BUILT_WITH_CUDA}"
    why = backend.cuda_unusable_reason()
    return f"{fn}: {name} is a CUDA array but CUDA is not usable: {why}" if why else ""


class _CallerArrays:
    """The kernel namespace for another library's arrays (``kernels(x, ...)`` of a PyTorch tensor,
    a JAX array, a ``__dlpack__`` object): a call converts every array argument on ``x``'s device,
    list items included, without a copy (:func:`ember.backend.as_kernel_array`; the same object
    twice gives the same array, so ``out=x`` stays in place), runs the kernels of that device (on
    the caller's current stream on a GPU) and gives the arrays it returns back: an output passed in
    as the caller's own object, a new one in the library of the call's first array. Errors are the
    kernels' own, with PyTorch's ``.contiguous()`` as the hint for a strided tensor."""

    def __init__(self, x: Any, fn: str, name: str):
        self.on_cuda = backend.dlpack_on_cuda(x)
        if self.on_cuda and _cuda_refusal(fn, name):
            raise ValueError(_cuda_refusal(fn, name))
        self._first = x
        self._kernels = _cuda_ops if self.on_cuda else _cpu

    def __getattr__(self, kernel: str):
        function = getattr(self._kernels, kernel)
        return lambda *args: self._call(function, args)

    def _convert(self, a: Any, done: dict) -> Any:
        if a is None or type(a) is np.ndarray or isinstance(a, (str, int, float)):
            return a
        if isinstance(a, (list, tuple)):
            return [self._convert(item, done) for item in a]
        if id(a) not in done:  # another device's array is left for the kernels to refuse
            on_device = backend.is_foreign_array(a) and backend.dlpack_on_cuda(a) == self.on_cuda
            done[id(a)] = (a, *(backend.as_kernel_array(a) if on_device else (a, None)))
        return done[id(a)][1]

    def _call(self, function, args: tuple) -> Any:
        # (on the GPU, converted on the caller's stream: cupy.from_dlpack then adds no wait)
        with _cuda_ops.on_caller_stream(self._first) if self.on_cuda else nullcontext():
            done: dict = {}  # id(caller's object) -> (caller's object, kernel array, wrap_back)
            args = tuple(self._convert(a, done) for a in args)
            wraps = [w for obj, _, w in done.values() if w is not None and obj is self._first]
            wrap = wraps[0] if wraps else next((w for *_, w in done.values() if w), None)
            given = {id(array): obj for obj, array, _ in done.values()}
            try:
                result = function(*args)
            except (TypeError, ValueError) as exc:
                raise _hinted(exc, self._first)

            def back(r):
                if id(r) in given:
                    return given[id(r)]
                if wrap is not None and (type(r) is np.ndarray or is_cuda_array(r)):
                    return wrap(r)
                return r
            return tuple(back(r) for r in result) if isinstance(result, tuple) else back(result)


def _hinted(exc: Exception, x: Any) -> Exception:
    """``exc`` with the copy hint of ``x``'s library (PyTorch: ``.contiguous()``)."""
    msg = str(exc)
    if type(x).__module__.partition(".")[0] != "torch" or ".ascontiguousarray" not in msg:
        return exc
    msg = re.sub(r"\(use (numpy|cupy)\.ascontiguousarray\)", "(use tensor.contiguous())", msg)
    new = type(exc)(msg)
    new.__cause__, new.__suppress_context__ = None, True
    return new


def _labels(labels: Any, fn: str, name: str = "labels", what: str = " (class indices)") -> Any:
    """Integer labels (or indices) as int64, the kernels' type; anything else is a TypeError.
    Host arrays of other libraries (PyTorch, JAX) are viewed as NumPy arrays first."""
    if type(labels) is not np.ndarray:
        if not backend.is_foreign_array(labels) or backend.dlpack_on_cuda(labels):
            return labels  # (the kernels check it)
        labels = backend.as_kernel_array(labels)[0]
    if labels.dtype != np.int64:
        if labels.dtype.kind not in "iu":  # (NumPy counts timedelta64 as an integer)
            raise TypeError(f"{fn}: {name} must be an integer array{what}, "
                            f"got dtype {labels.dtype}")
        if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
            i = int(np.argmax(labels.reshape(-1) > np.iinfo(np.int64).max))
            raise ValueError(f"{fn}: {name}[{i}] = {labels.reshape(-1)[i]} is out of range "
                             f"(it does not fit in int64)")
        return labels.astype(np.int64)
    return labels


# Scalar arguments go to the bindings as they are (no per-call checks on the fast path); when the
# bindings cannot take one (pybind11's "incompatible function arguments"), _explain names it.
_FLAG, _REAL, _INT, _NAME = "a bool", "a real number", "an int", "a str"


def _accepts(kind: str, v: Any) -> bool:
    """Whether ``v`` is of ``kind`` (one of the kinds above, possibly followed by an
    explanation)."""
    if kind.startswith(_NAME):
        return isinstance(v, str)
    if kind.startswith(_FLAG):
        return isinstance(v, (bool, np.bool_))
    if kind.startswith(_INT):
        return not isinstance(v, (bool, np.bool_, float, np.floating)) and hasattr(v, "__index__")
    return not isinstance(v, (str, bytes)) and hasattr(v, "__float__")


def _explain(exc: TypeError, fn: str, **scalars) -> None:
    """Raise a TypeError naming the first of ``scalars`` (name=(value, kind)) the bindings could
    not take, in place of pybind11's list of signatures; re-raise ``exc`` otherwise."""
    if "incompatible function arguments" in str(exc):
        for name, (value, kind) in scalars.items():
            if not _accepts(kind, value):
                raise TypeError(f"{fn}: {name} must be {kind}, got {type(value).__name__} "
                                f"{value!r}") from None
    raise exc


# ---------------------------------------------------------------------------------------------
# GEMM family


def gemm(a, b, *, trans_a: bool = False, trans_b: bool = False, bias=None,
         activation: str = "identity", negative_slope: float = 0.01, alpha: float = 1.0,
         beta: float = 0.0, out=None, preact_out=None, save_preact: bool = False,
         precision: str = "fp32"):
    """``C = act(alpha * op(A) @ op(B) + beta * C + bias)`` with the epilogue fused.

    Args:
        a: (m, k) array, or (k, m) with ``trans_a=True``.
        b: (k, n) array, or (n, k) with ``trans_b=True``.
        bias: optional (n,) array added to every row.
        activation: one of :data:`ACTIVATIONS`.
        negative_slope: slope of ``"leaky_relu"`` for x < 0.
        alpha, beta: scale of the product and of ``out``'s previous contents; ``beta != 0``
            needs ``out``.
        out: optional (m, n) output; must not share memory with ``a`` or ``b``.
        preact_out: optional (m, n) array receiving the pre-activation values.
        save_preact: allocate and return the pre-activation (for the backward pass).
        precision: ``"fp32"`` (exact float32), ``"tf32"`` or ``"bf16"`` (GPU tensor cores with
            float32 accumulation). The CPU kernels always compute in float32 and accept all three.

    Returns:
        ``out``, or ``(out, preact)`` when ``save_preact`` or ``preact_out`` is given.
    """
    try:
        return kernels(a, "gemm", "a").gemm(a, b, bias, out, preact_out, trans_a, trans_b,
                                          activation, negative_slope, alpha, beta, save_preact,
                                          precision)
    except TypeError as exc:
        _explain(exc, "gemm", trans_a=(trans_a, _FLAG), trans_b=(trans_b, _FLAG),
                 activation=(activation, _NAME), negative_slope=(negative_slope, _REAL),
                 alpha=(alpha, _REAL), beta=(beta, _REAL), save_preact=(save_preact, _FLAG),
                 precision=(precision, _NAME))


def _as_caller(exc: Exception, fn: str, names: dict) -> None:
    """Raise ``exc`` again as the error of ``fn``, which called :func:`gemm`: the message names
    ``fn`` and its own arguments (``names`` maps gemm's argument names to the caller's) instead
    of "gemm: a must ..."."""
    msg = str(exc)
    if not msg.startswith("gemm: "):
        raise exc
    msg = msg[len("gemm: "):]
    if "a" in names:
        msg = re.sub(r"\bop\(a\)'s (\d+) columns", rf"{names['a']}'s \1 columns", msg)
    if names.get("b") == "weight":
        msg = re.sub(r"^b must have shape \(n, (\d+)\) with trans_b=True",
                     r"weight must have shape (out_features, \1)", msg)
    for old, new in names.items():  # an argument's name starts the message or follows these
        msg = re.sub(rf"(^|with |but ){old}\b", rf"\g<1>{new}", msg)
    raise type(exc)(f"{fn}: {msg}") from None


def matmul(a, b, *, out=None):
    """``a @ b`` for 2-D float32 arrays (:func:`gemm` without an epilogue)."""
    try:
        return gemm(a, b, out=out)
    except (TypeError, ValueError) as exc:
        _as_caller(exc, "matmul", {})


def linear_forward(x, weight, bias=None, *, activation: str = "identity",
                   negative_slope: float = 0.01, save_preact: bool = False, out=None,
                   preact_out=None, precision: str = "fp32"):
    """``act(x @ weight.T + bias)`` with PyTorch's Linear layout (``weight`` is (out, in)).

    Returns ``y`` or ``(y, preact)`` as :func:`gemm` does. Errors name this function's
    arguments (``x``, ``weight``, ...).
    """
    try:
        return gemm(x, weight, trans_b=True, bias=bias, activation=activation,
                    negative_slope=negative_slope, out=out, preact_out=preact_out,
                    save_preact=save_preact, precision=precision)
    except (TypeError, ValueError) as exc:
        _as_caller(exc, "linear_forward", {"a": "x", "b": "weight"})


def linear_backward(grad_out, x, weight, *, preact=None, activation: str = "identity",
                    negative_slope: float = 0.01, bias: bool = True,
                    need_grad_input: bool = True, accumulate: bool = False, grad_input=None,
                    grad_weight=None, grad_bias=None, workspace=None, precision: str = "fp32"):
    """Backward of :func:`linear_forward` in one call: ``act'``, the bias gradient and both GEMMs.

    ``dZ = grad_out * act'(preact)``; ``dX = dZ @ weight``; ``dW = dZ.T @ x``;
    ``db = dZ.sum(0)``. Sums over the batch are deterministic.

    Args:
        grad_out: (batch, out) gradient of the loss wrt the layer's output.
        x: (batch, in) the layer's input. weight: (out, in).
        preact: (batch, out) saved pre-activation; required unless ``activation`` is identity.
        bias: whether to compute ``db``.
        need_grad_input: compute ``dX`` (False for the first layer).
        accumulate: add into ``grad_weight`` / ``grad_bias`` (which must then be given).
        workspace: (batch, out) buffer for ``dZ``; may be ``grad_out`` itself to work in place
            (``grad_out`` is then overwritten).
        precision: as in :func:`gemm`.

    Returns:
        ``(grad_input or None, grad_weight, grad_bias or None)``.
    """
    try:
        return kernels(grad_out, "linear_backward", "grad_out").linear_backward(
            grad_out, x, weight, preact, activation, negative_slope,
            need_grad_input, bias, accumulate, grad_input, grad_weight, grad_bias, workspace,
            precision)
    except TypeError as exc:
        _explain(exc, "linear_backward", activation=(activation, _NAME),
                 negative_slope=(negative_slope, _REAL),
                 need_grad_input=(need_grad_input, _FLAG),
                 bias=(bias, "a bool (whether to compute the bias gradient)"),
                 accumulate=(accumulate, _FLAG), precision=(precision, _NAME))


# ---------------------------------------------------------------------------------------------
# Elementwise activations


def activation_forward(x, activation: str, *, negative_slope: float = 0.01, out=None):
    """``act(x)`` elementwise for an array of any rank; ``out`` may be ``x`` (in place)."""
    try:
        return kernels(x, "activation_forward", "x").activation_forward(
            x, activation, negative_slope, out)
    except TypeError as exc:
        _explain(exc, "activation_forward", activation=(activation, _NAME),
                 negative_slope=(negative_slope, _REAL))


def activation_backward(grad_out, preact, activation: str, *, negative_slope: float = 0.01,
                        out=None):
    """``grad_out * act'(preact)`` elementwise; ``out`` may be ``grad_out`` (in place)."""
    try:
        return kernels(grad_out, "activation_backward", "grad_out").activation_backward(
            grad_out, preact, activation, negative_slope, out)
    except TypeError as exc:
        _explain(exc, "activation_backward", activation=(activation, _NAME),
                 negative_slope=(negative_slope, _REAL))


# ---------------------------------------------------------------------------------------------
# Losses and metrics


def softmax_cross_entropy(logits, labels, *, weight=None, label_smoothing: float = 0.0,
                          reduction: str = "mean", grad_scale: float = 1.0,
                          compute_grad: bool = True, grad=None, row_loss=None):
    """Softmax + cross-entropy forward and backward in one pass over the logits.

    Matches ``torch.nn.functional.cross_entropy(logits, labels, weight, reduction,
    label_smoothing)``: with ``eps = label_smoothing``, ``C`` classes and ``w`` the class weights
    (1 when not given), row ``i`` scores
    ``l_i = (1-eps) w[y_i] (-log p_{i,y_i}) + (eps/C) sum_c w[c] (-log p_{i,c})``; ``"mean"``
    divides ``sum l_i`` by ``sum w[y_i]``, ``"sum"`` does not.

    Args:
        logits: (rows, classes) float32.
        labels: (rows,) integer class indices in [0, classes).
        weight: optional (classes,) non-negative class weights.
        grad_scale: multiplies the gradient (the upstream gradient of the loss).
        compute_grad: also return d(loss)/d(logits).
        grad: optional (rows, classes) output for the gradient; may be ``logits`` (in place).
        row_loss: optional (rows,) output receiving the unreduced ``l_i``.

    Returns:
        ``(loss as a Python float, grad or None)``.
    """
    try:
        return kernels(logits, "softmax_cross_entropy", "logits").softmax_cross_entropy(
            logits, _labels(labels, "softmax_cross_entropy"), weight, label_smoothing,
            reduction, grad_scale, compute_grad, grad, row_loss)
    except TypeError as exc:
        _explain(exc, "softmax_cross_entropy", label_smoothing=(label_smoothing, _REAL),
                 reduction=(reduction, _NAME), grad_scale=(grad_scale, _REAL),
                 compute_grad=(compute_grad, _FLAG))


def mse(pred, target, *, reduction: str = "mean", grad_scale: float = 1.0,
        compute_grad: bool = True, grad=None):
    """Mean (or summed) squared error and its gradient wrt ``pred``, in one pass.

    ``pred`` and ``target`` have the same shape (any rank). ``"mean"`` averages over all
    elements, like ``torch.nn.functional.mse_loss``. Returns ``(loss, grad or None)``.
    """
    try:
        return kernels(pred, "mse", "pred").mse(pred, target, reduction, grad_scale,
                                              compute_grad, grad)
    except TypeError as exc:
        _explain(exc, "mse", reduction=(reduction, _NAME), grad_scale=(grad_scale, _REAL),
                 compute_grad=(compute_grad, _FLAG))


def argmax(x, *, out=None):
    """Index of the largest value in each row of a 2-D array (first one on ties), as int64."""
    return kernels(x, "argmax", "x").argmax(x, out)


def accuracy(logits, labels) -> float:
    """Fraction of rows whose argmax equals the label."""
    return kernels(logits, "accuracy", "logits").accuracy(logits,
                                                        _labels(labels, "accuracy"))


# ---------------------------------------------------------------------------------------------
# Deterministic reductions (same bits for the same inputs, whatever the thread count)


def column_sum(x, *, out=None, accumulate: bool = False):
    """Sum of each column of a 2-D array (e.g. a bias gradient); ``+=`` into ``out`` when
    ``accumulate``."""
    try:
        return kernels(x, "column_sum", "x").column_sum(x, out, accumulate)
    except TypeError as exc:
        _explain(exc, "column_sum", accumulate=(accumulate, _FLAG))


def sum(x) -> float:  # noqa: A001 - mirrors numpy.sum
    """Sum of all elements, accumulated in float64, deterministic."""
    return kernels(x, "sum", "x").sum(x)


def global_norm(arrays: Sequence[Any]) -> float:
    """L2 norm of all elements of all arrays together (as ``clip_grad_norm_`` computes it)."""
    arrays = _array_list("global_norm", "arrays", arrays)
    if arrays is None or len(arrays) == 0:
        raise ValueError("global_norm: arrays must hold at least one array")
    return kernels(arrays[0], "global_norm", "arrays[0]").global_norm(arrays)


# ---------------------------------------------------------------------------------------------
# Dropout (counter-based RNG: the mask is a pure function of seed, offset and element index)


def gather_rows(x, index, *, out=None):
    """``out[i] = x[index[i]]``: the rows of a 2-D float32 NumPy array picked by ``index`` (a
    batch), like ``numpy.take(x, index, axis=0)``, written by as many threads as the GEMM that
    reads the batch next (each thread gathers the rows it will multiply).

    ``index`` is integer (widened to int64) with every value in ``[0, len(x))``: negative indices
    are rejected, not wrapped. CuPy arrays go to ``cupy.take`` after the same checks (the range
    check synchronises the stream there).
    """
    if type(x) is not np.ndarray and (backend.is_foreign_array(x) or is_cuda_array(x)):
        k = kernels(x, "gather_rows", "x")
        if k is _cuda_ops or k.on_cuda:  # CUDA indices are widened there
            return k.gather_rows(x, index, out)
        return k.gather_rows(x, _labels(index, "gather_rows", "index", ""), out)
    return _cpu.gather_rows(x, _labels(index, "gather_rows", "index", ""), out)


def dropout_forward(x, p: float, seed: int, offset: int = 0, *, out=None):
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    The mask is a pure function of ``(seed, offset, i)``, the same on every run, thread count and
    backend. Element ``i`` of the flattened array has global index ``g = offset + i`` (uint64) and
    draws the 32-bit word ``r = philox4x32_10(counter, key)[g & 3]`` (Random123's Philox4x32-10)
    with ``key = (seed & 0xffffffff, seed >> 32)`` and
    ``counter = ((g >> 2) & 0xffffffff, (g >> 2) >> 32, 0, 0)``: one Philox call serves four
    consecutive elements. It is kept iff ``(r >> 8) * 2**-24 >= p`` (``p`` rounded to float32)
    and then becomes ``x * (1/(1-p))`` (float32); dropped elements are 0 (even NaN). ``p == 1``
    gives zeros. A call over ``n`` elements at ``offset`` equals two calls over ``[offset,
    offset+k)`` and ``[offset+k, offset+n)``, so a model advances ``offset`` by each array's size.

    Args:
        x: float32 array of any rank. p: drop probability in [0, 1].
        seed, offset: integers in [0, 2**64). out: optional output; may be ``x``.
    """
    try:
        return kernels(x, "dropout_forward", "x").dropout_forward(x, p, seed, offset, out)
    except TypeError as exc:
        _explain(exc, "dropout_forward", p=(p, _REAL), seed=(seed, _INT), offset=(offset, _INT))


def dropout_backward(grad_out, p: float, seed: int, offset: int = 0, *, out=None):
    """Gradient of :func:`dropout_forward` with the same ``(p, seed, offset)``; the mask is
    regenerated, never stored."""
    try:
        return kernels(grad_out, "dropout_backward", "grad_out").dropout_backward(
            grad_out, p, seed, offset, out)
    except TypeError as exc:
        _explain(exc, "dropout_backward", p=(p, _REAL), seed=(seed, _INT),
                 offset=(offset, _INT))


# ---------------------------------------------------------------------------------------------
# Optimizers: every parameter of a model updated in one call


def _array_list(fn: str, name: str, obj: Any) -> Optional[list]:
    """``obj`` (a list, tuple or other iterable of arrays) as a list; None stays None. A single
    array is refused: iterating it would pass its rows (or elements) as the arrays."""
    if obj is None:
        return None
    if type(obj) not in (list, tuple) and (isinstance(obj, np.ndarray) or
                                           hasattr(obj, "__dlpack__") or is_cuda_array(obj)):
        raise TypeError(f"{fn}: {name} must be a list of arrays (one per parameter), got a "
                        f"single {type(obj).__name__}; wrap it in a list")
    if isinstance(obj, (str, bytes)) or not hasattr(obj, "__iter__"):
        raise TypeError(f"{fn}: {name} must be a list of arrays, got {type(obj).__name__}")
    return list(obj)


def _cupy_list(params: list) -> bool:
    """Whether ``params`` starts with an exact ``cupy.ndarray`` and CUDA kernels are built: the
    optimizer steps then go through ``_cuda_ops``' kept plans (see ember._plan_cache)."""
    cupy = sys.modules.get("cupy")
    return bool(params) and _cuda_ops is not None and cupy is not None and \
        type(params[0]) is getattr(cupy, "ndarray", None)


def _clip_arg(fn: str, max_grad_norm: Any) -> Any:
    """The bindings' max_grad_norm: 0.0 (off) for None; a given value must be > 0 (0 would be
    taken as "off", not as clipping to zero)."""
    if max_grad_norm is None:
        return 0.0
    if (isinstance(max_grad_norm, (int, float, np.integer, np.floating)) and
            not isinstance(max_grad_norm, bool) and not max_grad_norm > 0):
        raise ValueError(f"{fn}: max_grad_norm must be a number > 0 or None (no clipping), got "
                         f"{max_grad_norm!r}")
    return max_grad_norm


def sgd_step(params: Sequence[Any], grads: Sequence[Any],
             momentum_buffers: Optional[Sequence[Any]] = None, *, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
             nesterov: bool = False, maximize: bool = False, step: int = 1,
             max_grad_norm: Optional[float] = None) -> tuple[float, bool]:
    """One SGD step over all ``params`` in place, with ``torch.optim.SGD``'s update rule.

    ``momentum_buffers`` (same shapes as ``params``) are required when ``momentum != 0``; at
    ``step == 1`` they are set to the gradient, as PyTorch does for a new buffer.
    ``max_grad_norm`` clips by the global norm first, as ``clip_grad_norm_`` would (gradients are
    scaled on the fly, not modified).

    Returns:
        ``(grad_norm, skipped)``: the global gradient norm before clipping, and whether the step
        was skipped because the gradients held NaN or Inf (parameters and buffers untouched).
    """
    fn = "sgd_step"
    params, grads = _array_list(fn, "params", params), _array_list(fn, "grads", grads)
    bufs = _array_list(fn, "momentum_buffers", momentum_buffers)
    clip = _clip_arg(fn, max_grad_norm)
    try:
        if _cupy_list(params):  # (the caller's own CuPy arrays: their checks are kept)
            return _cuda_ops.sgd_step_reusing(params, grads, bufs, lr, momentum, dampening,
                                              weight_decay, nesterov, maximize, step, clip)
        # An empty list goes to the CPU module, whose check names it.
        return (kernels(params[0], fn, "params[0]") if params else _cpu).sgd_step(
            params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, maximize, step,
            clip)
    except TypeError as exc:
        _explain(exc, fn, lr=(lr, _REAL), momentum=(momentum, _REAL),
                 dampening=(dampening, _REAL), weight_decay=(weight_decay, _REAL),
                 nesterov=(nesterov, _FLAG), maximize=(maximize, _FLAG),
                 max_grad_norm=(max_grad_norm, _REAL))


def adam_step(params: Sequence[Any], grads: Sequence[Any], exp_avgs: Sequence[Any],
              exp_avg_sqs: Sequence[Any], max_exp_avg_sqs: Optional[Sequence[Any]] = None, *,
              lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0, amsgrad: bool = False,
              decoupled_weight_decay: bool = False, maximize: bool = False, step: int = 1,
              max_grad_norm: Optional[float] = None) -> tuple[float, bool]:
    """One Adam step over all ``params`` in place, with ``torch.optim.Adam``'s update rule
    (``torch.optim.AdamW``'s when ``decoupled_weight_decay``).

    ``step`` is the 1-based number of this step (bias corrections use it); ``max_exp_avg_sqs`` is
    required with ``amsgrad``. Returns ``(grad_norm, skipped)`` as :func:`sgd_step` does.

    Every call checks every array (dtype, shape, contiguity, device, overlaps), except on
    lists of CuPy arrays that came before: from the second call with the same arrays (the same
    objects, on the same device) their checks are kept and the step only launches, until one
    of them is freed (``ember._plan_cache``). On an H200, before that cache, 10.5M parameters
    in 128 tensors took 2.6 ms a call here and 0.175 ms through ``optim.Adam.step()``, which
    keeps its lists the same way (bench/results/gpu-2026-11-27-h200.md).
    """
    fn = "adam_step"
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}")
    beta1, beta2 = betas
    params, grads = _array_list(fn, "params", params), _array_list(fn, "grads", grads)
    lists = [_array_list(fn, name, obj) for name, obj in
             (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
              ("max_exp_avg_sqs", max_exp_avg_sqs))]
    clip = _clip_arg(fn, max_grad_norm)
    try:
        if _cupy_list(params):  # (the caller's own CuPy arrays: their checks are kept)
            return _cuda_ops.adam_step_reusing(params, grads, *lists, lr, beta1, beta2, eps,
                                               weight_decay, amsgrad, decoupled_weight_decay,
                                               maximize, step, clip)
        # An empty list goes to the CPU module, whose check names it.
        return (kernels(params[0], fn, "params[0]") if params else _cpu).adam_step(
            params, grads, *lists, lr, beta1, beta2, eps, weight_decay, amsgrad,
            decoupled_weight_decay, maximize, step, clip)
    except TypeError as exc:
        _explain(exc, fn, lr=(lr, _REAL), **{"betas[0]": (beta1, _REAL),
                                             "betas[1]": (beta2, _REAL)},
                 eps=(eps, _REAL), weight_decay=(weight_decay, _REAL), amsgrad=(amsgrad, _FLAG),
                 decoupled_weight_decay=(decoupled_weight_decay, _FLAG),
                 maximize=(maximize, _FLAG), max_grad_norm=(max_grad_norm, _REAL))


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr: float = 1e-3,
               betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
               amsgrad: bool = False, maximize: bool = False, step: int = 1,
               max_grad_norm: Optional[float] = None) -> tuple[float, bool]:
    """:func:`adam_step` with decoupled weight decay (``torch.optim.AdamW``, default 1e-2)."""
    return adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr=lr, betas=betas,
                     eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                     decoupled_weight_decay=True, maximize=maximize, step=step,
                     max_grad_norm=max_grad_norm)
