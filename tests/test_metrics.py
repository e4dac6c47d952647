"""ember.metrics (issue 20): the evaluation report, checked against scikit-learn; Trainer.evaluate
(report=True); the report of `ember train` / `ember evaluate`."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from ember import Trainer, cli
from ember.metrics import (classification_report, format_classification_report,
                           regression_report)
from ember.nn import MLP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOL = 1e-12


def sk():
    return pytest.importorskip("sklearn.metrics")


def sk_report(y_true, y_pred, labels=None, names=None, text=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zero-division warnings: ember gives 0.0 silently
        return sk().classification_report(y_true, y_pred, labels=labels, target_names=names,
                                           output_dict=not text)


def assert_same_report(got: dict, y_true, y_pred, labels=None, names=None) -> None:
    want = sk_report(y_true, y_pred, labels, names)
    cm = got["confusion_matrix"]
    rest = {k: v for k, v in got.items() if k != "confusion_matrix"}
    assert list(rest) == list(want)  # the same keys, in the same order
    for key, entry in want.items():
        if isinstance(entry, dict):
            assert set(rest[key]) == set(entry), key
            for metric, value in entry.items():
                assert rest[key][metric] == pytest.approx(value, abs=TOL), (key, metric)
        else:
            assert rest[key] == pytest.approx(entry, abs=TOL), key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a single class: scikit-learn warns about the shape)
        want_cm = sk().confusion_matrix(y_true, y_pred, labels=labels)
    np.testing.assert_allclose(np.asarray(cm, dtype=float), want_cm, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------
# classification_report against scikit-learn


@pytest.mark.parametrize("seed", range(6))
def test_random_labels_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(5, 300))
    y_true = rng.integers(0, k, n)
    # mostly right, some wrong; classes k-1 and k-2 never predicted (missing in y_pred)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    y_pred = np.where(y_pred >= k - 2, 0, y_pred) if k > 3 else y_pred
    rep = classification_report(y_true, y_pred)
    assert_same_report(rep, y_true, y_pred)
    if k > 3:
        assert rep[str(k - 1)]["precision"] == 0.0 and rep[str(k - 1)]["f1-score"] == 0.0
    # the text table is scikit-learn's
    assert format_classification_report(rep) == sk_report(y_true, y_pred, text=True).rstrip("\n")


def test_names_labels_order_and_label_subsets():
    rng = np.random.default_rng(10)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 5, 200))
    names = ["ant", "bee", "cat", "dog", "eel"]
    assert_same_report(classification_report(y_true, y_pred, names=names), y_true, y_pred,
                       names=names)
    order = [3, 0, 4, 1, 2]
    rep = classification_report(y_true, y_pred, labels=order, names=[names[i] for i in order])
    assert_same_report(rep, y_true, y_pred, order, [names[i] for i in order])
    assert list(rep)[:5] == ["dog", "ant", "eel", "bee", "cat"]
    # a class that occurs left out: "micro avg" instead of accuracy, as scikit-learn
    rep = classification_report(y_true, y_pred, labels=[4, 1])
    assert "micro avg" in rep and "accuracy" not in rep
    assert_same_report(rep, y_true, y_pred, [4, 1])
    # a label that never occurs: all zeros, support 0
    rep = classification_report(y_true, y_pred, labels=[0, 1, 2, 3, 4, 7])
    assert rep["7"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
    assert_same_report(rep, y_true, y_pred, [0, 1, 2, 3, 4, 7])
    assert format_classification_report(rep, digits=4) == sk().classification_report(
        y_true, y_pred, labels=[0, 1, 2, 3, 4, 7], digits=4, zero_division=0).rstrip("\n")


def test_single_class_strings_and_binary():
    assert_same_report(classification_report([2, 2, 2], [2, 2, 2]), [2, 2, 2], [2, 2, 2])
    rep = classification_report([1, 1, 1, 1], [1, 1, 0, 1])
    assert_same_report(rep, [1, 1, 1, 1], [1, 1, 0, 1])
    assert rep["0"]["support"] == 0.0 and rep["accuracy"] == 0.75
    t = ["setosa", "virginica", "versicolor", "setosa", "virginica"]
    p = ["setosa", "setosa", "versicolor", "setosa", "versicolor"]
    assert_same_report(classification_report(t, p), t, p)
    rng = np.random.default_rng(3)
    t, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert_same_report(classification_report(t, p), t, p)


@pytest.mark.parametrize("args, kwargs, message", [
    (([0, 1, 2], [0, 1]), {}, "different lengths"),
    (([], []), {}, "y_true is empty"),
    (([0.0, float("nan")], [0, 1]), {}, "y_true holds NaN"),
    (([0, 1], [0.5, 1.0]), {}, "y_pred holds non-integer"),
    (([[0, 1], [1, 0]], [0, 1]), {}, "y_true must be 1-D"),
    (([0, 1], [[0], [1]]), {}, "y_pred must be 1-D"),
    (([0, 1], ["a", "b"]), {}, "mix label types"),
    (([0, 1], [0, 1]), {"names": ["a"]}, "names must give one name per class"),
    (([0, 1], [0, 1]), {"labels": [0, 0]}, "labels has repeated"),
    (([0, 1], [0, 1]), {"labels": ["x"]}, "mix label types"),
])
def test_classification_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        classification_report(*args, **kwargs)
    with pytest.raises(ValueError, match="report must be"):
        format_classification_report({"accuracy": 1.0})


# ------------------------------------------------------------------------------------------
# regression_report against scikit-learn


@pytest.mark.parametrize("outputs", [None, 1, 3])
def test_regression_matches_sklearn(outputs):
    m = sk()
    rng = np.random.default_rng(outputs or 0)
    shape = (80,) if outputs is None else (80, outputs)
    t = rng.normal(5, 3, shape)
    p = t + rng.normal(0, 1, shape)
    got = regression_report(t, p)
    assert set(got) == {"mae", "rmse", "r2"}
    assert got["mae"] == pytest.approx(m.mean_absolute_error(t, p), abs=TOL)
    assert got["rmse"] == pytest.approx(math.sqrt(m.mean_squared_error(t, p)), abs=TOL)
    assert got["r2"] == pytest.approx(m.r2_score(t, p), abs=TOL)


def test_regression_constant_targets_like_sklearn():
    m = sk()
    t = np.column_stack([np.ones(10), np.arange(10.0), np.full(10, 2.0)])
    p = t.copy()
    p[:, 1] += 0.5
    p[0, 2] = 3.0  # the constant column mispredicted once: R² 0.0; exactly: 1.0
    assert regression_report(t, p)["r2"] == pytest.approx(m.r2_score(t, p), abs=TOL)
    assert regression_report(np.arange(5.0), np.arange(5.0).reshape(5, 1))["r2"] == 1.0
    assert math.isnan(regression_report([1.0], [2.0])["r2"])  # one sample (sklearn: nan)


@pytest.mark.parametrize("t, p, message", [
    ([1.0, 2.0], [1.0], "different lengths"),
    ([], [], "y_true is empty"),
    ([1.0, np.nan], [1.0, 2.0], "y_true holds NaN"),
    ([1.0, 2.0], [1.0, np.inf], "y_pred holds NaN or infinite"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "y_true must be 1-D or 2-D"),
    (np.zeros((3, 2)), np.zeros((3, 3)), "y_true has 2 output"),
    (["a", "b"], [1.0, 2.0], "y_true must be numbers"),
])
def test_regression_bad_input(t, p, message):
    with pytest.raises(ValueError, match=message):
        regression_report(t, p)


# ------------------------------------------------------------------------------------------
# Trainer.evaluate(report=True)


def _blobs(n=240, k=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(0, 1.0, (n, d))).astype(np.float32), y


def test_evaluate_report_classification():
    x, y = _blobs()
    trainer = Trainer(MLP([6, 16, 4], seed=0), lr=1e-2, device="cpu")
    trainer.fit(x, y, epochs=3, batch_size=32, verbose=0)
    plain = trainer.evaluate(x, y, batch_size=50)
    got = trainer.evaluate(x, y, batch_size=50, report=True)
    assert {k: v for k, v in got.items() if k != "report"} == plain  # same numbers, one pass
    pred = trainer.predict(x)
    assert_same_report(got["report"], y, pred, labels=[0, 1, 2, 3])
    assert got["report"]["accuracy"] == pytest.approx(plain["accuracy"], abs=TOL)
    named = trainer.evaluate(x, y, report=True, class_names=["a", "b", "c", "d"])["report"]
    assert list(named)[:4] == ["a", "b", "c", "d"]
    # every output class is in the report, even one neither true nor predicted
    few = trainer.evaluate(x[y < 2], y[y < 2], report=True)["report"]
    assert len(few["confusion_matrix"]) == 4 and few["3"]["support"] == 0.0
    with pytest.raises(ValueError, match="evaluate: report must be True or False"):
        trainer.evaluate(x, y, report="yes")


def test_evaluate_report_regression():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (200, 3)).astype(np.float32)
    y = np.column_stack([x @ [1.0, -2.0, 0.5], x[:, 0] ** 2]).astype(np.float32)
    trainer = Trainer(MLP([3, 16, 2], seed=0), loss="mse", lr=1e-2, device="cpu")
    trainer.fit(x, y, epochs=3, batch_size=32, verbose=0)
    got = trainer.evaluate(x, y, batch_size=64, report=True)
    assert got["loss"] == trainer.evaluate(x, y, batch_size=64)["loss"]
    want = regression_report(y, trainer.predict(x))
    assert got["report"] == pytest.approx(want, abs=1e-12)
    assert got["report"]["rmse"] ** 2 == pytest.approx(got["loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------
# ember train / ember evaluate


@pytest.fixture()
def labelled_csv(tmp_path, monkeypatch) -> Path:
    """3 separable classes labelled 'low', 'mid', 'high' (not in sorted order), 150 rows."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (3, 4))
    path = tmp_path / "blobs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["f0", "f1", "f2", "f3", "level"])
        for i in range(150):
            c = i % 3
            w.writerow([f"{v:.5f}" for v in centers[c] + rng.normal(0, 0.5, 4)] +
                       [["low", "mid", "high"][c]])
    return path


