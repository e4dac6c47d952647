"""The training loop: show a batch, predict, score the loss, learn, repeat.

Example:
    >>> from ember import Trainer
    >>> from ember.nn import MLP
    >>> from ember.datasets import load_digits
    >>> x, y = load_digits()
    >>> trainer = Trainer(MLP([64, 256, 256, 10]), loss="cross_entropy", optimizer="adam")
    >>> history = trainer.fit(x, y, epochs=20, batch_size=32, validation_split=0.2, verbose=0)
    >>> trainer.evaluate(x, y)["accuracy"] > 0.9
    True
"""
from __future__ import annotations

import csv
import math
import numbers
import sys
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from ember import ops
from ember.backend import array_module, resolve_training_device
from ember.callbacks import (Callback, CallbackList, GradientMonitor, LRScheduler, ProgressBar,
                             TerminateOnNaN)
from ember.data import DataLoader, check_xy, train_val_split
from ember.losses import Loss, get_loss
from ember.nn import Module, Sequential, _check_seed
from ember.optim import Optimizer, get_optimizer

__all__ = ["Trainer", "History"]


class History:
    """Per-epoch records of a run: ``history["loss"]``, ``history["val_loss"]``, metrics,
    ``"lr"``, ``"grad_norm"`` (mean global gradient norm over the epoch's steps), ``"time"``
    (seconds), and ``grad_norms`` (per-layer norms at each epoch's end)."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []
        self.grad_norms: list[dict] = []

    def append(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            if k.startswith("_"):
                continue
            self.history.setdefault(k, [None] * (len(self.epochs) - 1)).append(v)
        for k, col in self.history.items():
            if len(col) < len(self.epochs):
                col.append(None)

    def record_grad_norms(self, norms: dict) -> None:
        self.grad_norms.append(dict(norms))

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __iter__(self):
        """The recorded keys (``"loss"``, ``"accuracy"``, ``"val_loss"``...), as a dict's."""
        return iter(self.history)

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self):
        return self.history.keys()

    def to_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in
                                                         self.history.items()},
                "grad_norms": list(self.grad_norms)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls()
        h.epochs = list(d.get("epochs", []))
        h.history = {k: list(v) for k, v in d.get("history", {}).items()}
        h.grad_norms = list(d.get("grad_norms", []))
        return h

    def to_csv(self, path) -> None:
        """Write one row per epoch (``epoch`` numbered from 1)."""
        keys = list(self.history)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch"] + keys)
            for i, e in enumerate(self.epochs):
                w.writerow([e + 1] + [self.history[k][i] for k in keys])

    def plot(self, path=None, title: str = "training curves"):
        """Loss (and each metric) per epoch, train vs validation; saved to ``path`` if given.

        Uses matplotlib's non-interactive Agg backend, so it works without a display.
        Returns the matplotlib Figure.
        """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        metrics = [k for k in self.history if not k.startswith("val_") and
                   k not in ("lr", "grad_norm", "time", "skipped_steps")]
        if not self.epochs or not metrics:
            raise ValueError("History.plot: nothing to plot yet (no epoch recorded); train first")
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
        x = [e + 1 for e in self.epochs]
        for ax, m in zip(axes[0], metrics):
            ax.plot(x, self.history[m], marker="o", ms=3, label=f"train {m}")
            if "val_" + m in self.history:
                ax.plot(x, self.history["val_" + m], marker="o", ms=3, label=f"validation {m}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(m)
            ax.set_title(m)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"


#: fit_params entries that describe the data rather than a choice (not hyperparameters).
_DATA_FACTS = ("target_variance", "val_target_variance", "target_mean_square")


def _mean_variance(y) -> float:
    """The targets' variance averaged over their columns: the MSE of predicting the mean."""
    return float(y.reshape(len(y), -1).astype("float64").var(axis=0).mean())


def _named_optimizer(name, model, kwargs: dict) -> Optimizer:
    """``get_optimizer(name, model, **kwargs)``, with an argument the optimizer does not take
    named in the error together with those it does."""
    try:
        return get_optimizer(name, model, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        import inspect
        from ember import optim
        cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[str(name).lower()]
        takes = [p for p in inspect.signature(cls).parameters if p != "params"]
        bad = [k for k in kwargs if k not in takes]
        raise TypeError(f"Trainer: optimizer {name!r} takes no argument "
                        f"{', '.join(map(repr, bad))} (it takes: {', '.join(takes)})") from None


class Trainer:
    """Fit, evaluate and predict with a model, a loss and an optimizer.

    Args:
        model: an :class:`ember.nn.Module` (e.g. :class:`ember.nn.MLP`).
        loss: a :class:`ember.losses.Loss` or ``"cross_entropy"`` / ``"mse"``.
        optimizer: an :class:`ember.optim.Optimizer` or ``"sgd"`` / ``"adam"`` / ``"adamw"``.
        lr: learning rate when ``optimizer`` is a name (default 1e-3 for Adam(W), 1e-2 for SGD).
        metrics: ``("accuracy",)`` (the default) records accuracy for classification, per
            epoch and in :meth:`evaluate`; ``()`` records the loss only (one argmax pass per step
            less). Ignored for regression (the loss is always reported).
        callbacks: :class:`ember.callbacks.Callback` instances.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``. ``"cuda"`` trains on the GPU (CuPy arrays:
            the data is copied to the device once per ``fit``); ``"auto"`` picks the GPU when
            one is usable (and :data:`ember.backend.GPU_TRAINING_VERIFIED`).
            ``evaluate`` / ``predict*`` always return NumPy arrays and Python floats.
        lr_schedule: an :mod:`ember.schedules` schedule (adds an LRScheduler callback).
        max_grad_norm: clip gradients by global norm (with an optimizer name).
        optimizer_kwargs: extra arguments for a named optimizer (momentum, weight_decay, ...).

    On the GPU, a plain stack of Linear layers (activations fused) trained with cross-entropy or
    MSE and SGD/Adam/AdamW runs each batch size's step once, captures it as a CUDA graph and
    replays it (see ``ember._cuda_graph``): the same kernels and the same bits as going step by
    step, without the Python between them. The loss, accuracy and gradient norm stay on the GPU
    until the epoch ends, so per-batch callbacks other than ember's own (TerminateOnNaN,
    ProgressBar, ModelCheckpoint without ``every_n_steps``) make the fit go step by step, and a
    non-finite loss stops training at the end of the epoch in which it appeared (the optimizer
    skips those steps meanwhile; the stop reason names the first such batch) instead of at once.
    :attr:`step_path` says which way the last fit went.
    """

    def __init__(self, model: Module, loss="cross_entropy", optimizer="adam",
                 lr: Optional[float] = None, metrics: Sequence[str] = ("accuracy",),
                 callbacks: Sequence[Callback] = (), device: str = "auto", lr_schedule=None,
                 max_grad_norm: Optional[float] = None, **optimizer_kwargs):
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: model must be an ember.nn.Module, got "
                            f"{type(model).__name__}")
        self.model = model
        self.loss: Loss = get_loss(loss)
        self.task = self.loss.task
        # "cuda" without a usable GPU raises ValueError ("... CUDA is not usable: <why>").
        self.device = resolve_training_device(device)
        model.to(self.device)
        if isinstance(optimizer, Optimizer):
            if lr is not None or optimizer_kwargs or max_grad_norm is not None:
                raise ValueError("Trainer: lr/max_grad_norm/optimizer options go to the "
                                 "optimizer's constructor when passing an Optimizer instance")
            self.optimizer = optimizer
        else:
            kw = dict(optimizer_kwargs)
            if lr is not None:
                kw["lr"] = lr
            if max_grad_norm is not None:
                kw["max_grad_norm"] = max_grad_norm
            self.optimizer = _named_optimizer(optimizer, model, kw)
        if isinstance(metrics, str):  # metrics="accuracy": one metric, not its letters
            metrics = (metrics,)
        for m in metrics:
            if m != "accuracy":
                raise ValueError(f"Trainer: unknown metric {m!r} (supported: 'accuracy')")
        self.metrics = tuple(m for m in metrics if self.task == "classification")
        self.user_callbacks = list(callbacks)
        if lr_schedule is not None:
            self.user_callbacks.append(LRScheduler(lr_schedule))
        self.history = History()
        #: False forces the layer-by-layer training path (tests compare the two, bit for bit).
        self._fused = True
        #: False makes a GPU fit go step by step instead of replaying CUDA graphs (the same).
        self._graphs = True
        #: How the last fit ran its steps: "fused" / "layer by layer" on the CPU, "cuda graphs"
        #: or "step by step (<why>)" on the GPU.
        self.step_path: Optional[str] = None
        self.epoch = 0
        self.epochs = 0
        self.global_step = 0
        self.steps_per_epoch = 0
        self.stop_training = False
        self.stop_reason: Optional[str] = None
        self.restored_epoch: Optional[int] = None
        self.n_classes: Optional[int] = None
        self.fit_params: dict = {}
        self._start_batch = 0
        self.batch_in_epoch = 0
        self._epoch_acc: Optional[list] = None
        self._resuming = False
        self._base_lr = self.optimizer.lr
        self._initial_lr = self.optimizer.lr  # the chosen lr, which the report shows
        self.gradient_monitor = GradientMonitor()

    # ---------------------------------------------------------------------------------------
    def _output_size(self) -> Optional[int]:
        out = None
        for _, p in self.model.named_parameters():
            if p.data.ndim == 2:
                out = p.shape[0]
        return out

    def _input_size(self) -> Optional[int]:
        for _, p in self.model.named_parameters():
            if p.data.ndim == 2:
                return p.shape[1]
        return None

    def _prepare(self, x, y, where):
        n_out = self._output_size()
        n_classes = n_out if self.task == "classification" else None
        x, y = check_xy(x, y, task=self.task, n_features=self._input_size(),
                        n_classes=n_classes, where=where)
        if y is not None and self.task == "regression" and n_out is not None and \
                y.shape[1] != n_out:
            raise ValueError(f"{where}: y has {y.shape[1]} target column(s), the model outputs "
                             f"{n_out}")
        return x, y

    def _to_device(self, *arrays):
        """The (already checked, host) arrays on the trainer's device: unchanged on the CPU,
        copied once to CuPy arrays on the GPU (None stays None)."""
        if self.device != "cuda":
            return arrays
        xp = array_module("cuda")
        return tuple(None if a is None else xp.asarray(a) for a in arrays)

    def hyperparameters(self) -> dict:
        """What the user chose (as opposed to what was learned); ``lr`` is the chosen learning
        rate, not the one a schedule or ReduceLROnPlateau has set since (``optimizer.lr``)."""
        fit = {k: v for k, v in self.fit_params.items() if k not in _DATA_FACTS}
        return {**fit, **self.optimizer.hyperparameters(), "lr": self._chosen_lr(),
                "loss": self.loss.config(), "device": self.device,
                "model": self._architecture()}

    def _architecture(self):
        """The model's ``config()``, or None for a custom module without one."""
        try:
            return self.model.config()
        except NotImplementedError:
            return None

    # ---------------------------------------------------------------------------------------
    def fit(self, x, y, epochs: int = 10, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, seed: int = 0, shuffle: bool = True,
            verbose: int = 1, checkpoint_dir=None, resume=None,
            accumulate_steps: int = 1) -> History:
        """Train for ``epochs`` passes over ``(x, y)``.

        Args:
            x: (n, features) array. y: class indices (classification) or targets (regression).
            epochs: passes over the training data (>= 1).
            batch_size: samples per gradient step (>= 1).
            validation_data: ``(x_val, y_val)`` scored after every epoch.
            validation_split: fraction of ``(x, y)`` held out for validation instead
                (stratified for classification, seeded).
            seed: data order (and the validation split): same seed, same run, bit for bit.
            verbose: 0 silent, 1 progress and the end-of-training report.
            checkpoint_dir: directory for checkpoints (see :mod:`ember.checkpoint`).
            resume: ``"latest"`` or a checkpoint path to continue an interrupted run.
            accumulate_steps: micro-batches of ``batch_size`` per optimizer step (>= 1): their
                gradients are summed, each scaled so that the step's gradient is the one of the
                batch of all their samples (the mean over the group's samples, weighted as the
                loss weights them; the sum for ``reduction="sum"``). Groups do not cross epochs:
                the last of an epoch takes the micro-batches left (fewer, the last possibly
                short): an epoch has ``ceil(batches / accumulate_steps)`` steps.
                ``global_step``, the optimizer's step count, per-batch callbacks (their
                ``loss`` is the step's), ``every_n_steps`` checkpoints and schedules count
                optimizer steps. 1 (the default): one step per batch.

        Returns:
            The :class:`History` (also ``trainer.history``).

        Raises:
            ValueError: bad data or hyperparameters, before any training step.
            TypeError: a model without ``backward`` (or, with checkpoints, ``config``), before
                any training step.
        """
        try:
            return self._fit(x, y, epochs, batch_size, validation_data, validation_split, seed,
                             shuffle, verbose, checkpoint_dir, resume, accumulate_steps)
        except KeyboardInterrupt:  # Ctrl-C: say how to continue the run, then stop as asked
            hint = self._resume_hint() if self.resume_hint else None
            if hint:
                print(hint, file=sys.stderr, flush=True)
            raise
        finally:  # a fit that raised (or was interrupted) leaves no checkpoint folder locked
            from ember.checkpoint import ModelCheckpoint
            for cb in getattr(self, "_checkpoint_callbacks", None) or ():
                if isinstance(cb, ModelCheckpoint):
                    cb._unlock()
            # the fit's step settings (see _fit) are not the model's
            self.model.__dict__.pop("_reuse_buffers", None)
            self.model.__dict__.pop("_accumulate_override", None)
            self.model.__dict__.pop("_fit_model", None)

    #: Print how to resume when a fit with checkpoints is interrupted (Ctrl-C); a program
    #: with its own message (``ember train``) turns it off.
    resume_hint = True

    def _resume_hint(self) -> Optional[str]:
        """After an interrupted fit that wrote checkpoints: where the run stands and the call
        that continues it. None when the fit had no checkpoints."""
        from ember.checkpoint import ModelCheckpoint
        saving = [c for c in getattr(self, "_checkpoint_callbacks", None) or ()
                  if isinstance(c, ModelCheckpoint)]
        if not saving:
            return None
        cb = saving[0]
        done = (f"the newest checkpoint is {cb.last_saved}" if cb.last_saved is not None else
                f"no checkpoint was written in this fit yet; {cb.directory} holds what was "
                "saved before")
        return (f"ember: training interrupted at epoch {self.epoch + 1} of {self.epochs}, step "
                f"{self.global_step}; {done}. To continue exactly where it was saved, call fit "
                f"again with the same data and arguments and checkpoint_dir="
                f"{str(cb.directory)!r}, resume='latest'")

    def _fit(self, x, y, epochs, batch_size, validation_data, validation_split, seed, shuffle,
             verbose, checkpoint_dir, resume, accumulate_steps=1) -> History:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                batch_size < 1:
            raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(validation_split, (bool, np.bool_)) or \
                not isinstance(validation_split, numbers.Real) or \
                not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be a number in [0, 1), got "
                             f"{validation_split!r}")
        if validation_data is not None and validation_split:
            raise ValueError("fit: give validation_data or validation_split, not both")
        seed = _check_seed("fit", seed)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"fit: shuffle must be True or False, got {shuffle!r}")
        if isinstance(verbose, (bool, np.bool_)):
            verbose = int(verbose)
        if not isinstance(verbose, (int, np.integer)) or verbose < 0:
            raise ValueError(f"fit: verbose must be 0 (silent) or 1 (progress and report), got "
                             f"{verbose!r}")
        if isinstance(accumulate_steps, (bool, np.bool_)) or \
                not isinstance(accumulate_steps, numbers.Integral) or accumulate_steps < 1:
            raise ValueError(f"fit: accumulate_steps must be a positive integer (micro-batches "
                             f"per optimizer step), got {accumulate_steps!r}")
        accumulate_steps = int(accumulate_steps)
        if y is None:
            raise ValueError("fit: y is required (class indices for classification, targets "
                             "for regression)")
        from ember.checkpoint import ModelCheckpoint
        from ember.nn import _check_trainable
        _check_trainable(self.model, checkpoint_dir is not None or resume is not None or any(
            isinstance(c, ModelCheckpoint) for c in self.user_callbacks))
        x, y = self._prepare(x, y, "fit")
        if validation_split:
            try:
                x, y, xv, yv = train_val_split(x, y, float(validation_split), seed=seed,
                                               stratify=self.task == "classification")
            except ValueError as exc:  # e.g. a fraction too small to hold out one sample
                raise ValueError(f"fit: validation_split={validation_split!r}: {exc}") from None
            validation = (xv, yv)
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            validation = self._prepare(*validation_data, "fit (validation_data)")
        else:
            validation = None
        # A digest of the training data, kept in checkpoints: resuming on other data of the same
        # size is refused like other batching changes (only when checkpoints are in play).
        from ember.checkpoint import ModelCheckpoint, data_digest
        checkpointing = (checkpoint_dir is not None or resume is not None or
                         any(isinstance(c, ModelCheckpoint) for c in self.user_callbacks))
        self._data_digest = data_digest(x, y) if checkpointing else None
        # Validated on the host; on the GPU the data moves to the device once, here, and batches
        # are gathered there (DataLoader follows the arrays' device).
        y_host = y  # (accumulate_steps > 1 with class weights reads the labels' weights)
        x, y = self._to_device(x, y)
        if validation is not None:
            validation = self._to_device(*validation)

        self.fit_params = {"epochs": int(epochs), "batch_size": int(batch_size),
                           "validation_split": float(validation_split), "seed": int(seed),
                           "shuffle": bool(shuffle), "n_train": int(len(x)),
                           "n_val": 0 if validation is None else int(len(validation[0])),
                           "accumulate_steps": accumulate_steps}
        if self.task == "regression":  # the scale a regression fit is judged on (R², report)
            self.fit_params["target_variance"] = _mean_variance(y)
            self.fit_params["target_mean_square"] = float(
                (y.reshape(len(y), -1).astype("float64") ** 2).mean())
            if validation is not None:
                self.fit_params["val_target_variance"] = _mean_variance(validation[1])
        # The loop is done with each batch before drawing the next: reused buffers.
        loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                            reuse_buffers=True)
        self.epochs = int(epochs)
        accum = accumulate_steps
        self.steps_per_epoch = -(-len(loader) // accum)  # optimizer steps (accum batches each)
        self.stop_training = False
        self.stop_reason = None
        self.restored_epoch = None

        # ModelCheckpoints go last: they save after every other callback updated its state.
        callbacks = list(self.user_callbacks)
        from ember.checkpoint import attach_checkpointing
        callbacks = ([c for c in callbacks if not isinstance(c, ModelCheckpoint)] +
                     [c for c in callbacks if isinstance(c, ModelCheckpoint)])
        ckpt = None
        if checkpoint_dir is not None or resume is not None:
            ckpt = attach_checkpointing(self, checkpoint_dir, resume, callbacks)
        start_epoch = 0
        if not self._resuming:
            self.history = History()
            self.global_step = 0
            self._start_batch = 0
        else:
            start_epoch = self.epoch
        self._checkpoint_callbacks = callbacks
        all_cbs = [TerminateOnNaN(), self.gradient_monitor] + callbacks
        if verbose:
            all_cbs.insert(2, ProgressBar())
        cbs = CallbackList(all_cbs, self)
        if ckpt is not None and ckpt.finished:
            self._resuming = False
            if verbose:
                print(f"ember: {ckpt.finished}; nothing more to train.")
            return self.history
        if ckpt is not None and ckpt.message and verbose:
            print(ckpt.message)

        # The loop is the same on both devices. On the GPU, a plain Linear stack with
        # cross-entropy or MSE and SGD/Adam(W) replays each step as a CUDA graph that leaves the
        # loss, accuracy count and gradient norm on the device (read once per epoch; see
        # ember._cuda_graph); otherwise a GPU step brings them back as Python values, which
        # synchronises the stream a few times per step.
        model, loss_fn, opt = self.model, self.loss, self.optimizer
        classify = "accuracy" in self.metrics  # classification only (see __init__)
        count_correct = ops.accuracy
        # On the CPU a plain Sequential/MLP with softmax cross-entropy trains through one kernel
        # call per batch for forward, loss and backward (the same bits; see
        # Sequential._fused_train_step); anything else goes layer by layer.
        # Gradients: each step's first micro-batch writes them, the others add to them. A
        # Sequential of ember's own layers (no parameter shared by two of them) is told so (its
        # Linear layers write or add, as the fused step and a captured CUDA graph do); any other
        # model gets zero_grad (which only marks the gradients) before each step. The Trainer's
        # forward calls are done with their output before the next: a Sequential's outputs go
        # to reused buffers.
        from ember import nn
        params = model.parameters()
        plain = (isinstance(model, Sequential) and type(model).backward is Sequential.backward
                 and all(type(layer).__module__ == nn.__name__ and
                         not isinstance(layer, Sequential) for layer in model.layers) and
                 sum(1 for layer in model.layers for _ in layer.named_parameters()) ==
                 len(params))
        fused = (self.device == "cpu" and self._fused and plain and
                 model._fused_step_ok(loss_fn) and accum == 1)
        if isinstance(model, Sequential):
            model._fit_model = True  # its backward skips the input gradient
        if isinstance(model, Sequential) and type(model).forward is Sequential.forward:
            model._reuse_buffers = True
        if plain:
            model._accumulate_override = False
            for p in params:  # every step writes every gradient: a zero_grad mark is moot
                p._zero = False
        mean = getattr(loss_fn, "reduction", "mean") != "sum"
        class_weight = getattr(loss_fn, "weight", None) if mean and accum > 1 else None
        if class_weight is not None:  # a step's mean divides by its samples' summed weights
            class_weight = np.asarray(class_weight.get() if hasattr(class_weight, "get")
                                      else class_weight, dtype=np.float64)
        runner = None
        if self.device == "cuda" and accum > 1:
            self.step_path = "step by step (accumulate_steps > 1)"
        elif self.device == "cuda":
            from ember import _cuda_graph
            why = _cuda_graph.graph_ok(self, cbs)
            if why is None and not plain:  # (a captured step writes each gradient once)
                why = "a parameter is shared by two layers"
            self.step_path = "cuda graphs" if why is None else f"step by step ({why})"
            if why is None:
                runner = _cuda_graph.GraphRunner(self, classify)
        else:
            self.step_path = "fused" if fused else "layer by layer"
        model.train()
        cbs.on_train_begin({})
        self._resuming = False
        batch_logs: dict[str, Any] = {}
        for epoch in range(start_epoch, self.epochs):
            self.epoch = epoch
            if epoch != start_epoch:
                self._start_batch = 0
            start = self._start_batch  # > 0 only in the first epoch of a mid-epoch resume
            t0 = time.perf_counter()
            cbs.on_epoch_begin(epoch, {})
            # Running sums of the epoch, kept on the trainer so that a checkpoint written in the
            # middle of an epoch resumes with the same epoch averages.
            acc = self._epoch_acc if start and self._epoch_acc else [0.0, 0.0, 0, 0.0, 0, 0]
            self._epoch_acc = acc
            if runner is not None:
                runner.begin_epoch(acc)
                try:
                    self._graph_epoch(runner, loader, epoch, start, acc, cbs)
                except BaseException:
                    try:  # keep the optimizer's counters true for whoever catches this
                        runner.collect(acc)
                    except Exception:  # noqa: BLE001 - the first error is the one to see
                        pass
                    raise
            if accum > 1:  # steps of accum micro-batches (start counts steps)
                bs, nb = loader.batch_size, len(loader)
                micro = loader.batches(epoch, start * accum)
                order = loader.order(epoch) if class_weight is not None else None
                for s in range(start, self.steps_per_epoch):
                    if cbs.wants_batch_begin:
                        cbs.on_batch_begin(s, batch_logs)
                    first, last = s * accum, min(s * accum + accum, nb)
                    sizes = [min(bs, loader.n - b * bs) for b in range(first, last)]
                    # what each micro-batch's mean divides by; scaled by its share of the
                    # step's total, the summed gradients are the mean over all their samples
                    denoms = [float(m) for m in sizes]
                    if order is not None:
                        w = class_weight[y_host[order[first * bs:first * bs + sum(sizes)]]]
                        ends = np.cumsum([0] + sizes)
                        denoms = [float(w[a:e].sum()) for a, e in zip(ends[:-1], ends[1:])]
                    total = sum(denoms)
                    step_loss, step_n = 0.0, 0
                    for j, (xb, yb) in zip(range(last - first), micro):
                        n = xb.shape[0]
                        if plain:
                            model._accumulate_override = j > 0
                        elif j == 0:
                            nn._mark_zero(params)
                        out = model.forward(xb)
                        loss = loss_fn.forward(out, yb)
                        if classify:
                            acc[1] += count_correct(out, yb) * n
                        g = loss_fn.backward()
                        if mean and denoms[j] != total:
                            g = g * np.float32(denoms[j] / total if total else 0.0)
                        model.backward(g)
                        step_loss += loss * denoms[j] if mean else loss
                        step_n += n
                    # the step's loss is the one of the batch of all its samples (and so is
                    # the epoch's average: the same as a fit with batches that large)
                    step_loss = step_loss / total if mean and total else step_loss
                    norm, was_skipped = opt.step()
                    self.global_step += 1
                    acc[0] += step_loss * step_n
                    acc[2] += step_n
                    acc[3] += norm
                    acc[4] += 1
                    acc[5] += was_skipped
                    self.batch_in_epoch = s + 1
                    if cbs.wants_batch_end:
                        batch_logs = {"loss": step_loss, "grad_norm": norm,
                                      "skipped": was_skipped, "epoch": epoch, "size": step_n}
                        cbs.on_batch_end(s, batch_logs)
                    if self.stop_training:
                        break
            batches = () if runner is not None or accum > 1 else loader.batches(epoch, start)
            for b, (xb, yb) in enumerate(batches, start):
                if cbs.wants_batch_begin:
                    cbs.on_batch_begin(b, batch_logs)
                n = xb.shape[0]
                if not plain:
                    nn._mark_zero(params)
                if fused:
                    loss, correct = model._fused_train_step(xb, yb, loss_fn, classify)
                    if classify:
                        acc[1] += correct / n * n  # the same float as ops.accuracy(...) * n
                else:
                    out = model.forward(xb)
                    loss = loss_fn.forward(out, yb)
                    if classify:
                        acc[1] += count_correct(out, yb) * n
                    model.backward(loss_fn.backward())
                norm, was_skipped = opt.step()
                self.global_step += 1
                acc[0] += loss * n
                acc[2] += n
                acc[3] += norm
                acc[4] += 1
                acc[5] += was_skipped
                self.batch_in_epoch = b + 1
                if cbs.wants_batch_end:
                    batch_logs = {"loss": loss, "grad_norm": norm, "skipped": was_skipped,
                                  "epoch": epoch, "size": n}
                    cbs.on_batch_end(b, batch_logs)
                if self.stop_training:
                    break
            loss_sum, correct, seen, norm_sum, steps, skipped = acc
            logs: dict[str, Any] = {"loss": loss_sum / seen if seen else float("nan")}
            if classify:
                logs["accuracy"] = correct / seen if seen else float("nan")
            if validation is not None:
                for k, v in self.evaluate(*validation, _checked=True).items():
                    logs["val_" + k] = v
                model.train()
            logs["lr"] = opt.lr
            logs["grad_norm"] = norm_sum / steps if steps else float("nan")
            logs["skipped_steps"] = skipped
            logs["time"] = time.perf_counter() - t0
            self.history.append(epoch, logs)
            self.epoch = epoch + 1
            self.batch_in_epoch = 0
            self._epoch_acc = None
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end({})
        model.eval()
        if verbose:
            print(self.report())
        return self.history

    def _graph_epoch(self, runner, loader, epoch, start, acc, cbs) -> None:
        """One epoch of GPU steps replayed as CUDA graphs (see ember._cuda_graph): nothing is
        read back until the epoch ends. Per-batch callbacks get ``loss`` None (only ember's own
        run here, see graph_ok). A non-finite loss stops training at the end of the epoch."""
        for b, (xb, yb) in enumerate(loader.batches(epoch, start), start):
            if cbs.wants_batch_begin:
                cbs.on_batch_begin(b, {})
            n = xb.shape[0]
            runner.step(xb, yb)
            self.global_step += 1
            acc[2] += n
            acc[4] += 1
            self.batch_in_epoch = b + 1
            if cbs.wants_batch_end:
                cbs.on_batch_end(b, {"loss": None, "grad_norm": None, "skipped": None,
                                     "epoch": epoch, "size": n})
            if self.stop_training:
                break
        if epoch + 1 < self.epochs and not self.stop_training:
            loader.prefetch(epoch + 1)  # on the host while the GPU finishes this epoch
        bad = runner.collect(acc)
        if bad is not None:
            index, value = bad
            self.stop_training = True
            self.stop_reason = (f"loss became {value} at epoch {epoch + 1}, batch "
                                f"{start + index + 1}")
        failure = runner.unreported_failure()
        if failure is not None:
            warnings.warn(f"ember: a training step could not be captured as a CUDA graph "
                          f"({failure}); that batch size trained step by step",
                          RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------------------------------
    def _batched_outputs(self, x, batch_size):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(x), batch_size):
                yield i, self.model.forward(x[i:i + batch_size])
        finally:
            self.model.train(was_training)

    def evaluate(self, x, y, batch_size: int = 1024, _checked: bool = False) -> dict:
        """Loss and metrics on ``(x, y)`` in eval mode (dropout off). Returns a dict."""
        if not _checked:
            x, y = self._to_device(*self._prepare(x, y, "evaluate"))
        classify = self.task == "classification"
        with_accuracy = "accuracy" in self.metrics
        loss_sum = 0.0
        weight_sum = 0.0
        correct = 0.0
        w = getattr(self.loss, "weight", None)
        xp = array_module(self.device)
        if w is not None and xp is not np:
            w = xp.asarray(w, dtype=xp.float32)  # the class weights must be where the logits are
        for i, out in self._batched_outputs(x, batch_size):
            yb = y[i:i + batch_size]
            n = out.shape[0]
            if classify:
                s, _ = ops.softmax_cross_entropy(
                    out, yb, weight=w, label_smoothing=self.loss.label_smoothing,
                    reduction="sum", compute_grad=False)
                loss_sum += s
                weight_sum += float(xp.asarray(w)[yb].sum()) if w is not None else n
                if with_accuracy:
                    correct += ops.accuracy(out, yb) * n
            else:
                s, _ = ops.mse(out, yb.reshape(out.shape), reduction="sum", compute_grad=False)
                loss_sum += s
                weight_sum += out.size
        result = {"loss": loss_sum / weight_sum}
        if self.loss.reduction == "sum":
            result["loss"] = loss_sum
        if with_accuracy:
            result["accuracy"] = correct / len(x)
        return result

    def predict_raw(self, x, batch_size: int = 1024):
        """The network's outputs (logits for classification), in eval mode, as a NumPy array
        (copied back from the GPU when the trainer is on one)."""
        x, _ = self._prepare(x, None, "predict")
        if self.device == "cuda":
            xd, = self._to_device(x)
            outs = [out for _, out in self._batched_outputs(xd, batch_size)]
            out = outs[0] if len(outs) == 1 else array_module("cuda").concatenate(outs)
            return out.get()
        outs = [out for _, out in self._batched_outputs(x, batch_size)]
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def predict_proba(self, x, batch_size: int = 1024):
        """Class probabilities (softmax of the logits)."""
        if self.task != "classification":
            raise ValueError("predict_proba: the model was trained for regression")
        z = self.predict_raw(x, batch_size).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z.astype(np.float32)

    def predict(self, x, batch_size: int = 1024):
        """Class indices (classification) or predicted values (regression)."""
        out = self.predict_raw(x, batch_size)
        if self.task == "classification":
            return ops.argmax(out)
        return out[:, 0] if out.shape[1] == 1 else out

    # ---------------------------------------------------------------------------------------
    def _loss_baseline(self) -> Optional[float]:
        """The training loss of a model that has learned nothing: ``ln(classes)`` for
        cross-entropy (a uniform guess), the targets' variance for MSE (predicting the mean).
        None when unknown (another loss, or the targets' variance was not recorded)."""
        kind = self.loss.config().get("type")
        if kind == "CrossEntropy" and self.task == "classification":
            c = self._output_size()
            return math.log(c) if c and c > 1 else None
        if kind == "MSE":
            v = self.fit_params.get("target_variance")
            return float(v) if v else None
        return None

    def _divergence(self) -> Optional[str]:
        """Why the loss says the steps overshoot (the learning rate is too high), or None: the
        loss became NaN/Inf, ended far above what a model that learned nothing scores, or rose
        well above its best after falling (an exploding loss)."""
        losses = [v for v in self.history.history.get("loss", []) if v is not None]
        if not losses:
            return None
        last = losses[-1]
        if not math.isfinite(last):
            return f"the training loss became {last}"
        base = self._loss_baseline()
        # Cross-entropy starts near ln(classes): an epoch far above it means it blew up, even
        # if it came back down (to a model that predicts one class: Adam at lr=5 on digits went
        # 1.2e6, 2.7e3, 26, 2.6, 2.6 with the validation loss stuck at 4.5e3). (An MSE can start
        # far above the targets' variance when they are offset: that is slow, not diverging,
        # and is judged by the rules below and by R².)
        if base is not None and self.task == "classification":
            worst = max(losses)
            if worst > 10.0 * base:
                when = "" if worst == last else (
                    f" at epoch {losses.index(worst) + 1} (it ended at {last:.4g})")
                return (f"the training loss reached {worst:.4g}{when}, {worst / base:.3g}x that "
                        f"of a uniform guess ({base:.4g})")
            val = [v for v in self.history.history.get("val_loss", []) if v is not None]
            if val and math.isfinite(val[-1]) and val[-1] > 10.0 * base:
                return (f"the validation loss is {val[-1]:.4g}, {val[-1] / base:.3g}x that of a "
                        f"uniform guess ({base:.4g})")
        square = self.fit_params.get("target_mean_square")
        if square is not None and self.loss.config().get("type") == "MSE":
            # A network starts out predicting about 0 (outputs of order 1): an MSE far above
            # both the targets' mean square and 1 came from steps that overshot.
            bound = max(float(square), 1.0)
            worst = max(losses)
            if worst > 10.0 * bound:
                when = "" if worst == last else (
                    f" at epoch {losses.index(worst) + 1} (it ended at {last:.4g})")
                return (f"the training loss (MSE) reached {worst:.4g}{when}, "
                        f"{worst / bound:.3g}x that of predicting 0 ({bound:.4g})")
        if len(losses) >= 2 and (base is None or last > base):
            best = min(losses)
            if last > 2.0 * best:
                return f"the training loss rose from its best {best:.4g} to {last:.4g}"
            if last > losses[0]:
                return f"the training loss ended above where it began ({losses[0]:.4g} -> {last:.4g})"
        return None

    def _r2(self, key: str, var_key: str) -> Optional[float]:
        """R² = 1 - MSE / variance of the targets, from the last epoch's ``key`` loss (MSE)."""
        h = self.history.history
        var = self.fit_params.get(var_key)
        if self.loss.config().get("type") != "MSE" or not var or key not in h:
            return None
        v = h[key][-1]
        return None if v is None or not math.isfinite(v) else 1.0 - v / float(var)

    def diagnosis(self) -> dict:
        """Plain verdicts from the history: fit quality and gradient health.

        ``fit`` is ``"diverging (learning rate too high)"`` when the loss overshoots (it became
        NaN/Inf, ended above 10x a model that learned nothing, or rose to over twice its best),
        ``"underfitting"``, ``"overfitting"``, ``"good"``, ``"no validation data"`` or
        ``"unknown"``. A regression fit is judged on R² (1 - MSE / the targets' variance), which
        does not depend on the targets' scale; ``"r2"`` and ``"val_r2"`` are included."""
        h = self.history.history
        out: dict[str, Any] = {"fit": "unknown", "gradients": "healthy", "notes": []}
        if not self.history.epochs:
            return out
        losses = [v for v in h["loss"] if v is not None]
        train_loss = h["loss"][-1]
        lr = self._chosen_lr()
        diverging = self._divergence()
        if diverging is not None:
            out["fit"] = "diverging (learning rate too high)"
            out["notes"].append(
                f"{diverging}: the steps overshoot the minimum. Lower the learning rate (try "
                f"lr={lr / 10:.3g}, a tenth of {lr:.3g}) or clip gradients (max_grad_norm); "
                "if the loss was this high from the first steps, standardize the features")
        # "try a higher learning rate" only when the loss fell at every epoch, just too slowly.
        steady = all(b <= a for a, b in zip(losses, losses[1:]))
        slower = ("more epochs, a larger model or a higher learning rate" if steady else
                  "more epochs or a larger model")
        if diverging is not None:
            pass
        elif "accuracy" in h and h["accuracy"][-1] is not None:  # classification, metric kept
            train_acc = h["accuracy"][-1]
            val_acc = h.get("val_accuracy", [None])[-1]
            if train_acc < 0.7 and (val_acc is None or val_acc < 0.7):
                out["fit"] = "underfitting"
                out["notes"].append(f"train accuracy {train_acc:.1%} is low: try {slower}")
            elif val_acc is not None and train_acc - val_acc > 0.05:
                out["fit"] = "overfitting"
                out["notes"].append(f"train accuracy {train_acc:.1%} vs validation "
                                    f"{val_acc:.1%}: add dropout/weight decay, more data, or "
                                    "early stopping")
            else:
                out["fit"] = "good" if val_acc is not None else "no validation data"
        elif self._r2("loss", "target_variance") is not None:  # regression with MSE: R²
            r2 = out["r2"] = self._r2("loss", "target_variance")
            val_r2 = out["val_r2"] = self._r2("val_loss", "val_target_variance")
            if r2 < 0.5 and (val_r2 is None or val_r2 < 0.5):
                out["fit"] = "underfitting"
                out["notes"].append(f"training R² {r2:.3g} is low (1 is perfect, 0 is no better "
                                    f"than predicting the mean): try {slower}")
            elif val_r2 is not None and r2 - val_r2 > 0.1:
                out["fit"] = "overfitting"
                out["notes"].append(f"training R² {r2:.3g} vs validation {val_r2:.3g}: add "
                                    "dropout/weight decay, more data, or early stopping")
            else:
                out["fit"] = "good" if val_r2 is not None else "no validation data"
        else:
            if not math.isfinite(train_loss) or train_loss > 0.5 * h["loss"][0]:
                out["fit"] = "underfitting"
                out["notes"].append(f"training loss fell by less than half: try {slower}")
            else:
                out["fit"] = "good"
        if "val_loss" in h and len(h["val_loss"]) >= 3 and out["fit"] in (
                "good", "no validation data", "overfitting"):
            vl = [v for v in h["val_loss"] if v is not None and math.isfinite(v)]
            if vl and vl[-1] > 1.1 * min(vl) and h["loss"][-1] < h["loss"][int(np.argmin(vl))]:
                if out["fit"] != "overfitting":
                    out["fit"] = "overfitting"
                out["notes"].append(f"validation loss rose from its best {min(vl):.4g} to "
                                    f"{vl[-1]:.4g} while training loss kept falling")
        flags = self.gradient_monitor.flags
        if flags:
            kinds = sorted(set(flags.values()))
            out["gradients"] = " and ".join(kinds)
            out["notes"].append("gradient problems in " + ", ".join(
                f"{k} ({v})" for k, v in sorted(flags.items())))
        if not math.isfinite(train_loss):
            out["gradients"] = "exploding"
        elif diverging is not None and out["gradients"] == "healthy":
            # The gradients are what a too-large step makes them: not "healthy".
            out["gradients"] = "large (the loss is diverging)"
        return out

    def _chosen_lr(self) -> float:
        """The learning rate the user chose (before any schedule or ReduceLROnPlateau)."""
        configured = getattr(self, "_configured_optimizer", None) or {}
        lr = configured.get("lr", getattr(self, "_initial_lr", None))
        return float(self.optimizer.lr if lr is None else lr)

    def report(self) -> str:
        """A short text report: parameters vs hyperparameters, final metrics, verdict."""
        lines = ["", "== ember training report =="]
        total = self.model.num_parameters()
        trainable = self.model.num_parameters(trainable_only=True)
        lines.append(f"parameters (learned): {total:,} ({trainable:,} trainable, "
                     f"{total - trainable:,} frozen)")
        hp = self.optimizer.hyperparameters()
        fp = self.fit_params
        chosen, now = self._chosen_lr(), float(hp["lr"])
        lines.append("hyperparameters (chosen): " + ", ".join(
            [f"epochs={fp.get('epochs')}", f"batch_size={fp.get('batch_size')}",
             f"optimizer={hp['optimizer']}", f"lr={chosen:.6g}"] +
            [f"{k}={v}" for k, v in hp.items() if k not in ("optimizer", "lr") and v] +
            [f"loss={self.loss.config()['type']}", f"seed={fp.get('seed')}"]))
        if not math.isclose(now, chosen, rel_tol=1e-12, abs_tol=0.0):
            lines.append(f"learning rate now: {now:.6g} (set by a schedule or "
                         "ReduceLROnPlateau; the run started at the chosen "
                         f"{chosen:.6g})")
        h = self.history.history
        if self.history.epochs:
            final = "  ".join(f"{k}={h[k][-1]:.4f}" for k in h
                              if k in ("loss", "accuracy", "val_loss", "val_accuracy")
                              and h[k][-1] is not None)
            lines.append(f"after {len(self.history)} epochs ({self.global_step} steps): {final}")
        if self.step_path:
            lines.append(f"steps: {self.device}, {self.step_path}")
        if self.stop_reason:
            lines.append(f"stopped: {self.stop_reason}")
        if self.restored_epoch is not None:
            lines.append(f"restored the weights of epoch {self.restored_epoch + 1}")
        d = self.diagnosis()
        r2 = "".join(f", {name} {d[key]:.4g}" for key, name in (("r2", "R²"),
                                                               ("val_r2", "validation R²"))
                     if d.get(key) is not None)
        lines.append(f"verdict: fit {d['fit']}{r2}; gradients {d['gradients']}")
        for note in d["notes"]:
            lines.append(f"  - {note}")
        return "\n".join(lines)
