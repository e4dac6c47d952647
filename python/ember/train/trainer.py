"""The training loop: show a batch, predict, score the loss, learn, repeat.

``Trainer.fit`` reads as one call per phase: check the arguments, prepare the data, record the
hyperparameters, set up the callbacks (and a resume), choose the step
(:mod:`ember.train.steps`), then per epoch run the steps and write the epoch's logs.

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

import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from ember import _validate, checkpoint, distributed, ops
from ember.distributed import launched_size as distributed_launch_size
from ember.distributed import world as distributed_world
from ember._io import as_path
from ember.backend import array_module, resolve_training_device, to_host
from ember.callbacks import (Callback, CallbackList, GradientMonitor, LRScheduler,
                             ModelCheckpoint, ProgressBar, TerminateOnNaN)
from ember.data import DataLoader, check_xy, train_val_split
from ember.errors import CheckpointError
from ember.inference import Predictor
from ember.losses import Loss, get_loss
from ember.metrics import classification_report, regression_report
from ember.nn import Module, check_trainable
from ember.optim import Optimizer, get_optimizer
from ember.train import lr_find as _lr_find
from ember.train import report as _report
from ember.train import state as _state
from ember.train import steps as _steps
from ember.train.history import History
from ember.train.resume import attach_checkpointing
from ember.train.state import EpochTally

__all__ = ["Trainer", "History", "load_trainer"]


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
        distributed: ``"auto"`` (the default): data-parallel over MPI when an MPI launcher
            started this process with others (``mpiexec -n N python script.py``), alone
            otherwise; ``"mpi"``: data-parallel, required (ValueError without a launcher,
            ImportError naming ``pip install "ember[mpi]"`` without mpi4py); ``False``: alone,
            always. See :mod:`ember.distributed`: ``batch_size`` is the global batch, each
            process trains on its slice of it, the gradients are summed across processes, and
            every process ends each step with the same weights; only rank 0 prints and writes
            checkpoints; ``evaluate`` and ``predict`` run the whole data on every process.

    On the GPU, a plain stack of Linear layers (activations fused) trained with cross-entropy or
    MSE and SGD/Adam/AdamW runs each batch size's step once, captures it as a CUDA graph and
    replays it (see :mod:`ember.train.steps`): the same kernels and the same bits as going step by
    step, without the Python between them. The loss, accuracy and gradient norm stay on the GPU
    until the epoch ends, so per-batch callbacks other than ember's own (TerminateOnNaN,
    ProgressBar, ModelCheckpoint and TensorBoard without ``every_n_steps``) make the fit go step
    by step, and a non-finite loss stops training at the end of the epoch in which it appeared
    (the optimizer skips those steps meanwhile; the stop reason names the first such batch)
    instead of at once.
    :attr:`step_path` says which way the last fit went.
    """

    def __init__(self, model: Module, loss="cross_entropy", optimizer="adam",
                 lr: Optional[float] = None, metrics: Sequence[str] = ("accuracy",),
                 callbacks: Sequence[Callback] = (), device: str = "auto", lr_schedule=None,
                 max_grad_norm: Optional[float] = None, distributed="auto", **optimizer_kwargs):
        if distributed not in ("auto", "mpi", False):
            raise ValueError(f"Trainer: distributed must be 'auto', 'mpi' or False, got "
                             f"{distributed!r}")
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: model must be an ember.nn.Module, got "
                            f"{type(model).__name__}")
        self.model = model
        self.loss: Loss = get_loss(loss)
        self.task = self.loss.task
        # "cuda" without a usable GPU raises ValueError ("... CUDA is not usable: <why>").
        self.device = resolve_training_device(device)
        if self.device == "cuda" and distributed is not False and \
                distributed_launch_size() > 1:  # this rank's GPU before the model goes there
            world = distributed_world(required=distributed == "mpi", where="Trainer")
            if world is not None and world.size > 1:
                world.use_gpu()
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
            self.optimizer = get_optimizer(optimizer, model, caller="Trainer", **kw)
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
        #: "auto", "mpi" or False (see the class)
        self.distributed = distributed
        #: the MPI world of the fit in progress when it is data-parallel (None otherwise)
        self.world = None
        self._abort_on_error = None
        #: False forces the layer-by-layer training path (tests compare the two, bit for bit).
        self.fused_steps = True
        #: False makes a GPU fit go step by step instead of replaying CUDA graphs (the same).
        self.cuda_graphs = True
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
        #: the batch the current epoch starts at (> 0 in the first epoch of a mid-epoch resume)
        self.start_batch = 0
        self.batch_in_epoch = 0
        #: the running sums of the epoch in progress (None between epochs)
        self.epoch_tally: Optional[EpochTally] = None
        #: True from a restore (load_state_dict) until the resumed fit's first step
        self.resuming = False
        #: the learning rate schedules start from (ReduceLROnPlateau lowers it)
        self.base_lr = self.optimizer.lr
        #: the chosen lr, which the report shows
        self.initial_lr = self.optimizer.lr
        #: the optimizer's hyperparameters when the run began (kept across resumes)
        self.configured_optimizer: Optional[dict] = None
        #: a digest of the training data when checkpoints are in play (see checkpoint.data_digest)
        self.data_digest: Optional[str] = None
        #: the callbacks of the fit in progress, ModelCheckpoints last (what checkpoints save)
        self.fit_callbacks: list = []
        self.gradient_monitor = GradientMonitor()
        #: the loss's class weights that the fit in progress set from its ``class_weight``
        #: (None otherwise; the loss's own weight, if any, is the user's)
        self.fit_class_weights = None

    # ---------------------------------------------------------------------------------------
    def output_size(self) -> Optional[int]:
        """The model's output width (the rows of its last weight matrix), or None."""
        out = None
        for _, p in self.model.named_parameters():
            if p.data.ndim == 2:
                out = p.shape[0]
        return out

    def input_size(self) -> Optional[int]:
        """The model's input width (the columns of its first weight matrix), or None."""
        for _, p in self.model.named_parameters():
            if p.data.ndim == 2:
                return p.shape[1]
        return None

    def check_data(self, x, y, where: str):
        """``(x, y)`` checked against the model and task (``where`` names the caller in errors),
        as host arrays: features float32, labels int64 or targets float32 (2-D)."""
        n_out = self.output_size()
        n_classes = n_out if self.task == "classification" else None
        x, y = check_xy(x, y, task=self.task, n_features=self.input_size(),
                        n_classes=n_classes, where=where)
        if y is not None and self.task == "regression" and n_out is not None and \
                y.shape[1] != n_out:
            raise ValueError(f"{where}: y has {y.shape[1]} target column(s), the model outputs "
                             f"{n_out}")
        return x, y

    def to_device(self, *arrays):
        """The (already checked, host) arrays on the trainer's device: unchanged on the CPU,
        copied once to CuPy arrays on the GPU (None stays None)."""
        if self.device != "cuda":
            return arrays
        xp = array_module("cuda")
        return tuple(None if a is None else xp.asarray(a) for a in arrays)

    def hyperparameters(self) -> dict:
        """What the user chose (as opposed to what was learned); ``lr`` is the chosen learning
        rate, not the one a schedule or ReduceLROnPlateau has set since (``optimizer.lr``)."""
        fit = {k: v for k, v in self.fit_params.items() if k not in _report.DATA_FACTS}
        return {**fit, **self.optimizer.hyperparameters(), "lr": _report.chosen_lr(self),
                "loss": self.loss_config(), "device": self.device,
                "model": self._architecture()}

    def loss_config(self) -> dict:
        """The loss's ``config()`` as the user set it up: without the class weights that a
        fit's ``class_weight`` gives it for the fit's length (fit_params records those)."""
        cfg = self.loss.config()
        if self.fit_class_weights is not None:
            cfg["weight"] = None
        return cfg

    def _architecture(self):
        """The model's ``config()``, or None for a custom module without one."""
        try:
            return self.model.config()
        except NotImplementedError:
            return None

    def optimizer_configuration(self) -> dict:
        """The optimizer's hyperparameters a fit starts with (``lr`` before any schedule)."""
        return _state.configured_optimizer(self)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self, callbacks=(), finished: Optional[str] = None) -> dict:
        """Everything a checkpoint holds of this trainer (and of ``callbacks``): see
        :mod:`ember.train.state`. ``finished`` marks a run that ended (why)."""
        return _state.state_dict(self, callbacks, finished)

    def load_state_dict(self, state: dict, callbacks=()) -> list:
        """Restore a :meth:`state_dict` (or what :func:`ember.checkpoint.load_checkpoint`
        read) into this trainer and ``callbacks``, checked first; see
        :func:`ember.train.state.load_state_dict`. Returns the overridden hyperparameters."""
        return _state.load_state_dict(self, state, callbacks)

    # ---------------------------------------------------------------------------------------
    def fit(self, x, y, epochs: int = 10, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, seed: int = 0, shuffle: bool = True,
            verbose: int = 1, checkpoint_dir=None, resume=None,
            accumulate_steps: int = 1, class_weight=None) -> History:
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
            class_weight: classification only: weigh each sample's loss by its class, for
                imbalanced classes. ``"balanced"``: scikit-learn's ``n_samples / (n_classes *
                bincount(y))`` over the classes present in the training split (after
                ``validation_split``; a class absent from it gets 1); a dict ``{class index:
                weight}`` (finite, >= 0; classes not named get 1); None (the default): every
                sample counts the same. The weights are the loss's class weights for the length
                of the fit (so ``loss`` and ``val_loss`` in the history are weighted), then the
                loss is as it was (``evaluate`` afterwards reports the unweighted loss). It is
                recorded in ``fit_params`` (hyperparameters, checkpoints): resuming a run with
                another class_weight is refused. A loss with its own ``weight`` takes no
                class_weight (give one of the two).

        Returns:
            The :class:`History` (also ``trainer.history``).

        Raises:
            ValueError: bad data or hyperparameters, before any training step.
            TypeError: a model without ``backward`` (or, with checkpoints, ``config``), before
                any training step.
        """
        try:
            return self._fit(x, y, epochs, batch_size, validation_data, validation_split, seed,
                             shuffle, verbose, checkpoint_dir, resume, accumulate_steps,
                             class_weight)
        except KeyboardInterrupt as exc:  # Ctrl-C: say how to continue the run, then stop
            hint = self._resume_hint() if self.resume_hint else None
            if hint:
                print(hint, file=sys.stderr, flush=True)
            if self._abort_on_error is not None:
                self._abort_on_error.abort(exc)
            raise
        except BaseException as exc:  # data-parallel: one rank's error ends every rank
            if self._abort_on_error is not None and \
                    not getattr(exc, "raised_on_every_rank", False):
                self._abort_on_error.abort(exc)
            raise
        finally:  # a fit that raised (or was interrupted) leaves no checkpoint folder locked
            self.world = self._abort_on_error = None
            for cb in self.fit_callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.release()
            _steps.clear_fit_settings(self.model)  # the fit's step settings are not the model's
            if self.fit_class_weights is not None:  # class_weight: the loss is as it was
                self.loss.weight = self.fit_class_weights = None

    #: Print how to resume when a fit with checkpoints is interrupted (Ctrl-C); a program
    #: with its own message (``ember train``) turns it off.
    resume_hint = True

    def _resume_hint(self) -> Optional[str]:
        """After an interrupted fit that wrote checkpoints: where the run stands and the call
        that continues it. None when the fit had no checkpoints."""
        saving = [c for c in self.fit_callbacks if isinstance(c, ModelCheckpoint)]
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
             verbose, checkpoint_dir, resume, accumulate_steps, class_weight) -> History:
        seed, verbose, accumulate_steps, class_weight = self._check_fit_args(
            x, y, epochs, batch_size, validation_data, validation_split, seed, shuffle, verbose,
            accumulate_steps, class_weight)
        world = self.world = self._fit_world(batch_size)
        # From here on one rank's error ends the job: the others would wait for it forever.
        self._abort_on_error = world
        if world is not None and world.rank != 0:
            verbose = 0  # (rank 0 prints the progress and the report; warnings come from any)
        checkpointing = (checkpoint_dir is not None or resume is not None or
                         any(isinstance(c, ModelCheckpoint) for c in self.user_callbacks))
        check_trainable(self.model, checkpointing)
        x, y, validation, y_host = self._fit_data(x, y, validation_data, validation_split, seed,
                                                  checkpointing, class_weight)
        self._record_fit_params(x, y, validation, epochs, batch_size, validation_split, seed,
                                shuffle, accumulate_steps, class_weight)
        if world is not None:
            self._check_replicas(world, x, y, validation)
        # The loop is done with each batch before drawing the next: reused buffers.
        loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                            reuse_buffers=True,
                            shard=None if world is None else (world.rank, world.size))
        self.epochs = int(epochs)
        self.steps_per_epoch = -(-len(loader) // accumulate_steps)  # optimizer steps
        self.stop_training = False
        self.stop_reason = None
        self.restored_epoch = None
        cbs, ckpt = self._fit_callbacks(checkpoint_dir, resume, verbose)
        if ckpt is not None and ckpt.finished:
            self.resuming = False
            if verbose:
                print(f"ember: {ckpt.finished}; nothing more to train.")
            return self.history
        if ckpt is not None and ckpt.message and verbose:
            print(ckpt.message)
        classify = "accuracy" in self.metrics  # classification only (see __init__)
        if world is not None:  # every replica starts from rank 0's weights
            world.broadcast_arrays([p.data for p in self.model.parameters()])
        step = _steps.choose(self, cbs, classify, accumulate_steps, y_host, world)
        start_epoch = self.epoch if self.resuming else 0
        self._batch_logs: dict[str, Any] = {}
        self.model.train()
        cbs.on_train_begin({})
        self.resuming = False
        for epoch in range(start_epoch, self.epochs):
            logs = self._train_epoch(step, loader, epoch, epoch == start_epoch, validation,
                                     classify, cbs)
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end({})
        self.model.eval()
        if verbose:
            print(self.report())
        return self.history

    @property
    def processes(self) -> int:
        """How many processes the fit in progress trains on (1 alone)."""
        return 1 if self.world is None else self.world.size

    def _fit_world(self, batch_size: int):
        """The fit's MPI world when it is data-parallel (see ``distributed``), checked against
        the fit's batching; None alone."""
        if self.distributed is False:
            return None
        world = distributed.world(required=self.distributed == "mpi", where="Trainer")
        if world is None or world.size == 1:
            return None
        if self.device == "cuda":
            world.use_gpu("fit")  # (done by __init__; NCCL reduces the gradients)
        if batch_size < world.size:
            raise ValueError(f"fit: batch_size {batch_size} is smaller than the {world.size} "
                             "processes training together (batch_size is the global batch: "
                             "each process needs a sample of every full batch)")
        return world

    def _check_replicas(self, world, x, y, validation) -> None:
        """Refuse, on every rank, a data-parallel fit whose ranks were given different data,
        model or options (a digest of each, compared across ranks)."""
        if len(x) < world.size:
            raise ValueError(f"fit: {len(x)} training samples for {world.size} processes: each "
                             "process needs a sample of every batch")
        facts = {"training data (x, y)": self.data_digest or checkpoint.data_digest(x, y),
                 "validation data": None if validation is None else
                 checkpoint.data_digest(*[to_host(a) for a in validation]),
                 "model": [self._architecture(), [(n, p.shape, p.requires_grad)
                                                  for n, p in self.model.named_parameters()]],
                 "loss": self.loss_config(), "optimizer": self.optimizer.hyperparameters(),
                 "fit options": self.fit_params, "metrics": list(self.metrics),
                 "device": self.device}
        world.check_same(facts, "fit")

    def _check_fit_args(self, x, y, epochs, batch_size, validation_data, validation_split, seed,
                        shuffle, verbose, accumulate_steps, class_weight):
        """fit's scalar arguments checked (ValueError naming the argument); returns the seed,
        verbose and accumulate_steps as ints and class_weight as recorded (see
        :meth:`check_class_weight`)."""
        _validate.positive_int("fit", "epochs", epochs)
        _validate.positive_int("fit", "batch_size", batch_size)
        _validate.real_in("fit", "validation_split", validation_split, 0.0, 1.0)
        if validation_data is not None and validation_split:
            raise ValueError("fit: give validation_data or validation_split, not both")
        seed = _validate.seed("fit", seed)
        _validate.flag("fit", "shuffle", shuffle)
        if isinstance(verbose, (bool, np.bool_)):
            verbose = int(verbose)
        if not _validate.is_int(verbose) or verbose < 0:
            raise ValueError(f"fit: verbose must be 0 (silent) or 1 (progress and report), got "
                             f"{verbose!r}")
        if not _validate.is_int(accumulate_steps) or accumulate_steps < 1:
            raise ValueError(f"fit: accumulate_steps must be a positive integer (micro-batches "
                             f"per optimizer step), got {accumulate_steps!r}")
        if y is None:
            raise ValueError("fit: y is required (class indices for classification, targets "
                             "for regression)")
        return seed, verbose, int(accumulate_steps), self.check_class_weight(class_weight)

    def check_class_weight(self, class_weight, where: str = "fit"):
        """A ``class_weight`` of fit (or ``where``) checked (ValueError naming it): None, ``"balanced"``, or the
        dict as fit_params records it (``{"<class index>": weight}``, JSON's keys)."""
        if class_weight is None:
            return None
        if self.task != "classification":
            raise ValueError(f"{where}: class_weight applies to classification; the loss "
                             f"{type(self.loss).__name__} is a regression loss")
        if not hasattr(self.loss, "weight"):
            raise ValueError(f"{where}: class_weight needs a loss with class weights; "
                             f"{type(self.loss).__name__} has none")
        if self.loss.weight is not None:
            raise ValueError(f"{where}: the loss has its own class weights (CrossEntropy(weight=...)) "
                             "and class_weight was given: give one of the two")
        n_classes = self.output_size()
        if n_classes is None:
            raise ValueError(f"{where}: class_weight needs the model's number of classes (the "
                             "outputs of its last weight matrix); the model has none")
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"{where}: class_weight must be None, 'balanced' or a dict "
                                 f"{{class index: weight}}, got {class_weight!r}")
            return class_weight
        if not isinstance(class_weight, dict):
            raise ValueError(f"{where}: class_weight must be None, 'balanced' or a dict {{class "
                             f"index: weight}}, got {type(class_weight).__name__}")
        out = {}
        for c, w in class_weight.items():
            if not _validate.is_int(c) or not 0 <= c < n_classes:
                raise ValueError(f"{where}: class_weight names class {c!r}, not a class index of "
                                 f"the model (0 to {n_classes - 1})")
            if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.number)) \
                    or not np.isfinite(w) or w < 0:
                raise ValueError(f"{where}: class_weight[{c!r}] must be a finite number >= 0, got "
                                 f"{w!r}")
            out[str(int(c))] = float(w)
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    def class_weights(self, class_weight, y) -> np.ndarray:
        """The per-class weights (float32, one per output) of a checked ``class_weight`` on
        the training labels ``y`` (host)."""
        n_classes = self.output_size()
        w = np.ones(n_classes, dtype=np.float64)
        if class_weight == "balanced":
            counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
            present = counts > 0
            w[present] = len(y) / (int(present.sum()) * counts[present])
        else:
            for c, v in class_weight.items():
                w[int(c)] = v
        return w.astype(np.float32)

    def _fit_data(self, x, y, validation_data, validation_split, seed, checkpointing,
                  class_weight):
        """The training data and validation pair checked and on the trainer's device, and the
        training labels on the host. Records the data's digest when checkpoints are in play, and
        sets the loss's class weights of ``class_weight`` (on the training split)."""
        x, y = self.check_data(x, y, "fit")
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
            validation = self.check_data(*validation_data, "fit (validation_data)")
        else:
            validation = None
        # Kept in checkpoints: resuming on other data of the same size is refused like other
        # batching changes.
        self.data_digest = checkpoint.data_digest(x, y) if checkpointing else None
        # Validated on the host; on the GPU the data moves to the device once, here, and batches
        # are gathered there (DataLoader follows the arrays' device).
        y_host = y  # (accumulate_steps > 1 with class weights reads the labels' weights)
        if class_weight is not None:  # where the logits are (the CPU's fused step: NumPy)
            w = self.class_weights(class_weight, y)
            self.fit_class_weights = self.loss.weight = (
                array_module("cuda").asarray(w) if self.device == "cuda" else w)
        x, y = self.to_device(x, y)
        if validation is not None:
            validation = self.to_device(*validation)
        return x, y, validation, y_host

    def _record_fit_params(self, x, y, validation, epochs, batch_size, validation_split, seed,
                           shuffle, accumulate_steps, class_weight) -> None:
        self.fit_params = {"epochs": int(epochs), "batch_size": int(batch_size),
                           "validation_split": float(validation_split), "seed": int(seed),
                           "shuffle": bool(shuffle), "n_train": int(len(x)),
                           "n_val": 0 if validation is None else int(len(validation[0])),
                           "accumulate_steps": accumulate_steps, "class_weight": class_weight}
        if self.task == "regression":  # the scale a regression fit is judged on (R², report)
            self.fit_params["target_variance"] = _report.mean_variance(y)
            self.fit_params["target_mean_square"] = float(
                (y.reshape(len(y), -1).astype("float64") ** 2).mean())
            if validation is not None:
                self.fit_params["val_target_variance"] = _report.mean_variance(validation[1])

    def _fit_callbacks(self, checkpoint_dir, resume, verbose):
        """The fit's CallbackList (ember's own first, ModelCheckpoints last: they save after
        every other callback updated its state), after restoring a resumed run."""
        callbacks = ([c for c in self.user_callbacks if not isinstance(c, ModelCheckpoint)] +
                     [c for c in self.user_callbacks if isinstance(c, ModelCheckpoint)])
        ckpt = None
        if checkpoint_dir is not None or resume is not None:
            ckpt = attach_checkpointing(self, checkpoint_dir, resume, callbacks)
        if not self.resuming:
            self.history = History()
            self.global_step = 0
            self.start_batch = 0
        self.fit_callbacks = callbacks
        all_cbs = [TerminateOnNaN(), self.gradient_monitor] + callbacks
        if verbose:
            all_cbs.insert(2, ProgressBar())
        return CallbackList(all_cbs, self), ckpt

    def _train_epoch(self, step, loader, epoch, first, validation, classify, cbs) -> dict:
        """One pass over the data (from ``start_batch`` in a resumed epoch); returns its logs."""
        self.epoch = epoch
        if not first:
            self.start_batch = 0
        start = self.start_batch  # > 0 only in the first epoch of a mid-epoch resume
        t0 = time.perf_counter()
        cbs.on_epoch_begin(epoch, {})
        tally = self.epoch_tally if start and self.epoch_tally else EpochTally()
        self.epoch_tally = tally
        step.begin_epoch(tally)
        try:
            self._run_steps(step, loader, epoch, start, tally, cbs)
            step.end_epoch(self, loader, epoch, start, tally)
        except BaseException:
            step.abort(tally)
            raise
        logs = self._epoch_logs(tally, classify, validation, t0)
        self.history.append(epoch, logs)
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        self.epoch_tally = None
        return logs

    def _run_steps(self, step, loader, epoch, start, tally, cbs) -> None:
        """The epoch's steps: next batch, the step (forward, loss, backward, update), the
        per-batch callbacks."""
        for s, batch in enumerate(step.inputs(loader, epoch, start), start):
            if cbs.wants_batch_begin:  # (with the previous step's logs, as before the split)
                cbs.on_batch_begin(s, self._batch_logs if step.host_values else {})
            loss, norm, skipped, n = step(batch, tally)
            self.global_step += 1
            self.batch_in_epoch = s + 1
            if cbs.wants_batch_end:
                logs = {"loss": loss, "grad_norm": norm, "skipped": skipped, "epoch": epoch,
                        "size": n}
                cbs.on_batch_end(s, logs)
                self._batch_logs = logs
            if self.stop_training:
                break

    def _epoch_logs(self, tally, classify, validation, t0) -> dict:
        seen, steps = tally.seen, tally.steps
        logs: dict[str, Any] = {"loss": tally.loss_sum / seen if seen else float("nan")}
        if classify:
            logs["accuracy"] = tally.correct / seen if seen else float("nan")
        if validation is not None:
            for k, v in self._evaluate(*validation).items():
                logs["val_" + k] = v
            self.model.train()
        logs["lr"] = self.optimizer.lr
        logs["grad_norm"] = tally.norm_sum / steps if steps else float("nan")
        logs["skipped_steps"] = tally.skipped
        logs["time"] = time.perf_counter() - t0
        return logs

    # ---------------------------------------------------------------------------------------
    def _batched_outputs(self, x, batch_size):
        _validate.positive_int("evaluate", "batch_size", batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(x), batch_size):
                yield i, self.model.forward(x[i:i + batch_size])
        finally:
            self.model.train(was_training)

    def evaluate(self, x, y, batch_size: int = 1024, report: bool = False,
                 class_names: Optional[Sequence] = None) -> dict:
        """Loss and metrics on ``(x, y)`` in eval mode (dropout off). Returns a dict.

        With ``report=True`` the dict also holds ``"report"``: for classification
        :func:`ember.metrics.classification_report` of the predicted classes (the argmax of the
        outputs the loss was computed from) against ``y``, over every output class (named by
        ``class_names``, else by the model's ``classes`` when it has them, as a run's
        :class:`ember.preprocessing.RunModel` does, else by index); for regression
        :func:`ember.metrics.regression_report` of the outputs.
        """
        _validate.flag("evaluate", "report", report)
        x, y = self.check_data(x, y, "evaluate")
        result = self._evaluate(*self.to_device(x, y), batch_size, report=report)
        if report:
            result["report"] = self._evaluation_report(y, result.pop("outputs"), class_names)
        return result

    def _evaluation_report(self, y, outputs, class_names) -> dict:
        """The evaluation report of the host labels/targets ``y`` and the batches' outputs
        (predicted classes, or the network's outputs) that _evaluate kept."""
        outputs = np.concatenate([to_host(o) for o in outputs])
        if self.task != "classification":
            return regression_report(y.reshape(len(y), -1), outputs)
        n_out = self.output_size()
        labels = None if n_out is None else list(range(n_out))
        names = class_names
        if names is None:
            names = getattr(self.model, "classes", None)
        if names is not None:
            names = [str(c) for c in names]
            if labels is None:
                labels = list(range(len(names)))
        return classification_report(y, outputs, labels=labels, names=names)

    def _evaluate(self, x, y, batch_size: int = 1024, report: bool = False) -> dict:
        """:meth:`evaluate` of arrays already checked and on the trainer's device. With
        ``report``, ``"outputs"`` holds each batch's predicted classes (classification) or
        outputs (regression), on the device."""
        classify = self.task == "classification"
        with_accuracy = "accuracy" in self.metrics
        loss_sum = 0.0
        weight_sum = 0.0
        correct = 0.0
        w = getattr(self.loss, "weight", None)
        xp = array_module(self.device)
        if w is not None and xp is not np:
            w = xp.asarray(w, dtype=xp.float32)  # the class weights must be where the logits are
        kept = []  # with report: each batch's predictions
        for i, out in self._batched_outputs(x, batch_size):
            yb = y[i:i + batch_size]
            n = out.shape[0]
            if report:
                kept.append(ops.argmax(out) if classify else out.copy())
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
        if report:
            result["outputs"] = kept
        return result

    def _predict(self, x, batch_size, method: str):
        """``method`` of the frozen predictor (ember.inference) on ``x``, as a NumPy array: a
        Linear stack runs as one compiled call on the CPU; anything else, or the GPU, the
        model's own eval forward."""
        x, _ = self.check_data(x, None, "predict")
        _validate.positive_int("predict", "batch_size", batch_size)
        pred = Predictor(self.model, task=self.task, block_rows=int(batch_size), copy=False)
        if self.device == "cuda":
            x, = self.to_device(x)
        return to_host(getattr(pred, method)(x))

    def predict_raw(self, x, batch_size: int = 1024):
        """The network's outputs (logits for classification), in eval mode, as a NumPy array
        (copied back from the GPU when the trainer is on one)."""
        return self._predict(x, batch_size, "__call__")

    def predict_proba(self, x, batch_size: int = 1024):
        """Class probabilities (softmax of the logits)."""
        if self.task != "classification":
            raise ValueError("predict_proba: the model was trained for regression")
        return self._predict(x, batch_size, "predict_proba")

    def predict(self, x, batch_size: int = 1024):
        """Class indices (classification) or predicted values (regression)."""
        return self._predict(x, batch_size, "predict")

    # ---------------------------------------------------------------------------------------
    def diagnosis(self) -> dict:
        """Plain verdicts from the history: fit quality and gradient health (see
        :func:`ember.train.report.diagnosis`)."""
        return _report.diagnosis(self)

    def report(self) -> str:
        """A short text report: parameters vs hyperparameters, final metrics, verdict."""
        return _report.report(self)

    def lr_find(self, x, y, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_steps: int = 100, batch_size: int = 32, seed: int = 0, class_weight=None):
        """The learning-rate range test on ``(x, y)``; the trainer is left as it was. Returns
        an :class:`ember.train.lr_find.LRFindResult` (``.suggestion``, ``.plot()``); see
        :func:`ember.train.lr_find.lr_find`."""
        return _lr_find.lr_find(self, x, y, start_lr=start_lr, end_lr=end_lr,
                                num_steps=num_steps, batch_size=batch_size, seed=seed,
                                class_weight=class_weight)


