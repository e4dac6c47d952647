"""``SGD``, ``Adam``, ``AdamW``: ``torch.optim.Optimizer`` subclasses whose ``step()`` updates all
the parameters of a group in one fused ember call (``ops.sgd_step`` / ``ops.adam_step``).

The state has torch's names and types (``step`` a 0-d float32 tensor, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``), so ``state_dict()`` loads into the torch
optimizer of the same name and back. Float32 parameters.

One difference from torch: a step whose gradients hold a NaN or Inf is skipped (parameters and
state untouched, ``step`` not advanced) and recorded in ``last_skipped``; ``last_grad_norm`` is
the global gradient norm of the last step.

CUDA parameters step through ember's CUDA kernels (``ember.ops``, on torch's current stream):
written and compiled, not yet run on a GPU.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch.optim import optimizer as _torch_optimizer

from ember.torch.functional import as_array, kernels_for

__all__ = ["SGD", "Adam", "AdamW"]



class _EmberOptimizer(torch.optim.Optimizer):
    """What the three share: the loop over groups, the closure, the result of the last step."""

    last_grad_norm: float = 0.0
    last_skipped: bool = False

    def step(self, *args, **kwargs):
        """``step(closure=None)``: one update of every parameter with a gradient. Runs the step
        pre- and post-hooks (``register_step_pre_hook`` / ``_post_hook`` and the global ones)
        and shows as ``Optimizer.step#<class>.step`` in a profile, as torch's own wrapper does
        (which this replaces: it costs ~10 us a step with no profiler and no hook)."""
        if torch.autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(
                    f"Optimizer.step#{type(self).__name__}.step"):
                return self._hooked_step((self, *args), kwargs)
        return self._hooked_step((self, *args), kwargs)

    step.hooked = True  # (torch.optim.Optimizer then leaves step unwrapped)

    def _hooked_step(self, args, kwargs):
        pre = _torch_optimizer._global_optimizer_pre_hooks
        if pre or self._optimizer_step_pre_hooks:
            for hook in (*pre.values(), *self._optimizer_step_pre_hooks.values()):
                result = hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"{type(self).__name__}.step: a step pre-hook must "
                                           f"return None or (new_args, new_kwargs), got "
                                           f"{result!r}")
                    args, kwargs = result
        prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            loss = self._step(*args[1:], **kwargs)
        finally:
            torch._C._set_grad_enabled(prev)
        post = _torch_optimizer._global_optimizer_post_hooks
        if post or self._optimizer_step_post_hooks:
            for hook in (*self._optimizer_step_post_hooks.values(), *post.values()):
                hook(self, args, kwargs)
        return loss

    def _step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        norm_sq, skipped = 0.0, False
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                norm, skip = self.step_group(group, params)
                norm_sq += norm * norm
                skipped |= skip
        self.last_grad_norm, self.last_skipped = norm_sq ** 0.5, skipped
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; the default (``set_to_none=True``, no profiler running) in a
        plain loop that drops each gradient (torch's costs ~10 us more)."""
        if not set_to_none or torch.autograd._profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = None

    def load_state_dict(self, state_dict) -> None:
        self.__dict__.pop("_views", None)  # the state tensors are replaced
        self.__dict__.pop("_plans", None)
        super().load_state_dict(state_dict)

    def grad_arrays(self, params) -> list:
        """NumPy views of the parameters' gradients (CUDA gradients: the tensors): directly
        for the usual float32 CPU contiguous gradient (a new tensor after each ``zero_grad``),
        else through :meth:`views` (its checks and messages)."""
        out = []
        f32, strided = torch.float32, torch.strided
        for p in params:
            g = p.grad
            if g.dtype is f32 and g.is_cpu and g.layout is strided and not g.requires_grad \
                    and g.is_contiguous():
                out.append(g.numpy())
            else:
                out.append(self.views([g], "grads")[0])
        return out

    def step_group(self, group: dict, params: List[torch.Tensor]):
        """Update ``params`` (those of ``group`` with a gradient); ``(grad_norm, skipped)``."""
        raise NotImplementedError

    def arrays(self, tensors, name: str) -> list:
        """NumPy views of ``tensors`` (CUDA: the tensors, detached); those of parameters and
        state are kept between steps
        (making one costs ~4 us), gradients are viewed afresh (zero_grad frees them)."""
        if name == "grads":
            return self.views(tensors, name)
        cache = self.__dict__.setdefault("_views", {})
        out = []
        for t in tensors:
            hit = cache.get(id(t))
            if hit is None or hit[0] is not t or hit[1] != t.data_ptr():
                hit = cache[id(t)] = (t, t.data_ptr(), self.views([t], name)[0])
            out.append(hit[2])
        return out

    def views(self, tensors, name: str) -> list:
        where = f"{type(self).__name__}.step"
        out = []
        for t in tensors:
            if t.is_sparse:
                raise RuntimeError(f"{where}: sparse gradients are not supported")
            if name != "grads" and not t.is_contiguous():  # a copy would not be updated
                raise ValueError(f"{where}: every {name} must be contiguous (ember updates them "
                                 f"in place)")
            out.append(as_array(t, where, name))
        return out


