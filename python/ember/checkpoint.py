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
same way. A crash at any instant leaves the previous checkpoint loadable; leftover temporaries
(``.tmp-<name>-<8 hex>`` directories, ``latest.<32 hex>.tmp`` files) are ignored and removed by
the next save — nothing else in the directory is touched. Loading verifies the manifest first and
names the file and the problem (:class:`ember.CheckpointError`).

A directory holds one run: training into one that already holds another run's checkpoints (or a
``latest`` pointer) without resuming it is refused before any step, and pruning only ever deletes
the run's own earlier checkpoints.

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

import glob
import hashlib
import json
import math
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from ember.callbacks import Callback, _Monitor
from ember._io import as_path as _as_path
from ember._io import fsync_dir as _fsync_dir
from ember._io import json_default as _json_default
from ember._io import prepare_dir as _prepare_dir
from ember._io import read_pointer as _read_pointer
from ember._io import replace_pointer
from ember._io import same_dir as _same_dir
from ember._io import write_file as _write_file
from ember.errors import CheckpointError
from ember.nn import Module

__all__ = ["FORMAT_VERSION", "ModelCheckpoint", "save_checkpoint", "save_model", "load_checkpoint",
           "load_model", "load_trainer", "resolve_checkpoint", "list_checkpoints"]

FORMAT_VERSION = 1
#: The config.json of a run directory written by ``ember train`` (read here by load_model).
RUN_FORMAT = "ember-run"
RUN_FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)$")
_TMP_PREFIX = ".tmp-"
_REQUIRED = ("model.safetensors", "optimizer.safetensors", "trainer.json")
_MANIFEST = "MANIFEST.sha256"
#: The lock file a fit holds in its checkpoint folder (see ModelCheckpoint).
LOCK_FILE = ".ember-lock"
_FILES = frozenset(_REQUIRED + ("callbacks.safetensors", _MANIFEST))
# What an interrupted save leaves behind, exactly (see save_checkpoint and _replace_pointer):
# ".tmp-<name>-<8 hex>" and ".tmp-old-<name>-<8 hex>" directories holding checkpoint files, and
# "latest.<32 hex>.tmp" / "best.<32 hex>.tmp" files.
_TMP_DIR = re.compile(r"\.tmp-(?:old-)?[^/\x00]+-[0-9a-f]{8}")
_TMP_POINTER = re.compile(r"(?:latest|best)\.[0-9a-f]{32}\.tmp")


# ------------------------------------------------------------------------------------------
# low-level: durable files


def _replace_pointer(path: Path, target: str) -> None:
    # through this module's _write_file, the one tests/ckpt_worker.py tears
    replace_pointer(path, target, write=_write_file)


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


# ------------------------------------------------------------------------------------------
# trainer state <-> files


def _callback_key(i: int, cb: Callback) -> str:
    return f"{i}:{type(cb).__name__}"


def data_digest(x, y) -> str:
    """A digest of training data (shapes, dtypes and every byte of ``x`` and ``y``, host
    arrays): a checkpoint keeps its run's, and resuming on different data is refused."""
    h = hashlib.blake2b(digest_size=16)
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _trainer_state(trainer, callbacks, finished: Optional[str]) -> dict:
    from ember import __version__
    from ember.nn import Dropout
    # by module name: a Sequential's layer index ("2"), a custom module's attribute ("drop")
    dropout = {name: {"seed": layer.seed, "counter": layer.counter}
               for name, layer in trainer.model.named_modules() if isinstance(layer, Dropout)}
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
        "configured_optimizer": getattr(trainer, "_configured_optimizer", None) or
        _configured(trainer),
        "fit_params": trainer.fit_params,
        "data_digest": getattr(trainer, "_data_digest", None),
        "rng": {"data_seed": trainer.fit_params.get("seed"), "dropout": dropout},
        "gradient_monitor": trainer.gradient_monitor.state_dict(),
        "callbacks": {_callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks)},
        "history": trainer.history.to_dict(),
    }


def _first_non_finite(named_arrays) -> Optional[str]:
    """The name of the first of ``(name, array)`` whose floats hold NaN or Inf, or None (a CuPy
    array goes through CuPy's isfinite)."""
    for name, a in named_arrays:
        if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
            return name
    return None


def _non_finite_parameter(model) -> Optional[str]:
    """The name of the first parameter of ``model`` holding NaN or Inf, or None."""
    return _first_non_finite((name, p.data) for name, p in model.named_parameters())


