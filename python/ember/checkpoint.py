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
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from safetensors.numpy import load as _load_safetensors

from ember import _io, nn
from ember import preprocessing as pre
from ember._io import as_path, json_default, prepare_dir, read_pointer, same_dir
from ember._version import __version__
from ember.backend import cuda_available, to_host
from ember.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "save_checkpoint", "write_checkpoint", "save_model",
           "load_checkpoint", "load_model", "resolve_checkpoint", "list_checkpoints",
           "check_destination", "check_state", "check_finite_weights", "non_finite_parameter",
           "first_non_finite", "step_of", "model_from", "data_digest"]

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


def _to_host(a) -> np.ndarray:
    return np.ascontiguousarray(to_host(a))


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


def data_digest(x, y) -> str:
    """A digest of training data (shapes, dtypes and every byte of ``x`` and ``y``, host
    arrays): a checkpoint keeps its run's, and resuming on different data is refused."""
    h = hashlib.blake2b(digest_size=16)
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def first_non_finite(named_arrays) -> Optional[str]:
    """The name of the first of ``(name, array)`` whose floats hold NaN or Inf, or None (a CuPy
    array goes through CuPy's isfinite)."""
    for name, a in named_arrays:
        if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
            return name
    return None


def non_finite_parameter(model) -> Optional[str]:
    """The name of the first parameter of ``model`` holding NaN or Inf, or None."""
    return first_non_finite((name, p.data) for name, p in model.named_parameters())


def save_checkpoint(trainer, directory, callbacks=(), name: Optional[str] = None,
                    finished: Optional[str] = None) -> Path:
    """Write a checkpoint of ``trainer`` (its :meth:`~ember.Trainer.state_dict`, with the state
    of ``callbacks``) into ``directory`` atomically; returns its path.

    ``latest`` in ``directory`` is updated to point at it. ``name`` defaults to
    ``ckpt-e<epoch>-s<step>``; one given must be a plain directory name.
    """
    _check_name(name)
    directory = as_path(directory, "save_checkpoint: directory")
    bad = non_finite_parameter(trainer.model)
    if bad is not None:
        raise CheckpointError(f"save_checkpoint: parameter {bad!r} holds NaN or Inf; such a "
                              f"checkpoint could not be loaded, so none is written")
    return write_checkpoint(trainer.state_dict(callbacks=callbacks, finished=finished),
                            directory, name)


def _check_name(name) -> None:
    if name is not None and (not isinstance(name, str) or name in ("", ".", "..", "latest", "best")
                             or "/" in name or name.startswith(_TMP_PREFIX)
                             or any(ord(c) < 32 for c in name)):
        raise ValueError(f"save_checkpoint: name must be a plain directory name (not 'latest', "
                         f"'best' or '{_TMP_PREFIX}...'), got {name!r}")


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_model: model must be an ember.nn.Module, got "
                        f"{type(model).__name__}")
    path = as_path(path, "save_model: path")
    try:
        arch = model.config()
    except NotImplementedError:
        raise TypeError(f"save_model: {type(model).__name__} has no config(), so its "
                        "architecture cannot be saved; give it one (see "
                        "ember.nn.register_module)") from None
    bad = non_finite_parameter(model)
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
        files = {"model.safetensors": _io.write_file(tmp / "model.safetensors",
                                                  _safetensors_chunks(model.state_dict())),
                 "optimizer.safetensors": _io.write_file(tmp / "optimizer.safetensors",
                                                      _safetensors_chunks({}))}
        state = {"format_version": FORMAT_VERSION, "ember_version": __version__,
                 "saved_by": "save_model", "model": arch, "device": model.device}
        files["trainer.json"] = _io.write_file(
            tmp / "trainer.json", json.dumps(state, indent=1, default=json_default).encode())
        _seal(tmp, files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, path)
    return path


def _seal(tmp: Path, files: dict) -> None:
    """Write the SHA-256 manifest of ``files`` (name -> digest) into ``tmp`` and fsync it."""
    manifest = "".join(f"{h}  {f}\n" for f, h in sorted(files.items()))
    _io.write_file(tmp / _MANIFEST, manifest.encode())
    _io.fsync_dir(tmp)


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
    _io.fsync_dir(final.parent)


def write_checkpoint(state: dict, directory, name: Optional[str] = None) -> Path:
    """Write ``state`` as a checkpoint in ``directory`` atomically and point ``latest`` at it;
    returns its path. ``state`` is what :meth:`ember.Trainer.state_dict` returns:
    ``{"trainer": <trainer.json object>, "model": {name: array}, "optimizer": {name: array},
    "callbacks": {name: array}}`` (arrays on the host or a GPU). ``name`` defaults to
    ``ckpt-e<epoch>-s<step>`` from the trainer state."""
    _check_name(name)
    directory = as_path(directory, "save_checkpoint: directory")
    prepare_dir(directory, "save_checkpoint: directory")
    _clean_temporaries(directory)
    meta = state["trainer"]
    name = name or f"ckpt-e{meta['epoch']:04d}-s{meta['global_step']:08d}"
    final = directory / name
    tmp = directory / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for part in ("model", "optimizer", "callbacks"):
            if part != "callbacks" or state.get(part):
                fname = f"{part}.safetensors"
                files[fname] = _io.write_file(tmp / fname, _safetensors_chunks(state[part]))
        files["trainer.json"] = _io.write_file(
            tmp / "trainer.json",
            json.dumps(meta, indent=1, default=json_default, allow_nan=True).encode())
        _seal(tmp, files)
    except Exception:  # (a kill leaves the temporary for the next save to remove)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, final)  # (the same step saved again: the end-of-training save)
    _io.replace_pointer(directory / "latest", name)
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
                _io.fsync_dir(directory)
                return True
    return False