class SGD(_EmberOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, weight decay, Nesterov, maximize) in one ember
    call per parameter group (two on the step that creates some momentum buffers)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def step_group(self, group, params):
        hyper = dict(lr=float(group["lr"]), momentum=group["momentum"],
                     dampening=group["dampening"], weight_decay=group["weight_decay"],
                     nesterov=group["nesterov"], maximize=group.get("maximize", False))
        k = kernels_for(params[0], "SGD.step", "params[0]")
        if hyper["momentum"] == 0:
            return k.sgd_step(self.arrays(params, "params"),
                               self.arrays([p.grad for p in params], "grads"), None,
                               *hyper.values(), 1, 0.0)
        # a new buffer is set to the gradient (step 1), an existing one updated (step 2)
        buckets: Dict[int, list] = {1: [], 2: []}
        for p in params:
            st = self.state[p]
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                buckets[1].append(p)
            else:
                buckets[2].append(p)
        norm_sq, skipped = 0.0, False
        for step, ps in buckets.items():
            if ps:
                norm, skip = k.sgd_step(
                    self.arrays(ps, "params"), self.arrays([p.grad for p in ps], "grads"),
                    self.arrays([self.state[p]["momentum_buffer"] for p in ps],
                                "momentum_buffer"), *hyper.values(), step, 0.0)
                norm_sq, skipped = norm_sq + norm * norm, skipped or skip
        return norm_sq ** 0.5, skipped


class Adam(_EmberOptimizer):
    """``torch.optim.Adam`` (AMSGrad, L2 weight decay, maximize; ``decoupled_weight_decay`` is
    AdamW) in one ember call per parameter group and step count (one, unless parameters joined
    at different steps)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        if not 0.0 <= lr or not 0.0 <= eps or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam hyperparameters: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def step_group(self, group, params):
        plan = self._plan(group, params)
        if plan is not None:  # every parameter at the same step, as left by the last step
            return self._run(group, params, plan)
        amsgrad = group["amsgrad"]
        buckets: Dict[int, list] = {}
        for p in params:
            st = self.state[p]
            if len(st) == 0:
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if amsgrad and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            buckets.setdefault(int(st["step"].item()) + 1, []).append(p)
        norm_sq, skipped = 0.0, False
        for step, ps in buckets.items():
            plan = self._new_plan(group, ps, step - 1)
            norm, skip = self._run(group, ps, plan)
            norm_sq, skipped = norm_sq + norm * norm, skipped or skip
        return norm_sq ** 0.5, skipped

    # A step's lists (the parameters', moments' and step counts' tensors and NumPy views) are
    # kept between steps, keyed by the group and its parameters with gradients, and used while
    # each parameter's state holds the same tensors and no step count changed but by a step
    # (torch's version counter): per call, ~90 us of Python on a 6-tensor MLP less.
    def _plan(self, group, params):
        plan = self.__dict__.get("_plans", {}).get((id(group), tuple(map(id, params))))
        if plan is None:
            return None
        for p, st, t, version, m in zip(params, plan["states"], plan["steps"],
                                        plan["versions"], plan["exp_avg"]):
            if self.state.get(p) is not st or st.get("step") is not t or \
                    t._version != version or st.get("exp_avg") is not m:
                return None
        return plan

    def _new_plan(self, group, params, step: int) -> dict:
        states = [self.state[p] for p in params]
        amsgrad = group["amsgrad"]
        # the step counts become 0-d views of one tensor, advanced together through a NumPy
        # view (torch's Adam, given this state, still steps each on its own); a change made
        # through torch (load, assignment, add_) shows in their version counters
        counts = torch.tensor([float(s["step"]) for s in states], dtype=torch.float32)
        for i, s in enumerate(states):
            s["step"] = counts[i]
        plan = {"step": step, "states": states, "steps": [s["step"] for s in states],
                "counts": counts.numpy(),
                "exp_avg": [s["exp_avg"] for s in states],
                "arrays": (self.arrays(params, "params"),
                           self.arrays([s["exp_avg"] for s in states], "exp_avg"),
                           self.arrays([s["exp_avg_sq"] for s in states], "exp_avg_sq"),
                           self.arrays([s["max_exp_avg_sq"] for s in states], "max_exp_avg_sq")
                           if amsgrad else None)}
        plan["versions"] = [t._version for t in plan["steps"]]
        self.__dict__.setdefault("_plans", {})[(id(group), tuple(map(id, params)))] = plan
        return plan

    def _run(self, group, params, plan):
        step = plan["step"] + 1
        beta1, beta2 = group["betas"]
        ps, m1, m2, vmax = plan["arrays"]
        norm, skip = kernels_for(params[0], "Adam.step", "params[0]").adam_step(
            ps, self.grad_arrays(params), m1, m2, vmax, float(group["lr"]), float(beta1),
            float(beta2), group["eps"], group["weight_decay"], group["amsgrad"],
            group.get("decoupled_weight_decay", False), group.get("maximize", False), step, 0.0)
        if not skip:
            plan["counts"] += 1.0  # (NumPy: the version counters stay as the plan knows them)
            plan["step"] = step
        return norm, skip


class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