def save_checkpoint(trainer, directory, callbacks=(), name: Optional[str] = None,
                    finished: Optional[str] = None) -> Path:
    """Write a checkpoint of ``trainer`` into ``directory`` atomically; returns its path.

    ``latest`` in ``directory`` is updated to point at it. ``name`` defaults to
    ``ckpt-e<epoch>-s<step>``; one given must be a plain directory name.
    """
    if name is not None and (not isinstance(name, str) or name in ("", ".", "..", "latest", "best")
                             or "/" in name or name.startswith(_TMP_PREFIX)
                             or any(ord(c) < 32 for c in name)):
        raise ValueError(f"save_checkpoint: name must be a plain directory name (not 'latest', "
                         f"'best' or '{_TMP_PREFIX}...'), got {name!r}")
    directory = _as_path(directory, "save_checkpoint: directory")
    bad = _non_finite_parameter(trainer.model)
    if bad is not None:
        raise CheckpointError(f"save_checkpoint: parameter {bad!r} holds NaN or Inf; such a "
                              f"checkpoint could not be loaded, so none is written")
    return _write_checkpoint(trainer, directory, callbacks, name, finished)


def save_model(model, path) -> Path:
    """Save ``model`` (architecture and weights) as a checkpoint directory at ``path``, which
    :func:`load_model` reads back (also ``model.save(path)``); returns the path.

    The directory holds ``model.safetensors`` (PyTorch names), ``trainer.json`` (the
    architecture) and a SHA-256 manifest; it is written next to ``path`` and renamed into
    place, so an existing save at ``path`` is replaced whole or not at all.

    Raises:
        TypeError: ``model`` is not an ember Module, or has no ``config()`` (register custom
            layers with :func:`ember.nn.register_module`).
        ValueError: ``path`` is a file, or a folder holding anything but an earlier save.
        CheckpointError: a parameter holds NaN or Inf (such a save could not be loaded).
    """
    from ember import __version__
    if not isinstance(model, Module):
        raise TypeError(f"save_model: model must be an ember.nn.Module, got "
                        f"{type(model).__name__}")
    path = _as_path(path, "save_model: path")
    try:
        arch = model.config()
    except NotImplementedError:
        raise TypeError(f"save_model: {type(model).__name__} has no config(), so its "
                        "architecture cannot be saved; give it one (see "
                        "ember.nn.register_module)") from None
    bad = _non_finite_parameter(model)
    if bad is not None:
        raise CheckpointError(f"save_model: parameter {bad!r} holds NaN or Inf; such a save "
                              "could not be loaded, so none is written")
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_model: path {str(path)!r} is a file; give a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / _MANIFEST).is_file():
        raise ValueError(f"save_model: {str(path)!r} already holds other files; save into a "
                         "new or empty directory (or over an earlier save)")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {"model.safetensors": _write_file(tmp / "model.safetensors",
                                                  _safetensors_chunks(model.state_dict())),
                 "optimizer.safetensors": _write_file(tmp / "optimizer.safetensors",
                                                      _safetensors_chunks({}))}
        state = {"format_version": FORMAT_VERSION, "ember_version": __version__,
                 "saved_by": "save_model", "model": arch, "device": model.device}
        files["trainer.json"] = _write_file(
            tmp / "trainer.json", json.dumps(state, indent=1, default=_json_default).encode())
        _seal(tmp, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, path)
    return path


