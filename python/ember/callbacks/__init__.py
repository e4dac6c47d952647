"""Callbacks: code that runs at fixed points of :meth:`ember.Trainer.fit`, one module each.

Hooks (all no-ops by default) receive a ``logs`` dict: ``on_train_begin/end(logs)``,
``on_epoch_begin/end(epoch, logs)``, ``on_batch_begin/end(batch, logs)``. A callback stops
training by setting ``self.trainer.stop_training = True``. Callbacks with state that a resumed
run needs implement ``state_dict()`` / ``load_state_dict()``; checkpoints save it.
:class:`Monitor` is the base of those that watch one epoch log.

Example:
    >>> from ember.callbacks import EarlyStopping
    >>> stop = EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
"""
from ember.callbacks.base import Callback, CallbackList, Monitor, mode_for
from ember.callbacks.early_stopping import EarlyStopping
from ember.callbacks.gradient_monitor import GradientMonitor, GradientWarning
from ember.callbacks.lr_scheduler import LRScheduler
from ember.callbacks.model_checkpoint import ModelCheckpoint
from ember.callbacks.progress_bar import ProgressBar
from ember.callbacks.reduce_lr import ReduceLROnPlateau
from ember.callbacks.tensorboard import TensorBoard
from ember.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "Callback", "CallbackList", "Monitor", "mode_for", "EarlyStopping", "ReduceLROnPlateau",
    "TerminateOnNaN", "ProgressBar", "GradientMonitor", "GradientWarning", "LRScheduler",
    "ModelCheckpoint", "TensorBoard",
]
