"""The learning-rate range test: train a few hundred steps with a learning rate that grows
exponentially from tiny to huge, watch the loss, and suggest a rate where it fell fastest.

The test is Leslie Smith's ("Cyclical Learning Rates for Training Neural Networks",
arXiv:1506.01186, section 3.3) as fastai's ``Learner.lr_find`` runs it: step ``i`` of
``num_steps`` trains one shuffled batch at ``lr_i = start_lr * (end_lr/start_lr)**(i/(num_steps-1))``
(epochs are cycled when the steps outnumber an epoch's batches); the loss is smoothed by an
exponential moving average (beta 0.98, bias-corrected, as fastai); the test stops early once the
smoothed loss exceeds 4 times its minimum, or is not finite. :func:`lr_find` then puts the
trainer back as it was: model weights, optimizer state, step counts and learning rate, Dropout
counters, the trainer's own fields. It runs no callbacks.

Three readings of the curve (:class:`LRFindResult`):

- ``suggestion``: fastai's "valley" rule (fastai PR #3377, ``SuggestionMethod.Valley``): the
  longest run of decreasing smoothed loss (a longest decreasing subsequence, so a small bump does
  not cut it), and the learning rate about halfway along it (in steps, so in log lr).
- ``steepest``: where the smoothed loss falls fastest against log(lr). The slope is taken against
  log(lr), not lr: the rates are spaced evenly in log(lr), and a slope against lr itself (the bug
  of Lightning issues #14248 and #21141) drags the point toward large rates.
- ``minimum_tenth``: the rate of the lowest smoothed loss, divided by 10 (fastai's ``lr_min``).

Like fastai, the readings leave out the first tenth of the steps (the loss has hardly moved) and
the last 5 (where it may be blowing up).

Example:
    >>> import ember
    >>> from ember.nn import MLP
    >>> x, y = ember.datasets.load_digits()
    >>> trainer = ember.Trainer(MLP([64, 32, 10], seed=0), optimizer="adam")
    >>> result = trainer.lr_find(x, y, num_steps=60)
    >>> 1e-4 <= result.suggestion <= 1.0
    True
    >>> trainer.optimizer.lr, trainer.optimizer.step_count   # put back as it was
    (0.001, 0)
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np

from ember import _validate, nn
from ember.backend import array_module, to_host
from ember.callbacks import CallbackList
from ember.data import DataLoader
from ember.train import steps as _steps
from ember.train.history import finish_figure, pyplot
from ember.train.state import EpochTally

__all__ = ["LRFindResult", "lr_find", "BETA", "DIVERGENCE_FACTOR"]

#: the smoothing of the loss curve (fastai's and Lightning's)
BETA = 0.98
#: the test stops once the smoothed loss exceeds this many times its minimum
DIVERGENCE_FACTOR = 4.0
_SKIP_END = 5  # steps left out at the end of the curve when reading it (fastai's)


def smooth(losses, beta: float = BETA) -> np.ndarray:
    """The exponential moving average of ``losses``, bias-corrected: point ``i`` is
    ``sum_j (1-beta) beta**(i-j) loss_j / (1 - beta**(i+1))``."""
    out = np.empty(len(losses), np.float64)
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * float(loss)
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def longest_descent(values) -> tuple[int, int]:
    """``(first, last)``: the indices where the longest strictly decreasing subsequence of
    ``values`` starts and ends (the earliest such run on ties). The idea of fastai's "valley"
    rule; our own code (O(n^2) in NumPy, n is a few hundred)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    length = np.ones(n, np.int64)
    start = np.arange(n)
    best = 0
    for i in range(1, n):
        higher = v[:i] > v[i]  # earlier points this one can follow down
        if higher.any():
            cand = np.where(higher, length[:i], 0)
            j = int(np.argmax(cand))  # the first of the longest runs ending above v[i]
            length[i] = cand[j] + 1
            start[i] = start[j]
        if length[i] > length[best]:
            best = i
    return int(start[best]), best


