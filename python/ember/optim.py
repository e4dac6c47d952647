"""Optimizers: every trainable parameter updated by one fused kernel call per step.

Signatures and update rules follow ``torch.optim.SGD``, ``Adam`` and ``AdamW``. Frozen parameters
(``requires_grad = False``) are left unchanged. A step whose gradients hold NaN or Inf is skipped
(parameters and state untouched) and counted in ``skipped_steps``.

Example:
    >>> from ember.nn import MLP
    >>> from ember.optim import Adam
    >>> model = MLP([4, 8, 2])
    >>> opt = Adam(model, lr=1e-3)     # a Module or a list of Parameters
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Optional

import numpy as np

from ember import _validate, ops
from ember.backend import is_cuda_array, to_host
from ember.nn import Module, Parameter, mark_zero, materialize_zeros

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "get_optimizer"]


def _check(name: str, value, low: float = 0.0, high: Optional[float] = None,
           high_open: bool = False, positive: bool = False) -> float:
    """A hyperparameter in range (see ember._validate.bound; the messages name the argument
    alone, as they always have)."""
    return _validate.bound("", name, value, low, high, high_open, positive)


_carried_over_warned = False


def _warn_carried_over() -> None:
    """Warn (once a process) that a step runs on gradients summed since before the previous
    step: backward passes added to them with no zero_grad in between. Loops written for an ember
    whose backward overwrote gradients lack the zero_grad that PyTorch's rule needs."""
    global _carried_over_warned
    if _carried_over_warned:
        return
    _carried_over_warned = True
    warnings.warn("Optimizer.step: the gradients still hold those of the previous step (no "
                  "zero_grad() since it, and backward passes added to them). Gradients "
                  "accumulate until zero_grad(), as in PyTorch: call opt.zero_grad() (or "
                  "model.zero_grad()) before each step's backward pass, unless you mean to "
                  "carry them over", UserWarning, stacklevel=3)