def _seal(tmp: Path, files: dict) -> None:
    """Write the SHA-256 manifest of ``files`` (name -> digest) into ``tmp`` and fsync it."""
    manifest = "".join(f"{h}  {f}\n" for f, h in sorted(files.items()))
    _write_file(tmp / _MANIFEST, manifest.encode())
    _fsync_dir(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the sealed directory ``tmp`` to ``final``; a ``final`` already there (the same
    step saved again, a model saved over) is swapped out whole (see _recover_swap)."""
    if final.exists():
        old = final.parent / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_checkpoint(trainer, directory: Path, callbacks, name: Optional[str],
                      finished: Optional[str]) -> Path:
    """save_checkpoint's writing, its arguments and the weights checked by the caller."""
    _prepare_dir(directory, "save_checkpoint: directory")
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
    _seal(tmp, files)
    _move_into_place(tmp, final)  # (the same step saved again: the end-of-training save)
    _replace_pointer(directory / "latest", name)
    return final


def _is_temporary(p: Path) -> bool:
    """Whether ``p`` is exactly what an interrupted save leaves: a ``.tmp-<name>-<8 hex>``
    (or ``.tmp-old-...``) directory holding nothing but checkpoint files, or a
    ``latest.<32 hex>.tmp`` / ``best.<32 hex>.tmp`` file. Anything else is someone else's."""
    if p.is_symlink():
        return False
    if _TMP_POINTER.fullmatch(p.name):
        return p.is_file()
    if _TMP_DIR.fullmatch(p.name) and p.is_dir():
        try:
            return all(c.name in _FILES and c.is_file() and not c.is_symlink()
                       for c in p.iterdir())
        except OSError:
            return False
    return False


def _recover_swap(directory: Path, name: str) -> bool:
    """Put checkpoint ``name`` back when a save of the same name was interrupted between its
    two renames (``name`` moved aside to ``.tmp-old-<name>-<hex>``, the new copy not yet renamed
    from ``.tmp-<name>-<hex>``): the new copy, complete (its manifest is written and fsynced
    before the renames), else the old one. Returns whether ``name`` is a directory now."""
    final = directory / name
    if final.is_dir():
        return True
    for prefix in (f"{_TMP_PREFIX}{name}-", f"{_TMP_PREFIX}old-{name}-"):
        for cand in sorted(directory.glob(glob.escape(prefix) + "*")):
            if _is_temporary(cand) and (cand / _MANIFEST).is_file():
                try:
                    _verify(cand)
                except CheckpointError:
                    continue
                os.replace(cand, final)
                _fsync_dir(directory)
                return True
    return False


def _clean_temporaries(directory: Path) -> None:
    """Remove the leftovers of interrupted saves (only those: see :func:`_is_temporary`),
    after putting back a checkpoint that ``latest`` names but an interrupted save had moved
    aside (see :func:`_recover_swap`)."""
    pointer = directory / "latest"
    if pointer.is_file():
        try:
            target = _read_pointer(pointer)
        except CheckpointError:
            target = ""
        if target and "/" not in target and target not in (".", ".."):
            _recover_swap(directory, target)
    for p in directory.iterdir():
        if _is_temporary(p):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def list_checkpoints(directory) -> list[Path]:
    """Complete checkpoints in ``directory`` (``ckpt-e<epoch>-s<step>`` directories with a
    manifest), oldest first (by step)."""
    directory = _as_path(directory, "list_checkpoints: directory")
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / _MANIFEST).is_file():
            found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


def _step_of(ckpt: Path) -> int:
    return int(_NAME.match(ckpt.name).group(2))


def _run_in(directory: Path) -> Optional[str]:
    """What shows that ``directory`` already holds a run ("latest: <name>"), or None."""
    ptr = directory / "latest"
    if ptr.is_file() or ptr.is_symlink():
        try:
            return f"latest: {_read_pointer(ptr)}"
        except CheckpointError:
            return "an unreadable 'latest' pointer"
    ckpts = list_checkpoints(directory)
    return f"latest: {ckpts[-1].name}" if ckpts else None


