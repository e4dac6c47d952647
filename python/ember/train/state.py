"""What a Trainer's state is, in one place: :meth:`ember.Trainer.state_dict` and
:meth:`ember.Trainer.load_state_dict` are these functions, and they are the only way checkpoints
see a Trainer (:mod:`ember.checkpoint` writes and reads the files; it knows no Trainer).

A state dict has four parts, the four parts of a checkpoint::

    {"trainer":   the trainer.json object (epoch, step, position in the epoch and its running
                  sums, RNG counters, callback and schedule state, history, hyperparameters,
                  architecture, versions),
     "model":     {parameter name: array},
     "optimizer": {"<param>/<key>": array},
     "callbacks": {"<index>:<Callback type>/<name>": array}}

The running sums of an epoch are an :class:`EpochTally`.
"""
from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Optional

from ember import checkpoint, nn
from ember._version import __version__
from ember.errors import CheckpointError
from ember.train.history import History

__all__ = ["EpochTally", "state_dict", "load_state_dict", "callback_key", "history_from",
           "restore_optimizer", "optimizer_kwargs", "configured_optimizer", "describe"]


class EpochTally:
    """The running sums of one epoch: ``loss_sum`` (the loss times the samples of each step),
    ``correct`` (samples classified right), ``seen`` (samples), ``norm_sum`` (the steps'
    gradient norms), ``steps`` and ``skipped`` (steps the optimizer skipped: non-finite
    gradients). Kept on the trainer, so a checkpoint written in the middle of an epoch resumes
    with the same epoch averages."""

    FIELDS = ("loss_sum", "correct", "seen", "norm_sum", "steps", "skipped")
    __slots__ = FIELDS

    def __init__(self, loss_sum=0.0, correct=0.0, seen=0, norm_sum=0.0, steps=0, skipped=0):
        self.loss_sum, self.correct, self.seen = loss_sum, correct, seen
        self.norm_sum, self.steps, self.skipped = norm_sum, steps, skipped

    def add(self, loss_sum, seen, norm, skipped) -> None:
        """One optimizer step: ``loss_sum`` is its loss times its samples (``seen``)."""
        self.loss_sum += loss_sum
        self.seen += seen
        self.norm_sum += norm
        self.steps += 1
        self.skipped += skipped

    def to_list(self) -> list:
        """The six sums in :attr:`FIELDS` order (trainer.json's ``epoch_accumulators``)."""
        return [getattr(self, f) for f in self.FIELDS]

    @classmethod
    def from_list(cls, values) -> "EpochTally":
        return cls(*values)

    def __repr__(self) -> str:
        return "EpochTally(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS) + ")"


def callback_key(i: int, cb) -> str:
    """How a callback's state is named in a checkpoint: its place and type (``"2:LRScheduler"``)."""
    return f"{i}:{type(cb).__name__}"


def configured_optimizer(trainer) -> dict:
    """The optimizer's hyperparameters a fit starts with (``lr`` before any schedule)."""
    return {**trainer.optimizer.hyperparameters(), "lr": trainer.base_lr}


def _trainer_json(trainer, callbacks, finished: Optional[str]) -> dict:
    # by module name: a Sequential's layer index ("2"), a custom module's attribute ("drop")
    dropout = {name: {"seed": layer.seed, "counter": layer.counter}
               for name, layer in trainer.model.named_modules() if isinstance(layer, nn.Dropout)}
    tally = trainer.epoch_tally
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "ember_version": __version__,
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "batch_in_epoch": trainer.batch_in_epoch,
        "epoch_accumulators": tally.to_list() if trainer.batch_in_epoch and tally else None,
        "epochs": trainer.epochs,
        "finished": finished,
        "stop_reason": trainer.stop_reason,
        "task": trainer.task,
        "device": trainer.device,
        "model": trainer.model.config(),
        "loss": trainer.loss_config(),  # (a fit's class_weight is in fit_params)
        "metrics": list(trainer.metrics),
        "optimizer": trainer.optimizer.hyperparameters(),
        "optimizer_step": trainer.optimizer.step_count,
        "optimizer_skipped_steps": trainer.optimizer.skipped_steps,
        "base_lr": trainer.base_lr,
        "configured_optimizer": trainer.configured_optimizer or configured_optimizer(trainer),
        "fit_params": trainer.fit_params,
        "processes": trainer.processes,
        "data_digest": trainer.data_digest,
        "rng": {"data_seed": trainer.fit_params.get("seed"), "dropout": dropout},
        "gradient_monitor": trainer.gradient_monitor.state_dict(),
        "callbacks": {callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks)},
        "history": trainer.history.to_dict(),
    }


