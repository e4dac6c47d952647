"""The callback protocol: code that runs at fixed points of :meth:`ember.Trainer.fit`.

Hooks (all no-ops by default) receive a ``logs`` dict: ``on_train_begin/end(logs)``,
``on_epoch_begin/end(epoch, logs)``, ``on_batch_begin/end(batch, logs)``. A callback stops
training by setting ``self.trainer.stop_training = True``. Callbacks with state that a resumed
run needs implement ``state_dict()`` / ``load_state_dict()``; checkpoints save it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["Callback", "CallbackList", "Monitor", "mode_for"]


class Callback:
    """Base class with no-op hooks. ``self.trainer`` is set when training begins."""

    trainer: Any = None

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs: dict) -> None: ...
    def on_train_end(self, logs: dict) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict) -> None: ...
    def on_batch_end(self, batch: int, logs: dict) -> None: ...

    def state_dict(self) -> dict:
        """JSON-serialisable state for checkpoints (arrays go in :meth:`arrays`)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def arrays(self) -> dict:
        """Named arrays to save with a checkpoint (e.g. best weights)."""
        return {}

    def load_arrays(self, arrays: dict) -> None: ...


def overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook) is not getattr(Callback, hook)


class CallbackList:
    """Forwards each hook to every callback, in order. Per-batch hooks are only called on the
    callbacks that define them, so an unused hook costs nothing per step."""

    def __init__(self, callbacks, trainer):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be ember.callbacks.Callback instances, got "
                                f"{type(cb).__name__}")
            cb.set_trainer(trainer)
        self.batch_begin_callbacks = [cb for cb in self.callbacks if overrides(cb, "on_batch_begin")]
        self.batch_end_callbacks = [cb for cb in self.callbacks if overrides(cb, "on_batch_end")]

    @property
    def wants_batch_begin(self) -> bool:
        return bool(self.batch_begin_callbacks)

    @property
    def wants_batch_end(self) -> bool:
        return bool(self.batch_end_callbacks)

    def on_train_begin(self, logs):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch, logs):
        for cb in self.batch_begin_callbacks:
            cb.on_batch_begin(batch, logs)

    def on_batch_end(self, batch, logs):
        for cb in self.batch_end_callbacks:
            cb.on_batch_end(batch, logs)


def mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("acc", "r2", "score")) else "min"


class Monitor(Callback):
    """A callback that watches one epoch log (``monitor``): the base of EarlyStopping,
    ReduceLROnPlateau and ModelCheckpoint. ``value(logs)`` reads it (None when not finite),
    ``improved(v)`` says whether it beats ``best`` by ``min_delta`` in ``mode``."""

    def __init__(self, monitor: str, min_delta: float, mode: str):
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.mode = mode_for(monitor, mode)
        self.best: Optional[float] = None

    def value(self, logs: dict) -> Optional[float]:
        if self.monitor not in logs:
            available = ", ".join(sorted(k for k in logs if not k.startswith("_")))
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not in the "
                             f"epoch logs (available: {available}); validation metrics need "
                             "validation_data or validation_split")
        v = logs[self.monitor]
        return None if v is None or not math.isfinite(v) else float(v)

    def improved(self, v: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta
