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

import contextlib
import threading

from ember import _plan_cache, backend

# ImportError saying what is true (built without CUDA and how to build it, or why it does not load)
# instead of Python's "cannot import name '_cuda' from partially initialized module".
_cuda = backend.cuda_module()

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


@contextlib.contextmanager
def on_caller_stream(x):
    """Within the block, CuPy's current stream, the one the kernels run on, is the current stream
    of ``x``'s library on ``x``'s device: ``torch.cuda.current_stream()`` for a PyTorch tensor (so
    the kernels are ordered with the caller's PyTorch work); CuPy's own otherwise."""
    if type(x).__module__.partition(".")[0] != "torch":
        yield
        return
    import torch
    cp = _cp()
    with cp.cuda.Device(x.device.index), \
            cp.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream):
        yield


# While ember._cuda_graph records or captures a training step, the allocator it installs for its
# thread (see allocating_from): the bindings' outputs then come from buffers the step owns, the
# same ones at every replay. Per thread, so another thread's kernels allocate as usual.
_local = threading.local()


@contextlib.contextmanager
def allocating_from(allocator):
    """Within the block, on this thread, the bindings' outputs and workspaces come from
    ``allocator(shape, dtype)`` instead of CuPy's pool."""
    previous = getattr(_local, "allocator", None)
    _local.allocator = allocator
    try:
        yield
    finally:
        _local.allocator = previous


def _alloc(shape, dtype="float32"):
    """A new array (float32 unless the binding asks for int64 or float64) on the current device,
    from CuPy's memory pool (or from the step being recorded, see allocating_from)."""
    allocator = getattr(_local, "allocator", None)
    if allocator is not None:
        return allocator(shape, dtype)
    cp = _cp()
    return cp.empty(shape, dtype=dtype)


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


# ---------------------------------------------------------------------------------------------
# Elementwise activations and deterministic reductions


def activation_forward(x, activation, negative_slope, out):
    return _cuda.activation_forward(x, activation, negative_slope, out, _stream(), _alloc)


def activation_backward(grad_out, preact, activation, negative_slope, out):
    return _cuda.activation_backward(grad_out, preact, activation, negative_slope, out, _stream(),
                                     _alloc)


def column_sum(x, out, accumulate):
    return _cuda.column_sum(x, out, accumulate, _stream(), _alloc)


def sum(x):  # noqa: A001 - mirrors ember.ops.sum
    """Synchronises the current stream (the value comes back as a Python float)."""
    return _cuda.sum(x, _stream(), _alloc)


def global_norm(arrays):
    """Synchronises the current stream (the value comes back as a Python float)."""
    return _cuda.global_norm(arrays, _stream(), _alloc)


def gather_rows(x, index, out):
    """out[i] = x[index[i]] with ``cupy.take`` (no ember kernel: a row copy is all it is), after
    the checks ember._cpu.gather_rows makes. The index range check reads the index's minimum and
    maximum back to the host, so this synchronises the stream (the DataLoader, whose indices are
    a permutation, calls cupy.take directly)."""
    cp = _cp()
    fn = "gather_rows"
    for name, a, kind, ndim in (("x", x, "f", 2), ("index", index, "iu", 1)):
        if not isinstance(a, cp.ndarray):
            raise TypeError(f"{fn}: {name} must be a cupy.ndarray like x, got {type(a).__name__}")
        if a.dtype.kind not in kind or (kind == "f" and a.dtype != cp.float32):
            want = "float32" if kind == "f" else "an integer dtype"
            raise TypeError(f"{fn}: {name} must have dtype {want}, got {a.dtype}")
        if a.ndim != ndim:
            raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{fn}: {name} must not be empty, got shape {a.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: x must be C-contiguous (use cupy.ascontiguousarray)")
    if x.device.id != index.device.id:
        raise ValueError(f"{fn}: index is on device {index.device.id}, x on {x.device.id}")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= x.shape[0]:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{fn}: index holds {bad}, out of range [0, {x.shape[0]}) "
                         f"(x has {x.shape[0]} rows)")
    shape = (index.shape[0], x.shape[1])
    if out is None:
        out = cp.empty(shape, dtype=cp.float32)
    elif not isinstance(out, cp.ndarray) or out.dtype != cp.float32 or out.shape != shape or \
            not out.flags.c_contiguous or out.device.id != x.device.id:
        raise ValueError(f"{fn}: out must be a C-contiguous float32 cupy.ndarray of shape "
                         f"{shape} on x's device")
    elif cp.shares_memory(out, x) or cp.shares_memory(out, index):
        raise ValueError(f"{fn}: out must not share memory with x or index")
    cp.take(x, index, axis=0, out=out)  # on CuPy's current stream, like every ember kernel
    return out


