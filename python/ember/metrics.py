"""Evaluation reports: per-class precision, recall and F1 with a confusion matrix, and the
regression errors.

The numbers are scikit-learn's (``classification_report(..., output_dict=True)``,
``confusion_matrix``, ``mean_absolute_error``, ``mean_squared_error``, ``r2_score``, their
default arguments; a ratio with nothing to divide by is 0.0, as scikit-learn's default gives,
without its warning), computed here with NumPy: scikit-learn is not a dependency of ember.

Example:
    >>> from ember.metrics import classification_report, format_classification_report
    >>> rep = classification_report([0, 1, 2, 2], [0, 2, 2, 2], names=["cat", "dog", "owl"])
    >>> rep["accuracy"], rep["owl"]["precision"], rep["dog"]["recall"]
    (0.75, 0.6666666666666666, 0.0)
    >>> rep["confusion_matrix"]
    [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    >>> print(format_classification_report(rep))
                  precision    recall  f1-score   support
    <BLANKLINE>
             cat       1.00      1.00      1.00         1
             dog       0.00      0.00      0.00         1
             owl       0.67      1.00      0.80         2
    <BLANKLINE>
        accuracy                           0.75         4
       macro avg       0.56      0.67      0.60         4
    weighted avg       0.58      0.75      0.65         4
    >>> regression_report([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])
    {'mae': 0.333..., 'rmse': 0.408..., 'r2': 0.75}
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["classification_report", "regression_report", "format_classification_report"]

#: The keys of a classification report that are not classes.
SUMMARY_KEYS = ("accuracy", "micro avg", "macro avg", "weighted avg", "confusion_matrix")


def _labels_1d(a, what: str, where: str) -> np.ndarray:
    """``a`` as a 1-D array of class labels: ValueError naming ``what`` otherwise."""
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {what} is not an array of labels ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{where}: {what} must be 1-D (one class label per sample), got shape "
                         f"{arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{where}: {what} is empty")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: {what} holds NaN or infinite values")
        if (arr != np.round(arr)).any():
            raise ValueError(f"{where}: {what} holds non-integer numbers: class labels are "
                             "integers or strings (for continuous targets use "
                             "regression_report)")
    elif arr.dtype.kind not in "iubUSO":
        raise ValueError(f"{where}: {what} must hold integers or strings, got dtype {arr.dtype}")
    return arr


def _same_kind(a: np.ndarray, b: np.ndarray, what: str, where: str) -> None:
    """Both numbers or both strings (as scikit-learn, no mix of the two)."""
    def kind(arr):
        return "strings" if arr.dtype.kind in "US" else \
            "numbers" if arr.dtype.kind in "iubf" else "objects"
    if kind(a) != kind(b):
        raise ValueError(f"{where}: {what} mix label types ({kind(a)} and {kind(b)})")


def _same_length(a: np.ndarray, b: np.ndarray, where: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{where}: y_true and y_pred have different lengths ({len(a)} and "
                         f"{len(b)})")


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0.0 where den is 0 (scikit-learn's zero_division default)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scores(tp, n_pred, n_true) -> tuple:
    """Precision, recall and F1 (2 tp / (n_true + n_pred), as scikit-learn computes it)."""
    return _divide(tp, n_pred), _divide(tp, n_true), _divide(2.0 * tp, n_true + n_pred)


def classification_report(y_true, y_pred, *, labels: Optional[Sequence] = None,
                          names: Optional[Sequence[str]] = None) -> dict:
    """Per-class precision, recall, F1 and support, their averages and the confusion matrix.

    Args:
        y_true, y_pred: 1-D class labels (integers or strings), one per sample.
        labels: the classes to report, in this order (default: the sorted union of the labels
            in ``y_true`` and ``y_pred``).
        names: a display name per entry of ``labels`` (default ``str(label)``).

    Returns:
        scikit-learn's ``classification_report(y_true, y_pred, labels=labels,
        target_names=names, output_dict=True)``: ``{name: {"precision", "recall", "f1-score",
        "support"}}`` per class, ``"accuracy"`` (``"micro avg"`` instead when ``labels`` leaves
        out a class that occurs), ``"macro avg"``, ``"weighted avg"``; plus
        ``"confusion_matrix"``: a list of rows of counts (rows the true classes, columns the
        predicted ones, in ``labels`` order; samples of other classes are left out).

    Raises:
        ValueError: lengths differ, empty, NaN, not 1-D, or ``names`` / ``labels`` that do not
            fit, naming the argument.
    """
    where = "classification_report"
    t = _labels_1d(y_true, "y_true", where)
    p = _labels_1d(y_pred, "y_pred", where)
    _same_length(t, p, where)
    _same_kind(t, p, "y_true and y_pred", where)
    try:
        present = np.union1d(t, p)
    except TypeError:
        raise ValueError(f"{where}: y_true and y_pred mix labels of different types") from None
    if labels is None:
        lab = present
        given = False
    else:
        lab = _labels_1d(labels, "labels", where)
        _same_kind(lab, present, "labels and the data's labels", where)
        if len(np.unique(lab)) != len(lab):
            raise ValueError(f"{where}: labels has repeated entries")
        given = True
    if names is None:
        keys = [str(v) for v in lab.tolist()]
    else:
        if isinstance(names, (str, bytes)) or len(names) != len(lab):
            raise ValueError(f"{where}: names must give one name per class ({len(lab)}: "
                             f"{lab.tolist()[:10]}), got {names!r:.200}")
        keys = [str(n) for n in names]
    # Per label: index into `lab` (or -1 when the sample's class is not reported).
    order = np.argsort(lab, kind="stable")
    ti, pi = _positions(lab, order, t), _positions(lab, order, p)
    k = len(lab)
    hit = (ti >= 0) & (ti == pi)
    tp = np.bincount(ti[hit], minlength=k)
    n_true = np.bincount(ti[ti >= 0], minlength=k)
    n_pred = np.bincount(pi[pi >= 0], minlength=k)
    both = (ti >= 0) & (pi >= 0)
    cm = np.bincount(ti[both] * k + pi[both], minlength=k * k).reshape(k, k)
    prec, rec, f1 = _scores(tp, n_pred, n_true)
    report: dict = {}
    for i, key in enumerate(keys):
        report[key] = {"precision": float(prec[i]), "recall": float(rec[i]),
                       "f1-score": float(f1[i]), "support": float(n_true[i])}
    total = float(n_true.sum())
    mp, mr, mf = _scores(tp.sum(), n_pred.sum(), n_true.sum())
    if not given or set(lab.tolist()) >= set(present.tolist()):
        report["accuracy"] = float(mp)
    else:
        report["micro avg"] = {"precision": float(mp), "recall": float(mr),
                               "f1-score": float(mf), "support": total}
    report["macro avg"] = {"precision": float(prec.mean()), "recall": float(rec.mean()),
                           "f1-score": float(f1.mean()), "support": total}
    w = n_true if total > 0 else np.ones(k)  # (no support at all: every score is 0 anyway)
    report["weighted avg"] = {"precision": float(np.average(prec, weights=w)),
                              "recall": float(np.average(rec, weights=w)),
                              "f1-score": float(np.average(f1, weights=w)), "support": total}
    report["confusion_matrix"] = cm.tolist()
    return report


def _positions(lab: np.ndarray, order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index in ``lab`` of each of ``values``, -1 for a value not in ``lab``."""
    sorted_lab = lab[order]
    try:
        j = np.searchsorted(sorted_lab, values)
    except TypeError:
        raise ValueError("classification_report: labels and the data's labels are of "
                         "different types") from None
    j = np.minimum(j, len(lab) - 1)
    found = sorted_lab[j] == values
    return np.where(found, order[j], -1).astype(np.int64)


