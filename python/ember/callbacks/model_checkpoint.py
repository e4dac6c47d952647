"""ModelCheckpoint: the callback that decides *when* a checkpoint is written during a fit
(epoch ends, every n steps, a new best, the end of training) and which ones are kept. *What* is
written is the trainer's :meth:`ember.Trainer.state_dict`, through
:func:`ember.checkpoint.write_checkpoint` (the file format)."""
from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

from ember import _validate, checkpoint
from ember._io import as_path, read_pointer, replace_pointer
from ember.callbacks.base import Monitor
from ember.errors import CheckpointError

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Monitor):
    """Save checkpoints during training and keep the last ``keep_last`` plus the best.

    Args:
        directory: where checkpoints go (created if needed).
        every_n_epochs: save at the end of every n-th epoch (0 = never at epoch ends).
        every_n_steps: also save every n optimizer steps (mid-epoch), when given.
        keep_last: how many recent checkpoints to keep (older ones are deleted).
        save_best: also keep the checkpoint with the best ``monitor`` value (pointer ``best``).
        monitor, mode, min_delta: what "best" means (``"val_loss"``, min).

    At the end of training a final checkpoint marked finished is written; resuming it does no
    more training. Counts and the best checkpoint are recovered from the directory, so they stay
    right across restarts.

    A training run that does not resume from ``directory`` refuses to start when it already
    holds checkpoints (:class:`ember.CheckpointError`), and pruning deletes only the run's own
    earlier checkpoints: never one from a later step (left there by the run before it was
    resumed from an earlier checkpoint), never the one just written.
    """

    def __init__(self, directory, every_n_epochs: int = 1, every_n_steps: Optional[int] = None,
                 keep_last: int = 3, save_best: bool = True, monitor: str = "val_loss",
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, min_delta, mode)
        where = "ModelCheckpoint"
        _validate.int_at_least(where, "every_n_epochs", every_n_epochs, 0)
        _validate.int_at_least(where, "every_n_steps", every_n_steps, 1, none_ok=True)
        _validate.int_at_least(where, "keep_last", keep_last, 1)
        self.directory = as_path(directory, "ModelCheckpoint: directory")
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.keep_last = int(keep_last)
        self.save_best = bool(save_best)
        self.best_name: Optional[str] = None
        self.last_saved: Optional[Path] = None

    def _writer(self) -> bool:
        """Whether this process writes the folder: always alone; rank 0 only in a
        data-parallel fit (the others wait for it at each save)."""
        world = getattr(self.trainer, "world", None)
        return world is None or world.rank == 0

    def _save(self, finished: Optional[str] = None) -> Optional[Path]:
        """Save a checkpoint and prune; None (with a warning) when the model's weights are not
        all finite: such a checkpoint could not be loaded, and writing it would move ``latest``
        off the last good one and could prune good ones away. In a data-parallel fit rank 0
        writes and every other rank waits until it has (and gets its path)."""
        world = getattr(self.trainer, "world", None)
        path = self._write(finished) if self._writer() else None
        if world is not None:
            path = world.bcast(path)
            self.last_saved = path
        return path

    def _write(self, finished: Optional[str]) -> Optional[Path]:
        bad = checkpoint.non_finite_parameter(self.trainer.model)
        if bad is not None:
            warnings.warn(f"ModelCheckpoint: not saving step {self.trainer.global_step}: "
                          f"parameter {bad!r} holds NaN or Inf; '{self.directory}' keeps its "
                          f"last good checkpoint", RuntimeWarning, stacklevel=4)
            return None
        t = self.trainer
        path = checkpoint.write_checkpoint(
            t.state_dict(callbacks=t.fit_callbacks, finished=finished), self.directory)
        self.last_saved = path
        self._prune()
        return path

    def _prune(self) -> None:
        step = self.trainer.global_step
        ckpts = [p for p in checkpoint.list_checkpoints(self.directory)
                 if checkpoint.step_of(p) <= step]
        keep = {p.name for p in ckpts[-self.keep_last:]}
        if self.save_best and self.best_name:
            keep.add(self.best_name)
        if self.last_saved is not None:
            keep.add(self.last_saved.name)
        for p in ckpts:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def on_train_begin(self, logs):
        self.last_saved = None
        t = self.trainer
        if not t.resuming:
            # fit(checkpoint_dir=..., resume=...) checked this already; a ModelCheckpoint in
            # the callbacks of a fit without them is checked here, before the first step
            checkpoint.check_destination(self.directory, "ModelCheckpoint: directory", None)
            t.configured_optimizer = t.optimizer_configuration()
            self.best, self.best_name = None, None
        if self._writer():
            self.lock()
        ptr = self.directory / "best"
        if self.best_name is None and ptr.is_file():
            name = read_pointer(ptr)
            if name and "/" not in name and name not in (".", "..") and \
                    (self.directory / name).is_dir():
                self.best_name = name

    def on_batch_end(self, batch, logs):
        if self.every_n_steps and self.trainer.global_step % self.every_n_steps == 0 and \
                self.trainer.batch_in_epoch < self.trainer.steps_per_epoch:
            self._save()

    def on_epoch_end(self, epoch, logs):
        improved = False
        if self.save_best and self.monitor in logs:
            v = self.value(logs)
            if v is not None and self.improved(v):
                self.best = v
                improved = True
        if improved or (self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0):
            path = self._save()
            if improved and path is not None:
                self.best_name = path.name
                if self._writer():
                    replace_pointer(self.directory / "best", path.name)
                    self._prune()

    def on_train_end(self, logs):
        t = self.trainer
        self._save(finished=t.stop_reason or f"completed {t.epoch} of {t.epochs} epochs")
        self.release()

    # One fit a folder at a time: an exclusive lock on <directory>/.ember-lock for the length of
    # the fit (Trainer.fit releases it however the fit ends). Without it two fits into one
    # folder deleted each other's in-flight saves and interleaved their checkpoints.
    _lock_fd: Optional[int] = None

    def lock(self) -> None:
        """Take the folder's lock for this fit (CheckpointError when another fit holds it)."""
        self.release()
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: unguarded, as before
            return
        path = self.directory / checkpoint.LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by someone else
            os.close(fd)
            raise CheckpointError(f"checkpoint directory '{self.directory}' is in use by another "
                                  f"fit (it holds {path}); a folder takes one run at a time"
                                  ) from None
        except OSError:  # a file system without locks (some network mounts): unguarded
            os.close(fd)
            return
        self._lock_fd = fd

    def release(self) -> None:
        """Release the folder's lock (Trainer.fit calls it however the fit ends)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock

    def state_dict(self):
        return {"best": self.best if self.best is None or math.isfinite(self.best) else None,
                "best_name": self.best_name}

    def load_state_dict(self, state):
        self.best = state.get("best")
        self.best_name = state.get("best_name")