# ---------------------------------------------------------------------------------------------
# Losses and metrics


def _int64_labels(labels):
    """CuPy integer labels of another width are widened to int64, as ember.ops does for NumPy."""
    dtype = getattr(labels, "dtype", None)
    if dtype is not None and hasattr(labels, "astype") and getattr(dtype, "kind", "") in "iu" \
            and str(dtype) != "int64":
        return labels.astype("int64")
    return labels


def _loss_out(device_loss):
    if not device_loss:
        return None
    return _alloc((1,), "float64" if device_loss == "float64" else "float32")


def _weight_values(weight, device_loss):
    """A host copy of the class weights (one value per class), which the binding checks as the
    CPU binding checks its weights (finite, >= 0; same message). Copying synchronises the stream,
    which the call does anyway to return the loss; with ``device_loss`` (a call that must never
    synchronise: CUDA-graph steps, whose weights ``ember.losses.CrossEntropy`` checked when it was
    built) None: not checked. Anything ``cupy.asnumpy`` cannot copy is left to the binding's own
    checks of ``weight``."""
    if weight is None or device_loss or not backend.is_cuda_array(weight):
        return None
    try:
        return _cp().asnumpy(weight)
    except (TypeError, ValueError):
        return None


def softmax_cross_entropy(logits, labels, weight, label_smoothing, reduction, grad_scale,
                          compute_grad, grad, row_loss, *, device_loss=False):
    """As ``ember.ops.softmax_cross_entropy``. By default the loss is returned as a Python float,
    which synchronises the current stream once (and raises ``ValueError`` for a label out of range,
    checked on the device). ``device_loss=True`` returns the loss as a 1-element float32 CuPy
    array instead and never synchronises (for CUDA-graph training loops); a bad label then makes
    it NaN. ``device_loss="float64"``: the same as a float64 array, the value the synchronising
    call returns as a Python float, to the bit. Class weights are checked (finite, >= 0) as on
    the CPU, from a host copy, except with ``device_loss`` (see :func:`_weight_values`)."""
    return _cuda.softmax_cross_entropy(logits, _int64_labels(labels), weight, label_smoothing,
                                       reduction, grad_scale, compute_grad, grad, row_loss,
                                       _loss_out(device_loss), _stream(), _alloc,
                                       _weight_values(weight, device_loss))


def mse(pred, target, reduction, grad_scale, compute_grad, grad, *, device_loss=False):
    """As ``ember.ops.mse``; ``device_loss`` as in :func:`softmax_cross_entropy`."""
    return _cuda.mse(pred, target, reduction, grad_scale, compute_grad, grad,
                     _loss_out(device_loss), _stream(), _alloc)


def argmax(x, out):
    return _cuda.argmax(x, out, _stream(), _alloc)


def accuracy(logits, labels):
    """Synchronises the current stream (the value comes back as a Python float)."""
    return _cuda.accuracy(logits, _int64_labels(labels), _stream(), _alloc)


# ---------------------------------------------------------------------------------------------
# Dropout


def dropout_forward(x, p, seed, offset, out):
    return _cuda.dropout_forward(x, p, seed, offset, out, _stream(), _alloc)


def dropout_backward(grad_out, p, seed, offset, out):
    return _cuda.dropout_backward(grad_out, p, seed, offset, out, _stream(), _alloc)


# ---------------------------------------------------------------------------------------------
# Optimizers
#
# The CPU-compatible calls return ``(grad_norm, skipped)`` as Python values, which synchronises
# the current stream once per step. For a CUDA-graph training loop pass ``state=`` (see
# :func:`step_state`): step and learning rate are then read from that device array, nothing is
# synchronised, and the call returns ``(grad_norm, skipped)`` as 1-element device arrays
# (float64, int64). With ``advance_step=True`` a step that is not skipped adds 1 to the device
# step, so a captured graph can be replayed as is; change the learning rate with
# :func:`set_step_state` (a kernel, capturable too).


def step_state(step=1, lr=1e-3):
    """A device array ``int64[2] = {step, lr as float64 bits}`` for the ``state=`` option."""
    cp = _cp()
    state = cp.empty(2, dtype=cp.int64)
    set_step_state(state, step, lr)
    return state