def test_cli_train_writes_the_report_and_confusion_png(labelled_csv, capsys):
    assert cli.main(["train", "--data", str(labelled_csv), "--epochs", "15", "--hidden", "16",
                     "--lr", "0.01", "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert "test report:" in out and "weighted avg" in out and "confusion.png" in out
    summary = json.loads(Path("run/summary.json").read_text())
    classes = json.loads(Path("run/config.json").read_text())["data"]["classes"]
    assert classes == ["high", "low", "mid"]
    rep = summary["report"]["test"]
    assert list(rep)[:3] == classes
    assert rep["accuracy"] == pytest.approx(summary["metrics"]["test"]["accuracy"], abs=1e-12)
    cm = np.array(rep["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == summary["data"]["splits"]["test"]
    assert [rep[c]["support"] for c in classes] == cm.sum(axis=1).tolist()
    for c in classes:  # the table printed is the report's
        assert f"{c:>12s}       {rep[c]['precision']:.2f}" in out
    png = Path("run/confusion.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000

    assert cli.main(["evaluate", "run"]) == 0
    out = capsys.readouterr().out
    assert "accuracy=" in out and "macro avg" in out and "high" in out
    assert cli.main(["evaluate", "run", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {"run", "data", "n", "metrics", "report"} <= set(got)
    assert got["report"]["confusion_matrix"] == rep["confusion_matrix"]
    assert got["report"]["macro avg"] == pytest.approx(rep["macro avg"], abs=1e-12)


def test_cli_regression_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (200, 3))
    y = 300 + 40 * x[:, 0] - 25 * x[:, 1] + rng.normal(0, 1, 200)
    with open("reg.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "price"])
        w.writerows([[f"{v:.5f}" for v in row] + [f"{t:.4f}"] for row, t in zip(x, y)])
    assert cli.main(["train", "--data", "reg.csv", "--epochs", "5", "--hidden", "16",
                     "--out", "reg", "-q"]) == 0
    summary = json.loads(Path("reg/summary.json").read_text())
    test = summary["metrics"]["test"]
    assert summary["report"]["test"] == pytest.approx(
        {"mae": test["mae"], "rmse": test["rmse"], "r2": test["r2"]}, rel=1e-9)
    assert not Path("reg/confusion.png").exists()
    capsys.readouterr()
    assert cli.main(["evaluate", "reg", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["report"]) == {"mae", "rmse", "r2"}
