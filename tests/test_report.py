"""The end-of-training verdict and report: what they say must be true of the run.

References are computed by hand from the run's own predictions (R²) or are the hyperparameters
the test chose."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

import ember
from ember.callbacks import ProgressBar, ReduceLROnPlateau
from ember.nn import MLP


def _digits():
    x, y = ember.datasets.load_digits()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.astype(np.float32), y


def _fit_quietly(trainer, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradientWarning on purpose-made bad runs
        return trainer.fit(*args, verbose=0, **kw)


def test_a_learning_rate_far_too_high_is_named_and_never_answered_with_higher():
    """Adam at lr=5 blows the loss up to thousands (accuracy stays high: the logits are huge);
    the verdict said "overfitting; gradients healthy" and, on other runs, "underfitting ... try
    a higher learning rate"."""
    x, y = _digits()
    t = ember.Trainer(MLP([64, 128, 10]), optimizer="adam", lr=5.0)
    _fit_quietly(t, x, y, epochs=4, validation_split=0.2)
    assert t.history["loss"][-1] > 100 * np.log(10)  # the run really diverged
    d = t.diagnosis()
    assert d["fit"] == "diverging (learning rate too high)"
    assert d["gradients"] != "healthy"
    text = t.report()
    assert "learning rate too high" in text
    assert "lr=0.5" in text  # a tenth of the chosen lr is suggested
    assert "higher learning rate" not in text


def test_a_diverged_loss_that_became_nan_is_named():
    x, y = _digits()
    t = ember.Trainer(MLP([64, 64, 10]), optimizer="sgd", lr=1e6)
    _fit_quietly(t, x, y, epochs=2)
    d = t.diagnosis()
    assert d["fit"] == "diverging (learning rate too high)", (t.history["loss"], d)
    assert "higher learning rate" not in t.report()


def _regression(n=400, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    w = rng.standard_normal(6)
    y = (x @ w + offset + 0.1 * rng.standard_normal(n)).astype(np.float32)
    return x, y


def test_a_regression_fit_is_judged_on_r2_not_on_the_loss_falling():
    """Targets offset by 600 with a tiny spread: the MSE falls from ~360,000 by far more than
    half, yet the model predicts worse than the targets' mean (R² hugely negative). The verdict
    said "fit good"."""
    x, y = _regression(offset=600.0)
    t = ember.Trainer(MLP([6, 16, 1]), loss="mse", optimizer="sgd", lr=1e-3)
    _fit_quietly(t, x, y, epochs=3, batch_size=64)
    assert t.history["loss"][-1] < 0.5 * t.history["loss"][0]  # the old rule's "good"
    pred = t.predict(x)
    r2_by_hand = 1 - np.mean((pred - y) ** 2) / np.var(y)
    assert r2_by_hand < 0
    d = t.diagnosis()
    assert d["fit"] == "underfitting", d
    assert d["r2"] < 0
    assert "R²" in t.report()


def test_a_good_regression_fit_reports_the_r2_computed_by_hand():
    x, y = _regression(n=800)
    x, y, xv, yv = x[:600], y[:600], x[600:], y[600:]
    t = ember.Trainer(MLP([6, 32, 1]), loss="mse", optimizer="adam", lr=1e-2)
    _fit_quietly(t, x, y, epochs=30, batch_size=32, validation_data=(xv, yv))
    d = t.diagnosis()
    pred = t.predict(xv)
    val_r2 = 1 - np.mean((pred.astype(np.float64) - yv) ** 2) / np.var(yv.astype(np.float64))
    assert val_r2 > 0.9
    assert d["val_r2"] == pytest.approx(val_r2, rel=1e-4)
    assert d["fit"] == "good", d
    assert "target_variance" not in t.hyperparameters()  # a fact of the data, not a choice


def test_report_shows_the_chosen_lr_and_the_current_one_separately():
    """ReduceLROnPlateau lowered the lr: the report showed the lowered value as "chosen"."""
    x, y = _digits()
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    t = ember.Trainer(MLP([64, 32, 10]), optimizer="sgd", lr=0.01, callbacks=[plateau])
    _fit_quietly(t, x, y, epochs=3)
    assert t.optimizer.lr == pytest.approx(0.01 * 0.5 ** 2)  # (the first epoch sets the best)
    text = t.report()
    chosen_line = next(line for line in text.splitlines() if line.startswith("hyperparameters"))
    assert "lr=0.01," in chosen_line
    assert "learning rate now: 0.0025" in text
    assert t.hyperparameters()["lr"] == pytest.approx(0.01)


def test_the_progress_line_prints_small_learning_rates_with_their_digits():
    """lr=2e-5 was printed "lr=0.0000"."""
    x, y = _digits()
    out = io.StringIO()
    t = ember.Trainer(MLP([64, 16, 10]), optimizer="adam", lr=2e-5,
                      callbacks=[ProgressBar(stream=out)])
    _fit_quietly(t, x[:200], y[:200], epochs=1)
    line = out.getvalue()
    assert "lr=2e-05" in line, line
    assert "lr=0.0000" not in line


def test_a_loss_that_exploded_then_collapsed_is_still_named_diverging():
    """`ember train --lr 5`: the loss went 1.2e6, 2.7e3, 26, 2.6, 2.6 (the model collapsed to one
    class), falling every epoch: the verdict was "underfitting ... try more epochs"."""
    x, y = _digits()
    t = ember.Trainer(MLP([64, 256, 256, 10]), optimizer="adam", lr=5.0)
    _fit_quietly(t, x, y, epochs=5, validation_split=0.15)
    h = t.history["loss"]
    assert max(h) > 1e3  # it blew up
    d = t.diagnosis()
    assert d["fit"] == "diverging (learning rate too high)", (h, d)
    assert "higher learning rate" not in t.report()


def test_a_diverged_regression_is_named_not_told_to_raise_the_lr():
    """Standardized targets, Adam at lr=5: the MSE reaches ~1e12 and falls back to ~1e6 while
    falling every epoch; the verdict said "try ... a higher learning rate"."""
    x, y = _regression(n=500)
    y = (y - y.mean()) / y.std()
    t = ember.Trainer(MLP([6, 64, 64, 1]), loss="mse", optimizer="adam", lr=5.0)
    _fit_quietly(t, x, y, epochs=10)
    d = t.diagnosis()
    assert d["fit"] == "diverging (learning rate too high)", (t.history["loss"], d)
    assert "higher learning rate" not in t.report()
