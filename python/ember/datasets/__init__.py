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

__all__ = ["load_digits", "load_csv", "load_npz", "load_data", "is_number_text",
           "check_data_path"]


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


def check_data_path(path) -> None:
    """Raise FileNotFoundError when the data file ``path`` does not exist, IsADirectoryError
    when it is a directory; return quietly otherwise (the file may still be unreadable)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"data path is a directory, expected a .csv or .npz file: {path}")


def is_number_text(s: str) -> bool:
    """Whether the text of a CSV cell reads as a number."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_csv(path, target: Optional[str] = None, require_target: bool = True,
             text_labels: bool = False):
    """Read a CSV file with a header row; ``target`` names the label column (default: last).

    Returns ``(x float32, y, feature_names)``. ``y`` is int64 when every target value is an
    integer, float32 when they are all numbers, and an array of ``str`` when any is text (class
    labels such as ``setosa``; ``text_labels=True`` keeps the text of every cell, e.g. to match
    a run's text classes). With ``require_target=False`` a file without the ``target`` column
    is read as features only (``y`` is None), e.g. for prediction. A UTF-8 byte-order mark
    (what Excel's "CSV UTF-8" writes) is not part of the first column's name. Rows are numbered
    as in the file (the header is row 1).

    Raises:
        FileNotFoundError: no such file. ValueError: empty file, no header, unknown target column,
            ragged rows, an empty target, or a non-numeric feature cell (row and column named).
    """
    check_data_path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f), 1)
                    if any(cell.strip() for cell in r)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV file ({exc.reason}; save it as UTF-8)") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0][1]]
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
    labels: list[str] = []
    for r, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {line} has {len(row)} cells, the header has "
                             f"{len(header)}")
        j = 0
        for c, cell in enumerate(row):
            if c == t:
                label = cell.strip()
                if not label:
                    raise ValueError(f"{path}: row {line}, column {header[c]!r}: the target "
                                     "is empty")
                labels.append(label)
                continue
            try:
                x[r, j] = float(cell)
            except ValueError:
                raise ValueError(f"{path}: row {line}, column {header[c]!r}: {cell!r} is not a "
                                 "number") from None
            j += 1
    y = None
    if t >= 0:
        if text_labels or any(not is_number_text(v) for v in labels):
            y = np.array(labels, dtype=str)
        else:
            yv = np.array([float(v) for v in labels])
            y = (yv.astype(np.int64) if np.all(np.isfinite(yv)) and np.all(yv == np.round(yv))
                 else yv.astype(np.float32))
    return x.astype(np.float32), y, feats


def load_npz(path, require_y: bool = True):
    """Read a ``.npz`` file holding arrays ``x`` and ``y``. Returns ``(x, y)``; with
    ``require_y=False`` a file holding only ``x`` gives ``(x, None)``."""
    check_data_path(path)
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
    check_data_path(path)
    raise ValueError(f"{path}: unsupported data file type {ext!r} (use .csv or .npz)")