def state_dict(trainer, callbacks=(), finished: Optional[str] = None) -> dict:
    """``trainer``'s state with that of ``callbacks`` (see the module docstring); ``finished``
    marks the state of a run that ended (why), which a resume does not train further."""
    return {
        "trainer": _trainer_json(trainer, callbacks, finished),
        "model": trainer.model.state_dict(),
        "optimizer": {f"{p}/{k}": a for p, st in trainer.optimizer.state.items()
                      for k, a in st.items()},
        "callbacks": {f"{callback_key(i, cb)}/{k}": a for i, cb in enumerate(callbacks)
                      for k, a in cb.arrays().items()},
    }


def history_from(ck: dict) -> History:
    h = checkpoint.check_state(ck, ("history",))["history"]
    try:
        return History.from_dict(h)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad 'history' ({exc})") from None


def optimizer_kwargs(hp: dict) -> dict:
    """The constructor arguments of a saved optimizer's hyperparameters."""
    kw = {k: v for k, v in hp.items() if v is not None}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return kw


def restore_optimizer(trainer, ck: dict) -> None:
    checkpoint.check_state(ck, ("optimizer", "optimizer_step"), ("optimizer_skipped_steps",))
    grouped: dict[str, dict] = {}
    for key, arr in ck["optimizer"].items():
        pname, _, sk = key.rpartition("/")
        grouped.setdefault(pname, {})[sk] = arr
    try:
        trainer.optimizer.load_state_dict({
            "state": grouped, "step": ck["state"]["optimizer_step"],
            "skipped_steps": ck["state"].get("optimizer_skipped_steps", 0),
            "hyperparameters": ck["state"]["optimizer"]})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'optimizer.safetensors'}: {exc}") from None


def _same_value(a, b) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)  # noqa: E731
    return norm(a) == norm(b)


