"""Learning-rate schedules as pure functions of (epoch, step): a resumed run gets exactly the
learning rate the uninterrupted run had, with no hidden state to save.

Use them through :class:`ember.callbacks.LRScheduler` (or ``Trainer(lr_schedule=...)``).
``ReduceLROnPlateau``, which depends on the validation history, is a callback.

A plain function of the epoch is a schedule too, as in Keras' ``LearningRateScheduler``: it
returns the learning rate itself, ``fn(epoch)`` or ``fn(epoch, lr)`` (``lr``: the current one);
see :class:`FunctionSchedule`.

Example:
    >>> from ember.schedules import CosineWithWarmup
    >>> sched = CosineWithWarmup(total_steps=1000, warmup_steps=100)
    >>> round(sched.factor(epoch=0, step=50), 2)
    0.51
"""
from __future__ import annotations

import inspect
import math

from ember import _validate

__all__ = ["Schedule", "Constant", "StepLR", "ExponentialLR", "CosineWithWarmup",
           "FunctionSchedule", "get_schedule"]


class Schedule:
    """Multiplier of the base learning rate. ``interval`` is ``"epoch"`` or ``"step"``."""

    interval = "epoch"

    def factor(self, epoch: int, step: int) -> float:
        raise NotImplementedError

    def learning_rate(self, epoch: int, step: int, base_lr: float, lr: float) -> float:
        """The learning rate at ``(epoch, step)``: ``base_lr * factor`` (``lr``, the current
        one, is for schedules that follow it, like :class:`FunctionSchedule`)."""
        return base_lr * self.factor(epoch, step)

    def config(self) -> dict:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items()}}


class Constant(Schedule):
    def factor(self, epoch, step):
        return 1.0


class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = _validate.positive_real("StepLR", "gamma", gamma)

    def factor(self, epoch, step):
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """Multiply by ``gamma`` every epoch."""

    def __init__(self, gamma: float):
        self.gamma = _validate.positive_real("ExponentialLR", "gamma", gamma)

    def factor(self, epoch, step):
        return self.gamma ** epoch


class CosineWithWarmup(Schedule):
    """Linear warmup from ~0 to the base rate over ``warmup_steps``, then a cosine decay to
    ``min_factor`` at ``total_steps`` (per optimizer step)."""

    interval = "step"

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0):
        if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError("CosineWithWarmup: need total_steps >= 1 and "
                             f"0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_factor = _validate.real_in("CosineWithWarmup", "min_factor", min_factor, 0.0,
                                            1.0, closed_high=True)

    def factor(self, epoch, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


class FunctionSchedule(Schedule):
    """A learning rate given by a function of the epoch, as Keras' ``LearningRateScheduler``:
    ``fn(epoch)`` or ``fn(epoch, lr)`` returns the learning rate (not a factor); ``epoch``
    counts from 0 and ``lr`` is the current learning rate. Applied at the start of each epoch.

    For an exact resume the function must be the same in the resumed run (it is not saved).

    Example:
        >>> sched = FunctionSchedule(lambda epoch: 0.1 * 0.5 ** epoch)
        >>> sched.learning_rate(2, 0, base_lr=0.1, lr=0.1)
        0.025
    """

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"FunctionSchedule: fn must be callable, got {type(fn).__name__}")
        n = _positional_count(fn)
        if n == 0:
            raise TypeError(f"FunctionSchedule: {_fn_name(fn)} takes no argument; an lr schedule "
                            "is called with the epoch: fn(epoch) or fn(epoch, lr)")
        self.fn = fn
        self._takes_lr = n >= 2

    def factor(self, epoch, step):
        raise TypeError("FunctionSchedule gives the learning rate itself, not a factor: use "
                        "learning_rate(epoch, step, base_lr, lr)")

    def learning_rate(self, epoch, step, base_lr, lr):
        out = self.fn(epoch, lr) if self._takes_lr else self.fn(epoch)
        if isinstance(out, (bool, str, bytes)) or not hasattr(out, "__float__") or \
                not math.isfinite(float(out)) or float(out) < 0:
            raise ValueError(f"lr schedule {_fn_name(self.fn)}: at epoch {epoch} it returned "
                             f"{out!r}; it must return a learning rate (a finite number >= 0)")
        return float(out)

    def config(self) -> dict:
        return {"type": "FunctionSchedule", "fn": _fn_name(self.fn)}


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _positional_count(fn) -> int:
    """How many positional arguments ``fn`` takes (2 or more: ``fn(epoch, lr)``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it with the epoch
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


def get_schedule(config) -> Schedule:
    """A schedule from an instance, its ``config()`` dict, or a function of the epoch that
    returns the learning rate (:class:`FunctionSchedule`)."""
    if isinstance(config, Schedule):
        return config
    if callable(config) and not isinstance(config, type):
        return FunctionSchedule(config)
    if not isinstance(config, dict):
        raise TypeError(f"a schedule must be an ember.schedules.Schedule (e.g. "
                        f"CosineWithWarmup(total_steps=1000)), its config() dict, or a "
                        f"function of the epoch returning the learning rate, got "
                        f"{type(config).__name__} {config!r}")
    cfg = dict(config)
    kind = cfg.pop("type", None)
    table = {"Constant": Constant, "StepLR": StepLR, "ExponentialLR": ExponentialLR,
             "CosineWithWarmup": CosineWithWarmup}
    if kind not in table:
        raise ValueError(f"unknown schedule {config!r}")
    return table[kind](**cfg)
