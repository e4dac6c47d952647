"""Data preparation for the command line: one code path for train, resume, evaluate and
predict, so they all see the data the same way.

Loading (a CSV or .npz file, or the bundled digits), the task (given, or inferred from the
target), class labels and their encoding, the train/validation/test splits, and the
standardization of features and regression targets that a run records in its config.json
(``spec``) and that evaluate/predict apply again from there.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ember.cli.options import DIGITS, MAX_INFERRED_CLASSES, UsageError
from ember.data import train_val_split
from ember.datasets import is_number_text, load_csv, load_digits, load_npz, check_data_path

__all__ = ["prepare_training", "eval_data", "untransform_y", "file_sha256"]


def _read_csv(path: str, target: Optional[str], require_target: bool = True,
              text_labels: bool = False):
    """``(x float32, y or None, feature names)``: :func:`ember.datasets.load_csv`."""
    return load_csv(path, target, require_target=require_target, text_labels=text_labels)


def _first_text(y: np.ndarray, target: Optional[str]) -> str:
    """Where the first non-number of a text target is, for messages."""
    i = next(i for i, v in enumerate(y.tolist()) if not is_number_text(str(v)))
    where = f"column {target!r}" if target else "y"
    return f"{where}, data row {i + 1}: {y[i].item()!r}"


def _load_file(path: str, target: Optional[str], require_target: bool = True,
               text_labels: bool = False):
    """Returns ``(x, y or None, feature_names or None)`` from a CSV or NPZ file."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        if target is not None:
            raise UsageError("--target applies to CSV files; an .npz file holds arrays x and y")
        x, y = load_npz(path, require_y=require_target)
        names = None
    elif ext in (".csv", ".txt", ".tsv"):
        x, y, names = _read_csv(path, target, require_target=require_target,
                                text_labels=text_labels)
    else:
        check_data_path(path)
        raise ValueError(f"{path}: unsupported data file type {ext or '(none)'!r} (use .csv "
                         "or .npz)")
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: x must be numeric, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    elif x.ndim > 2:  # e.g. images: one feature per pixel
        x = x.reshape(len(x), -1)
    if y is not None and len(y) != len(x):
        raise ValueError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    return x.astype(np.float32), y, names


def _integer_valued(y: np.ndarray) -> bool:
    if y.dtype.kind in "biu":
        return True
    return y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind in "US":
        return "classification"
    if y.ndim == 1 and _integer_valued(y):
        k = len(np.unique(y))
        if k <= MAX_INFERRED_CLASSES and k < 0.5 * len(y):
            return "classification"
    return "regression"


def _json_label(v):
    return v.item() if hasattr(v, "item") else v


def _encode_labels(y: np.ndarray, classes: list, where: str) -> np.ndarray:
    """Map labels to indices into ``classes``; an unseen label is an error naming it."""
    if y.ndim != 1:
        raise ValueError(f"{where}: classification needs one label per row, got y of shape "
                         f"{y.shape}")
    table = {c: i for i, c in enumerate(classes)}
    values = y.tolist()
    if y.dtype.kind == "f":
        values = [int(v) if math.isfinite(v) and v == int(v) else v for v in values]
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        idx = table.get(v)
        if idx is None:
            shown = ", ".join(map(str, classes[:12])) + (" ..." if len(classes) > 12 else "")
            raise ValueError(f"{where}: label {v!r} (row {i + 1}) is not one of the classes the "
                             f"model was trained on ({shown})")
        out[i] = idx
    return out


def _split_indices(n: int, y_strat: Optional[np.ndarray], test: float, val: float, seed: int):
    """Disjoint train/val/test index arrays; ``test`` and ``val`` are fractions of all rows,
    stratified by class when ``y_strat`` is given."""
    if test + val >= 1.0:
        raise UsageError(f"--val-split {val} plus --test-split {test} leaves no training data "
                         "(their sum must be < 1)")
    idx = np.arange(n)
    strat = y_strat if y_strat is not None else idx.astype(np.float64)
    parts = {}
    if test > 0:
        idx, strat, parts["test"], _ = train_val_split(idx, strat, test, seed=seed,
                                                       stratify=y_strat is not None)
    if val > 0:
        idx, strat, parts["val"], _ = train_val_split(idx, strat, val / (1.0 - test),
                                                      seed=seed + 1, stratify=y_strat is not None)
    parts["train"] = idx
    return parts


