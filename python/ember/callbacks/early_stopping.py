"""Stop training when a monitored epoch log stops improving (and restore the best weights)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.callbacks.base import Monitor

__all__ = ["EarlyStopping"]


class EarlyStopping(Monitor):
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
        if self.trainer is not None and self.trainer.resuming:
            return  # state came from the checkpoint
        self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, None, None, None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs):
        v = self.value(logs)
        if v is not None and self.improved(v):
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