def _check_destination(directory: Path, what: str, resumed_from: Optional[Path]) -> None:
    """Refuse to train into a directory holding another run's checkpoints: saving there would
    overwrite checkpoints of the same names, and pruning would delete the new ones. Training
    resumed from a checkpoint in ``directory`` continues that run and may."""
    _prepare_dir(directory, what)
    if resumed_from is not None and _same_dir(resumed_from.parent, directory):
        return
    run = _run_in(directory)
    if run is None:
        return
    if resumed_from is None:
        how = ("resume='latest'" if what.startswith("fit:") else
               f"checkpoint_dir='{directory}', resume='latest' to fit")
        raise CheckpointError(f"{what} '{directory}' already holds checkpoints of a run ({run}); "
                              f"pass {how} to continue it, or use an empty folder")
    raise CheckpointError(f"{what} '{directory}' already holds checkpoints of another run "
                          f"({run}); resuming {resumed_from} into it would mix the two runs: "
                          "use an empty folder")


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from itself, a run directory holding ``latest``, or a pointer
    file. Raises :class:`CheckpointError` when there is none."""
    p = _as_path(path, "resolve_checkpoint: path")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir() and ((p / "trainer.json").exists() or (p / _MANIFEST).exists()):
        return p
    pointer = p / "latest" if p.is_dir() else p
    if pointer.is_file():
        try:
            target = _read_pointer(pointer)
        except CheckpointError:
            if pointer is p:  # a file named directly: most likely one of a checkpoint's files
                raise CheckpointError(f"{p} is a file, not a checkpoint directory (nor a "
                                      "'latest' pointer naming one)") from None
            raise
        q = pointer.parent / target
        if target and "/" not in target and target not in (".", "..") and not q.is_dir():
            _recover_swap(pointer.parent, target)  # a save interrupted between its renames
        if not target or "/" in target or target in (".", "..") or not q.is_dir():
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


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# trainer.json: what each key must hold (checked where the key is used)
_STATE_KEYS = {
    "epoch": (_is_count, "a non-negative integer"),
    "global_step": (_is_count, "a non-negative integer"),
    "optimizer_step": (_is_count, "a non-negative integer"),
    "optimizer_skipped_steps": (_is_count, "a non-negative integer"),
    "batch_in_epoch": (lambda v: v is None or _is_count(v), "a non-negative integer"),
    "epoch_accumulators": (lambda v: v is None or (isinstance(v, list) and len(v) == 6 and
                                                   all(_is_number(a) for a in v)),
                           "null or a list of 6 numbers"),
    "base_lr": (_is_number, "a number"),
    "model": (lambda v: isinstance(v, dict), "an object"),
    "loss": (lambda v: isinstance(v, (dict, str)), "an object"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("optimizer"), str),
                  "an object naming the optimizer"),
    "rng": (lambda v: isinstance(v, dict) and isinstance(v.get("dropout"), dict),
            "an object with 'dropout'"),
    "history": (lambda v: isinstance(v, dict), "an object"),
    "fit_params": (lambda v: isinstance(v, dict), "an object"),
    "callbacks": (lambda v: isinstance(v, dict), "an object"),
    "gradient_monitor": (lambda v: isinstance(v, dict), "an object"),
    "configured_optimizer": (lambda v: v is None or isinstance(v, dict), "an object"),
    "metrics": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
                "a list of names"),
}


def _check_state(ck: dict, required=(), optional=()) -> dict:
    """The trainer.json state of ``ck`` after checking that it has every ``required`` key and
    that those and the ``optional`` ones present hold what they should."""
    st, where = ck["state"], ck["path"] / "trainer.json"
    for key in required:
        if key not in st:
            raise CheckpointError(f"{where} lacks {key!r} (the file is incomplete or was edited)")
    for key in (*required, *optional):
        if key in st:
            ok, what = _STATE_KEYS[key]
            if not ok(st[key]):
                raise CheckpointError(f"{where}: {key!r} should be {what}, got "
                                      f"{json.dumps(st[key], default=str)[:80]}")
    return st


def _check_finite_weights(ck: dict) -> None:
    """Refuse weights that hold NaN or Inf — saved that way, not an architecture mismatch."""
    name = _first_non_finite(ck["model"].items())
    if name is not None:
        raise CheckpointError(f"{ck['path'] / 'model.safetensors'}: {name} holds NaN or Inf "
                              "(the run's weights were not finite when saved)")


def _history_from(ck: dict):
    from ember.trainer import History
    h = _check_state(ck, ("history",))["history"]
    try:
        return History.from_dict(h)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad 'history' ({exc})") from None


def load_checkpoint(path) -> dict:
    """Verify and read a checkpoint. Returns ``{"path", "state", "model", "optimizer",
    "callbacks"}`` (state from trainer.json, the rest name -> array)."""
    ckpt = resolve_checkpoint(_as_path(path, "load_checkpoint: path"))
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


def _model_from(ck: dict, device: Optional[str], preprocessing: bool = True):
    from ember import nn
    from ember import preprocessing as pre
    from ember.backend import cuda_available
    _check_state(ck, ("model",))
    arch = ck["state"]["model"]
    try:
        if isinstance(arch, dict) and arch.get("type") == "RunModel":  # saved by a fine-tune
            model = pre.from_config(arch, nn.from_config)
        else:
            model = nn.from_config(arch)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad model architecture "
                              f"({exc})") from None
    _check_finite_weights(ck)
    try:
        model.load_state_dict(ck["model"])
    except ValueError as exc:
        raise CheckpointError(f"{ck['path'] / 'model.safetensors'}: does not match the "
                              f"architecture in trainer.json: {exc}") from None
    if not preprocessing:
        if isinstance(model, pre.RunModel):
            model = model.network
    elif not isinstance(model, pre.RunModel):
        run = _run_config(ck["path"])
        if run is not None:
            model = _run_model(model, *run)
    if device is None:
        device = ck["state"].get("device", "cpu")
        if device == "cuda" and not cuda_available():
            device = "cpu"
    return model.to(device).eval()


_BARE = ("pass preprocessing=False to load the bare network (it expects standardized features "
         "and, for regression, gives standardized targets)")


#: What `ember train` writes next to checkpoints/ (with config.json) at the end of a run.
_RUN_OUTPUTS = ("history.csv", "summary.json", "curves.png")


def _run_config(ckpt: Path) -> Optional[tuple[Path, dict]]:
    """``(config.json path, its contents)`` of the ``ember train`` run that holds checkpoint
    ``ckpt`` (``<run>/checkpoints/<ckpt>``), or None when the checkpoint is not in such a run.
    A config.json there that cannot be read, or of a run format this ember does not know, is
    refused (CheckpointError) rather than ignored: the model would silently predict without the
    run's standardization."""
    folder = ckpt.parent
    path = folder.parent / "config.json"
    if folder.name != "checkpoints":
        return None
    if not path.is_file():
        made = [n for n in _RUN_OUTPUTS if (folder.parent / n).exists()]
        if made:  # an `ember train` run that lost its config.json: refuse, do not guess
            raise CheckpointError(
                f"{folder.parent} looks like an `ember train` run (it has {', '.join(made)}) "
                f"but has no config.json, so the run's standardization of {ckpt} is unknown; "
                f"{_BARE}")
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}), so the run's standardization cannot "
                              f"be applied to {ckpt}; {_BARE}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        return None  # not an ember run's configuration: a plain checkpoint folder
    if cfg.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(f"{path}: run format version {cfg.get('format_version')!r} is not "
                              f"supported by this ember (it reads {RUN_FORMAT_VERSION}), so the "
                              f"run's standardization cannot be applied; {_BARE}")
    return path, cfg


