"""Lower the learning rate when a monitored epoch log stalls."""
from __future__ import annotations

from ember.callbacks.base import Monitor

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau(Monitor):
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
        v = self.value(logs)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if v is not None and self.improved(v):
            self.best, self.wait = v, 0
            return
        if self.cooldown_left == 0:
            self.wait += 1
            if self.wait > self.patience:
                opt = self.trainer.optimizer
                new = max(self.min_lr, opt.lr * self.factor)
                if new < opt.lr:
                    opt.lr = new
                    self.trainer.base_lr = new
                self.cooldown_left, self.wait = self.cooldown, 0

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state):
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.cooldown_left = int(state.get("cooldown_left", 0))
