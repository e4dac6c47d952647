"""Checkpoints: save, verify, load and resume — atomically, without pickle.

A checkpoint is a directory::

    ckpt-e0003-s000450/
        model.safetensors       weights, PyTorch names ("0.weight" is (out, in))
        optimizer.safetensors   optimizer state arrays ("<param>/<key>")
        callbacks.safetensors   arrays callbacks keep (e.g. EarlyStopping's best weights), if any
        trainer.json            epoch, step, position in the epoch, RNG counters, callback and
                                schedule state, history, hyperparameters, architecture, versions
        MANIFEST.sha256         SHA-256 of every file above (``sha256sum -c`` format)

It is written into a temporary directory beside the target, every file and the directory are
fsynced, and the directory is renamed into place; the ``latest`` pointer file is then replaced the
same way. A crash at any instant leaves the previous checkpoint loadable; leftover temporary
directories are ignored and removed by the next save. Loading verifies the manifest first and
names the file and the problem (:class:`ember.CheckpointError`).

Example:
    >>> import tempfile, numpy as np, ember
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int64)
    >>> run = tempfile.mkdtemp()
    >>> _ = ember.Trainer(ember.nn.MLP([4, 8, 2])).fit(x, y, epochs=2, checkpoint_dir=run,
    ...                                                verbose=0)  # then the process dies
    >>> trainer = ember.Trainer(ember.nn.MLP([4, 8, 2]))
    >>> _ = trainer.fit(x, y, epochs=4, checkpoint_dir=run, resume="latest", verbose=0)
    >>> trainer.epoch, len(trainer.history["loss"])  # epochs 3 and 4 trained, 1-4 in the history
    (4, 4)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from ember.callbacks import Callback, _Monitor
from ember.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "ModelCheckpoint", "save_checkpoint", "load_checkpoint",
           "load_model", "load_trainer", "resolve_checkpoint", "list_checkpoints"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)$")
_TMP_PREFIX = ".tmp-"
_REQUIRED = ("model.safetensors", "optimizer.safetensors", "trainer.json")
_MANIFEST = "MANIFEST.sha256"


# ------------------------------------------------------------------------------------------
# low-level: durable files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data) -> str:
    """Write ``data`` (bytes, or a list of buffers written in order) durably; returns the
    SHA-256 of what was written."""
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def _replace_pointer(path: Path, target: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    _write_file(tmp, (target + "\n").encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _to_host(a) -> np.ndarray:
    a = a.get() if hasattr(a, "get") else a
    return np.ascontiguousarray(a)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def _safetensors_chunks(arrays: dict) -> list:
    """The safetensors file for ``arrays`` as a list of buffers: the 8-byte header length, the
    JSON header (padded to 8 bytes), then each array's own memory — no serialised copy of the
    data (safetensors.numpy.save would make two). Files are read back with the safetensors
    package, which validates this layout."""
    header: dict = {}
    views = []
    offset = 0
    for name, arr in arrays.items():
        a = _to_host(arr)
        if a.dtype not in _ST_DTYPES:
            raise TypeError(f"cannot checkpoint {name!r} of dtype {a.dtype}")
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        views.append(memoryview(a.reshape(-1)).cast("B"))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little"), text] + views


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------------------------------------
# trainer state <-> files


def _callback_key(i: int, cb: Callback) -> str:
    return f"{i}:{type(cb).__name__}"


def _trainer_state(trainer, callbacks, finished: Optional[str]) -> dict:
    from ember import __version__
    from ember.nn import Dropout
    dropout = {str(i): {"seed": layer.seed, "counter": layer.counter}
               for i, layer in enumerate(getattr(trainer.model, "layers", []))
               if isinstance(layer, Dropout)}
    return {
        "format_version": FORMAT_VERSION,
        "ember_version": __version__,
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "batch_in_epoch": trainer.batch_in_epoch,
        "epoch_accumulators": trainer._epoch_acc if trainer.batch_in_epoch else None,
        "epochs": trainer.epochs,
        "finished": finished,
        "stop_reason": trainer.stop_reason,
        "task": trainer.task,
        "device": trainer.device,
        "model": trainer.model.config(),
        "loss": trainer.loss.config(),
        "metrics": list(trainer.metrics),
        "optimizer": trainer.optimizer.hyperparameters(),
        "optimizer_step": trainer.optimizer.step_count,
        "optimizer_skipped_steps": trainer.optimizer.skipped_steps,
        "base_lr": trainer._base_lr,
        "fit_params": trainer.fit_params,
        "rng": {"data_seed": trainer.fit_params.get("seed"), "dropout": dropout},
        "gradient_monitor": trainer.gradient_monitor.state_dict(),
        "callbacks": {_callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks)},
        "history": trainer.history.to_dict(),
    }


def save_checkpoint(trainer, directory, callbacks=(), name: Optional[str] = None,
                    finished: Optional[str] = None) -> Path:
    """Write a checkpoint of ``trainer`` into ``directory`` atomically; returns its path.

    ``latest`` in ``directory`` is updated to point at it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(directory)
    name = name or f"ckpt-e{trainer.epoch:04d}-s{trainer.global_step:08d}"
    final = directory / name
    tmp = directory / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    files: dict[str, str] = {}
    files["model.safetensors"] = _write_file(
        tmp / "model.safetensors", _safetensors_chunks(trainer.model.state_dict()))
    opt_arrays = {f"{p}/{k}": a for p, st in trainer.optimizer.state.items()
                  for k, a in st.items()}
    files["optimizer.safetensors"] = _write_file(tmp / "optimizer.safetensors",
                                                 _safetensors_chunks(opt_arrays))
    cb_arrays = {f"{_callback_key(i, cb)}/{k}": a for i, cb in enumerate(callbacks)
                 for k, a in cb.arrays().items()}
    if cb_arrays:
        files["callbacks.safetensors"] = _write_file(tmp / "callbacks.safetensors",
                                                     _safetensors_chunks(cb_arrays))
    state = _trainer_state(trainer, callbacks, finished)
    files["trainer.json"] = _write_file(
        tmp / "trainer.json",
        json.dumps(state, indent=1, default=_json_default, allow_nan=True).encode())
    manifest = "".join(f"{h}  {f}\n" for f, h in sorted(files.items()))
    _write_file(tmp / _MANIFEST, manifest.encode())
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. the end-of-training save)
        old = directory / f"{_TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)
    _replace_pointer(directory / "latest", name)
    return final