def set_step_state(state, step, lr):
    """Writes ``step`` and ``lr`` into ``state`` on the current stream (no synchronisation)."""
    cp = _cp()
    state[0] = int(step)
    state[1:].view(cp.float64)[0] = float(lr)


def _device_result(result):
    if result is None:
        return None
    cp = _cp()
    return result[:1].view(cp.float64), result[1:]


def sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
             maximize, step, max_grad_norm, *, state=None, advance_step=False):
    r = _cuda.sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                       nesterov, maximize, step, max_grad_norm, state, None, advance_step,
                       _stream(), _alloc)
    return r if state is None else _device_result(r)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps,
              weight_decay, amsgrad, decoupled_weight_decay, maximize, step, max_grad_norm, *,
              state=None, advance_step=False):
    r = _cuda.adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2,
                        eps, weight_decay, amsgrad, decoupled_weight_decay, maximize, step,
                        max_grad_norm, state, None, advance_step, _stream(), _alloc)
    return r if state is None else _device_result(r)


# ops.sgd_step / ops.adam_step on lists of CuPy arrays: the lists' plans, kept while their arrays
# live (see ember._plan_cache). Only exact cupy.ndarray lists: their pointers, sizes and dtypes
# never change, and CuPy exports its current stream, the one the kernels run on.
_plans = _plan_cache.PlanCache()


def _reusing(kind, lists, checked_call, plan_call):
    """``plan_call(plan)`` through the kept plan of ``lists`` on the current device, else
    ``checked_call()`` (offering the lists to the cache when it succeeds)."""
    key = (kind, _cp().cuda.runtime.getDevice(), _plan_cache.list_key(*lists))
    plan = _plans.get(key)
    if plan is not None:
        return plan_call(plan)
    result = checked_call()
    params, grads, *states = lists
    states = [s for s in states if s is not None]
    arrays = [a for lst in (params, grads, *states) for a in lst]
    nd = _cp().ndarray
    if all(type(a) is nd for a in arrays):
        _plans.offer(key, arrays,
                     lambda: _cuda.OptimPlan(params, grads, states, _stream(), hold=False))
    return result


def sgd_step_reusing(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                     nesterov, maximize, step, max_grad_norm):
    """:func:`sgd_step` (host mode) for a caller's own lists of CuPy arrays, through their kept
    plan when the same arrays came before (see ember._plan_cache)."""
    bufs = momentum_buffers if momentum != 0 else None
    return _reusing(
        ("sgd", momentum != 0), (params, grads, bufs),
        lambda: sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                         nesterov, maximize, step, max_grad_norm),
        lambda plan: plan_sgd_step(plan, lr, momentum, dampening, weight_decay, nesterov,
                                   maximize, step, max_grad_norm))


def adam_step_reusing(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2,
                      eps, weight_decay, amsgrad, decoupled_weight_decay, maximize, step,
                      max_grad_norm):
    """:func:`adam_step` (host mode) for a caller's own lists of CuPy arrays, through their kept
    plan when the same arrays came before (see ember._plan_cache)."""
    vmax = max_exp_avg_sqs if amsgrad else None
    return _reusing(
        ("adam", bool(amsgrad)), (params, grads, exp_avgs, exp_avg_sqs, vmax),
        lambda: adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1,
                          beta2, eps, weight_decay, amsgrad, decoupled_weight_decay, maximize,
                          step, max_grad_norm),
        lambda plan: plan_adam_step(plan, lr, beta1, beta2, eps, weight_decay, amsgrad,
                                    decoupled_weight_decay, maximize, step, max_grad_norm))


def optim_plan(params, grads, states):
    """An ``ember._cuda.OptimPlan``: the lists checked once; its ``sgd``/``adam`` methods then
    step without checking the arrays again (see ember.optim.Optimizer)."""
    return _cuda.OptimPlan(list(params), list(grads), [list(s) for s in states], _stream())


def plan_sgd_step(plan, lr, momentum, dampening, weight_decay, nesterov, maximize, step,
                  max_grad_norm):
    """``(grad_norm, skipped)`` of one SGD step through ``plan`` (synchronises once)."""
    return plan.sgd(lr, momentum, dampening, weight_decay, nesterov, maximize, step,
                    max_grad_norm, None, None, False, _stream(), _alloc)


def plan_adam_step(plan, lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled_weight_decay,
                   maximize, step, max_grad_norm):
    """``(grad_norm, skipped)`` of one Adam step through ``plan`` (synchronises once)."""
    return plan.adam(lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled_weight_decay,
                     maximize, step, max_grad_norm, None, None, False, _stream(), _alloc)
