"""Layers with explicit forward and backward passes, on ember's fused kernels.

There is no autograd tape: each layer's ``forward`` keeps what its ``backward`` needs (in training
mode) and ``backward(grad_out)`` returns the gradient wrt the layer's input, storing parameter
gradients in ``param.grad``. :class:`Sequential` runs each ``Linear`` followed by an activation as
one fused GEMM (bias and activation applied in the GEMM's epilogue) and its backward as one fused
kernel call.

Parameter names and shapes follow PyTorch's ``nn.Sequential`` (``"0.weight"`` is (out, in)), so
``state_dict()`` loads into the equivalent PyTorch model and back.

Example:
    >>> import numpy as np
    >>> from ember.nn import MLP
    >>> model = MLP([64, 256, 256, 10], activation="relu", seed=0)
    >>> logits = model.forward(np.zeros((32, 64), np.float32))
    >>> logits.shape
    (32, 10)
"""
from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ember import _validate, ops
from ember.backend import array_module, is_cuda_array, resolve_device

__all__ = [
    "Parameter", "Module", "Linear", "Activation", "ReLU", "LeakyReLU", "GELU", "Tanh", "Sigmoid",
    "SiLU", "Identity", "Dropout", "Sequential", "MLP", "FusedPlan", "from_config",
    "register_module", "registered_modules", "mark_zero", "materialize_zeros", "check_trainable",
    "written_every_step",
]

# The CPU kernels, called directly by the layers (see ember.ops.kernels): one Python call less
# per kernel on the training path.
_CPU = ops.cpu_kernels


def _state_array(name: str, arr, like):
    """``arr`` (a state-dict entry of the right shape) as a float32 array on ``like``'s device,
    or a TypeError/ValueError naming ``name``. Nothing is written: see Module.load_state_dict."""
    xp = array_module(like)
    if xp is not np and is_cuda_array(arr):
        src = xp.asarray(arr)  # stays on the device
    else:
        try:
            if is_cuda_array(arr) and hasattr(arr, "get"):  # cupy
                arr = arr.get()
            elif hasattr(arr, "detach"):  # torch tensor
                arr = arr.detach().cpu().numpy()
            src = np.asarray(arr)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"load_state_dict: {name} must be an array of numbers, got "
                            f"{type(arr).__name__} ({exc}); nothing was loaded") from None
    kind = src.dtype.kind
    if kind not in "biufO":
        raise TypeError(f"load_state_dict: {name} must hold real numbers, got dtype {src.dtype}; "
                        "nothing was loaded")
    sxp = np if isinstance(src, np.ndarray) else xp  # checked where it is, then moved
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # too large: inf, reported below
            src = src.astype(np.float32, copy=False)
    except (TypeError, ValueError):
        raise TypeError(f"load_state_dict: {name} must hold real numbers, got dtype {src.dtype} "
                        "with values that are not numbers; nothing was loaded") from None
    if not bool(sxp.all(sxp.isfinite(src))):
        raise ValueError(f"load_state_dict: {name} holds NaN or Inf (as float32); nothing was "
                         "loaded")
    return src if xp is sxp else xp.asarray(src)


class Parameter:
    """A trainable array and its gradient buffer.

    Gradients accumulate, as in PyTorch: each ``backward`` adds into ``grad`` until
    ``zero_grad()`` (of the module or the optimizer) clears it. Clearing is free: it marks the
    gradient as zero, the next backward writes it instead of adding to it, and reading ``grad``
    before then gives zeros.

    Attributes:
        data: the values (float32, C-contiguous; NumPy on the CPU, CuPy on the GPU).
        grad: the gradient summed over the backward passes since the last ``zero_grad`` (same
            shape), or None before the first.
        requires_grad: False freezes the parameter: optimizers leave it unchanged.
    """

    __slots__ = ("_data", "_grad", "_requires_grad", "_zero")
    #: Bumped whenever any Parameter's data, grad or requires_grad is reassigned, so that an
    #: optimizer can keep its list of tensors between steps and rebuild it only after a change.
    version = 0
    #: Bumped by every zero_grad: an optimizer step that sees it changed zero-fills the
    #: gradients cleared since (and not written by a backward pass), so it never reads stale ones.
    zero_marks = 0
    #: Bumped by every backward pass that adds to gradients (rather than writing cleared or
    #: new ones): an optimizer step that sees it changed, with no zero_grad since its previous
    #: step, steps on gradients carried over from that step (see Optimizer.step).
    adds = 0

    def __init__(self, data, requires_grad: bool = True):
        self._data = data
        self._grad = None
        self._requires_grad = bool(requires_grad)
        #: the gradient is logically zero (zero_grad): the next write overwrites it
        self._zero = False
        Parameter.version += 1

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
        Parameter.version += 1

    @property
    def grad(self):
        g = self._grad
        if self._zero and g is not None:  # cleared by zero_grad and not written since
            g[...] = 0
            self._zero = False
        return g

    @grad.setter
    def grad(self, value):
        self._grad = value
        self._zero = False
        Parameter.version += 1

    def add_grad(self, g) -> None:
        """Add ``g`` into :attr:`grad` (creating it, or writing it when ``zero_grad`` cleared
        it): what a custom module's ``backward`` calls for the parameters it owns."""
        if self._grad is None:
            xp = array_module(self._data)
            self.grad = xp.array(g, dtype=np.float32, copy=True).reshape(self._data.shape)
        elif self._zero:
            self._grad[...] = g
            self._zero = False
        else:
            Parameter.adds += 1
            self._grad += g

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool):
        self._requires_grad = bool(value)
        Parameter.version += 1

    @property
    def shape(self) -> tuple:
        return tuple(self._data.shape)

    @property
    def size(self) -> int:
        return int(self._data.size)

    def __setstate__(self, state):
        # (a Parameter pickled by an ember without the _zero slot gets its default)
        self._zero = False
        for part in (state if isinstance(state, tuple) else (state,)):
            for k, v in (part or {}).items():
                setattr(self, k, v)

    def __repr__(self) -> str:
        frozen = "" if self._requires_grad else ", frozen"
        return f"Parameter(shape={self.shape}{frozen})"


def mark_zero(params) -> None:
    """zero_grad for ``params`` (a list of Parameters): mark their gradients cleared, so the
    next backward writes them (see :class:`Parameter`)."""
    for p in params:
        if p._grad is not None:
            p._zero = True
    Parameter.zero_marks += 1


def materialize_zeros(params) -> None:
    """Zero-fill the gradients of ``params`` (an iterable of Parameters) that zero_grad cleared
    and no backward wrote since: what a kernel reading the gradient arrays directly (an
    optimizer's plan) needs first."""
    for p in params:
        if p._zero:
            if p._grad is not None:
                p._grad[...] = 0
            p._zero = False


def written_every_step(params) -> None:
    """Tell ``params`` that every training step writes their gradients whole (a plain Linear
    stack told to write, see :meth:`Sequential.set_fit_settings`): a zero_grad mark on them is
    moot, and is dropped."""
    for p in params:
        p._zero = False