def _run_model(network, path: Path, cfg: dict):
    """``network`` inside a :class:`ember.preprocessing.RunModel` with the run's feature
    standardization, target scaling (regression) and class labels (classification)."""
    from ember.preprocessing import Rescale, RunModel, Standardize
    data = cfg.get("data")
    try:
        if not isinstance(data, dict):
            raise ValueError("it has no 'data' object")
        norm = data.get("normalization") or {}
        if not isinstance(norm, dict):
            raise ValueError(f"'normalization' should be an object, got {norm!r:.80}")
        task = data.get("task")
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task {task!r}")
        standardize = (Standardize(norm["x_mean"], norm["x_std"])
                       if "x_mean" in norm or "x_std" in norm else None)
        rescale = (Rescale(norm["y_std"], norm["y_mean"])
                   if task == "regression" and ("y_mean" in norm or "y_std" in norm) else None)
        classes = data.get("classes") if task == "classification" else None
        if task == "classification" and not isinstance(classes, list):
            raise ValueError(f"a classification run needs a list of classes, got {classes!r:.80}")
        return RunModel(network, standardize, rescale, classes)
    except KeyError as exc:
        raise CheckpointError(f"{path}: the run's normalization lacks {exc}; {_BARE}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot apply the run's preprocessing ({exc}); "
                              f"{_BARE}") from None


def load_model(path, device: Optional[str] = None, *, preprocessing: bool = True):
    """Rebuild the model saved in a checkpoint (architecture from trainer.json), in eval mode,
    on ``device`` (default: where it was saved, or the CPU when that GPU is absent).

    ``path`` is a checkpoint directory, a folder holding a ``latest`` pointer, the pointer
    itself, or a run directory written by ``ember train`` (or its ``checkpoints/`` folder, or a
    checkpoint in it). For such a run the result is an :class:`ember.preprocessing.RunModel`:
    the trained network behind the run's feature standardization and, for regression, in front
    of the target's rescaling (both read from the run's config.json), with the run's class
    labels in ``model.classes``. It takes the raw features, and ``model.predict(x)`` gives what
    ``ember predict`` prints: the values (regression), or logits whose argmax indexes
    ``model.classes`` (``model.predict_labels(x)`` gives the labels). Otherwise it is the model
    as saved (e.g. an :class:`ember.nn.MLP`).

    ``preprocessing=False`` returns the bare network instead (for a run: ``model.network``),
    which expects standardized features.

    Raises:
        CheckpointError: no checkpoint, a corrupt one, or a run whose config.json cannot be
            applied (the message says so; ``preprocessing=False`` still loads the network).
    """
    return _model_from(load_checkpoint(_as_path(path, "load_model: path")), device,
                       preprocessing)