class LRFindResult:
    """What :func:`lr_find` measured: ``lrs``, ``losses`` (each step's training loss),
    ``smoothed`` (their bias-corrected moving average), and the readings ``suggestion``,
    ``steepest`` and ``minimum_tenth`` (see the module docstring; None when fewer than 2 finite
    points were recorded). ``stopped_early`` says whether the loss diverged before the last
    step; ``num_steps`` is the number of steps asked for."""

    def __init__(self, lrs, losses, num_steps: int, stopped_early: bool, beta: float = BETA):
        self.lrs = np.asarray(lrs, np.float64)
        self.losses = np.asarray(losses, np.float64)
        self.smoothed = smooth(self.losses, beta)
        self.num_steps = int(num_steps)
        self.stopped_early = bool(stopped_early)
        self.suggestion_index = self.steepest_index = self.minimum_index = None
        lo, hi = self.window()
        idx = np.arange(lo, hi)[np.isfinite(self.smoothed[lo:hi])]
        if len(idx) >= 2:
            s, log_lr = self.smoothed[idx], np.log(self.lrs[idx])
            first, last = longest_descent(s)
            self.suggestion_index = int(idx[first + (last - first) // 2])
            self.steepest_index = int(idx[int(np.argmin(np.gradient(s, log_lr)))])
            self.minimum_index = int(idx[int(np.argmin(s))])

    def window(self) -> tuple[int, int]:
        """The steps the readings look at: ``[first, end)`` without the first tenth of the steps
        and the last 5 (all of them when that would leave fewer than 2)."""
        n = len(self.lrs)
        lo, hi = n // 10, n - _SKIP_END
        return (lo, hi) if hi - lo >= 2 else (0, n)

    def _lr_at(self, index: Optional[int]) -> Optional[float]:
        return None if index is None else float(self.lrs[index])

    @property
    def suggestion(self) -> Optional[float]:
        """The learning rate halfway along the longest descent of the smoothed loss."""
        return self._lr_at(self.suggestion_index)

    @property
    def steepest(self) -> Optional[float]:
        """The learning rate of the steepest fall of the smoothed loss against log(lr)."""
        return self._lr_at(self.steepest_index)

    @property
    def minimum_tenth(self) -> Optional[float]:
        """The learning rate of the lowest smoothed loss, divided by 10."""
        lr = self._lr_at(self.minimum_index)
        return None if lr is None else lr / 10.0

    def rows(self) -> list[tuple[float, float, float]]:
        """``(lr, loss, smoothed)`` per step (what ``ember lr-find`` writes to lr_find.csv)."""
        return [(float(a), float(b), float(c))
                for a, b, c in zip(self.lrs, self.losses, self.smoothed)]

    def plot(self, path=None, title: str = "learning-rate finder"):
        """The loss against the learning rate (log axis): raw and smoothed, the suggestion
        marked (and the steepest point). Saved to ``path`` if given; matplotlib's Agg backend,
        so no display is needed. Returns the Figure."""
        fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
        ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=2, label=f"smoothed (beta {BETA})")
        for index, name, style in ((self.suggestion_index, "suggestion", "o"),
                                   (self.steepest_index, "steepest", "^")):
            if index is not None:
                ax.plot(self.lrs[index], self.smoothed[index], style, ms=9,
                        label=f"{name}: {self.lrs[index]:.3g}")
        ax.set_xscale("log")
        finite = self.smoothed[np.isfinite(self.smoothed)]
        raw = self.losses[np.isfinite(self.losses)]
        if len(finite) and len(raw):  # keep the divergence from flattening the curve
            top = min(max(float(finite.max()), float(raw.max())),
                      DIVERGENCE_FACTOR * float(finite.min()))
            bottom = min(float(finite.min()), float(raw.min()))
            pad = 0.05 * (top - bottom) + 1e-12
            ax.set_ylim(bottom - pad, top + pad)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        return finish_figure(fig, path)

    def __repr__(self) -> str:
        def fmt(v):
            return "None" if v is None else f"{v:.3g}"
        return (f"LRFindResult(steps={len(self.lrs)}/{self.num_steps}, suggestion="
                f"{fmt(self.suggestion)}, steepest={fmt(self.steepest)}, minimum_tenth="
                f"{fmt(self.minimum_tenth)}, stopped_early={self.stopped_early})")


def _check_args(start_lr, end_lr, num_steps, batch_size, seed) -> tuple:
    where = "lr_find"
    start_lr = _validate.positive_real(where, "start_lr", start_lr)
    end_lr = _validate.positive_real(where, "end_lr", end_lr)
    if end_lr <= start_lr:
        _validate.fail(where, "end_lr", f"greater than start_lr ({start_lr!r})", end_lr)
    num_steps = _validate.int_at_least(where, "num_steps", num_steps, 2)
    batch_size = _validate.positive_int(where, "batch_size", batch_size)
    seed = _validate.seed(where, seed)
    return start_lr, end_lr, num_steps, batch_size, seed


def _data(trainer, x, y):
    """``(x, y)`` checked as ``fit`` checks them and on the trainer's device."""
    if y is None:
        raise ValueError("lr_find: y is required (class indices for classification, targets "
                         "for regression)")
    return trainer.to_device(*trainer.check_data(x, y, "lr_find"))


def _snapshot(trainer) -> dict:
    """What the test changes, copied: the model's weights, gradients and mode, the optimizer's
    state dict (arrays copied), Dropout counters, the trainer's fields."""
    opt = trainer.optimizer.state_dict()
    opt["state"] = {n: {k: a.copy() for k, a in st.items()} for n, st in opt["state"].items()}
    params = trainer.model.parameters()
    return {"weights": [(p, p.data.copy()) for p in params],
            "grads": [(p, None if p.grad is None else p.grad.copy()) for p in params],
            "training": trainer.model.training,
            "optimizer": opt, "last_grad_norm": trainer.optimizer.last_grad_norm,
            "dropout": [(m, m.seed, m.counter) for _, m in trainer.model.named_modules()
                        if isinstance(m, nn.Dropout)],
            "fields": dict(vars(trainer))}


def _restore(trainer, saved: dict) -> None:
    for p, data in saved["weights"]:
        p.data[...] = data  # in place: the arrays the optimizer and step plans hold
    for p, grad in saved["grads"]:
        p.grad = grad  # (a new array: cached step plans see the change and are rebuilt)
    opt = trainer.optimizer
    # state the test created (a fresh optimizer's) goes; load_state_dict copies the rest back
    # into the arrays and drops the optimizer's cached lists, so the next step starts anew
    opt.state = {n: st for n, st in opt.state.items() if n in saved["optimizer"]["state"]}
    opt.load_state_dict(saved["optimizer"])
    opt.last_grad_norm = saved["last_grad_norm"]
    for layer, seed, counter in saved["dropout"]:
        layer.seed, layer.counter = seed, counter
    fields = vars(trainer)
    for name in [k for k in fields if k not in saved["fields"]]:
        del fields[name]
    fields.update(saved["fields"])
    _steps.clear_fit_settings(trainer.model)
    trainer.model.train(saved["training"])


def _run(trainer, loader, lrs) -> tuple[list, list, bool]:
    """The test's steps: one batch at each learning rate, until the smoothed loss diverges.
    Returns the learning rates and losses recorded and whether it stopped early."""
    # the fit's step (fused on the CPU), but step by step on the GPU: each loss is read back
    trainer.cuda_graphs = False
    step = _steps.choose(trainer, CallbackList([], trainer), False, 1, None)
    trainer.model.train()
    tally = EpochTally()
    opt = trainer.optimizer
    done_lrs, losses = [], []
    avg, best = 0.0, math.inf
    batches = itertools.chain.from_iterable(loader.batches(e) for e in itertools.count())
    for i, (lr, batch) in enumerate(zip(lrs, batches)):
        opt.lr = float(lr)
        loss = float(step(batch, tally)[0])
        done_lrs.append(float(lr))
        losses.append(loss)
        avg = BETA * avg + (1.0 - BETA) * loss
        smoothed = avg / (1.0 - BETA ** (i + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGENCE_FACTOR * best:
            return done_lrs, losses, i + 1 < len(lrs)
        best = min(best, smoothed)
    return done_lrs, losses, False


def lr_find(trainer, x, y, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, batch_size: int = 32, seed: int = 0,
            class_weight=None) -> LRFindResult:
    """Run the learning-rate range test of ``trainer`` on ``(x, y)`` and put the trainer back.

    Args:
        trainer: an :class:`ember.Trainer` (its model, loss and optimizer are the ones tested).
        x, y: training data, as for ``fit`` (use the training split only).
        start_lr, end_lr: the first and last learning rates (0 < start_lr < end_lr).
        num_steps: steps (>= 2), one batch each; the learning rate grows by the same factor
            each step.
        batch_size: samples per step (>= 1).
        seed: the batches' order (a seeded shuffle per epoch, as ``fit``'s).
        class_weight: as ``fit``'s (None, ``"balanced"`` or ``{class: weight}``), on ``y``:
            the loss weighs the classes so during the test, as the fit that follows will.

    Returns:
        An :class:`LRFindResult`.

    Raises:
        ValueError: a bad argument (named) or bad data, before any step.

    Afterwards the model's weights and mode, the optimizer (state arrays, step count, skipped
    steps, lr), Dropout counters and the trainer's fields (history, epoch, global_step,
    fit_params, ...) are what they were: a ``fit`` after ``lr_find`` gives the same bits as
    the same ``fit`` without it.
    """
    start_lr, end_lr, num_steps, batch_size, seed = _check_args(
        start_lr, end_lr, num_steps, batch_size, seed)
    class_weight = trainer.check_class_weight(class_weight, "lr_find")
    x, y = _data(trainer, x, y)
    nn.check_trainable(trainer.model, False)
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=seed,
                        reuse_buffers=True)
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    saved = _snapshot(trainer)
    if class_weight is not None:  # (checked above: the loss has no weights of its own)
        w = trainer.class_weights(class_weight, to_host(y))
        trainer.loss.weight = array_module(trainer.device).asarray(w)
    try:
        done_lrs, losses, stopped = _run(trainer, loader, lrs)
    finally:
        _restore(trainer, saved)
        if class_weight is not None:
            trainer.loss.weight = None
    return LRFindResult(done_lrs, losses, num_steps, stopped)