def prepare_training(opts: dict) -> tuple[dict, dict]:
    """Load and split the training data. Returns ``(spec, arrays)`` where spec goes into
    config.json and arrays holds ``x_train, y_train, x_val, y_val, x_test, y_test`` in model
    form (standardized features, class indices / standardized targets)."""
    x, y, names, source, digest, description = _load_training_data(opts)
    y = np.asarray(y)
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"{source}: y must be numeric or text labels, got dtype {y.dtype}")
    if y.dtype.kind in "US" and opts["task"] is None and \
            any(is_number_text(str(v)) for v in y.tolist()):
        # numbers with some text: as often a typo in a numeric column as class labels
        raise ValueError(f"{source}: the target mixes numbers and text "
                         f"({_first_text(y, opts.get('target'))}); pass --task classification "
                         "to take every value as a class label, or correct the file")
    task = opts["task"] or _infer_task(y)
    spec: dict[str, Any] = {
        "source": source, "sha256": digest, "description": description,
        "n_samples": int(len(x)), "n_features": int(x.shape[1]), "feature_names": names,
        "target": opts.get("target"), "task": task, "task_inferred": opts["task"] is None,
    }
    if task == "classification":
        yi = _encode_classes(y, spec)
        strat = yi
    else:
        yi = _regression_targets(y, spec, opts.get("target"))
        strat = None
    if not np.all(np.isfinite(x)):
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{source}: features hold NaN or Inf (row {r + 1}, "
                         f"{'column ' + repr(names[c]) if names else 'feature ' + str(c)})")
    parts = _split_indices(len(x), strat, opts["test_split"], opts["val_split"], opts["seed"])
    tr = parts["train"]
    if len(tr) < 2:
        raise ValueError(f"{source}: only {len(tr)} training rows after the splits")
    spec["splits"] = {k: int(len(v)) for k, v in parts.items()}
    spec["split_seed"] = opts["seed"]
    spec["normalization"] = _normalization(x[tr], yi[tr], task, opts["standardize"])
    arrays = {}
    for part in ("train", "val", "test"):
        if part in parts:
            sel = parts[part]
            arrays["x_" + part] = _transform_x(spec, x[sel])
            arrays["y_" + part] = _transform_y(spec, yi[sel])
    return spec, arrays


def _load_training_data(opts: dict):
    """``(x, y, feature names, source, sha256, description)`` of the training data: the
    bundled digits or the --data file. Fills in ``opts["target"]`` (a CSV's last column)."""
    if opts["data"] in (None, DIGITS):
        if opts.get("target") is not None:
            raise UsageError("--target needs --data (the bundled digits have no columns)")
        x, y = load_digits()
        names, source, digest = None, DIGITS, None
        description = "bundled 8x8 handwritten digits (UCI), pixel intensities scaled to [0, 1]"
    else:
        path = str(Path(opts["data"]).expanduser().resolve())
        x, y, names = _load_file(path, opts.get("target"))
        if y is None:  # not reachable with require_target; keeps the contract explicit
            raise ValueError(f"{path}: no target values")
        source, digest = path, file_sha256(Path(path))
        description = f"{Path(path).name}: {len(x)} rows, {x.shape[1]} features"
        if names is not None:
            opts["target"] = opts.get("target") or _csv_target(path)
    return x, y, names, source, digest, description


def _encode_classes(y: np.ndarray, spec: dict) -> np.ndarray:
    """Class indices of the labels ``y``; sets ``spec["classes"]`` and ``spec["n_outputs"]``."""
    source = spec["source"]
    if not (y.dtype.kind in "US" or _integer_valued(y)):
        bad = (y[np.flatnonzero(y != np.round(y))[0]] if y.dtype.kind == "f" else y[0]).item()
        raise ValueError(f"{source}: --task classification needs integer or text class "
                         f"labels; the target holds {bad!r} (use --task regression)")
    if y.ndim != 1:
        raise ValueError(f"{source}: classification needs one label per row, got y of "
                         f"shape {y.shape}")
    classes = [_json_label(c) for c in np.unique(y)]
    if y.dtype.kind == "f":
        classes = [int(c) for c in classes]
    if len(classes) < 2:
        raise ValueError(f"{source}: classification needs at least 2 classes, the target "
                         f"has only {classes}")
    spec["classes"] = classes
    spec["n_outputs"] = len(classes)
    return _encode_labels(y, classes, source)


def _regression_targets(y: np.ndarray, spec: dict, target: Optional[str]) -> np.ndarray:
    """The targets ``y`` as float32; sets ``spec["classes"]`` (None) and ``spec["n_outputs"]``."""
    source = spec["source"]
    if y.dtype.kind in "US":
        raise ValueError(f"{source}: regression needs numeric targets, the target holds "
                         f"text ({_first_text(y, target)})")
    y = y.astype(np.float32)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{source}: the target holds NaN or Inf")
    spec["classes"] = None
    spec["n_outputs"] = 1 if y.ndim == 1 else int(y.reshape(len(y), -1).shape[1])
    return y