class Module:
    """Base class: ``forward``, ``backward``, parameters, modes, state dicts, devices.

    A custom module is written as in PyTorch, plus a ``backward`` (ember has no autograd):

    - Submodules and :class:`Parameter` objects held in attributes are registered by the
      attribute (in the order they were set), as are lists or tuples of modules (``blocks.0``,
      ``blocks.1``...): ``named_parameters()``, ``children()``, ``train()``/``eval()``,
      ``zero_grad()``, ``to(device)``, ``state_dict()``/``load_state_dict()`` reach them, with
      PyTorch's dotted names (``"fc1.weight"``), so the state dict loads into the equivalent
      ``torch.nn.Module``. A module reached twice (shared weights) counts once.
    - ``forward(x)`` keeps what ``backward`` needs (in training mode); ``backward(grad_out)``
      returns the gradient wrt ``x`` and adds the parameters' gradients: a submodule's
      ``backward`` does that for its own, a Parameter the module owns directly takes
      ``param.add_grad(g)``. :class:`ember.Trainer` refuses a model without ``backward`` before
      its first step.
    - ``config()`` (needed only for checkpoints and :func:`ember.load_model`) returns JSON data
      with a ``"type"`` key; register the class with :func:`register_module` and
      :func:`from_config` rebuilds it: through ``cls.from_config(config)`` when the class has
      that classmethod, else ``cls(**kwargs)`` with the config's other keys.
    """

    training: bool = True

    def __init__(self):  # nothing to set up; subclasses may call it, as in PyTorch
        pass

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined (a custom "
                                  "ember.nn.Module implements forward(x))")

    def backward(self, grad_out):
        raise NotImplementedError(
            f"{type(self).__name__}.backward is not defined: ember has no autograd, so a custom "
            "ember.nn.Module implements backward(grad_out), returning the gradient wrt its "
            "input (see ember.nn.Module)")

    def __call__(self, x):
        return self.forward(x)

    # -- submodules ------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """``(attribute name, module)`` of the direct submodules, in the order they were set;
        a list or tuple of modules gives ``name.0``, ``name.1``, ..."""
        for name, v in getattr(self, "__dict__", {}).items():
            if isinstance(v, Module):
                yield name, v
            elif isinstance(v, (list, tuple)) and v and all(isinstance(m, Module) for m in v):
                for i, m in enumerate(v):
                    yield f"{name}.{i}", m

    def children(self) -> list["Module"]:
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module (name ``prefix``, ``""`` at the top) and every submodule below it, with
        dotted names (``"body.0"``); each module once."""
        seen: set = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> list["Module"]:
        return [m for _, m in self.named_modules()]

    # -- parameters ------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(name, Parameter)`` pairs with PyTorch's names (``"0.weight"``, ``"fc1.bias"``):
        the Parameters held in this module's attributes, then its submodules' (each Parameter
        once)."""
        seen: set = set()
        for name, v in list(getattr(self, "__dict__", {}).items()):
            if isinstance(v, Parameter) and id(v) not in seen:
                seen.add(id(v))
                yield prefix + name, v
        for name, child in list(self.named_children()):
            for pname, p in child.named_parameters(f"{prefix}{name}."):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield pname, p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters (only those not frozen when ``trainable_only``)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear the gradients: the next backward writes them instead of adding to them.

        Costs nothing per element (the gradients are marked, not filled: reading ``grad``
        before the next backward gives zeros). ``set_to_none=True`` drops them instead, as in
        PyTorch; the next backward then allocates new ones (and an optimizer rebuilds its plan).
        """
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p._grad is not None:
                p._zero = True
        Parameter.zero_marks += 1

    def freeze(self) -> "Module":
        """Freeze every parameter of this module (fine-tuning); returns self."""
        for p in self.parameters():
            p.requires_grad = False
        return self

    def unfreeze(self) -> "Module":
        for p in self.parameters():
            p.requires_grad = True
        return self

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode: dropout active, activations kept for backward. Returns self."""
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Inference mode: dropout off, nothing kept for backward. Returns self."""
        return self.train(False)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Any]":
        """Parameter arrays by PyTorch name (the arrays themselves, not copies)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True) -> dict:
        """Copy arrays from ``state`` into this module's parameters, matched by name.

        Every array is checked (and converted to float32) before any is copied, so an error
        leaves the module unchanged.

        Args:
            state: name -> array (NumPy, CuPy, or anything ``numpy.asarray`` accepts, such as a
                PyTorch CPU tensor).
            strict: when True, any missing, unexpected or mis-shaped name raises and nothing is
                loaded; when False those are skipped and reported.

        Returns:
            ``{"missing": [...], "unexpected": [...], "mismatched": [(name, want, got), ...]}``.

        Raises:
            TypeError: ``state`` is not a mapping, or an array does not hold real numbers.
            ValueError: (strict) listing every mismatch; or an array holds NaN or Inf.
        """
        if not isinstance(state, Mapping):
            raise TypeError("load_state_dict: state_dict must be a mapping of name -> array, "
                            f"got {type(state).__name__}")
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = []
        matched = {}
        for name, p in own.items():
            if name not in state:
                continue
            arr = state[name]
            shape = getattr(arr, "shape", None)
            if shape is None:  # a list or a scalar
                try:
                    arr = np.asarray(arr)
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"load_state_dict: {name} must be an array of numbers, got "
                                    f"{type(arr).__name__} ({exc}); nothing was loaded") from None
                shape = arr.shape
            shape = tuple(shape)
            if shape != p.shape:
                mismatched.append((name, p.shape, shape))
                continue
            matched[name] = arr
        if strict and (missing or unexpected or mismatched):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            if mismatched:
                parts.append("shape mismatches " + ", ".join(
                    f"{n}: model {w} vs state {g}" for n, w, g in mismatched))
            raise ValueError("load_state_dict: " + "; ".join(parts) +
                             " (pass strict=False to load the matching ones)")
        # Convert and check all of them first: a bad one raises before anything is overwritten.
        converted = {name: _state_array(name, arr, own[name].data)
                     for name, arr in matched.items()}
        for name, src in converted.items():
            own[name].data[...] = src
        return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}

    def to(self, device: str) -> "Module":
        """Move parameters to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy). Returns self."""
        device = resolve_device(device)
        for p in self.parameters():
            if device == "cuda":
                import cupy
                p.data = cupy.ascontiguousarray(cupy.asarray(p.data, dtype=cupy.float32))
                p.grad = None if p.grad is None else cupy.asarray(p.grad)
            else:
                p.data = p.data.get() if hasattr(p.data, "get") else p.data
                p.grad = None if p.grad is None or not hasattr(p.grad, "get") else p.grad.get()
        self.clear_buffers()
        return self

    @property
    def device(self) -> str:
        params = self.parameters()
        if params and is_cuda_array(params[0].data):
            return "cuda"
        return "cpu"

    def clear_buffers(self) -> None:
        """Drop training scratch (saved inputs, activations, reused buffers): not the model's
        state, so a copy or a pickle of a trained model does not carry it."""
        for child in self.children():
            child.clear_buffers()

    #: :func:`ember.save_model`, which ember.checkpoint (a layer above this one) sets here.
    saver = None

    def save(self, path):
        """Save the architecture and weights as a directory that :func:`ember.load_model`
        reads back (see :func:`ember.save_model`); returns its path."""
        return self.saver(path)

    # -- description -------------------------------------------------------------------------
    def config(self) -> dict:
        """The architecture as plain JSON data with a ``"type"`` key (see :func:`from_config`
        and :func:`register_module`)."""
        raise NotImplementedError(
            f"{type(self).__name__}.config() is not defined: saving a custom module in a "
            "checkpoint needs config() (JSON data with a 'type' key) and the class registered "
            "with ember.nn.register_module (see ember.nn.Module)")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = list(self.named_children()) if type(self).extra_repr is Module.extra_repr else []
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        body = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in kids)
        return f"{type(self).__name__}({body}\n)"


class Linear(Module):
    """``y = x @ weight.T + bias`` with ``weight`` of shape (out_features, in_features).

    Args:
        in_features, out_features: sizes.
        bias: learn an additive bias.
        init: ``"he"`` (Kaiming uniform, for ReLU-family activations), ``"xavier"`` (Glorot
            uniform, for tanh/sigmoid), or ``"torch"`` (PyTorch's default Linear init).
        gain: scale of the init; default from the activation the init is meant for
            (sqrt(2) for "he", 1 for "xavier").
        seed: seeds the init (a ``numpy.random.Generator`` may be passed as ``rng``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he", gain: Optional[float] = None, seed: int = 0,
                 rng: Optional[np.random.Generator] = None):
        self.in_features = _validate.positive_int("Linear", "in_features", in_features)
        self.out_features = _validate.positive_int("Linear", "out_features", out_features)
        if gain is not None:  # (a float: a NumPy scalar would round the bound)
            gain = _validate.positive_real("Linear", "gain", gain)
        if rng is None:
            rng = np.random.default_rng(_validate.seed("Linear", seed))
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"Linear: rng must be a numpy.random.Generator, got "
                            f"{type(rng).__name__}")
        _validate.one_of("Linear", "init", init, ("he", "xavier", "torch"))
        fan_in, fan_out = self.in_features, self.out_features
        if init == "he":
            bound = (math.sqrt(2.0) if gain is None else gain) * math.sqrt(3.0 / fan_in)
        elif init == "xavier":
            bound = (1.0 if gain is None else gain) * math.sqrt(6.0 / (fan_in + fan_out))
        else:  # "torch"
            bound = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
        self.weight = Parameter(np.ascontiguousarray(w))
        if bias:
            b = (rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), size=fan_out)
                 if init == "torch" else np.zeros(fan_out))
            self.bias: Optional[Parameter] = Parameter(b.astype(np.float32))
        else:
            self.bias = None
        self.activation = "identity"  # set by Sequential when it fuses an activation
        # Set by Sequential: the output only feeds the next ember layer (which never modifies its
        # input), so backward may read act' off it (see _act_from_output).
        self._output_internal = False
        self.negative_slope = 0.01
        self._label = "Linear"  # how errors name the layer; Sequential adds its index
        self._x = None
        self._z = None

    def named_parameters(self, prefix: str = ""):
        yield prefix + "weight", self.weight
        if self.bias is not None:
            yield prefix + "bias", self.bias

    def named_children(self):  # a leaf (no attribute scan: train/eval walk the tree per fit)
        return iter(())

    def _act_from_output(self) -> bool:
        """Whether act'(z) can be read off the output y = act(z): relu, and leaky_relu with a
        slope >= 0, have y > 0 exactly when z > 0, so backward evaluates act' at y (the same
        bits) and the forward pass does not store the pre-activation (one write of the batch's
        outputs fewer: 6 of 26 us for a 200 x 64 -> 100 layer on 2 cores)."""
        return self._output_internal and (
            self.activation == "relu" or
            (self.activation == "leaky_relu" and self.negative_slope >= 0.0))

    # forward and backward run once per layer per training step: they read the Parameters'
    # slots directly (no property calls).
    # Bad input is diagnosed only once a kernel has refused it (a try costs nothing until it
    # raises), so the checks add no work to a training step.
    def forward(self, x, out=None, preact_out=None):
        bias = self.bias
        b = None if bias is None else bias._data
        w = self.weight._data
        k = _CPU if type(x) is np.ndarray else ops.kernels(x, "Linear.forward", "x")
        act, slope = self.activation, self.negative_slope
        try:
            if self.training:
                self._x = x
                if self._act_from_output():
                    # The output itself stands in for the pre-activation in backward; the next
                    # layer reads it and must not modify it in place (no ember module does).
                    y = self._z = k.gemm(x, w, b, out, None, False, True, act, slope, 1.0, 0.0,
                                         False, "fp32")
                    return y
                if act != "identity":
                    y, self._z = k.gemm(x, w, b, out, preact_out, False, True, act, slope, 1.0,
                                        0.0, True, "fp32")
                    return y
                self._z = None
            return k.gemm(x, w, b, out, None, False, True, act, slope, 1.0, 0.0, False, "fp32")
        except (TypeError, ValueError):
            err = self._array_error(x, "x", None, self.in_features)
            if err is None:
                raise
            raise err from None

    def _array_error(self, a, name, rows, cols):
        """The exception to raise for a layer input ``a`` that is not a float32 (rows, cols)
        array (``rows`` None: any), naming this layer; None when ``a`` looks right (the kernel's
        own error then stands)."""
        where = getattr(self, "_label", "Linear")
        shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
        if shape is None or dtype is None:
            return None
        if len(shape) != 2:
            return ValueError(f"{where}: {name} must be 2-D (batch, {cols}), got shape "
                              f"{tuple(shape)}")
        if shape[1] != cols:
            what = "features" if name == "x" else "columns"
            return ValueError(f"{where}: {name} has {shape[1]} {what}, expected {cols}")
        if rows is not None and shape[0] != rows:
            return ValueError(f"{where}: {name} has {shape[0]} rows but the forward pass had "
                              f"{rows}")
        if dtype != np.float32:
            return TypeError(f"{where}: {name} must be float32, got {dtype}")
        return None

    def backward(self, grad_out, need_grad_input: bool = True, grad_input=None, workspace=None,
                 accumulate: Optional[bool] = None):
        """The gradient wrt the input (None unless ``need_grad_input``); the weight and bias
        gradients are added into ``grad`` (PyTorch's rule: they accumulate until ``zero_grad``;
        a cleared or missing gradient is written, which costs nothing extra: the kernel's GEMM
        takes beta 0 or 1). ``accumulate`` True/False forces adding/writing (the Trainer writes
        the first micro-batch of each step)."""
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called before a forward pass in training mode")
        w, bias = self.weight, self.bias
        if accumulate is None or w._grad is None or w._zero or \
                (bias is not None and (bias._grad is None or bias._zero)):
            accumulate = self._accumulate(accumulate)
        k = (_CPU if type(grad_out) is np.ndarray
             else ops.kernels(grad_out, "Linear.backward", "grad_out"))
        try:
            gi, _, _ = k.linear_backward(
                grad_out, x, w._data, self._z, self.activation, self.negative_slope,
                need_grad_input, bias is not None, accumulate, grad_input, w._grad,
                None if bias is None else bias._grad, workspace, "fp32")
        except (TypeError, ValueError):
            err = self._array_error(grad_out, "grad_out", x.shape[0], self.out_features)
            if err is None:
                raise
            raise err from None
        return gi

    def _accumulate(self, requested: Optional[bool]) -> bool:
        """Whether the kernel adds into the gradients (else it writes them): creates missing
        ones; with ``requested`` None, adds unless every gradient is cleared (zero_grad)."""
        params = (self.weight,) if self.bias is None else (self.weight, self.bias)
        for p in params:
            if p._grad is None:
                p.grad = array_module(p._data).zeros_like(p._data)
                p._zero = True  # new: zeros, written rather than added to
        if requested is False or (requested is None and all(p._zero for p in params)):
            for p in params:
                p._zero = False
            return False
        materialize_zeros(params)  # a cleared one next to one with a gradient: add into 0
        if requested is None:
            Parameter.adds += 1
        return True

    def config(self) -> dict:
        return {"type": "Linear", "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def clear_buffers(self) -> None:
        self._x = self._z = None


class Activation(Module):
    """Elementwise activation layer (one of :data:`ember.ops.ACTIVATIONS`)."""

    name = "identity"

    def __init__(self):
        self.negative_slope = 0.01
        self._z = None

    def forward(self, x):
        if self.training:
            self._z = x
        return ops.activation_forward(x, self.name, negative_slope=self.negative_slope)

    def backward(self, grad_out):
        if self._z is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward in "
                               "training mode")
        return ops.activation_backward(grad_out, self._z, self.name,
                                       negative_slope=self.negative_slope)

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def named_children(self):  # a leaf
        return iter(())

    def clear_buffers(self) -> None:
        self._z = None


