"""How ``fit(checkpoint_dir=..., resume=...)`` continues a run: which checkpoint, whether the
destination folders are free, and what to say. The state itself is restored by
:meth:`ember.Trainer.load_state_dict` (:mod:`ember.train.state`)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

from ember import checkpoint
from ember._io import as_path, prepare_dir, same_dir
from ember.callbacks import ModelCheckpoint

__all__ = ["Resume", "attach_checkpointing"]


class Resume:
    """What :func:`attach_checkpointing` found: ``finished`` (why the restored run needs no
    more training, or None) and ``message`` (what a verbose fit prints: where it continues)."""

    def __init__(self, finished: Optional[str], message: Optional[str] = None):
        self.finished = finished
        self.message = message


def _source(checkpoint_dir: Optional[Path], resume) -> Optional[Path]:
    """The checkpoint (or folder holding ``latest``) that ``resume`` names, or None for a
    fresh run."""
    if resume == "latest":
        if checkpoint_dir is None:
            raise ValueError("fit: resume='latest' needs checkpoint_dir")
        ptr = checkpoint_dir / "latest"
        if ptr.exists() or ptr.is_symlink():
            return checkpoint_dir
        ckpts = checkpoint.list_checkpoints(checkpoint_dir)
        if ckpts:  # the pointer is gone (deleted, or a copy without it): not a fresh run
            warnings.warn(f"fit: {ptr} is missing; resuming from the newest complete "
                          f"checkpoint, {ckpts[-1]}", stacklevel=4)
            return ckpts[-1]
        return None  # nothing saved yet: a fresh run
    return resume


def attach_checkpointing(trainer, checkpoint_dir, resume, callbacks: list) -> Resume:
    """Called by ``Trainer.fit``: add a ModelCheckpoint when none is given, and restore the
    trainer from ``resume``. Returns whether the restored run had already finished.

    Everything is checked before any training: a ``checkpoint_dir`` that is a file, a
    destination that holds another run's checkpoints (unless resuming that run), an unusable
    ``resume``."""
    if checkpoint_dir is not None:
        checkpoint_dir = as_path(checkpoint_dir, "fit: checkpoint_dir")
        prepare_dir(checkpoint_dir, "fit: checkpoint_dir")
    if resume is not None and resume != "latest":
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(f"fit: resume must be 'latest' or a checkpoint path, got "
                            f"{type(resume).__name__}")
        resume = as_path(resume, "fit: resume")
    if checkpoint_dir is not None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint(checkpoint_dir))
    source = _source(checkpoint_dir, resume)
    here = checkpoint.resolve_checkpoint(source) if source is not None else None
    for cb in callbacks:  # before anything is restored: the destinations must be free
        if isinstance(cb, ModelCheckpoint):
            what = ("fit: checkpoint_dir" if checkpoint_dir is not None and
                    same_dir(cb.directory, checkpoint_dir) else "ModelCheckpoint: directory")
            checkpoint.check_destination(cb.directory, what, here)
    if here is None:
        return Resume(None)
    ck = checkpoint.load_checkpoint(here)
    here = ck["path"]
    overridden = trainer.load_state_dict(ck, callbacks)
    if overridden:
        warnings.warn(f"fit: resuming {here}: the run's hyperparameters are used, not the "
                      f"trainer's: {', '.join(overridden)}", stacklevel=3)
    st = ck["state"]
    if st.get("stop_reason"):
        return Resume(f"the run stopped early ({st['stop_reason']})")
    if trainer.epoch >= trainer.epochs:
        return Resume(f"the run already completed {trainer.epoch} of {trainer.epochs} epochs")
    batch = trainer.start_batch
    where = f"batch {batch + 1} of {trainer.steps_per_epoch}" if batch else "its start"
    return Resume(None, f"ember: resumed {here} at epoch {trainer.epoch + 1} of "
                        f"{trainer.epochs} ({where}), step {trainer.global_step}")