def _normalization(x_train: np.ndarray, y_train: np.ndarray, task: str,
                   standardize: bool) -> Optional[dict]:
    """The standardization of the training split (config.json's ``normalization``): feature
    mean/std when ``standardize``, target mean/std for regression; None when neither."""
    norm: dict[str, Any] = {}
    if standardize:
        mean = x_train.astype(np.float64).mean(axis=0)
        std = x_train.astype(np.float64).std(axis=0)
        std[std < 1e-12] = 1.0  # constant features: centre only
        norm["x_mean"], norm["x_std"] = mean.tolist(), std.tolist()
    if task == "regression":
        yt = y_train.astype(np.float64).reshape(len(y_train), -1)
        ym, ys = yt.mean(axis=0), yt.std(axis=0)
        ys[ys < 1e-12] = 1.0
        norm["y_mean"], norm["y_std"] = ym.tolist(), ys.tolist()
    return norm or None


def _csv_target(path: str) -> str:
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.reader(f):
            if any(c.strip() for c in row):
                return row[-1].strip()
    return ""


def _transform_x(spec: dict, x: np.ndarray) -> np.ndarray:
    norm = spec.get("normalization") or {}
    if "x_mean" in norm:
        x = (x - np.asarray(norm["x_mean"], np.float32)) / np.asarray(norm["x_std"], np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _transform_y(spec: dict, y: np.ndarray) -> np.ndarray:
    if spec["task"] == "classification":
        return y
    norm = spec.get("normalization") or {}
    y = np.asarray(y, np.float32).reshape(len(y), -1)
    if "y_mean" in norm:
        y = (y - np.asarray(norm["y_mean"], np.float32)) / np.asarray(norm["y_std"], np.float32)
    return y


def untransform_y(spec: dict, out: np.ndarray) -> np.ndarray:
    norm = spec.get("normalization") or {}
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    if "y_mean" in norm:
        out = out * np.asarray(norm["y_std"]) + np.asarray(norm["y_mean"])
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def eval_data(cfg: dict, ns: dict, require_target: bool):
    """Features (model form), labels/targets (model form or None) and the raw labels."""
    spec = cfg["data"]
    if ns.get("data") is None:
        # The run's own test split: rebuilt exactly as 'ember train' made it.
        if spec["source"] != DIGITS:
            src = Path(spec["source"])
            if not src.is_file() or file_sha256(src) != spec["sha256"]:
                raise UsageError(f"--data is required: the run's data file {src} is missing or "
                                 "has changed")
        if not spec["splits"].get("test"):
            raise UsageError("--data is required: the run has no test split (--test-split 0)")
        opts = dict(cfg["options"])
        _, arrays = prepare_training(opts)
        return arrays["x_test"], arrays["y_test"], f"the run's test split ({spec['source']})"
    path = str(Path(ns["data"]).expanduser())
    target = ns.get("target") or spec.get("target")
    if path.lower().endswith(".npz"):
        target = None
    text_classes = spec["task"] == "classification" and \
        any(isinstance(c, str) for c in spec["classes"])
    x, y, names = _load_file(path, target, require_target=require_target,
                             text_labels=text_classes)
    if spec.get("feature_names") and names is not None and names != spec["feature_names"]:
        missing = [n for n in spec["feature_names"] if n not in names]
        extra = [n for n in names if n not in spec["feature_names"]]
        detail = (f"missing {', '.join(missing)}" if missing else "") + \
            ("; " if missing and extra else "") + \
            (f"unexpected {', '.join(extra)}" if extra else "")
        raise ValueError(f"{path}: the feature columns differ from the training data's ("
                         f"{detail or 'same names, different order'}); expected "
                         f"{', '.join(spec['feature_names'])}" +
                         (f" plus the target {target!r}" if target else ""))
    if x.shape[1] != spec["n_features"]:
        raise ValueError(f"{path}: {x.shape[1]} features, the model expects "
                         f"{spec['n_features']}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: the features hold NaN or Inf")
    xm = _transform_x(spec, x)
    if y is None:
        return xm, None, path
    if spec["task"] == "classification":
        ym = _encode_labels(np.asarray(y), spec["classes"], path)
    else:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise ValueError(f"{path}: regression targets must be numeric")
        ym = _transform_y(spec, y)
        if ym.shape[1] != spec["n_outputs"]:
            raise ValueError(f"{path}: y has {ym.shape[1]} outputs, the model predicts "
                             f"{spec['n_outputs']}")
    return xm, ym, path
