"""``TensorBoard``: a fit's scalars as TensorBoard event files (through ``tensorboardX``).

Needs ``pip install "ember[tensorboard]"`` (tensorboardX, which needs no TensorFlow);
``import ember`` does not import it: the callback does, when training begins.

Example:
    >>> from ember.callbacks import TensorBoard
    >>> tb = TensorBoard("runs/tb")        # then: tensorboard --logdir runs/tb
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from ember import _validate
from ember.callbacks.base import Callback

__all__ = ["TensorBoard", "EventFile", "flatten_hyperparameters"]

#: epoch log -> TensorBoard tag (other ``val_<name>`` logs go to ``val/<name>``)
_EPOCH_TAGS = {"loss": "train/loss", "accuracy": "train/accuracy", "lr": "lr",
               "grad_norm": "grad_norm"}
#: where the per-step scalars (``every_n_steps``) go, under ``log_dir``: their own run, as
#: their steps count optimizer steps while the epoch scalars' count epochs
BATCH_RUN = "steps"
_INSTALL = 'pip install "ember[tensorboard]"'


def flatten_hyperparameters(hp: dict, prefix: str = "") -> dict:
    """``hp`` as one level of ``"a/b": scalar or string`` (nested dicts joined by ``/``, lists
    of dicts by index, other lists and values that are not numbers shown as text)."""
    out: dict = {}
    for key, value in hp.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_hyperparameters(value, name + "/"))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict)
                                                                  for v in value):
            for i, v in enumerate(value):
                out.update(flatten_hyperparameters(v, f"{name}/{i}/"))
        elif isinstance(value, bool) or value is None:
            out[name] = str(value)
        elif isinstance(value, (int, float)):
            out[name] = value
        else:
            out[name] = str(list(value) if isinstance(value, tuple) else value)
    return out


def _tensorboardx():
    """tensorboardX's event writer, protobufs and summaries (ImportError naming the extra)."""
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
    except ImportError:
        raise ImportError(f"TensorBoard needs tensorboardX: {_INSTALL}") from None
    return EventsWriter, Event, SessionLog, summary