def _clean_temporaries(directory: Path) -> None:
    """Remove the leftovers of interrupted saves (only those: see :func:`_is_temporary`),
    after putting back a checkpoint that ``latest`` names but an interrupted save had moved
    aside (see :func:`_recover_swap`)."""
    pointer = directory / "latest"
    if pointer.is_file():
        try:
            target = read_pointer(pointer)
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
    directory = as_path(directory, "list_checkpoints: directory")
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and (p / _MANIFEST).is_file():
            found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


def step_of(ckpt: Path) -> int:
    return int(_NAME.match(ckpt.name).group(2))


def _run_in(directory: Path) -> Optional[str]:
    """What shows that ``directory`` already holds a run ("latest: <name>"), or None."""
    ptr = directory / "latest"
    if ptr.is_file() or ptr.is_symlink():
        try:
            return f"latest: {read_pointer(ptr)}"
        except CheckpointError:
            return "an unreadable 'latest' pointer"
    ckpts = list_checkpoints(directory)
    return f"latest: {ckpts[-1].name}" if ckpts else None


def check_destination(directory: Path, what: str, resumed_from: Optional[Path]) -> None:
    """Refuse to train into a directory holding another run's checkpoints: saving there would
    overwrite checkpoints of the same names, and pruning would delete the new ones. Training
    resumed from a checkpoint in ``directory`` continues that run and may."""
    prepare_dir(directory, what)
    if resumed_from is not None and same_dir(resumed_from.parent, directory):
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
    p = as_path(path, "resolve_checkpoint: path")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir() and ((p / "trainer.json").exists() or (p / _MANIFEST).exists()):
        return p
    pointer = p / "latest" if p.is_dir() else p
    if pointer.is_file():
        try:
            target = read_pointer(pointer)
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


def _verify(ckpt: Path, only=None) -> dict[str, bytes]:
    """Check the manifest and return the verified file contents (of the files in ``only``,
    when given: the others are neither read nor checked)."""
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
        if only is not None and fname not in only:
            continue
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
    try:
        return _load_safetensors(data)
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


def check_state(ck: dict, required=(), optional=()) -> dict:
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


def check_finite_weights(ck: dict) -> None:
    """Refuse weights that hold NaN or Inf — saved that way, not an architecture mismatch."""
    name = first_non_finite(ck["model"].items())
    if name is not None:
        raise CheckpointError(f"{ck['path'] / 'model.safetensors'}: {name} holds NaN or Inf "
                              "(the run's weights were not finite when saved)")


def load_checkpoint(path, *, weights_only: bool = False) -> dict:
    """Verify and read a checkpoint. Returns ``{"path", "state", "model", "optimizer",
    "callbacks"}`` (state from trainer.json, the rest name -> array), and the same state as
    ``"trainer"``: the shape of :meth:`ember.Trainer.state_dict`, which
    :meth:`ember.Trainer.load_state_dict` takes. ``weights_only=True`` reads (and verifies)
    only trainer.json and model.safetensors: ``"optimizer"`` and ``"callbacks"`` are empty."""
    ckpt = resolve_checkpoint(as_path(path, "load_checkpoint: path"))
    contents = _verify(ckpt, ("trainer.json", "model.safetensors") if weights_only else None)
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
        "trainer": state,
        "model": _load_arrays(contents["model.safetensors"], str(ckpt / "model.safetensors")),
        "optimizer": ({} if weights_only else
                      _load_arrays(contents["optimizer.safetensors"],
                                   str(ckpt / "optimizer.safetensors"))),
        "callbacks": (_load_arrays(contents["callbacks.safetensors"],
                                   str(ckpt / "callbacks.safetensors"))
                      if "callbacks.safetensors" in contents else {}),
    }


def model_from(ck: dict, device: Optional[str], preprocessing: bool = True):
    check_state(ck, ("model",))
    arch = ck["state"]["model"]
    try:
        if isinstance(arch, dict) and arch.get("type") == "RunModel":  # saved by a fine-tune
            model = pre.from_config(arch, nn.from_config)
        else:
            model = nn.from_config(arch)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck['path'] / 'trainer.json'}: bad model architecture "
                              f"({exc})") from None
    check_finite_weights(ck)
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
        standardize = (pre.Standardize(norm["x_mean"], norm["x_std"])
                       if "x_mean" in norm or "x_std" in norm else None)
        rescale = (pre.Rescale(norm["y_std"], norm["y_mean"])
                   if task == "regression" and ("y_mean" in norm or "y_std" in norm) else None)
        classes = data.get("classes") if task == "classification" else None
        if task == "classification" and not isinstance(classes, list):
            raise ValueError(f"a classification run needs a list of classes, got {classes!r:.80}")
        return pre.RunModel(network, standardize, rescale, classes)
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
    return model_from(load_checkpoint(as_path(path, "load_model: path")), device,
                       preprocessing)


# Module.save(path) is save_model: registered here, as nn sits below this module.
nn.Module.saver = save_model
