"""Show training progress: a tqdm bar on a terminal, one line per epoch otherwise."""
from __future__ import annotations

import sys
import time

from ember.callbacks.base import Callback

__all__ = ["ProgressBar"]


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
                             initial=self.trainer.start_batch)
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