def load_trainer(path, device: Optional[str] = None, *, preprocessing: bool = True):
    """A :class:`ember.Trainer` with the saved model, loss and optimizer state, ready for
    ``predict``/``evaluate`` or further training (fine-tuning).

    The model is :func:`ember.load_model`'s: for a run written by ``ember train`` a
    :class:`ember.preprocessing.RunModel`, so ``predict``, ``predict_proba`` and ``evaluate``
    take the raw features and agree with ``ember predict`` (classification: class indices into
    ``trainer.model.classes``; regression: values in the target's units, and ``evaluate``'s loss
    is the MSE in those units). ``preprocessing=False`` gives a trainer of the bare network.
    """
    ck = checkpoint.load_checkpoint(as_path(path, "load_trainer: path"))
    st = checkpoint.check_state(ck, ("model", "loss", "optimizer", "optimizer_step", "history",
                                     "epoch", "global_step"),
                                ("metrics", "fit_params", "optimizer_skipped_steps"))
    model = checkpoint.model_from(ck, device, preprocessing)
    hp = dict(st["optimizer"])
    name = hp.pop("optimizer").lower()
    where = ck["path"] / "trainer.json"
    try:
        loss = get_loss(st["loss"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad 'loss' ({exc})") from None
    try:
        optimizer = get_optimizer(name, model, **_state.optimizer_kwargs(hp))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad 'optimizer' ({exc})") from None
    trainer = Trainer(model, loss=loss, optimizer=optimizer,
                      metrics=tuple(st.get("metrics", ("accuracy",))), device=model.device)
    _state.restore_optimizer(trainer, ck)
    trainer.history = _state.history_from(ck)
    trainer.fit_params = st.get("fit_params", {})
    trainer.epoch, trainer.global_step = st["epoch"], st["global_step"]
    return trainer