def load_trainer(path, device: Optional[str] = None, *, preprocessing: bool = True):
    """A :class:`ember.Trainer` with the saved model, loss and optimizer state, ready for
    ``predict``/``evaluate`` or further training (fine-tuning).

    The model is :func:`load_model`'s: for a run written by ``ember train`` a
    :class:`ember.preprocessing.RunModel`, so ``predict``, ``predict_proba`` and ``evaluate``
    take the raw features and agree with ``ember predict`` (classification: class indices into
    ``trainer.model.classes``; regression: values in the target's units, and ``evaluate``'s loss
    is the MSE in those units). ``preprocessing=False`` gives a trainer of the bare network.
    """
    from ember.losses import get_loss
    from ember.optim import get_optimizer
    from ember.trainer import Trainer
    ck = load_checkpoint(_as_path(path, "load_trainer: path"))
    st = _check_state(ck, ("model", "loss", "optimizer", "optimizer_step", "history", "epoch",
                           "global_step"), ("metrics", "fit_params", "optimizer_skipped_steps"))
    model = _model_from(ck, device, preprocessing)
    hp = dict(st["optimizer"])
    name = hp.pop("optimizer").lower()
    where = ck["path"] / "trainer.json"
    try:
        loss = get_loss(st["loss"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad 'loss' ({exc})") from None
    try:
        optimizer = get_optimizer(name, model, **_optimizer_kwargs(hp))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad 'optimizer' ({exc})") from None
    trainer = Trainer(model, loss=loss, optimizer=optimizer,
                      metrics=tuple(st.get("metrics", ("accuracy",))), device=model.device)
    _restore_optimizer(trainer, ck)
    trainer.history = _history_from(ck)
    trainer.fit_params = st.get("fit_params", {})
    trainer.epoch, trainer.global_step = st["epoch"], st["global_step"]
    return trainer


def _optimizer_kwargs(hp: dict) -> dict:
    kw = {k: v for k, v in hp.items() if v is not None}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return kw


def _restore_optimizer(trainer, ck: dict) -> None:
    _check_state(ck, ("optimizer", "optimizer_step"), ("optimizer_skipped_steps",))
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


# ------------------------------------------------------------------------------------------
# resume


class _Resume:
    def __init__(self, finished: Optional[str], message: Optional[str] = None):
        self.finished = finished
        #: what fit prints (verbose) after restoring: where the run continues
        self.message = message


def _configured(trainer) -> dict:
    """The optimizer's hyperparameters a fit starts with (``lr`` before any schedule)."""
    return {**trainer.optimizer.hyperparameters(), "lr": trainer._base_lr}


def _same_value(a, b) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)  # noqa: E731
    return norm(a) == norm(b)


def _overridden(trainer, st: dict) -> list[str]:
    """The hyperparameters the trainer was set up with (other than its optimizer's defaults)
    that differ from those of the run being resumed, as ``"lr=0.5 (checkpoint: 0.001)"``."""
    import inspect
    saved = st.get("configured_optimizer") or {**st["optimizer"], "lr": st["base_lr"]}
    try:
        params = inspect.signature(type(trainer.optimizer).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    out = []
    for key, value in _configured(trainer).items():
        if key == "optimizer" or key not in saved or _same_value(value, saved[key]):
            continue
        default = params[key].default if key in params else inspect.Parameter.empty
        if default is not inspect.Parameter.empty and _same_value(value, default):
            continue  # not chosen: the optimizer's default
        out.append(f"{key}={value!r} (checkpoint: {saved[key]!r})")
    return out


def attach_checkpointing(trainer, checkpoint_dir, resume, callbacks: list) -> _Resume:
    """Called by ``Trainer.fit``: add a ModelCheckpoint when none is given, and restore the
    trainer from ``resume``. Returns whether the restored run had already finished.

    Everything is checked before any training: a ``checkpoint_dir`` that is a file, a
    destination that holds another run's checkpoints (unless resuming that run), an unusable
    ``resume``."""
    if checkpoint_dir is not None:
        checkpoint_dir = _as_path(checkpoint_dir, "fit: checkpoint_dir")
        _prepare_dir(checkpoint_dir, "fit: checkpoint_dir")
    if resume is not None and resume != "latest":
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(f"fit: resume must be 'latest' or a checkpoint path, got "
                            f"{type(resume).__name__}")
        resume = _as_path(resume, "fit: resume")
    if checkpoint_dir is not None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint(checkpoint_dir))
    source: Optional[Path] = None
    if resume == "latest":
        if checkpoint_dir is None:
            raise ValueError("fit: resume='latest' needs checkpoint_dir")
        ptr = checkpoint_dir / "latest"
        if ptr.exists() or ptr.is_symlink():
            source = checkpoint_dir
        else:
            ckpts = list_checkpoints(checkpoint_dir)
            if ckpts:  # the pointer is gone (deleted, or a copy without it): not a fresh run
                source = ckpts[-1]
                warnings.warn(f"fit: {ptr} is missing; resuming from the newest complete "
                              f"checkpoint, {source}", stacklevel=3)
            # else nothing saved yet: a fresh run
    elif resume is not None:
        source = resume
    here = resolve_checkpoint(source) if source is not None else None
    for cb in callbacks:  # before anything is restored: the destinations must be free
        if isinstance(cb, ModelCheckpoint):
            what = ("fit: checkpoint_dir" if checkpoint_dir is not None and
                    _same_dir(cb.directory, checkpoint_dir) else "ModelCheckpoint: directory")
            _check_destination(cb.directory, what, here)
    if here is None:
        return _Resume(None)
    ck = load_checkpoint(here)
    here = ck["path"]
    st = _check_state(ck, ("model", "optimizer", "optimizer_step", "rng", "history", "epoch",
                           "global_step", "base_lr"),
                      ("fit_params", "callbacks", "gradient_monitor", "batch_in_epoch",
                       "epoch_accumulators", "optimizer_skipped_steps",
                       "configured_optimizer"))
    if st.get("model") != trainer.model.config():
        raise CheckpointError(f"{here / 'trainer.json'}: the checkpoint's architecture "
                              f"{_describe(st.get('model'))} differs from the model being "
                              f"trained {_describe(trainer.model.config())}")
    if st.get("task") != trainer.task:
        raise CheckpointError(f"{here / 'trainer.json'}: saved for {st.get('task')}, the trainer "
                              f"is set up for {trainer.task}")
    saved_opt = st["optimizer"]["optimizer"]
    if saved_opt != type(trainer.optimizer).__name__:
        raise CheckpointError(f"{here / 'trainer.json'}: saved with optimizer {saved_opt}, the "
                              f"trainer uses {type(trainer.optimizer).__name__}")
    fp = st.get("fit_params", {})
    for key in ("batch_size", "seed", "shuffle", "n_train", "accumulate_steps"):
        if key in fp and fp[key] != trainer.fit_params.get(key):
            raise CheckpointError(
                f"{here / 'trainer.json'}: the run was saved with {key}={fp[key]!r} but "
                f"fit was called with {key}={trainer.fit_params.get(key)!r}; an exact resume "
                "needs the same data and batching")
    saved_digest, digest = st.get("data_digest"), getattr(trainer, "_data_digest", None)
    if saved_digest and digest and saved_digest != digest:  # (older checkpoints have none)
        raise CheckpointError(
            f"{here / 'trainer.json'}: the run was trained on other data (same number of samples, "
            f"different values); an exact resume needs the same data and batching")
    from ember.nn import Dropout
    modules = dict(trainer.model.named_modules())
    dropout = []
    for idx, d in st["rng"]["dropout"].items():
        try:
            layer = modules[idx]
            seed, counter = int(d["seed"]), int(d["counter"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{here / 'trainer.json'}: bad dropout state for layer "
                                  f"{idx!r}: {json.dumps(d, default=str)[:80]}") from None
        if not isinstance(layer, Dropout):
            raise CheckpointError(f"{here / 'trainer.json'}: layer {idx} is not Dropout")
        dropout.append((layer, seed, counter))
    history = _history_from(ck)
    overridden = _overridden(trainer, st)
    _check_finite_weights(ck)
    # checked: now restore
    try:
        trainer.model.load_state_dict(ck["model"])
    except ValueError as exc:
        raise CheckpointError(f"{here / 'model.safetensors'}: {exc}") from None
    _restore_optimizer(trainer, ck)
    if overridden:
        warnings.warn(f"fit: resuming {here}: the run's hyperparameters are used, not the "
                      f"trainer's: {', '.join(overridden)}", stacklevel=3)
    for layer, seed, counter in dropout:
        layer.seed, layer.counter = seed, counter
    trainer.history = history
    trainer.epoch = int(st["epoch"])
    trainer.global_step = int(st["global_step"])
    trainer._start_batch = int(st.get("batch_in_epoch") or 0)
    trainer._epoch_acc = st.get("epoch_accumulators")
    trainer._base_lr = float(st["base_lr"])
    trainer._configured_optimizer = (st.get("configured_optimizer") or
                                     {**st["optimizer"], "lr": st["base_lr"]})
    trainer.stop_reason = st.get("stop_reason")
    try:
        trainer.gradient_monitor.load_state_dict(st.get("gradient_monitor", {}))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{here / 'trainer.json'}: bad 'gradient_monitor' ({exc})") from None
    saved_cbs = st.get("callbacks", {})
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
        key = _callback_key(i, cb)
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
            raise CheckpointError(f"{here}: bad saved state for callback {key} ({exc})") from None
    trainer._resuming = True
    if st.get("stop_reason"):
        return _Resume(f"the run stopped early ({st['stop_reason']})")
    if trainer.epoch >= trainer.epochs:
        return _Resume(f"the run already completed {trainer.epoch} of {trainer.epochs} epochs")
    batch = trainer._start_batch
    where = f"batch {batch + 1} of {trainer.steps_per_epoch}" if batch else "its start"
    return _Resume(None, f"ember: resumed {here} at epoch {trainer.epoch + 1} of "
                         f"{trainer.epochs} ({where}), step {trainer.global_step}")


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

    A training run that does not resume from ``directory`` refuses to start when it already
    holds checkpoints (:class:`ember.CheckpointError`), and pruning deletes only the run's own
    earlier checkpoints: never one from a later step (left there by the run before it was
    resumed from an earlier checkpoint), never the one just written.
    """

    def __init__(self, directory, every_n_epochs: int = 1, every_n_steps: Optional[int] = None,
                 keep_last: int = 3, save_best: bool = True, monitor: str = "val_loss",
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, min_delta, mode)

        def whole(name, value, low, none_ok=False):
            if value is None and none_ok:
                return
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
                    or value < low:
                raise ValueError(f"ModelCheckpoint: {name} must be an integer >= {low}"
                                 f"{' or None' if none_ok else ''}, got {value!r}")
        whole("every_n_epochs", every_n_epochs, 0)
        whole("every_n_steps", every_n_steps, 1, none_ok=True)
        whole("keep_last", keep_last, 1)
        self.directory = _as_path(directory, "ModelCheckpoint: directory")
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.keep_last = int(keep_last)
        self.save_best = bool(save_best)
        self.best_name: Optional[str] = None
        self.last_saved: Optional[Path] = None

    def _callbacks(self) -> list:
        return self.trainer._checkpoint_callbacks

    def _save(self, finished: Optional[str] = None) -> Optional[Path]:
        """Save a checkpoint and prune; None (with a warning) when the model's weights are not
        all finite: such a checkpoint could not be loaded, and writing it would move ``latest``
        off the last good one and could prune good ones away."""
        bad = _non_finite_parameter(self.trainer.model)
        if bad is not None:
            warnings.warn(f"ModelCheckpoint: not saving step {self.trainer.global_step}: "
                          f"parameter {bad!r} holds NaN or Inf; '{self.directory}' keeps its "
                          f"last good checkpoint", RuntimeWarning, stacklevel=3)
            return None
        path = _write_checkpoint(self.trainer, self.directory, self._callbacks(), None,
                                 finished)
        self.last_saved = path
        self._prune()
        return path

    def _prune(self) -> None:
        step = self.trainer.global_step
        ckpts = [p for p in list_checkpoints(self.directory) if _step_of(p) <= step]
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
        if not getattr(self.trainer, "_resuming", False):
            # fit(checkpoint_dir=..., resume=...) checked this already; a ModelCheckpoint in
            # the callbacks of a fit without them is checked here, before the first step
            _check_destination(self.directory, "ModelCheckpoint: directory", None)
            self.trainer._configured_optimizer = _configured(self.trainer)
            self.best, self.best_name = None, None
        self._lock()
        ptr = self.directory / "best"
        if self.best_name is None and ptr.is_file():
            name = _read_pointer(ptr)
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
            v = self._value(logs)
            if v is not None and self._improved(v):
                self.best = v
                improved = True
        if improved or (self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0):
            path = self._save()
            if improved and path is not None:
                self.best_name = path.name
                _replace_pointer(self.directory / "best", path.name)
                self._prune()

    def on_train_end(self, logs):
        t = self.trainer
        self._save(finished=t.stop_reason or f"completed {t.epoch} of {t.epochs} epochs")
        self._unlock()

    # One fit a folder at a time: an exclusive lock on <directory>/.ember-lock for the length of
    # the fit (Trainer.fit releases it however the fit ends). Without it two fits into one
    # folder deleted each other's in-flight saves and interleaved their checkpoints.
    _lock_fd: Optional[int] = None

    def _lock(self) -> None:
        self._unlock()
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: unguarded, as before
            return
        path = self.directory / LOCK_FILE
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

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock

    def state_dict(self):
        return {"best": self.best if self.best is None or math.isfinite(self.best) else None,
                "best_name": self.best_name}

    def load_state_dict(self, state):
        self.best = state.get("best")
        self.best_name = state.get("best_name")


# Module.save(path) is save_model: registered here, as nn sits below this module.
Module.saver = save_model