def _clean_temporaries(directory: Path) -> None:
    for p in directory.iterdir():
        if p.name.startswith(_TMP_PREFIX) or (p.name.endswith(".tmp") and p.is_file()):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def list_checkpoints(directory) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (by step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from itself, a run directory holding ``latest``, or a pointer
    file. Raises :class:`CheckpointError` when there is none."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir() and (p / "trainer.json").exists() or (p / _MANIFEST).exists():
        return p
    pointer = p / "latest" if p.is_dir() else p
    if pointer.is_file():
        target = pointer.read_text().strip()
        q = pointer.parent / target
        if not target or "/" in target or not q.is_dir():
            raise CheckpointError(f"{pointer}: points at {target!r}, which is not a checkpoint "
                                  "directory")
        return q
    if p.is_dir() and (p / "checkpoints").is_dir():
        return resolve_checkpoint(p / "checkpoints")
    raise CheckpointError(f"{p}: not an ember checkpoint (no trainer.json, no 'latest' pointer)")


def _verify(ckpt: Path) -> dict[str, bytes]:
    """Check the manifest and return the verified file contents."""
    man = ckpt / _MANIFEST
    if not man.is_file():
        raise CheckpointError(f"{man}: missing — not a complete ember checkpoint")
    entries = {}
    for n, line in enumerate(man.read_text(errors="replace").splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise CheckpointError(f"{man}: line {n} is malformed: {line[:80]!r}")
        entries[parts[1]] = parts[0]
    for req in _REQUIRED:
        if req not in entries:
            raise CheckpointError(f"{man}: does not list {req}")
    contents = {}
    for fname, digest in entries.items():
        fp = ckpt / fname
        if "/" in fname or not fp.is_file():
            raise CheckpointError(f"{fp}: missing (listed in the manifest)")
        data = fp.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{fp}: SHA-256 does not match the manifest — the file is "
                                  "truncated or corrupt")
        contents[fname] = data
    return contents


def _load_arrays(data: bytes, fname: str) -> dict:
    from safetensors.numpy import load
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{fname}: unreadable safetensors data ({exc})") from None


def load_checkpoint(path) -> dict:
    """Verify and read a checkpoint. Returns ``{"path", "state", "model", "optimizer",
    "callbacks"}`` (state from trainer.json, the rest name -> array)."""
    ckpt = resolve_checkpoint(path)
    contents = _verify(ckpt)
    try:
        state = json.loads(contents["trainer.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt / 'trainer.json'}: not valid JSON ({exc})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt / 'trainer.json'}: checkpoint format version {version!r} "
                              f"is not supported by this ember (it reads version "
                              f"{FORMAT_VERSION})")
    return {
        "path": ckpt,
        "state": state,
        "model": _load_arrays(contents["model.safetensors"], str(ckpt / "model.safetensors")),
        "optimizer": _load_arrays(contents["optimizer.safetensors"],
                                  str(ckpt / "optimizer.safetensors")),
        "callbacks": (_load_arrays(contents["callbacks.safetensors"],
                                   str(ckpt / "callbacks.safetensors"))
                      if "callbacks.safetensors" in contents else {}),
    }


def _model_from(ck: dict, device: Optional[str]):
    from ember import nn
    from ember.backend import cuda_available
    try:
        model = nn.from_config(ck["state"]["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad model architecture "
                              f"({exc})") from None
    try:
        model.load_state_dict(ck["model"])
    except ValueError as exc:
        raise CheckpointError(f"{ck['path'] / 'model.safetensors'}: does not match the "
                              f"architecture in trainer.json: {exc}") from None
    if device is None:
        device = ck["state"].get("device", "cpu")
        if device == "cuda" and not cuda_available():
            device = "cpu"
    return model.to(device).eval()


def load_model(path, device: Optional[str] = None):
    """Rebuild the model saved in a checkpoint (architecture from trainer.json), in eval mode,
    on ``device`` (default: where it was saved, or the CPU when that GPU is absent)."""
    return _model_from(load_checkpoint(path), device)


def load_trainer(path, device: Optional[str] = None):
    """A :class:`ember.Trainer` with the saved model, loss and optimizer state, ready for
    ``predict``/``evaluate`` or further training (fine-tuning)."""
    from ember.losses import get_loss
    from ember.optim import get_optimizer
    from ember.trainer import History, Trainer
    ck = load_checkpoint(path)
    model = _model_from(ck, device)
    st = ck["state"]
    hp = dict(st["optimizer"])
    name = hp.pop("optimizer").lower()
    trainer = Trainer(model, loss=get_loss(st["loss"]),
                      optimizer=get_optimizer(name, model, **_optimizer_kwargs(hp)),
                      metrics=tuple(st.get("metrics", ("accuracy",))), device=model.device)
    _restore_optimizer(trainer, ck)
    trainer.history = History.from_dict(st["history"])
    trainer.fit_params = st.get("fit_params", {})
    trainer.epoch, trainer.global_step = st["epoch"], st["global_step"]
    return trainer


def _optimizer_kwargs(hp: dict) -> dict:
    kw = {k: v for k, v in hp.items() if v is not None}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return kw


def _restore_optimizer(trainer, ck: dict) -> None:
    grouped: dict[str, dict] = {}
    for key, arr in ck["optimizer"].items():
        pname, _, sk = key.rpartition("/")
        grouped.setdefault(pname, {})[sk] = arr
    try:
        trainer.optimizer.load_state_dict({
            "state": grouped, "step": ck["state"]["optimizer_step"],
            "skipped_steps": ck["state"].get("optimizer_skipped_steps", 0),
            "hyperparameters": ck["state"]["optimizer"]})
    except ValueError as exc:
        raise CheckpointError(f"{ck['path'] / 'optimizer.safetensors'}: {exc}") from None


# ------------------------------------------------------------------------------------------
# resume


class _Resume:
    def __init__(self, finished: Optional[str]):
        self.finished = finished


def attach_checkpointing(trainer, checkpoint_dir, resume, callbacks: list) -> _Resume:
    """Called by ``Trainer.fit``: add a ModelCheckpoint when none is given, and restore the
    trainer from ``resume``. Returns whether the restored run had already finished."""
    if checkpoint_dir is not None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint(checkpoint_dir))
    if resume is None:
        return _Resume(None)
    if resume == "latest":
        if checkpoint_dir is None:
            raise ValueError("fit: resume='latest' needs checkpoint_dir")
        if not (Path(checkpoint_dir) / "latest").exists():
            return _Resume(None)  # nothing saved yet: a fresh run
        source = Path(checkpoint_dir)
    else:
        source = Path(resume)
    ck = load_checkpoint(source)
    st = ck["state"]
    here = ck["path"]
    if st.get("model") != trainer.model.config():
        raise CheckpointError(f"{here / 'trainer.json'}: the checkpoint's architecture "
                              f"{_describe(st.get('model'))} differs from the model being "
                              f"trained {_describe(trainer.model.config())}")
    if st.get("task") != trainer.task:
        raise CheckpointError(f"{here / 'trainer.json'}: saved for {st.get('task')}, the trainer "
                              f"is set up for {trainer.task}")
    saved_opt = st.get("optimizer", {}).get("optimizer")
    if saved_opt != type(trainer.optimizer).__name__:
        raise CheckpointError(f"{here / 'trainer.json'}: saved with optimizer {saved_opt}, the "
                              f"trainer uses {type(trainer.optimizer).__name__}")
    fp = st.get("fit_params", {})
    for key in ("batch_size", "seed", "shuffle", "n_train"):
        if key in fp and fp[key] != trainer.fit_params.get(key):
            raise CheckpointError(
                f"{here / 'trainer.json'}: the run was saved with {key}={fp[key]!r} but "
                f"fit was called with {key}={trainer.fit_params.get(key)!r}; an exact resume "
                "needs the same data and batching")
    try:
        trainer.model.load_state_dict(ck["model"])
    except ValueError as exc:
        raise CheckpointError(f"{here / 'model.safetensors'}: {exc}") from None
    _restore_optimizer(trainer, ck)
    from ember.nn import Dropout
    layers = getattr(trainer.model, "layers", [])
    for idx, d in st["rng"]["dropout"].items():
        layer = layers[int(idx)]
        if not isinstance(layer, Dropout):
            raise CheckpointError(f"{here / 'trainer.json'}: layer {idx} is not Dropout")
        layer.seed, layer.counter = int(d["seed"]), int(d["counter"])
    from ember.trainer import History
    trainer.history = History.from_dict(st["history"])
    trainer.epoch = int(st["epoch"])
    trainer.global_step = int(st["global_step"])
    trainer._start_batch = int(st.get("batch_in_epoch") or 0)
    trainer._epoch_acc = st.get("epoch_accumulators")
    trainer._base_lr = float(st["base_lr"])
    trainer.stop_reason = st.get("stop_reason")
    trainer.gradient_monitor.load_state_dict(st.get("gradient_monitor", {}))
    saved_cbs = st.get("callbacks", {})
    cb_arrays: dict[str, dict] = {}
    for key, arr in ck["callbacks"].items():
        ckey, _, name = key.partition("/")
        cb_arrays.setdefault(ckey, {})[name] = arr
    for i, cb in enumerate(callbacks):
        key = _callback_key(i, cb)
        if key in saved_cbs:
            cb.load_state_dict(saved_cbs[key])
        if key in cb_arrays:
            cb.load_arrays(cb_arrays[key])
    trainer._resuming = True
    if st.get("stop_reason"):
        return _Resume(f"the run stopped early ({st['stop_reason']})")
    if trainer.epoch >= trainer.epochs:
        return _Resume(f"the run already completed {trainer.epoch} of {trainer.epochs} epochs")
    return _Resume(None)


def _describe(cfg) -> str:
    if not isinstance(cfg, dict):
        return repr(cfg)
    parts = []
    for layer in cfg.get("layers", []):
        if layer.get("type") == "Linear":
            parts.append(f"Linear({layer['in_features']}->{layer['out_features']})")
        else:
            parts.append(layer.get("type", "?"))
    return "[" + ", ".join(parts) + "]"


# ------------------------------------------------------------------------------------------


class ModelCheckpoint(_Monitor):
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
    """

    def __init__(self, directory, every_n_epochs: int = 1, every_n_steps: Optional[int] = None,
                 keep_last: int = 3, save_best: bool = True, monitor: str = "val_loss",
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, min_delta, mode)
        if every_n_epochs < 0 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError("ModelCheckpoint: every_n_epochs must be >= 0 and every_n_steps "
                             ">= 1")
        if keep_last < 1:
            raise ValueError(f"ModelCheckpoint: keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = every_n_steps
        self.keep_last = int(keep_last)
        self.save_best = bool(save_best)
        self.best_name: Optional[str] = None
        self.last_saved: Optional[Path] = None

    def _callbacks(self) -> list:
        return self.trainer._checkpoint_callbacks

    def _save(self, finished: Optional[str] = None) -> Path:
        path = save_checkpoint(self.trainer, self.directory, self._callbacks(),
                               finished=finished)
        self.last_saved = path
        self._prune()
        return path

    def _prune(self) -> None:
        ckpts = list_checkpoints(self.directory)
        keep = {p.name for p in ckpts[-self.keep_last:]}
        if self.save_best and self.best_name:
            keep.add(self.best_name)
        for p in ckpts:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def on_train_begin(self, logs):
        if not getattr(self.trainer, "_resuming", False):
            self.best, self.best_name = None, None
        ptr = self.directory / "best"
        if self.best_name is None and ptr.is_file():
            name = ptr.read_text().strip()
            if (self.directory / name).is_dir():
                self.best_name = name

    def on_batch_end(self, batch, logs):
        if self.every_n_steps and self.trainer.global_step % self.every_n_steps == 0 and \
                self.trainer.batch_in_epoch < self.trainer.steps_per_epoch:
            self._save()

    def on_epoch_end(self, epoch, logs):
        improved = False
        if self.save_best and self.monitor in logs:
            v = self._value(logs)
            if v is not None and self._improved(v):
                self.best = v
                improved = True
        if improved or (self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0):
            path = self._save()
            if improved:
                self.best_name = path.name
                _replace_pointer(self.directory / "best", path.name)
                self._prune()

    def on_train_end(self, logs):
        t = self.trainer
        self._save(finished=t.stop_reason or f"completed {t.epoch} of {t.epochs} epochs")

    def state_dict(self):
        return {"best": self.best if self.best is None or math.isfinite(self.best) else None,
                "best_name": self.best_name}

    def load_state_dict(self, state):
        self.best = state.get("best")
        self.best_name = state.get("best_name")
