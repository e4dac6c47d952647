"""Callbacks: code that runs at fixed points of :meth:`ember.Trainer.fit`.

Hooks (all no-ops by default) receive a ``logs`` dict: ``on_train_begin/end(logs)``,
``on_epoch_begin/end(epoch, logs)``, ``on_batch_begin/end(batch, logs)``. A callback stops
training by setting ``self.trainer.stop_training = True``. Callbacks with state that a resumed
run needs implement ``state_dict()`` / ``load_state_dict()``; checkpoints save it.

Example:
    >>> from ember.callbacks import EarlyStopping
    >>> stop = EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any, Optional

import numpy as np

__all__ = [
    "Callback", "CallbackList", "EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN",
    "ProgressBar", "GradientMonitor", "GradientWarning", "LRScheduler", "ModelCheckpoint",
]


class GradientWarning(UserWarning):
    """Gradients of a layer vanished or exploded."""


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


def _overrides(cb: Callback, hook: str) -> bool:
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
        self._batch_begin = [cb for cb in self.callbacks if _overrides(cb, "on_batch_begin")]
        self._batch_end = [cb for cb in self.callbacks if _overrides(cb, "on_batch_end")]

    @property
    def wants_batch_begin(self) -> bool:
        return bool(self._batch_begin)

    @property
    def wants_batch_end(self) -> bool:
        return bool(self._batch_end)

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
        for cb in self._batch_begin:
            cb.on_batch_begin(batch, logs)

    def on_batch_end(self, batch, logs):
        for cb in self._batch_end:
            cb.on_batch_end(batch, logs)


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("acc", "r2", "score")) else "min"


class _Monitor(Callback):
    """Shared logic: track the best value of ``monitor`` with ``min_delta``."""

    def __init__(self, monitor: str, min_delta: float, mode: str):
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.mode = _mode_for(monitor, mode)
        self.best: Optional[float] = None

    def _value(self, logs: dict) -> Optional[float]:
        if self.monitor not in logs:
            available = ", ".join(sorted(k for k in logs if not k.startswith("_")))
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not in the "
                             f"epoch logs (available: {available}); validation metrics need "
                             "validation_data or validation_split")
        v = logs[self.monitor]
        return None if v is None or not math.isfinite(v) else float(v)

    def _improved(self, v: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: an epoch log key (``"val_loss"``, ``"val_accuracy"``, ``"loss"``...).
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy-like names).
        restore_best_weights: put back the weights of the best epoch when training ends —
            however it ends (patience, last epoch, another callback, NaN).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, min_delta, mode)
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_epoch: Optional[int] = None
        self.stopped_epoch: Optional[int] = None
        self.best_weights: Optional[dict] = None

    def on_train_begin(self, logs):
        if self.trainer is not None and getattr(self.trainer, "_resuming", False):
            return  # state came from the checkpoint
        self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, None, None, None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs):
        v = self._value(logs)
        if v is not None and self._improved(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: a.copy() for k, a in
                                     self.trainer.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.stop_reason = (f"early stopping: {self.monitor} did not improve for "
                                        f"{self.wait} epochs (best {self.best:.6g} at epoch "
                                        f"{self.best_epoch + 1})" if self.best is not None else
                                        f"early stopping: {self.monitor} was never finite")

    def on_train_end(self, logs):
        if self.restore_best_weights and self.best_weights is not None:
            self.trainer.model.load_state_dict(self.best_weights)
            self.trainer.restored_epoch = self.best_epoch

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state):
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.best_epoch, self.stopped_epoch = state.get("best_epoch"), state.get("stopped_epoch")

    def arrays(self):
        return dict(self.best_weights) if self.best_weights else {}

    def load_arrays(self, arrays):
        self.best_weights = {k: np.array(v) for k, v in arrays.items()} or None


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto"):
        super().__init__(monitor, min_delta, mode)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.cooldown = float(factor), int(patience), int(cooldown)
        self.min_lr = float(min_lr)
        self.wait = 0
        self.cooldown_left = 0

    def on_epoch_end(self, epoch, logs):
        v = self._value(logs)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if v is not None and self._improved(v):
            self.best, self.wait = v, 0
            return
        if self.cooldown_left == 0:
            self.wait += 1
            if self.wait > self.patience:
                opt = self.trainer.optimizer
                new = max(self.min_lr, opt.lr * self.factor)
                if new < opt.lr:
                    opt.lr = new
                    self.trainer._base_lr = new
                self.cooldown_left, self.wait = self.cooldown, 0

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state):
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.cooldown_left = int(state.get("cooldown_left", 0))


class TerminateOnNaN(Callback):
    """Stop as soon as a batch loss is NaN or Inf."""

    def on_batch_end(self, batch, logs):
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.trainer.stop_training = True
            self.trainer.stop_reason = (f"loss became {loss} at epoch {logs.get('epoch', 0) + 1},"
                                        f" batch {batch + 1}")


class LRScheduler(Callback):
    """Set the learning rate from an :mod:`ember.schedules` schedule (per step or per epoch),
    or from a function of the epoch that returns it (as Keras' ``LearningRateScheduler``).

    The schedule counts epochs and steps from where it joined the run: from 0 in a fresh fit,
    and from the resume point when it is added to a resumed run that did not have it (a
    warmup then warms up from there). Resuming a run that had it continues where it was."""

    def __init__(self, schedule):
        from ember.schedules import get_schedule
        self.schedule = get_schedule(schedule)
        self.start_epoch = 0
        self.start_step = 0
        self._restored = False

    def on_train_begin(self, logs):
        t = self.trainer
        if not getattr(t, "_resuming", False):
            self.start_epoch, self.start_step = 0, 0
        elif not self._restored:  # added on resume: it starts here, not at epoch 0
            self.start_epoch, self.start_step = int(t.epoch), int(t.global_step)
        self._restored = False

    def _apply(self):
        t = self.trainer
        t.optimizer.lr = self.schedule.learning_rate(
            t.epoch - self.start_epoch, t.global_step - self.start_step, t._base_lr,
            t.optimizer.lr)

    def state_dict(self):
        return {"start_epoch": self.start_epoch, "start_step": self.start_step}

    def load_state_dict(self, state):
        # (checkpoints written before the schedule kept a start saved {}: it started at 0)
        self.start_epoch = int(state.get("start_epoch", 0))
        self.start_step = int(state.get("start_step", 0))
        self._restored = True

    def on_epoch_begin(self, epoch, logs):
        self._apply()

    def on_batch_begin(self, batch, logs):
        if self.schedule.interval == "step":
            self._apply()


class ProgressBar(Callback):
    """A tqdm bar per epoch on a terminal; one summary line per epoch otherwise."""

    def __init__(self, stream=None):
        self.stream = stream
        self._bar = None
        self._t0 = 0.0

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def on_epoch_begin(self, epoch, logs):
        self._t0 = time.perf_counter()
        out = self._out()
        if hasattr(out, "isatty") and out.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=self.trainer.steps_per_epoch, file=out, leave=True,
                             desc=f"epoch {epoch + 1}/{self.trainer.epochs}", unit="batch",
                             initial=self.trainer._start_batch)
        else:
            self._bar = None

    def on_batch_end(self, batch, logs):
        if self._bar is not None:
            self._bar.update(1)
            # (No per-batch loss when the GPU replays steps as CUDA graphs: it stays there.)
            if batch % 10 == 0 and logs.get("loss") is not None:
                self._bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs):
        # lr with significant digits (".4f" printed lr=0.0000 below 5e-5)
        parts = [f"{k}={v:.4g}" if k == "lr" else f"{k}={v:.4f}" for k, v in logs.items()
                 if isinstance(v, float) and not k.startswith("_") and k not in ("time",)]
        line = (f"epoch {epoch + 1}/{self.trainer.epochs}  " + "  ".join(parts) +
                f"  ({time.perf_counter() - self._t0:.2f}s)")
        if self._bar is not None:
            self._bar.set_postfix_str("  ".join(parts[:4]), refresh=True)
            self._bar.close()
            self._bar = None
        else:
            print(line, file=self._out(), flush=True)


class GradientMonitor(Callback):
    """Record each layer's gradient norm and warn when gradients vanish or explode.

    At the end of every epoch (from the last batch's gradients) it records, per weight matrix,
    ``||grad||`` into ``trainer.history.grad_norms``. A layer's gradients *vanish* when its
    ``||grad|| / ||weight||`` is below ``vanish_ratio`` times the largest such ratio among the
    layers (the signal dies on its way back through the network; a converged model, whose
    gradients all shrink together, is not flagged). They *explode* when ``||grad||`` exceeds
    ``explode_threshold`` or is not finite. Each finding warns once (:class:`GradientWarning`,
    naming the layer) and feeds the trainer's end-of-training verdict.
    """

    def __init__(self, vanish_ratio: float = 1e-4, explode_threshold: float = 1e3,
                 active: bool = True):
        self.vanish_ratio = float(vanish_ratio)
        self.explode_threshold = float(explode_threshold)
        #: False: record nothing and never warn (ember.sklearn's estimators, like MLPClassifier,
        #: do not diagnose gradients unless verbose).
        self.active = bool(active)
        self.flags: dict[str, str] = {}

    def on_train_begin(self, logs):
        if not getattr(self.trainer, "_resuming", False):
            self.flags = {}

    def on_epoch_end(self, epoch, logs):
        if not self.active:
            return
        from ember import ops
        norms, rels = {}, {}
        for name, p in self.trainer.model.named_parameters():
            if p.grad is None or not name.endswith("weight") or not p.requires_grad:
                continue
            g = ops.global_norm([p.grad])
            w = ops.global_norm([p.data])
            norms[name] = g
            rels[name] = g / w if w > 0 else float("inf")
        finite = [r for r in rels.values() if math.isfinite(r)]
        top = max(finite) if finite else 0.0
        for name, g in norms.items():
            rel = rels[name]
            kind = None
            if not math.isfinite(g) or g > self.explode_threshold:
                kind = "exploding"
            elif top > 0 and rel < self.vanish_ratio * top:
                kind = "vanishing"
            if kind and self.flags.get(name) != kind:
                self.flags[name] = kind
                layer = name.rsplit(".", 1)[0]
                warnings.warn(f"{kind} gradients in layer {layer} ({name}): |grad| = {g:.3g}, "
                              f"|grad|/|weight| = {rel:.3g} (largest layer: {top:.3g}) at "
                              f"epoch {epoch + 1}", GradientWarning, stacklevel=2)
        self.trainer.history.record_grad_norms(norms)

    def state_dict(self):
        return {"flags": dict(self.flags)}

    def load_state_dict(self, state):
        self.flags = dict(state.get("flags", {}))

