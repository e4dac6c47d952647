"""Stop training at the first non-finite batch loss."""
from __future__ import annotations

import math

from ember.callbacks.base import Callback

__all__ = ["TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stop as soon as a batch loss is NaN or Inf."""

    def on_batch_end(self, batch, logs):
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.trainer.stop_training = True
            self.trainer.stop_reason = (f"loss became {loss} at epoch {logs.get('epoch', 0) + 1},"
                                        f" batch {batch + 1}")
