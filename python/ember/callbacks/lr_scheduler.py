"""Set the learning rate from a schedule, per epoch or per step."""
from __future__ import annotations

from ember.callbacks.base import Callback
from ember.schedules import get_schedule

__all__ = ["LRScheduler"]


class LRScheduler(Callback):
    """Set the learning rate from an :mod:`ember.schedules` schedule (per step or per epoch),
    or from a function of the epoch that returns it (as Keras' ``LearningRateScheduler``).

    The schedule counts epochs and steps from where it joined the run: from 0 in a fresh fit,
    and from the resume point when it is added to a resumed run that did not have it (a
    warmup then warms up from there). Resuming a run that had it continues where it was."""

    def __init__(self, schedule):
        self.schedule = get_schedule(schedule)
        self.start_epoch = 0
        self.start_step = 0
        self._restored = False

    def on_train_begin(self, logs):
        t = self.trainer
        if not t.resuming:
            self.start_epoch, self.start_step = 0, 0
        elif not self._restored:  # added on resume: it starts here, not at epoch 0
            self.start_epoch, self.start_step = int(t.epoch), int(t.global_step)
        self._restored = False

    def _apply(self):
        t = self.trainer
        t.optimizer.lr = self.schedule.learning_rate(
            t.epoch - self.start_epoch, t.global_step - self.start_step, t.base_lr,
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