def format_classification_report(report: dict, digits: int = 2) -> str:
    """A :func:`classification_report` as the table scikit-learn prints (its text report):
    one row per class, then accuracy (or micro avg), macro avg and weighted avg."""
    if not isinstance(report, dict) or "macro avg" not in report:
        raise ValueError("format_classification_report: report must be what "
                         "classification_report returned")
    classes = [k for k in report if k not in SUMMARY_KEYS]
    headers = ["precision", "recall", "f1-score", "support"]
    width = max([len(c) for c in classes] + [len("weighted avg"), digits])
    out = "{:>{width}s} ".format("", width=width) + "".join(f" {h:>9}" for h in headers)
    out += "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"

    def line(name, entry):
        return row.format(name, entry["precision"], entry["recall"], entry["f1-score"],
                          _count(entry["support"]), width=width, digits=digits)

    for c in classes:
        out += line(c, report[c])
    out += "\n"
    total = _count(report["macro avg"]["support"])
    if "accuracy" in report:
        out += ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
            "accuracy", "", "", report["accuracy"], total, width=width, digits=digits)
    else:
        out += line("micro avg", report["micro avg"])
    out += line("macro avg", report["macro avg"])
    out += line("weighted avg", report["weighted avg"])
    return out.rstrip("\n")


def _count(v):
    """A support as scikit-learn prints it (an integer count)."""
    return int(v) if float(v).is_integer() else v


def _targets(a, what: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {what} must be numbers ({exc})") from None
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{where}: {what} must be 1-D or 2-D (samples, outputs), got shape "
                         f"{arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{where}: {what} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {what} holds NaN or infinite values")
    return arr


def regression_report(y_true, y_pred) -> dict:
    """``{"mae", "rmse", "r2"}``: scikit-learn's ``mean_absolute_error``,
    ``sqrt(mean_squared_error)`` and ``r2_score`` (several outputs: the mean over the outputs;
    an output whose targets are constant scores R² 1.0 when predicted exactly, else 0.0; with
    fewer than two samples R² is NaN).

    Raises:
        ValueError: lengths or output counts differ, empty, NaN, or more than 2-D, naming the
            argument.
    """
    where = "regression_report"
    t = _targets(y_true, "y_true", where)
    p = _targets(y_pred, "y_pred", where)
    _same_length(t, p, where)
    if t.shape[1] != p.shape[1]:
        raise ValueError(f"{where}: y_true has {t.shape[1]} output(s), y_pred {p.shape[1]}")
    err = t - p
    mae = float(np.average(np.average(np.abs(err), axis=0)))
    mse = float(np.average(np.average(err ** 2, axis=0)))
    if len(t) < 2:
        r2 = float("nan")
    else:
        ss_res = (err ** 2).sum(axis=0)
        ss_tot = ((t - np.average(t, axis=0)) ** 2).sum(axis=0)
        scores = np.where(ss_res == 0, 1.0, 0.0)
        nz = ss_tot != 0
        scores[nz] = 1.0 - ss_res[nz] / ss_tot[nz]
        r2 = float(np.average(scores))
    return {"mae": mae, "rmse": math.sqrt(mse), "r2": r2}
