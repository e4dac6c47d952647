"""Bundled data and loaders for user files.

``load_digits()`` returns the classic 8x8 handwritten digits (1797 samples, 10 classes; from the
UCI ML repository, as also shipped by scikit-learn), bundled as a compressed NumPy file.
``load_csv`` and ``load_npz`` read user data with clear errors for bad files.
"""
from __future__ import annotations

import csv
import os
import zipfile
from importlib import resources
from typing import Optional

import numpy as np

__all__ = ["load_digits", "load_csv", "load_npz", "load_data"]


def load_digits(scale: bool = True):
    """The digits dataset: ``x`` (1797, 64) float32 pixel intensities (0..16, divided by 16 when
    ``scale``) and ``y`` (1797,) int64 labels 0..9."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f:
        data = np.load(f)
        x = data["x"].astype(np.float32)
        y = data["y"].astype(np.int64)
    if scale:
        x /= 16.0
    return x, y


def _missing(path) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"data path is a directory, expected a .csv or .npz file: {path}")


def load_csv(path, target: Optional[str] = None, require_target: bool = True):
    """Read a CSV file with a header row; ``target`` names the label column (default: last).

    Returns ``(x float32, y, feature_names)``; ``y`` is int64 when every target value is an
    integer, float32 otherwise. With ``require_target=False`` a file without the ``target``
    column is read as features only (``y`` is None), e.g. for prediction.

    Raises:
        FileNotFoundError: no such file. ValueError: empty file, no header, unknown target column,
            ragged rows, or a non-numeric feature cell (row and column named).
    """
    _missing(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV file ({exc.reason})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if target is None and require_target:
        target = header[-1]
    if not require_target and target not in header:
        t = -1  # features only
    elif target not in header:
        raise ValueError(f"{path}: target column {target!r} not found (columns: "
                         f"{', '.join(header)})")
    else:
        t = header.index(target)
    feats = [h for i, h in enumerate(header) if i != t]
    if not feats:
        raise ValueError(f"{path}: no feature columns besides the target {target!r}")
    x = np.empty((len(rows) - 1, len(feats)), dtype=np.float64)
    yv = np.empty(len(rows) - 1, dtype=np.float64)
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {r + 2} has {len(row)} cells, the header has "
                             f"{len(header)}")
        j = 0
        for c, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(f"{path}: row {r + 2}, column {header[c]!r}: {cell!r} is not a "
                                 "number") from None
            if c == t:
                yv[r] = v
            else:
                x[r, j] = v
                j += 1
    if t < 0:
        y = None
    elif np.all(np.isfinite(yv)) and np.all(yv == np.round(yv)):
        y = yv.astype(np.int64)
    else:
        y = yv.astype(np.float32)
    return x.astype(np.float32), y, feats


def load_npz(path, require_y: bool = True):
    """Read a ``.npz`` file holding arrays ``x`` and ``y``. Returns ``(x, y)``; with
    ``require_y=False`` a file holding only ``x`` gives ``(x, None)``."""
    _missing(path)
    bad = (OSError, EOFError, ValueError, zipfile.BadZipFile)
    with open(path, "rb") as f:  # closed on every path, also when np.load fails
        try:
            data = np.load(f, allow_pickle=False)
        except bad as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
        if not hasattr(data, "files"):
            raise ValueError(f"{path}: not a .npz archive (it holds a single array)")
        with data:
            missing = [k for k in (("x", "y") if require_y else ("x",)) if k not in data.files]
            if missing:
                raise ValueError(f"{path}: the .npz file must hold arrays 'x' and 'y' (missing "
                                 f"{', '.join(missing)}; found {', '.join(data.files) or 'none'})")
            try:
                return (np.asarray(data["x"]),
                        np.asarray(data["y"]) if "y" in data.files else None)
            except bad as exc:
                raise ValueError(f"{path}: not a readable .npz file ({exc})") from None


def load_data(path, target: Optional[str] = None):
    """``load_csv`` or ``load_npz`` by extension. Returns ``(x, y)``."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".npz":
        return load_npz(path)
    if ext in (".csv", ".txt"):
        x, y, _ = load_csv(path, target)
        return x, y
    _missing(path)
    raise ValueError(f"{path}: unsupported data file type {ext!r} (use .csv or .npz)")