class Identity(Activation):
    name = "identity"

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


class ReLU(Activation):
    name = "relu"


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _validate.finite_real("LeakyReLU", "negative_slope",
                                                    negative_slope)

    def config(self) -> dict:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GELU(Activation):
    """GELU; ``approximate="none"`` (erf) or ``"tanh"``, as in PyTorch."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        _validate.one_of("GELU", "approximate", approximate, ("none", "tanh"))
        self.approximate = approximate
        self.name = "gelu" if approximate == "none" else "gelu_tanh"

    def config(self) -> dict:
        return {"type": "GELU", "approximate": self.approximate}


class Tanh(Activation):
    name = "tanh"


class Sigmoid(Activation):
    name = "sigmoid"


class SiLU(Activation):
    name = "silu"


#: The layer of each activation name (:data:`ember.ops.ACTIVATIONS`, in its order).
_ACTIVATION_CLASSES = {name: {"identity": Identity, "relu": ReLU, "leaky_relu": LeakyReLU,
                              "gelu": GELU, "gelu_tanh": lambda: GELU("tanh"), "tanh": Tanh,
                              "sigmoid": Sigmoid, "silu": SiLU}[name]
                       for name in ops.ACTIVATIONS}


class Dropout(Module):
    """Zero each input with probability ``p`` in training mode, scaling the rest by 1/(1-p).

    Masks come from a counter-based generator: (seed, counter) fixes the mask, the counter
    advances by the number of elements each training forward, and both are saved in checkpoints,
    so a resumed run draws the same masks as an uninterrupted one.
    """

    #: Data-parallel training (a fit's setting): ``(first row, rows of the global batch)`` of
    #: this process's slice, so that its mask is that slice of the mask one process would draw
    #: for the whole batch, and the counter advances as one process's does. None: alone.
    rows: Optional[tuple] = None

    def __init__(self, p: float = 0.5, seed: int = 0):
        if not (_validate.is_real(p) and 0.0 <= p < 1.0):
            _validate.fail("Dropout", "p", "in [0, 1)", p)
        self.p = float(p)
        self.seed = _validate.seed("Dropout", seed, limit=2 ** 64)
        self.counter = 0
        self._offset = None
        #: the elements per row of the last training input (None before the first)
        self.per_row: Optional[int] = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._offset = None
            return x
        rows = x.shape[0] if x.ndim else 1
        self.per_row = per_row = x.size // rows if rows else 0
        first, total = self.rows if self.rows is not None else (0, rows)
        self._offset = self.counter + first * per_row
        self.advance(total)
        return ops.dropout_forward(x, self.p, self.seed, self._offset)

    def advance(self, rows: int) -> None:
        """Move the counter past a training forward of ``rows`` rows (of :attr:`per_row`
        elements): by a multiple of 4, since each Philox call yields 4 numbers."""
        self.counter += (rows * self.per_row + 3) // 4 * 4

    def backward(self, grad_out):
        if self._offset is None:
            return grad_out
        return ops.dropout_backward(grad_out, self.p, self.seed, self._offset)

    def config(self) -> dict:
        return {"type": "Dropout", "p": self.p, "seed": self.seed}

    def named_children(self):  # a leaf
        return iter(())

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def clear_buffers(self) -> None:
        self._offset = None

    def __setstate__(self, state):
        # (a Dropout pickled by an ember without per_row gets its default)
        self.per_row = None
        self.__dict__.update(state)


def _create_grads(layers) -> None:
    """Give the Linear ``layers`` whose weight has no gradient zero gradients (weight and bias)."""
    for lin in layers:
        if lin.weight._grad is None:
            lin.weight.grad = np.zeros_like(lin.weight._data)
            if lin.bias is not None:
                lin.bias.grad = np.zeros_like(lin.bias._data)


class FusedPlan:
    """A Linear stack's whole training step on the CPU (see :meth:`Sequential.fused_plan`).

    ``step(x, y)`` trains on one batch (``x`` of the plan's batch size; ``y`` int64 labels for
    cross-entropy, float32 targets for MSE, 1-D matching a single output): forward, loss and
    backward, the gradients written or added as the layer-by-layer path would. Returns
    ``(loss, correct)`` (``correct`` is 0 unless counted). The layers' saved inputs and
    pre-activations, and the loss's gradient, are left as the layer-by-layer path leaves them.
    Nothing is checked or cached here: the caller rebuilds the plan when
    :meth:`Sequential.step_key` changes."""

    __slots__ = ("plan", "layers", "saved", "grad", "loss", "mse")

    def __init__(self, plan, layers, saved, grad, loss, mse: bool):
        self.plan, self.layers, self.saved, self.grad = plan, layers, saved, grad
        self.loss, self.mse = loss, mse

    def step(self, x, y, layer_done=None):
        """``layer_done(layer)``, when given, gets each Linear layer as soon as its backward has
        written its gradients (the last layer first)."""
        if self.mse and y.ndim == 1:
            y = y.reshape(-1, 1)  # as MSE.forward matches a 1-D target to an (n, 1) output
        layers = self.layers
        value, correct = self.plan.step(
            x, y, None if layer_done is None else (lambda i: layer_done(layers[i])))
        layers, saved = self.layers, self.saved
        layers[0]._x = x
        for lin, (inp, z) in zip(layers[1:], saved[1:]):
            lin._x = inp
        for lin, (_, z) in zip(layers, saved):
            lin._z = z
        self.loss.set_grad(self.grad)
        return value, correct


class Sequential(Module):
    """Layers applied in order; a ``Linear`` directly followed by an activation runs fused.

    Parameter names are PyTorch's: the index of the layer, then ``weight`` / ``bias``.
    ``forward`` returns a new array each call (as does ``backward(..., need_input_grad=True)``):
    a result stays valid after the next call. The activations in between live in buffers reused
    from step to step. :class:`ember.Trainer` also reuses the output's buffers (it calls
    ``forward`` once a step and is done with the result before the next).
    """

    #: Set by the Trainer during a fit: the output (and input gradient) go to reused buffers
    #: too, each valid until the next call.
    _reuse_buffers = False
    #: Set by the Trainer during a fit: False writes the Linear layers' gradients, True adds to
    #: them, whatever zero_grad did (None: PyTorch's rule, see Linear.backward).
    _accumulate_override: Optional[bool] = None
    #: Set by the Trainer on the model it fits, for the fit: its input gradient is never needed.
    _fit_model = False
    #: a fit's callback, given each Linear layer whose backward just finished (data-parallel
    #: training starts that layer's gradient reduction then); None: nothing is called
    _grad_ready = None

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be an ember.nn.Module, got "
                                f"{type(layer).__name__}")
        err = self._width_error(layers)
        if err:
            raise ValueError("Sequential: " + err)
        self.layers = list(layers)
        self._plan = self._build_plan()
        self._buffers: dict = {}

    @staticmethod
    def _width_error(layers) -> Optional[str]:
        """Why consecutive Linear layers (with only activations and dropout between them) do not
        fit together, or None. Other modules may change the width: a Linear after one is not
        checked."""
        width = src = None
        for i, layer in enumerate(layers):
            if isinstance(layer, Linear):
                if width is not None and layer.in_features != width:
                    return (f"layer {i} (Linear) expects {layer.in_features} inputs but layer "
                            f"{src} gives {width}")
                width, src = layer.out_features, i
            elif not isinstance(layer, (Activation, Dropout)):
                width = None
        return None

    def _build_plan(self):
        """Steps ``(layer, fused_activation_layer or None)``; fused activations are skipped."""
        plan = []
        layers = self.layers
        for i, layer in enumerate(layers):
            if isinstance(layer, Linear):
                layer._label = f"Linear (layer {i})"

        def ember_op(layer):  # ember's own layer that returns a new array (not its input)
            return (type(layer).__module__ == __name__ and isinstance(layer, (Linear, Activation))
                    and not isinstance(layer, Identity))

        def passes_on(layer):  # may hand its input (or gradient) on unchanged
            return type(layer) is Dropout or type(layer) is Identity

        def reaches_out(j, step):
            """Whether an array handed to layer j (walking by step) may come out of the model:
            through layers that may pass it on, or any module not ember's own."""
            while 0 <= j < len(layers) and passes_on(layers[j]):
                j += step
            return not (0 <= j < len(layers) and ember_op(layers[j]))

        escapes = []
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Linear) and isinstance(nxt, Activation) and \
                    not isinstance(nxt, Identity):
                layer.activation = nxt.name
                layer.negative_slope = nxt.negative_slope
                # Its output may stand in for the pre-activation only when the next layer is one
                # of ember's own (they never modify their input). Before a user's module, or as
                # the model's output (which the caller may change in place), z is kept. A
                # Dropout (p = 0, eval) or an Identity may hand it on unchanged: look past them.
                layer._output_internal = not reaches_out(i + 2, 1)
                plan.append((layer, nxt))
                escapes.append((reaches_out(i + 2, 1), reaches_out(i - 1, -1)))
                i += 2
            else:
                if isinstance(layer, Linear):
                    layer.activation = "identity"
                    layer._output_internal = False
                plan.append((layer, None))
                escapes.append((reaches_out(i + 1, 1), reaches_out(i - 1, -1)))
                i += 1
        # per plan step: (its output, its input gradient) may be what forward/backward return
        self._escapes = escapes
        return plan

    def children(self) -> list[Module]:
        return list(self.layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def named_parameters(self, prefix: str = ""):
        seen: set = set()  # a layer used twice (tied weights) counts once, as in PyTorch
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters(f"{prefix}{i}."):
                if id(p) not in seen:
                    seen.add(id(p))
                    yield name, p

    def _buf(self, key, shape, like):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = array_module(like).empty(shape, dtype=np.float32)
            self._buffers[key] = buf
        return buf

    def forward(self, x):
        training = self.training
        batch = x.shape[0] if getattr(x, "ndim", 0) == 2 else None
        reuse = self._reuse_buffers
        escapes = self._escapes
        for idx, (layer, _) in enumerate(self._plan):
            if training and batch is not None and isinstance(layer, Linear):
                shape = (batch, layer.out_features)
                # the output goes to a new array when it may be what the caller gets
                out = self._buf(("y", idx), shape, x) if reuse or not escapes[idx][0] else None
                pre = (self._buf(("z", idx), shape, x)
                       if layer.activation != "identity" and not layer._act_from_output()
                       else None)
                x = layer.forward(x, out=out, preact_out=pre)
            else:
                x = layer.forward(x)
        return x

    def backward(self, grad_out, need_input_grad: Optional[bool] = None):
        """Backpropagate ``grad_out`` through every layer, storing parameter gradients.

        Returns the gradient wrt the model's input, as every layer's ``backward`` does (so a
        Sequential inside a custom module chains like a layer). ``need_input_grad=False``
        skips it when the first layer is a Linear (None is returned): the model that
        :class:`ember.Trainer` fits does that, since training never needs it. The default
        (None) is False for that model during a fit, True otherwise.
        """
        if need_input_grad is None:
            need_input_grad = not self._fit_model
        g = grad_out
        reuse, acc = self._reuse_buffers, self._accumulate_override
        escapes = self._escapes
        for idx in range(len(self._plan) - 1, -1, -1):
            layer, _ = self._plan[idx]
            if isinstance(layer, Linear):
                need_gi = idx > 0 or need_input_grad
                x = layer._x
                gi = (self._buf(("gx", idx), x.shape, x)
                      if need_gi and x is not None and (reuse or not escapes[idx][1]) else None)
                ws = (self._buf(("ws", idx), g.shape, g)
                      if layer.activation != "identity" else None)
                g = layer.backward(g, need_grad_input=need_gi, grad_input=gi, workspace=ws,
                                   accumulate=acc)
                if self._grad_ready is not None:
                    self._grad_ready(layer)
            else:
                g = layer.backward(g)
        return g

    def __getstate__(self):
        # Scratch buffers, and the fused-step plans that point into them, are not state: a copy
        # or a pickle (copy.deepcopy, joblib) gets none and makes its own on demand.
        state = self.__dict__.copy()
        state["_buffers"] = {}
        state.pop("_reuse_buffers", None)  # a fit's settings, not the model's
        state.pop("_accumulate_override", None)
        state.pop("_fit_model", None)
        state.pop("_grad_ready", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_escapes" not in state:  # pickled by an ember before it kept them
            self._plan = self._build_plan()

    def frozen_layers(self) -> Optional[list]:
        """The eval-mode forward as ``[(linear, activation_name, negative_slope), ...]``: each
        :class:`Linear` with the activation that follows it (past any Dropout or Identity, which
        eval mode skips), or None when the model holds anything else (another module, two
        activations in a row, an activation first) or has its own ``forward``. What
        :class:`ember.inference.Predictor` compiles into one call."""
        if type(self).forward is not Sequential.forward:
            return None
        out: list = []
        open_act = False  # the last Linear may still take an activation
        for layer in self.layers:
            cls = type(layer)
            if cls is Linear:
                out.append([layer, "identity", 0.01])
                open_act = True
            elif cls is Dropout or cls is Identity:
                continue
            elif (isinstance(layer, Activation) and cls.__module__ == __name__
                  and cls.forward is Activation.forward and open_act):
                out[-1][1], out[-1][2] = layer.name, float(layer.negative_slope)
                open_act = False
            else:
                return None
        return [tuple(e) for e in out] or None

    # -- the training fast path -------------------------------------------------------------
    def is_linear_stack(self) -> bool:
        """Whether this model is a plain stack of :class:`Linear` layers (activations fused into
        them; no Dropout or other modules) run by Sequential's own forward and backward: what the
        whole-step fast paths (:meth:`fused_plan` on the CPU, CUDA graphs on the GPU) replay."""
        cls = type(self)
        return (cls.forward is Sequential.forward and cls.backward is Sequential.backward and
                all(type(layer) is Linear for layer, _ in self._plan))

    def fused_ok(self, loss) -> bool:
        """Whether :meth:`fused_plan` can stand in for forward + loss + backward: a
        :meth:`is_linear_stack` model with NumPy parameters, and a loss whose class (itself, not
        a base class) names a fused kernel (``fused_loss``: :class:`ember.losses.CrossEntropy`,
        its class weights on the host, and :class:`ember.losses.MSE`)."""
        kind = vars(type(loss)).get("fused_loss")
        if kind == "cross_entropy":
            loss_ok = loss.weight is None or type(loss.weight) is np.ndarray
        else:
            loss_ok = kind == "mse"
        return (loss_ok and self.is_linear_stack() and
                all(type(p._data) is np.ndarray for _, p in self.named_parameters()))

    def step_key(self, batch: int, loss, count_correct: bool) -> tuple:
        """What a whole-step plan for ``batch`` rows bakes in: while this key is unchanged, a
        plan built before (:meth:`fused_plan`, or a captured CUDA graph) still applies. It
        changes when any Parameter's data, grad or requires_grad is reassigned, the layers or
        their fused activations change, or the loss (or its weight, smoothing, reduction) does."""
        mse = not hasattr(loss, "label_smoothing")  # ember.losses.MSE
        return (batch, Parameter.version, id(self._plan), id(loss), mse,
                None if mse else (id(loss.weight), loss.label_smoothing), loss.reduction,
                count_correct,
                tuple((lin.activation, lin.negative_slope, lin._output_internal)
                      for lin, _ in self._plan))

    def fused_plan(self, x, loss, count_correct: bool) -> "FusedPlan":
        """The training step of batches shaped like ``x`` as one kernel call
        (:data:`ember.ops.MlpPlan`): forward, loss (softmax cross-entropy or MSE) and backward,
        the same kernel calls in the same order as :meth:`forward`, ``loss.forward`` /
        ``loss.backward`` and :meth:`backward`, so the same bits, without the Python between
        them. Call only when :meth:`fused_ok`.

        Creates the Linear layers' missing gradients first (the plan writes into them), which
        changes :meth:`step_key`: cache the plan under the key taken after this call, and build
        a new one whenever the key differs. The plan's buffers live in this model (they are
        reused by the next plan for the same batch size)."""
        layers = [layer for layer, _ in self._plan]
        _create_grads(layers)
        mse = not hasattr(loss, "label_smoothing")  # ember.losses.MSE
        # Built once per batch size and model/loss change, not per step: the checks here name
        # the layer or the loss argument at fault before MlpPlan's own (internal) checks do.
        err = self._width_error(self.layers)
        if err:
            raise ValueError("Sequential: " + err)
        if not mse:
            loss.check_classes(layers[-1].out_features)
        batch = x.shape[0]
        ws, bs, acts, slopes, ys, zs, gws, gbs, gxs, wss, saved = ([] for _ in range(11))
        for idx, lin in enumerate(layers):
            shape = (batch, lin.out_features)
            y = self._buf(("fused y", idx, batch), shape, x)
            z = None
            if lin.activation != "identity" and not lin._act_from_output():
                z = self._buf(("fused z", idx, batch), shape, x)
            ws.append(lin.weight._data)
            bs.append(None if lin.bias is None else lin.bias._data)
            acts.append(lin.activation)
            slopes.append(lin.negative_slope)
            ys.append(y)
            zs.append(z)
            gws.append(lin.weight._grad)
            gbs.append(None if lin.bias is None else lin.bias._grad)
            gxs.append(None if idx == 0 else
                       self._buf(("fused gx", idx, batch), (batch, lin.in_features), x))
            wss.append(None if lin.activation == "identity" else
                       self._buf(("fused ws", idx, batch), shape, x))
            # what the layer-by-layer path leaves in (_x, _z) after a step
            saved.append((ys[idx - 1] if idx else None,
                          None if lin.activation == "identity" else (z if z is not None else y)))
        grad = self._buf(("fused grad", batch), (batch, layers[-1].out_features), x)
        plan = ops.MlpPlan(batch, layers[0].in_features, ws, bs, acts, slopes, ys, zs, gws, gbs,
                           gxs, wss, grad, None if mse else loss.weight,
                           0.0 if mse else loss.label_smoothing, loss.reduction,
                           count_correct and not mse, "mse" if mse else "cross_entropy")
        return FusedPlan(plan, layers, saved, grad, loss, mse)

    def step_cache(self) -> dict:
        """Where a fit keeps this model's whole-step plans (:meth:`fused_plan`) between steps,
        by batch size: emptied with the buffers they use (eval mode, ``to``)."""
        return self._buffers.setdefault("fused plans", {})

    def set_fit_settings(self, reuse_buffers: bool, accumulate: Optional[bool]) -> None:
        """What :class:`ember.Trainer` tells the model it fits, for the length of the fit: its
        input gradient is never needed; ``reuse_buffers`` sends the output (and input
        gradient) to reused buffers too, each valid until the next call; ``accumulate`` False
        writes the Linear layers' gradients, True adds to them, whatever zero_grad did (None:
        PyTorch's rule, see Linear.backward). :meth:`clear_fit_settings` undoes it."""
        self._fit_model = True
        self._reuse_buffers = bool(reuse_buffers)
        self._accumulate_override = accumulate

    def set_accumulate(self, accumulate: Optional[bool]) -> None:
        """The ``accumulate`` of :meth:`set_fit_settings` alone (a fit's later micro-batches
        add to the gradients its first wrote)."""
        self._accumulate_override = accumulate

    def set_grad_ready(self, callback) -> None:
        """For the length of a fit: call ``callback(layer)`` as soon as each Linear layer's
        backward has written its gradients (None: stop). :meth:`clear_fit_settings` undoes it."""
        self._grad_ready = callback

    def clear_fit_settings(self) -> None:
        """Back to the model's own behaviour after a fit (see :meth:`set_fit_settings`)."""
        for name in ("_reuse_buffers", "_accumulate_override", "_fit_model", "_grad_ready"):
            self.__dict__.pop(name, None)

    def arrays_in_use(self) -> list:
        """Every array a training step of this model reads or writes that the step's kernels do
        not allocate themselves: the model's buffers and each layer's saved input and
        pre-activation (parameters and gradients aside). A replayed step keeps them alive."""
        arrays: list[Any] = [a for a in self._buffers.values() if not isinstance(a, dict)]
        for layer, _ in self._plan:
            arrays += [getattr(layer, "_x", None), getattr(layer, "_z", None)]
        return [a for a in arrays if a is not None]

    def train(self, mode: bool = True) -> "Module":
        super().train(mode)
        if not mode:
            self._buffers.clear()
        return self

    def clear_buffers(self) -> None:
        self._buffers.clear()
        super().clear_buffers()

    def replace(self, index: int, layer: Module) -> "Sequential":
        """Put ``layer`` at ``index`` (e.g. a new output layer for fine-tuning); returns self.

        Build the optimizer (or Trainer) after replacing: it holds the old parameters.
        """
        if not isinstance(layer, Module):
            raise TypeError(f"replace: layer must be an ember.nn.Module, got "
                            f"{type(layer).__name__}")
        n = len(self.layers)
        if not _validate.is_int(index):
            raise TypeError(f"replace: index must be an integer, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"replace: index {index} is out of range for a Sequential of {n} "
                             f"layers (valid: {-n} to {n - 1})")
        self.layers[index] = layer
        for lyr in self.layers:
            if isinstance(lyr, Linear):
                lyr.activation = "identity"
        self._plan = self._build_plan()
        self.clear_buffers()
        layer.train(self.training)
        return self

    def predict(self, x, batch_size: int = 4096):
        """Outputs for ``x`` in eval mode (weights frozen, dropout off), in batches.

        Raises:
            ValueError: ``x`` is empty, or ``batch_size`` is not a positive integer.
            TypeError: ``x`` is not a NumPy or CuPy array.
        """
        batch_size = _validate.positive_int("predict", "batch_size", batch_size)
        shape = getattr(x, "shape", None)
        if shape is None:
            raise TypeError(f"predict: x must be a NumPy or CuPy array, got {type(x).__name__}")
        if len(shape) == 0:
            raise ValueError("predict: x must be an array of samples, got a 0-d array")
        if shape[0] == 0:
            raise ValueError("predict: x is empty (0 samples)")
        if isinstance(x, np.ndarray) and (x.dtype != np.float32 or not x.flags.c_contiguous or
                                          type(x) is not np.ndarray):
            # as Trainer.predict: host data of another float/int type or layout is converted
            if x.dtype.kind not in "biuf":
                raise TypeError(f"predict: x must hold real numbers, got dtype {x.dtype}")
            x = np.ascontiguousarray(x, dtype=np.float32)
        was = self.training
        self.eval()
        try:
            outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            self.train(was)
        xp = array_module(outs[0])
        return outs[0] if len(outs) == 1 else xp.concatenate(outs)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def config(self) -> dict:
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def summary(self, input_features: Optional[int] = None) -> str:
        """A table of layers, output shapes and parameter counts (trainable vs frozen)."""
        rows = [("#", "layer", "output", "params", "trainable")]
        width = input_features
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                width = layer.out_features
            n = sum(p.size for _, p in layer.named_parameters())
            train = sum(p.size for _, p in layer.named_parameters() if p.requires_grad)
            out = f"(batch, {width})" if width is not None else "?"
            rows.append((str(i), repr(layer), out, f"{n:,}", f"{train:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(5)) for r in rows]
        total = self.num_parameters()
        trainable = self.num_parameters(trainable_only=True)
        lines.insert(1, "-" * len(lines[0]))
        lines.append("-" * len(lines[0]))
        lines.append(f"parameters: {total:,} ({trainable:,} trainable, "
                     f"{total - trainable:,} frozen)")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return ", ".join(repr(layer) for layer in self.layers)


class MLP(Sequential):
    """A multilayer perceptron: ``Linear -> act [-> Dropout]`` per hidden layer, then ``Linear``.

    The layer order matches ``torch.nn.Sequential(Linear, Act, [Dropout,] Linear, ...)``, so
    parameter names are the same as in that PyTorch model.

    Args:
        sizes: ``[in, hidden..., out]``, at least two entries.
        activation: hidden activation (one of :data:`ember.ops.ACTIVATIONS`).
        dropout: dropout probability after each hidden activation (0 = none).
        init: ``"auto"`` picks He for ReLU-family activations and Xavier for tanh/sigmoid.
        seed: seeds weights and dropout masks.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 init: str = "auto", seed: int = 0):
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(f"MLP: sizes must be a list of layer sizes, got "
                            f"{type(sizes).__name__}") from None
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes must list at least input and output sizes, got {sizes}")
        if not all(_validate.is_int(v) and v >= 1 for v in sizes):
            raise ValueError(f"MLP: sizes must be positive integers, got {sizes}")
        dropout = _validate.real_in("MLP", "dropout", dropout, 0.0, 1.0)
        seed = _validate.seed("MLP", seed)
        _validate.one_of("MLP", "activation", activation, ops.ACTIVATIONS)
        if init == "auto":
            init = "xavier" if activation in ("tanh", "sigmoid") else "he"
        gain = 5.0 / 3.0 if (activation == "tanh" and init == "xavier") else None
        rng = np.random.default_rng(seed)
        layers: list[Module] = []
        for i in range(len(sizes) - 1):
            last = i == len(sizes) - 2
            # the output layer feeds a loss, not a ReLU: Xavier (gain 1) keeps logits moderate
            layers.append(Linear(sizes[i], sizes[i + 1], init="xavier" if last else init,
                                 gain=None if last else gain, rng=rng))
            if not last:
                layers.append(_ACTIVATION_CLASSES[activation]())
                if dropout > 0:
                    layers.append(Dropout(dropout, seed=(seed * 1000003 + i) % 2 ** 64))
        self.sizes = sizes
        self.activation_name = activation
        super().__init__(*layers)


_BUILTIN_TYPES = ("Sequential", "Linear", "Dropout", "LeakyReLU", "GELU", "Identity", "ReLU",
                  "Tanh", "Sigmoid", "SiLU")
_REGISTRY: dict = {}


def register_module(cls=None, *, name: Optional[str] = None):
    """Register a custom :class:`Module` class so that :func:`from_config` (and so checkpoints,
    :func:`ember.load_model` and resume) can rebuild it; usable as a decorator::

        @ember.nn.register_module
        class Residual(ember.nn.Module):
            def __init__(self, width):
                self.width = width
                self.fc = ember.nn.Linear(width, width)
            def config(self):
                return {"type": "Residual", "width": self.width}
            ...

    The contract: ``config()`` returns JSON data (dicts, lists, strings, numbers) whose
    ``"type"`` is the registered name (``name``, default the class's name); the class takes it
    back through a ``from_config(config)`` classmethod when it has one (e.g. to rebuild the
    submodules from their own configs with :func:`from_config`), else as ``cls(**kwargs)``
    with the config's other keys. Weights are not part of the config: they come from the
    state dict. Registering a class again under its name (a re-run notebook cell) replaces it.

    Raises:
        TypeError: ``cls`` is not a Module subclass.
        ValueError: ``name`` is not a non-empty string, is one of ember's own layer types, or
            is taken by another class.
    """
    def register(c):
        if not (isinstance(c, type) and issubclass(c, Module)):
            raise TypeError(f"register_module: cls must be a subclass of ember.nn.Module, got "
                            f"{c!r}")
        key = c.__name__ if name is None else name
        if not isinstance(key, str) or not key:
            raise ValueError(f"register_module: name must be a non-empty string, got {key!r}")
        if key in _BUILTIN_TYPES:
            raise ValueError(f"register_module: {key!r} is one of ember's own layer types; "
                             "register the class under another name (name=...)")
        old = _REGISTRY.get(key)
        if old is not None and old is not c and \
                (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):
            raise ValueError(f"register_module: the name {key!r} is taken by "
                             f"{old.__module__}.{old.__qualname__}")
        _REGISTRY[key] = c
        return c

    return register if cls is None else register(cls)


def registered_modules() -> dict:
    """The registered custom module classes by name (see :func:`register_module`)."""
    return dict(_REGISTRY)


def from_config(config: dict) -> Module:
    """Rebuild a model from :meth:`Module.config` output (weights are not included): ember's
    own layers, and the classes registered with :func:`register_module`."""
    try:
        kind = config["type"]
    except (TypeError, KeyError):
        raise ValueError(f"from_config: expected a dict with a 'type' key, got {config!r}")
    if not isinstance(kind, str):
        raise ValueError(f"from_config: 'type' must be a layer name, got {kind!r}")

    def need(key):
        if key not in config:
            raise ValueError(f"from_config: a {kind} config needs the key {key!r}, got {config!r}")
        return config[key]

    if kind == "Sequential":
        layers = config.get("layers", [])
        if not isinstance(layers, (list, tuple)):
            raise ValueError(f"from_config: a Sequential config's 'layers' must be a list, got "
                             f"{type(layers).__name__}")
        return Sequential(*[from_config(c) for c in layers])
    if kind == "Linear":
        return Linear(need("in_features"), need("out_features"), bias=config.get("bias", True))
    if kind == "Dropout":
        return Dropout(need("p"), seed=config.get("seed", 0))
    if kind == "LeakyReLU":
        return LeakyReLU(config.get("negative_slope", 0.01))
    if kind == "GELU":
        return GELU(config.get("approximate", "none"))
    classes = {"Identity": Identity, "ReLU": ReLU, "Tanh": Tanh, "Sigmoid": Sigmoid, "SiLU": SiLU}
    if kind in classes:
        return classes[kind]()
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(f"from_config: unknown layer type {kind!r} (a custom module's class "
                         "must be registered with ember.nn.register_module)")
    if hasattr(cls, "from_config"):
        model = cls.from_config(config)
    else:
        kwargs = {k: v for k, v in config.items() if k != "type"}
        try:
            model = cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"from_config: {kind}(**{kwargs!r}) failed ({exc}); give the class "
                             "a from_config(config) classmethod, or make config() return its "
                             "constructor's arguments") from None
    if not isinstance(model, Module):
        raise ValueError(f"from_config: {kind} built a {type(model).__name__}, not an "
                         "ember.nn.Module")
    return model


def check_trainable(model: Module, checkpointing: bool) -> None:
    """For Trainer.fit, before any step: a model that cannot train (no forward or backward),
    or, when checkpoints are written, whose architecture cannot be saved (no usable config()),
    is refused with a TypeError naming what is missing."""
    for name, hint in (("forward", "forward(x)"), ("backward", "backward(grad_out)")):
        if getattr(type(model), name) is getattr(Module, name):
            raise TypeError(f"fit: the model ({type(model).__name__}) does not define {name}: "
                            f"ember has no autograd, so a custom ember.nn.Module implements "
                            f"{hint} (see ember.nn.Module)")
    if not checkpointing:
        return
    why = _config_problem(model)
    if why is not None:
        raise TypeError(f"fit: checkpoints save the model's architecture, and {why}")
    unknown = sorted(set(_unregistered_types(model.config())))
    if unknown:
        warnings.warn(f"fit: the model's type {', '.join(map(repr, unknown))} "
                      f"{'is' if len(unknown) == 1 else 'are'} not registered with "
                      "ember.nn.register_module: its checkpoints resume, but ember.load_model "
                      "cannot rebuild it until it is", stacklevel=4)


def _unregistered_types(cfg) -> Iterator[str]:
    """The layer types in ``cfg`` (a Sequential's layers included) from_config cannot build."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if kind == "Sequential":
        for layer in cfg.get("layers", ()):
            yield from _unregistered_types(layer)
    elif kind not in _BUILTIN_TYPES and kind not in _REGISTRY:
        yield str(kind)


def _config_problem(model: Module) -> Optional[str]:
    """Why ``model``'s architecture cannot be saved in a checkpoint (and rebuilt), or None."""
    try:
        cfg = model.config()
    except NotImplementedError as exc:
        return str(exc)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("type"), str):
        return (f"{type(model).__name__}.config() must return a dict with a 'type' string, got "
                f"{cfg!r}"[:300])
    try:
        json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"{type(model).__name__}.config() must return JSON data ({exc})"
    return None