def overridden(trainer, st: dict) -> list[str]:
    """The hyperparameters the trainer was set up with (other than its optimizer's defaults)
    that differ from those of the run being resumed, as ``"lr=0.5 (checkpoint: 0.001)"``."""
    saved = st.get("configured_optimizer") or {**st["optimizer"], "lr": st["base_lr"]}
    try:
        params = inspect.signature(type(trainer.optimizer).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    out = []
    for key, value in configured_optimizer(trainer).items():
        if key == "optimizer" or key not in saved or _same_value(value, saved[key]):
            continue
        default = params[key].default if key in params else inspect.Parameter.empty
        if default is not inspect.Parameter.empty and _same_value(value, default):
            continue  # not chosen: the optimizer's default
        out.append(f"{key}={value!r} (checkpoint: {saved[key]!r})")
    return out


def describe(cfg) -> str:
    """A model architecture in brief: ``[Linear(4->8), ReLU, Linear(8->2)]``."""
    if not isinstance(cfg, dict):
        return repr(cfg)
    parts = []
    for layer in cfg.get("layers", []):
        if layer.get("type") == "Linear":
            parts.append(f"Linear({layer['in_features']}->{layer['out_features']})")
        else:
            parts.append(layer.get("type", "?"))
    return "[" + ", ".join(parts) + "]"


_RESUMED = ("model", "optimizer", "optimizer_step", "rng", "history", "epoch", "global_step",
            "base_lr")
_RESUMED_IF_THERE = ("fit_params", "callbacks", "gradient_monitor", "batch_in_epoch",
                     "epoch_accumulators", "optimizer_skipped_steps", "configured_optimizer")


def _check_same_run(trainer, ck: dict) -> None:
    """Refuse a state of another model, task, optimizer, batching or data than the fit's."""
    st, where = ck["state"], ck["path"] / "trainer.json"
    if st.get("model") != trainer.model.config():
        raise CheckpointError(f"{where}: the checkpoint's architecture "
                              f"{describe(st.get('model'))} differs from the model being "
                              f"trained {describe(trainer.model.config())}")
    if st.get("task") != trainer.task:
        raise CheckpointError(f"{where}: saved for {st.get('task')}, the trainer "
                              f"is set up for {trainer.task}")
    saved_opt = st["optimizer"]["optimizer"]
    if saved_opt != type(trainer.optimizer).__name__:
        raise CheckpointError(f"{where}: saved with optimizer {saved_opt}, the "
                              f"trainer uses {type(trainer.optimizer).__name__}")
    fp = st.get("fit_params", {})
    for key in ("batch_size", "seed", "shuffle", "n_train", "accumulate_steps", "class_weight"):
        # (a checkpoint from before class_weight was trained without: None)
        saved = fp.get(key) if key == "class_weight" else fp.get(key, trainer.fit_params.get(key))
        if saved != trainer.fit_params.get(key):
            raise CheckpointError(
                f"{where}: the run was saved with {key}={saved!r} but "
                f"fit was called with {key}={trainer.fit_params.get(key)!r}; an exact resume "
                "needs the same data and batching")
    saved_digest, digest = st.get("data_digest"), trainer.data_digest
    if saved_digest and digest and saved_digest != digest:  # (older checkpoints have none)
        raise CheckpointError(
            f"{where}: the run was trained on other data (same number of samples, "
            f"different values); an exact resume needs the same data and batching")


def _dropout_state(trainer, ck: dict) -> list:
    """``(layer, seed, counter)`` of every Dropout layer the state names, checked."""
    modules = dict(trainer.model.named_modules())
    where = ck["path"] / "trainer.json"
    dropout = []
    for idx, d in ck["state"]["rng"]["dropout"].items():
        try:
            layer = modules[idx]
            seed, counter = int(d["seed"]), int(d["counter"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: bad dropout state for layer "
                                  f"{idx!r}: {json.dumps(d, default=str)[:80]}") from None
        if not isinstance(layer, nn.Dropout):
            raise CheckpointError(f"{where}: layer {idx} is not Dropout")
        dropout.append((layer, seed, counter))
    return dropout


def _restore_callbacks(ck: dict, callbacks) -> None:
    saved_cbs = ck["state"].get("callbacks", {})
    cb_arrays: dict[str, dict] = {}
    for key, arr in ck["callbacks"].items():
        ckey, _, name = key.partition("/")
        cb_arrays.setdefault(ckey, {})[name] = arr
    # A callback's state is found by its place and type ("2:LRScheduler"); when the list
    # changed around it (a callback added or dropped before it on resume), by its type and its
    # rank among the callbacks of that type, so it still continues the run.
    of_type: dict[str, list] = {}
    for key in list(saved_cbs) + [k for k in cb_arrays if k not in saved_cbs]:
        of_type.setdefault(key.partition(":")[2], []).append(key)
    rank: dict[str, int] = {}
    for i, cb in enumerate(callbacks):
        key = callback_key(i, cb)
        name = type(cb).__name__
        n = rank[name] = rank.get(name, -1) + 1
        if key not in saved_cbs and key not in cb_arrays and n < len(of_type.get(name, ())):
            key = of_type[name][n]
        try:
            if key in saved_cbs:
                cb.load_state_dict(saved_cbs[key])
            if key in cb_arrays:
                cb.load_arrays(cb_arrays[key])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{ck['path']}: bad saved state for callback {key} "
                                  f"({exc})") from None


def load_state_dict(trainer, state: dict, callbacks=()) -> list[str]:
    """Restore ``trainer`` (and ``callbacks``) from ``state``: what :func:`state_dict` returns
    or :func:`ember.checkpoint.load_checkpoint` reads (the checkpoint's path then names the
    file in errors). Everything is checked before anything changes: another architecture,
    task, optimizer, batching or data than the trainer's fit is refused
    (:class:`ember.CheckpointError`). The trainer's ``fit_params`` must be those of the fit
    that continues the run. Returns the trainer's hyperparameters that the state overrode, as
    ``"lr=0.5 (checkpoint: 0.001)"``."""
    ck = dict(state)
    ck.setdefault("state", ck.get("trainer"))
    ck.setdefault("path", Path("<state_dict>"))
    st = checkpoint.check_state(ck, _RESUMED, _RESUMED_IF_THERE)
    _check_same_run(trainer, ck)
    dropout = _dropout_state(trainer, ck)
    history = history_from(ck)
    changed = overridden(trainer, st)
    checkpoint.check_finite_weights(ck)
    # checked: now restore
    try:
        trainer.model.load_state_dict(ck["model"])
    except ValueError as exc:
        raise CheckpointError(f"{ck['path'] / 'model.safetensors'}: {exc}") from None
    restore_optimizer(trainer, ck)
    for layer, seed, counter in dropout:
        layer.seed, layer.counter = seed, counter
    trainer.history = history
    trainer.epoch = int(st["epoch"])
    trainer.global_step = int(st["global_step"])
    trainer.start_batch = int(st.get("batch_in_epoch") or 0)
    saved_tally = st.get("epoch_accumulators")
    trainer.epoch_tally = EpochTally.from_list(saved_tally) if saved_tally else None
    trainer.base_lr = float(st["base_lr"])
    trainer.configured_optimizer = (st.get("configured_optimizer") or
                                    {**st["optimizer"], "lr": st["base_lr"]})
    trainer.stop_reason = st.get("stop_reason")
    try:
        trainer.gradient_monitor.load_state_dict(st.get("gradient_monitor", {}))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad 'gradient_monitor' "
                              f"({exc})") from None
    _restore_callbacks(ck, callbacks)
    trainer.resuming = True
    saved = st.get("processes") or 1
    if saved != trainer.processes:
        warnings.warn(f"fit: resuming {ck['path']}, saved by a run on {saved} process(es), on "
                      f"{trainer.processes}: it continues at the same sample position (the same "
                      "global batches), but its bits may differ from an uninterrupted run's by "
                      "float rounding", stacklevel=4)
    return changed