class EventFile:
    """One event file in ``folder``, written as each value comes (``SummaryWriter`` queues
    them for a thread, so a fit that raises would lose the last ones; TensorBoard reads the
    same records). ``purge_step`` starts it as ``SummaryWriter(purge_step=...)`` does: a
    SessionLog START at that step, after which TensorBoard hides what earlier files hold at
    that step and later ones."""

    def __init__(self, folder: Path, purge_step: Optional[int] = None):
        writer_cls, self._event, session_log, self._summary = _tensorboardx()
        folder.mkdir(parents=True, exist_ok=True)
        # A unique, time-ordered name: a resumed process may start within the same second as
        # the one it continues (tensorboardX names files by the second and the host).
        self._writer = writer_cls(str(folder / "events"),
                                  f".{time.time_ns():020d}.{os.getpid()}")
        if purge_step is not None:
            self._write(purge_step, file_version="brain.Event:2")
            self._write(purge_step, session_log=session_log(status=session_log.START))

    def _write(self, step: int, **fields) -> None:
        self._writer.write_event(self._event(wall_time=time.time(), step=int(step), **fields))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(step, summary=self._summary.scalar(tag, float(value)))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._write(step, summary=self._summary.text(tag, text))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoard(Callback):
    """Write a fit's scalars for TensorBoard (``tensorboard --logdir <log_dir>``).

    Each epoch (global step = the epoch's number, 1 for the first): ``train/loss``,
    ``train/accuracy``, ``val/loss``, ``val/accuracy`` (those in the epoch's logs), ``lr``,
    ``grad_norm`` (the epoch's mean global gradient norm) and ``grad_norm/<layer>`` (each
    layer's weight-gradient norm at the epoch's end, as :class:`GradientMonitor` records it).
    Once per run, the trainer's hyperparameters as a text table (``hyperparameters``).

    Args:
        log_dir: the folder of the event files (created if needed).
        every_n_steps: also write ``train/batch_loss`` (the step's loss) every that many
            optimizer steps, at ``trainer.global_step``, into ``<log_dir>/steps`` (a run of its
            own in TensorBoard). On the GPU this makes a fit go step by step (the per-step loss
            comes back to the host) instead of replaying CUDA graphs; without it the callback
            keeps the graphs.

    A resumed run (``fit(checkpoint_dir=..., resume=...)``) continues the steps: the callback's
    state (in the checkpoint) says the last step it wrote, and its new event file starts with a
    purge at the next step, so TensorBoard hides what the interrupted process wrote after the
    checkpoint: every step appears once. The files are flushed every epoch and closed when
    training ends (or when the callback is collected after a fit that raised).
    """

    def __init__(self, log_dir, every_n_steps: Optional[int] = None):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"TensorBoard: log_dir must be a path, got {type(log_dir).__name__}")
        self.log_dir = Path(log_dir)
        self.every_n_steps = _validate.int_at_least("TensorBoard", "every_n_steps",
                                                    every_n_steps, 1, none_ok=True)
        #: the last epoch step and optimizer step written (None: none yet)
        self.last_epoch_step: Optional[int] = None
        self.last_batch_step: Optional[int] = None
        self.hparams_written = False
        self.writer = None
        self.batch_writer = None

    # -- writers ------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the event files (the next fit opens new ones)."""
        for name in ("writer", "batch_writer"):
            w = getattr(self, name, None)
            if w is not None:
                setattr(self, name, None)
                w.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # (at interpreter exit the writer's modules may be gone)
            pass

    # -- hooks --------------------------------------------------------------------------
    def on_train_begin(self, logs):
        _tensorboardx()  # a clear ImportError before anything is written
        self.close()
        t = self.trainer
        if not t.resuming:
            self.last_epoch_step = self.last_batch_step = None
            self.hparams_written = False
        world = getattr(t, "world", None)
        if world is not None and world.rank != 0:
            return  # (a data-parallel fit: rank 0 writes the event files)
        # On a resume, what the interrupted process wrote after the checkpoint is purged: from
        # the step after the last one written as of the checkpoint (the trainer's position).
        epoch_done = self.last_epoch_step if self.last_epoch_step is not None else t.epoch
        self.writer = EventFile(self.log_dir, epoch_done + 1 if t.resuming else None)
        if self.every_n_steps:
            step_done = (self.last_batch_step if self.last_batch_step is not None
                         else t.global_step)
            self.batch_writer = EventFile(self.log_dir / BATCH_RUN,
                                           step_done + 1 if t.resuming else None)
        if not self.hparams_written:
            self._write_hyperparameters()

    def _write_hyperparameters(self) -> None:
        flat = flatten_hyperparameters(self.trainer.hyperparameters())
        rows = [f"| {k} | {v} |" for k, v in flat.items()]
        self.writer.add_text("hyperparameters", "\n".join(["| name | value |", "|---|---|"] +
                                                          rows), 0)
        self.writer.flush()
        self.hparams_written = True

    def on_batch_end(self, batch, logs):
        n = self.every_n_steps
        step = self.trainer.global_step
        if not n or step % n or self.batch_writer is None:
            return
        self.batch_writer.add_scalar("train/batch_loss", float(logs["loss"]), step)
        self.batch_writer.flush()  # (on disk before a checkpoint can record it as written)
        self.last_batch_step = step

    def on_epoch_end(self, epoch, logs):
        if self.writer is None:
            return
        step = epoch + 1
        for key, value in logs.items():
            tag = _EPOCH_TAGS.get(key)
            if tag is None and key.startswith("val_"):
                tag = "val/" + key[4:]
            if tag is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(tag, float(value), step)
        history = self.trainer.history
        if history.grad_norms and len(history.grad_norms) == len(history):
            for name, norm in history.grad_norms[-1].items():
                layer = name[:-len(".weight")] if name.endswith(".weight") else name
                self.writer.add_scalar(f"grad_norm/{layer}", float(norm), step)
        self.last_epoch_step = step
        self.writer.flush()
        if self.batch_writer is not None:
            self.batch_writer.flush()

    def on_train_end(self, logs):
        self.close()

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"last_epoch_step": self.last_epoch_step, "last_batch_step": self.last_batch_step,
                "hparams_written": self.hparams_written}

    def load_state_dict(self, state: dict) -> None:
        e, b = state.get("last_epoch_step"), state.get("last_batch_step")
        self.last_epoch_step = None if e is None else int(e)
        self.last_batch_step = None if b is None else int(b)
        self.hparams_written = bool(state.get("hparams_written", False))