class Optimizer:
    """Base class: holds named parameters, the step count and per-parameter state arrays."""

    _state_keys: tuple = ()
    _zero_marks = -1  # the Parameter.zero_marks the last step saw (see step)
    _zero_marks_at_step = -1  # Parameter.zero_marks and .adds at the last step
    _adds_at_step = -1

    def __init__(self, params, lr: float, max_grad_norm: Optional[float] = None):
        if isinstance(params, Module):
            named = list(params.named_parameters())
        else:
            named = [(str(i), p) for i, p in enumerate(params)]
        if not named:
            raise ValueError(f"{type(self).__name__}: no parameters to optimize")
        self.named_params = named
        self.lr = _check("lr", lr)
        self.max_grad_norm = (None if max_grad_norm is None
                              else _check("max_grad_norm", max_grad_norm, positive=True))
        self.step_count = 0
        self.skipped_steps = 0
        self.last_grad_norm = float("nan")
        self.state: dict[str, dict[str, Any]] = {}
        self._lists = None
        self._zero_marks = Parameter.zero_marks

    @property
    def params(self):
        return [p for _, p in self.named_params]

    def _state_for(self, name, p) -> dict:
        st = self.state.get(name)
        k0 = self._state_keys[0]
        if st is not None and st[k0].shape == p.data.shape and \
                is_cuda_array(st[k0]) != is_cuda_array(p.data):
            # The parameter moved between the CPU and the GPU (model.to): its state follows.
            if is_cuda_array(p.data):
                cupy = __import__("cupy")
                st = {k: cupy.ascontiguousarray(cupy.asarray(a)) for k, a in st.items()}
            else:
                st = {k: np.ascontiguousarray(a.get()) for k, a in st.items()}
            self.state[name] = st
        host = isinstance(p.data, np.ndarray)  # NumPy subclasses (a memmap) are host data too
        if st is None or st[k0].shape != p.data.shape or isinstance(st[k0], np.ndarray) != host:
            # plain arrays for the state (zeros_like would copy a memmap's subclass)
            st = {k: np.zeros(p.data.shape, np.float32) if host else
                  __import__("cupy").zeros_like(p.data) for k in self._state_keys}
            self.state[name] = st
        return st

    def _active(self):
        """(params, grads, state lists) of the trainable parameters, cached between steps."""
        key = Parameter.version
        if self._lists is None or self._lists[0] != key:
            names, ps, gs = [], [], []
            for name, p in self.named_params:
                if not p.requires_grad:
                    continue
                if p.grad is None:
                    raise RuntimeError(f"{type(self).__name__}.step: parameter {name!r} has no "
                                       "gradient (call backward first)")
                names.append(name)
                ps.append(p.data)
                gs.append(p.grad)
            states = {k: [self._state_for(n, p)[k] for n, p in self.named_params
                          if p.requires_grad] for k in self._state_keys}
            self._lists = [key, ps, gs, states, None]  # [4]: the OptimPlan, made on first use
        return self._lists[1], self._lists[2], self._lists[3]

    def _plan(self, ps, gs, states):
        """The lists checked once (:data:`ember.ops.OptimPlan`, or the CUDA kernels' plan on the
        GPU), kept with them until a Parameter is reassigned. A step then checks only its
        hyperparameters, not every array (10.5M parameters in 128 tensors: ~1.5 ms of checks a
        step on an H200's host; a 3-layer MLP's 6 arrays: ~3 us of a ~40 us step on 2 cores)."""
        lists = self._lists
        if lists[4] is None:
            if isinstance(ps[0], np.ndarray):
                lists[4] = ops.OptimPlan(list(ps), list(gs), [list(s) for s in states])
            else:
                cuda = ops.kernels(ps[0], f"{type(self).__name__}.step", "params[0]")
                lists[4] = cuda.optim_plan(ps, gs, states)
        return lists[4]

    def step(self) -> tuple[float, bool]:
        """Update all trainable parameters from their gradients (summed over the backward
        passes since the last ``zero_grad``, as in PyTorch; the step does not clear them).
        Returns ``(grad_norm, skipped)``."""
        if Parameter.zero_marks != self._zero_marks:
            # zero_grad ran since the last step: a gradient it cleared that no backward wrote
            # since is zero (the plan reads the arrays, not Parameter.grad)
            self._zero_marks = Parameter.zero_marks
            materialize_zeros(p for _, p in self.named_params)
        zero_marks, adds = Parameter.zero_marks, Parameter.adds
        if zero_marks == self._zero_marks_at_step and adds != self._adds_at_step:
            _warn_carried_over()
        self._zero_marks_at_step, self._adds_at_step = zero_marks, adds
        ps, gs, states = self._active()
        if not ps:
            return 0.0, False
        step = self.step_count + 1
        norm, skipped = self._update(ps, gs, states, step)
        self.last_grad_norm = norm
        if skipped:
            self.skipped_steps += 1
        else:
            self.step_count = step
        return norm, skipped

    def device_step(self, state):
        """One step on the GPU that never synchronises (for CUDA-graph training): the step number
        and learning rate are read from the device array ``state`` (int64[2], see
        ``ember._cuda_ops.step_state``), which a step that is not skipped advances. Returns the
        device arrays ``(grad_norm float64[1], skipped int64[1])``; ``step_count``,
        ``skipped_steps`` and ``last_grad_norm`` are the caller's to update."""
        ps, gs, states = self._active()
        cuda = ops.kernels(ps[0], f"{type(self).__name__}.device_step", "params[0]")
        return self._update(ps, gs, states, 1, cuda, state)

    def graph_key(self) -> tuple:
        """The hyperparameters a captured step bakes in (all but the learning rate, which the
        step reads from device memory)."""
        return tuple((k, tuple(v) if isinstance(v, list) else v)
                     for k, v in self.hyperparameters().items() if k != "lr")

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear the gradients of the optimized parameters (see :meth:`ember.nn.Module.zero_grad`:
        free, the next backward writes them)."""
        if not set_to_none:
            mark_zero(self.params)
            return
        for p in self.params:
            p.grad = None
        Parameter.zero_marks += 1

    def hyperparameters(self) -> dict:
        return {"optimizer": type(self).__name__, "lr": self.lr,
                "max_grad_norm": self.max_grad_norm}

    def state_dict(self) -> dict:
        """``{"hyperparameters", "step", "skipped_steps", "state": {name: {key: array}}}``."""
        return {"hyperparameters": self.hyperparameters(), "step": self.step_count,
                "skipped_steps": self.skipped_steps,
                "state": {n: dict(st) for n, st in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        """Restore step counts, hyperparameters (lr...) and state arrays (copied)."""
        own = dict(self.named_params)
        for name, st in sd.get("state", {}).items():
            if name not in own:
                raise ValueError(f"optimizer state for unknown parameter {name!r}")
            p = own[name]
            mine = self._state_for(name, p)
            for k in self._state_keys:
                if k not in st:
                    raise ValueError(f"optimizer state for {name!r} lacks {k!r}")
                arr = st[k]
                if tuple(arr.shape) != p.shape:
                    raise ValueError(f"optimizer state {name}.{k} has shape {tuple(arr.shape)}, "
                                     f"parameter has {p.shape}")
                if type(mine[k]) is np.ndarray:
                    mine[k][...] = np.asarray(to_host(arr))
                else:
                    mine[k][...] = __import__("cupy").asarray(arr)
        self.step_count = int(sd.get("step", 0))
        self.skipped_steps = int(sd.get("skipped_steps", 0))
        hp = sd.get("hyperparameters", {})
        for k, v in hp.items():
            if k != "optimizer" and hasattr(self, k):
                setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self._lists = None

    def __getstate__(self):
        # The lists are a cache (rebuilt on demand), and the GPU plan in them cannot be pickled.
        state = self.__dict__.copy()
        state["_lists"] = None
        return state

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items() if k != "optimizer")
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov, weight decay."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
                 max_grad_norm: Optional[float] = None):
        super().__init__(params, lr, max_grad_norm)
        self.momentum = _check("momentum", momentum)
        self.dampening = _check("dampening", dampening, low=-math.inf)
        self.weight_decay = _check("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.nesterov = bool(nesterov)
        self.maximize = bool(maximize)
        self._state_keys = ("momentum_buffer",) if self.momentum != 0 else ()

    def _state_for(self, name, p):
        return super()._state_for(name, p) if self._state_keys else {}

    def _update(self, ps, gs, states, step, cuda=None, state=None):
        bufs = states.get("momentum_buffer")
        if cuda is not None:  # the device-state call of device_step
            return cuda.sgd_step(ps, gs, bufs, self.lr, self.momentum, self.dampening,
                                 self.weight_decay, self.nesterov, self.maximize, step,
                                 self.max_grad_norm or 0.0, state=state, advance_step=True)
        plan = self._plan(ps, gs, [bufs] if bufs is not None else [])
        args = (self.lr, self.momentum, self.dampening, self.weight_decay, self.nesterov,
                self.maximize, step, self.max_grad_norm or 0.0)
        if isinstance(ps[0], np.ndarray):
            return plan.sgd(*args)
        return ops.kernels(ps[0], "SGD.step", "params[0]").plan_sgd_step(plan, *args)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "momentum": self.momentum,
                "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "maximize": self.maximize}


class Adam(Optimizer):
    """Adam (Kingma & Ba), optionally AMSGrad; L2 weight decay added to the gradient."""

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
                 max_grad_norm: Optional[float] = None):
        super().__init__(params, lr, max_grad_norm)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_check("betas[0]", betas[0], 0.0, 1.0, True),
                      _check("betas[1]", betas[1], 0.0, 1.0, True))
        self.eps = _check("eps", eps, positive=True)
        self.weight_decay = _check("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self.maximize = bool(maximize)
        self._state_keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def _update(self, ps, gs, states, step, cuda=None, state=None):
        if cuda is not None:  # the device-state call of device_step
            return cuda.adam_step(ps, gs, states["exp_avg"], states["exp_avg_sq"],
                                  states.get("max_exp_avg_sq"), self.lr, self.betas[0],
                                  self.betas[1], self.eps, self.weight_decay, self.amsgrad,
                                  self._decoupled, self.maximize, step,
                                  self.max_grad_norm or 0.0, state=state, advance_step=True)
        vmax = states.get("max_exp_avg_sq")
        plan = self._plan(ps, gs, [states["exp_avg"], states["exp_avg_sq"]] +
                          ([vmax] if vmax is not None else []))
        args = (self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, self.amsgrad,
                self._decoupled, self.maximize, step, self.max_grad_norm or 0.0)
        if isinstance(ps[0], np.ndarray):
            return plan.adam(*args)
        return ops.kernels(ps[0], "Adam.step", "params[0]").plan_adam_step(plan, *args)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad,
                "maximize": self.maximize}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), ``torch.optim.AdamW``."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False,
                 max_grad_norm: Optional[float] = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize, max_grad_norm)


#: Optimizer names (any case) -> class, as :func:`get_optimizer` and ``Trainer`` take them.
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get_optimizer(name, params, caller: Optional[str] = None, **kwargs) -> Optimizer:
    """An optimizer by name (one of :data:`OPTIMIZERS`) for ``params`` with ``kwargs``, or the
    instance itself.

    ``caller`` (e.g. ``"Trainer"``) names who passes the arguments on: an argument the optimizer
    does not take is then a TypeError that says so, naming those it takes (without it, Python's
    own "unexpected keyword argument").

    Raises:
        ValueError: an unknown name.
        TypeError: an argument the optimizer does not take.
    """
    if isinstance(name, Optimizer):
        return name
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or an "
                         f"ember.optim.Optimizer, got {name!r}")
    cls = OPTIMIZERS[name.lower()]
    try:
        return cls(params, **kwargs)
    except TypeError as exc:
        if caller is None or "unexpected keyword argument" not in str(exc):
            raise
        takes = [p for p in inspect.signature(cls).parameters if p != "params"]
        bad = [k for k in kwargs if k not in takes]
        raise TypeError(f"{caller}: optimizer {name!r} takes no argument "
                        f"{', '.join(map(repr, bad))} (it takes: {', '.join(takes)})") from None
