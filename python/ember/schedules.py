"""Learning-rate schedules as pure functions of (epoch, step): a resumed run gets exactly the
learning rate the uninterrupted run had, with no hidden state to save.

Use them through :class:`ember.callbacks.LRScheduler` (or ``Trainer(lr_schedule=...)``).
``ReduceLROnPlateau``, which depends on the validation history, is a callback.

Example:
    >>> from ember.schedules import CosineWithWarmup
    >>> sched = CosineWithWarmup(total_steps=1000, warmup_steps=100)
    >>> round(sched.factor(epoch=0, step=50), 2)
    0.51
"""
from __future__ import annotations

import math

__all__ = ["Schedule", "Constant", "StepLR", "ExponentialLR", "CosineWithWarmup", "get_schedule"]


class Schedule:
    """Multiplier of the base learning rate. ``interval`` is ``"epoch"`` or ``"step"``."""

    interval = "epoch"

    def factor(self, epoch: int, step: int) -> float:
        raise NotImplementedError

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
        if not 0 < gamma:
            raise ValueError(f"StepLR: gamma must be > 0, got {gamma}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def factor(self, epoch, step):
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """Multiply by ``gamma`` every epoch."""

    def __init__(self, gamma: float):
        if not 0 < gamma:
            raise ValueError(f"ExponentialLR: gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

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
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"CosineWithWarmup: min_factor must be in [0, 1], got {min_factor}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_factor = float(min_factor)

    def factor(self, epoch, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


def get_schedule(config) -> Schedule:
    """A schedule from an instance or from its ``config()`` dict."""
    if isinstance(config, Schedule):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"a schedule must be an ember.schedules.Schedule (e.g. "
                        f"CosineWithWarmup(total_steps=1000)) or its config() dict, got "
                        f"{type(config).__name__} {config!r}")
    cfg = dict(config)
    kind = cfg.pop("type", None)
    table = {"Constant": Constant, "StepLR": StepLR, "ExponentialLR": ExponentialLR,
             "CosineWithWarmup": CosineWithWarmup}
    if kind not in table:
        raise ValueError(f"unknown schedule {config!r}")
    return table[kind](**cfg)
