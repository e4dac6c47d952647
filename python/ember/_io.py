"""Durable files: what ember writes survives a crash whole or not at all.

Written with fsync and renamed into place; pointer files (``latest``/``best``) replaced
atomically; paths from users checked with errors that name the argument. Knows nothing of
models or training (checkpoints, runs and the CLI build on it).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from ember.errors import CheckpointError

__all__ = ["fsync_dir", "write_file", "replace_pointer", "as_path", "prepare_dir",
           "read_pointer", "same_dir", "json_default", "POINTER_MAX"]

POINTER_MAX = 4096  # bytes; a pointer holds one directory name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data) -> str:
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


def replace_pointer(path: Path, target: str, write=None) -> None:
    """Replace the pointer file ``path`` with one naming ``target``, atomically. ``write``
    (default :func:`write_file`) writes the new file: a caller's hook (tests tear writes)."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    (write or write_file)(tmp, (target + "\n").encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def as_path(value, what: str) -> Path:
    """``value`` as a Path; TypeError/ValueError naming ``what`` when it is not one."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got "
                        f"{'None' if value is None else type(value).__name__}")
    path = Path(value)
    if not str(value):
        raise ValueError(f"{what} is an empty path")
    return path


def prepare_dir(directory: Path, what: str) -> None:
    """Create ``directory`` (a checkpoint destination) if needed; CheckpointError naming
    ``what`` when it is a file, cannot be created or is not writable — before any training."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{what} '{directory}' is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{what} '{directory}': cannot create the directory "
                              f"({exc.strerror or exc})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"{what} '{directory}': the directory is not writable")



def read_pointer(pointer: Path) -> str:
    """The name held by a ``latest``/``best`` pointer file (one line of text, stripped).
    CheckpointError when the file is not a text pointer."""
    try:
        with open(pointer, "rb") as f:
            data = f.read(POINTER_MAX + 1)
    except OSError as exc:
        raise CheckpointError(f"{pointer}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if len(data) > POINTER_MAX or text is None or any(ord(c) < 32 for c in text):
        raise CheckpointError(f"{pointer}: not a text pointer (it should hold the name of a "
                              "checkpoint directory beside it, on one line)")
    return text


def same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()



def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
