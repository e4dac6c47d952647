"""The Trainer: the loop, determinism, validation, callbacks, reports and bad input."""
import math
import warnings

import numpy as np
import pytest

import ember
from ember import Trainer, nn
from ember.callbacks import (EarlyStopping, GradientWarning, ReduceLROnPlateau)
from ember.data import DataLoader, train_val_split
from ember.datasets import load_digits
from ember.losses import CrossEntropy
from ember.optim import SGD, Adam
from ember.schedules import StepLR


def _blobs(n=240, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_low_level_loop_equals_trainer():
    x, y = _blobs()
    # low-level: show a batch, predict, score the loss, learn, repeat
    model = nn.MLP([6, 16, 3], seed=1)
    loss_fn = CrossEntropy()
    opt = Adam(model, lr=1e-2)
    loader = DataLoader(x, y, batch_size=17, shuffle=True, seed=5)
    for epoch in range(3):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()  # gradients accumulate until cleared, as in PyTorch
            out = model.forward(xb)
            loss_fn.forward(out, yb)
            model.backward(loss_fn.backward())
            opt.step()
    manual = _weights(model)
    model2 = nn.MLP([6, 16, 3], seed=1)
    Trainer(model2, optimizer="adam", lr=1e-2).fit(x, y, epochs=3, batch_size=17, seed=5,
                                                   verbose=0)
    for k in manual:
        np.testing.assert_array_equal(manual[k], model2.state_dict()[k], err_msg=k)


def _run(seed, dropout=0.2):
    x, y = _blobs()
    model = nn.MLP([6, 32, 32, 3], dropout=dropout, seed=seed)
    t = Trainer(model, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True)
    h = t.fit(x, y, epochs=4, batch_size=20, validation_split=0.25, seed=seed, verbose=0)
    return _weights(model), {k: v for k, v in h.history.items() if k != "time"}


def test_same_seed_is_bit_identical():
    w1, h1 = _run(3)
    w2, h2 = _run(3)
    assert h1 == h2
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
    w3, h3 = _run(4)
    assert h3 != h1


def test_digits_reaches_97_percent():
    x, y = load_digits()
    xtr, ytr, xte, yte = train_val_split(x, y, 0.2, seed=0)
    model = nn.MLP([64, 256, 256, 10], seed=0)
    t = Trainer(model, optimizer="adam", lr=1e-3)
    t.fit(xtr, ytr, epochs=30, batch_size=32, validation_split=0.1, seed=0, verbose=0)
    acc = t.evaluate(xte, yte)["accuracy"]
    assert acc >= 0.97, acc
    assert np.mean(t.predict(xte) == yte) == pytest.approx(acc)


@pytest.mark.parametrize("case", [
    dict(sizes=[6, 16, 3], act="relu", loss={}, batch=16),
    dict(sizes=[6, 7, 5, 3], act="tanh", loss={"label_smoothing": 0.1}, batch=33),
    dict(sizes=[6, 9, 3], act="leaky_relu", slope=-0.3, loss={"reduction": "sum"}, batch=50),
    dict(sizes=[6, 3], act="relu", loss={"weight": [0.5, 2.0, 1.0]}, batch=240),
    dict(sizes=[6, 12, 12, 3], act="gelu", loss={}, batch=7, metrics=()),
    # ReLU / leaky ReLU derivatives formed in the next layer's dX epilogue: several in a row,
    # widths that leave partial register tiles, the narrow (dot-product) GEMM (9 <- 130 wide),
    # and a positive slope read from the layer's output (no saved pre-activation).
    dict(sizes=[6, 37, 33, 17, 3], act="relu", loss={}, batch=29),
    dict(sizes=[6, 9, 130, 3], act="relu", loss={}, batch=40),
    dict(sizes=[6, 20, 9, 3], act="leaky_relu", slope=0.2, loss={}, batch=64),
])
def test_fused_step_matches_layer_by_layer_bit_for_bit(case):
    # Trainer's CPU fast path (one MlpPlan call per batch for forward, loss and backward) against
    # the layer-by-layer path: identical weights, optimizer state and history (times aside).
    x, y = _blobs(n=300, seed=6)
    runs = []
    for fused in (True, False):
        layers = []
        for i, (a, b) in enumerate(zip(case["sizes"][:-1], case["sizes"][1:])):
            layers.append(nn.Linear(a, b, seed=i))
            if i < len(case["sizes"]) - 2:
                layers.append(nn.LeakyReLU(case["slope"]) if case["act"] == "leaky_relu" else
                              {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[case["act"]]())
        model = nn.Sequential(*layers)
        t = Trainer(model, loss=CrossEntropy(**case["loss"]), optimizer="adam", lr=1e-2,
                    metrics=case.get("metrics", ("accuracy",)))
        t.fused_steps = fused
        assert model.fused_ok(t.loss)
        calls, step = [], model.fused_plan
        model.fused_plan = lambda *a: (calls.append(1), step(*a))[1]
        t.fit(x[:250], y[:250], epochs=3, batch_size=case["batch"], verbose=0,
              validation_data=(x[250:], y[250:]))
        assert bool(calls) == fused  # the path really taken
        hist = {k: v for k, v in t.history.history.items() if k != "time"}
        runs.append((_weights(model), t.optimizer.state_dict(), hist, t.loss._grad.copy()))
    (w1, o1, h1, g1), (w2, o2, h2, g2) = runs
    assert h1 == h2
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
    for name in o1["state"]:
        for k in o1["state"][name]:
            np.testing.assert_array_equal(o1["state"][name][k], o2["state"][name][k])
    np.testing.assert_array_equal(g1, g2)


def test_model_copies_and_pickles_in_the_middle_of_training():
    # A callback that keeps copy.deepcopy(model) of its best epoch (a common PyTorch habit) and
    # pickling both work while the fused step's plans exist; the copy trains on its own.
    import copy
    import pickle

    from ember.callbacks import Callback

    class KeepBest(Callback):
        def on_epoch_end(self, epoch, logs):
            self.copy = copy.deepcopy(self.trainer.model)
            self.blob = pickle.dumps(self.trainer.model)

    x, y = _blobs(n=120, seed=3)
    keep = KeepBest()
    t = Trainer(nn.MLP([6, 8, 3], seed=0), optimizer="adam", lr=1e-2, callbacks=[keep])
    t.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for model in (keep.copy, pickle.loads(keep.blob)):
        np.testing.assert_array_equal(model.layers[0].weight.data, t.model.layers[0].weight.data)
        t2 = Trainer(model, optimizer="adam", lr=1e-2)
        t2.fit(x, y, epochs=1, batch_size=32, verbose=0)
        assert np.isfinite(t2.history["loss"][0])


@pytest.mark.parametrize("outputs, reduction", [(1, "mean"), (3, "sum")])
def test_fused_step_matches_layer_by_layer_for_regression(outputs, reduction):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((130, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, outputs))).astype(np.float32)
    if outputs == 1:
        y = y[:, 0]  # a 1-D target for a 1-output model
    out = []
    for fused in (True, False):
        model = nn.MLP([5, 11, outputs], activation="tanh", seed=2)
        t = Trainer(model, loss=ember.losses.MSE(reduction), optimizer="adam", lr=1e-2)
        t.fused_steps = fused
        calls, step = [], model.fused_plan
        model.fused_plan = lambda *a: (calls.append(1), step(*a))[1]
        t.fit(x, y, epochs=3, batch_size=32, verbose=0)
        assert bool(calls) == fused
        out.append((_weights(model), t.history["loss"], t.loss._grad.copy()))
    assert out[0][1] == out[1][1]
    for k in out[0][0]:
        np.testing.assert_array_equal(out[0][0][k], out[1][0][k])
    np.testing.assert_array_equal(out[0][2], out[1][2])


def test_fused_step_follows_a_layer_changed_during_training():
    # A callback that changes a fused layer's slope between epochs: the fused plan is rebuilt and
    # both paths keep agreeing bit for bit.
    from ember.callbacks import Callback

    class Steeper(Callback):
        def on_epoch_end(self, epoch, logs):
            self.trainer.model.layers[0].negative_slope = 0.3 * (epoch + 1)

    x, y = _blobs(n=200, seed=8)
    out = []
    for fused in (True, False):
        model = nn.Sequential(nn.Linear(6, 10, seed=0), nn.LeakyReLU(0.05), nn.Linear(10, 3))
        t = Trainer(model, optimizer="adam", lr=1e-2, callbacks=[Steeper()])
        t.fused_steps = fused
        t.fit(x, y, epochs=3, batch_size=32, verbose=0)
        out.append((_weights(model), t.history["loss"]))
    assert out[0][1] == out[1][1]
    for k in out[0][0]:
        np.testing.assert_array_equal(out[0][0][k], out[1][0][k])


def test_fused_step_only_for_plain_linear_stacks():
    ce = CrossEntropy()
    assert nn.MLP([4, 8, 3]).__class__ is nn.MLP and nn.MLP([4, 8, 3]).fused_ok(ce)
    assert not nn.MLP([4, 8, 3], dropout=0.1).fused_ok(ce)  # Dropout: layer by layer
    assert nn.MLP([4, 8, 3]).fused_ok(ember.losses.MSE())  # regression too
    unfused_act = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Tanh(), nn.Linear(8, 3))
    assert not unfused_act.fused_ok(ce)  # a second, unfused activation layer
    # and a model that is not fused still trains (layer by layer)
    x, y = _blobs(n=64, d=4, seed=1)
    t = Trainer(nn.MLP([4, 8, 3], dropout=0.1), optimizer="adam", lr=1e-2)
    t.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(t.history["loss"]) == 2 and all(np.isfinite(t.history["loss"]))


def test_metrics_empty_records_the_loss_only(tmp_path):
    # metrics=() turns accuracy off everywhere (history, evaluate, report); the training itself,
    # and its loss, are the same bits as with accuracy on. load_trainer keeps the choice.
    x, y = _blobs(n=300, seed=4)
    x, y, xv, yv = x[:240], y[:240], x[240:], y[240:]
    runs = {}
    for metrics in ((), ("accuracy",)):
        t = Trainer(nn.MLP([6, 16, 3], seed=0), optimizer="adam", lr=1e-2, metrics=metrics)
        t.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv), verbose=0,
              checkpoint_dir=tmp_path / str(len(metrics)))
        runs[metrics] = t
    quiet, full = runs[()], runs[("accuracy",)]
    assert "accuracy" not in quiet.history and "val_accuracy" not in quiet.history
    assert "accuracy" in full.history and "val_accuracy" in full.history
    assert quiet.history["loss"] == full.history["loss"]
    assert quiet.history["val_loss"] == full.history["val_loss"]
    assert set(quiet.evaluate(xv, yv)) == {"loss"}
    assert set(full.evaluate(xv, yv)) == {"loss", "accuracy"}
    assert "accuracy" not in quiet.report()
    assert quiet.diagnosis()["fit"] in ("good", "underfitting")
    stopper = EarlyStopping(monitor="val_accuracy")
    with pytest.raises(ValueError, match="val_accuracy"):
        Trainer(nn.MLP([6, 16, 3], seed=0), metrics=(), callbacks=[stopper]).fit(
            x, y, epochs=2, validation_data=(xv, yv), verbose=0)
    assert ember.load_trainer(tmp_path / "0" / "latest").metrics == ()
    assert ember.load_trainer(tmp_path / "1" / "latest").metrics == ("accuracy",)


def test_predict_same_at_any_batch_size():
    x, y = _blobs(n=101)
    t = Trainer(nn.MLP([6, 24, 3], seed=2), lr=1e-2)
    t.fit(x, y, epochs=2, verbose=0)
    ref = t.predict_raw(x, batch_size=101)
    for bs in (1, 7, 64):
        # bit-identical: the GEMM gives each row the same arithmetic whatever the batch
        np.testing.assert_array_equal(t.predict_raw(x, batch_size=bs), ref)
        np.testing.assert_array_equal(t.predict(x, batch_size=bs), t.predict(x))
    p = t.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert (p.argmax(1) == t.predict(x)).all()


def test_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1).astype(np.float32)
    t = Trainer(nn.MLP([4, 32, 1], seed=0), loss="mse", optimizer="adam", lr=1e-2)
    h = t.fit(x, y, epochs=40, batch_size=32, validation_split=0.2, verbose=0)
    assert h["loss"][-1] < 0.05 * h["loss"][0]
    assert "accuracy" not in h
    pred = t.predict(x)
    assert pred.shape == (300,)
    assert np.mean((pred - y) ** 2) < 0.1


def test_regression_target_width_must_match_the_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    t = Trainer(nn.MLP([4, 8, 1], seed=0), loss="mse")
    with pytest.raises(ValueError, match=r"y has 2 target column\(s\), the model outputs 1"):
        t.fit(x, rng.standard_normal((20, 2)), epochs=1, verbose=0)
    assert t.global_step == 0


def test_early_stopping_restores_best_weights():
    x, y = _blobs(n=90)
    xv, yv = _blobs(n=60, seed=9)
    model = nn.MLP([6, 64, 64, 3], seed=0)
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    t = Trainer(model, optimizer="adam", lr=0.05, callbacks=[stop])
    h = t.fit(x, y, epochs=60, batch_size=8, validation_data=(xv, yv), verbose=0)
    best = int(np.argmin(h["val_loss"]))
    assert stop.best_epoch == best
    assert len(h) < 60 and t.stop_reason.startswith("early stopping")
    assert t.evaluate(xv, yv)["loss"] == pytest.approx(h["val_loss"][best], rel=1e-5)


def test_reduce_lr_on_plateau_and_schedule():
    x, y = _blobs()
    rl = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    t = Trainer(nn.MLP([6, 8, 3]), optimizer="sgd", lr=0.1, callbacks=[rl])
    h = t.fit(x, y, epochs=3, verbose=0)
    assert h["lr"] == [0.1, 0.1, 0.05]  # the rate used during each epoch
    t2 = Trainer(nn.MLP([6, 8, 3]), optimizer="sgd", lr=0.1, lr_schedule=StepLR(2, 0.1))
    h2 = t2.fit(x, y, epochs=5, verbose=0)
    np.testing.assert_allclose(h2["lr"], [0.1, 0.1, 0.01, 0.01, 0.001])


def test_terminate_on_nan_stops_and_reports():
    x, y = _blobs()
    x[:] *= 1e30  # finite input whose logits overflow
    t = Trainer(nn.MLP([6, 8, 3]), optimizer="sgd", lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = t.fit(x, y, epochs=5, verbose=0)
    assert any("exploding gradients in layer 0" in str(w.message) for w in caught)
    assert len(h) == 1 and "loss became" in t.stop_reason
    assert h["skipped_steps"] == [1]  # the NaN step changed nothing
    assert t.diagnosis()["gradients"] == "exploding"


def test_gradient_monitor_warns_on_vanishing():
    x, y = _blobs()
    layers = []
    sizes = [6] + [16] * 8 + [3]
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], init="xavier", gain=0.05, seed=i))
        if i < len(sizes) - 2:
            layers.append(nn.Sigmoid())
    t = Trainer(nn.Sequential(*layers), optimizer="sgd", lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(x, y, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if w.category is GradientWarning]
    assert any(m.startswith("vanishing gradients in layer 0 ") for m in messages), messages
    assert not any("layer 16" in m for m in messages)  # the output layer learns fine
    assert "vanishing" in t.diagnosis()["gradients"]
    assert "0.weight" in t.history.grad_norms[0]


def test_frozen_layer_is_not_updated():
    x, y = _blobs()
    model = nn.MLP([6, 16, 3], seed=0)
    model[0].freeze()
    before = model[0].weight.data.copy()
    Trainer(model, lr=1e-2).fit(x, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(model[0].weight.data, before)
    assert not np.array_equal(model[2].weight.data, nn.MLP([6, 16, 3], seed=0)[2].weight.data)


def test_report_and_overfitting_verdict():
    x, y = _blobs(n=400, d=6, k=3, seed=1)
    rng = np.random.default_rng(0)
    y_noisy = np.where(rng.random(400) < 0.35, rng.integers(0, 3, 400), y)
    t = Trainer(nn.MLP([6, 256, 256, 3], seed=0), optimizer="adam", lr=3e-3)
    t.fit(x[:60], y_noisy[:60], epochs=150, batch_size=10,
          validation_data=(x[60:], y_noisy[60:]), verbose=0)
    r = t.report()
    assert "parameters (learned): 68,355" in r
    assert "hyperparameters (chosen): epochs=150, batch_size=10, optimizer=Adam" in r
    assert t.diagnosis()["fit"] == "overfitting", r


def test_underfitting_verdict():
    x, y = _blobs()
    t = Trainer(nn.MLP([6, 4, 3], seed=0), optimizer="sgd", lr=1e-6)
    t.fit(x, y, epochs=2, validation_split=0.2, verbose=0)
    assert t.diagnosis()["fit"] == "underfitting"


def test_history_csv_and_plot(tmp_path):
    x, y = _blobs()
    t = Trainer(nn.MLP([6, 8, 3]), lr=1e-2)
    h = t.fit(x, y, epochs=3, validation_split=0.2, verbose=0)
    h.to_csv(tmp_path / "h.csv")
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    assert len(lines) == 4
    h.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_output_one_line_per_epoch_when_not_a_tty(capsys):
    x, y = _blobs()
    Trainer(nn.MLP([6, 8, 3]), lr=1e-2).fit(x, y, epochs=3, verbose=1)
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in err if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]


@pytest.mark.parametrize("mutate,message", [
    (lambda x, y: (x, y[:-1]), "x has 240 samples but y has 239"),
    (lambda x, y: (x[:, :5], y), "x has 5 features, the model expects 6"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y),
     r"x holds NaN or Inf \(first at row 1, column 1\)"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 3, 3, y)), r"label 3 at index 3 is outside \[0, 3\)"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 3, -1, y)), r"label -1 at index 3"),
    (lambda x, y: (x, y.astype(np.float64)), "labels must be integers"),
    (lambda x, y: (x[:0], y[:0]), "x is empty"),
    (lambda x, y: (x[0], y), "x must be 2-D"),
    (lambda x, y: (x.astype(object), y), "x must hold real numbers"),
])
def test_bad_input_rejected_before_training(mutate, message):
    x, y = _blobs()
    model = nn.MLP([6, 8, 3], seed=0)
    before = _weights(model)
    t = Trainer(model)
    bx, by = mutate(x, y)
    with pytest.raises((ValueError, TypeError), match=message):
        t.fit(bx, by, epochs=1, verbose=0)
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert t.global_step == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": -3}, "batch_size must be a positive integer"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"validation_split": 1.5}, "validation_split must be a number in"),
])
def test_bad_hyperparameters(kwargs, message):
    x, y = _blobs()
    with pytest.raises(ValueError, match=message):
        Trainer(nn.MLP([6, 8, 3])).fit(x, y, verbose=0, **kwargs)


def test_bad_trainer_arguments():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Trainer(nn.MLP([2, 2]), optimizer="rmsprop")
    with pytest.raises(ValueError, match="loss must be"):
        Trainer(nn.MLP([2, 2]), loss="hinge")
    with pytest.raises(ValueError, match="lr must be >= 0"):
        Trainer(nn.MLP([2, 2]), lr=-1.0)
    with pytest.raises(TypeError, match="model must be an ember.nn.Module"):
        Trainer(object())
    if not ember.cuda_available():
        with pytest.raises(ValueError, match="CUDA is not usable"):
            Trainer(nn.MLP([2, 2]), device="cuda")


def _np_adam(p, grads, lr, b1, b2, eps, wd, decoupled, steps):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grads[t - 1].astype(np.float64)
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


@pytest.mark.parametrize("cls,decoupled", [(ember.optim.Adam, False), (ember.optim.AdamW, True)])
def test_optimizer_classes_follow_published_rule_for_50_steps(cls, decoupled):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((37, 11)).astype(np.float32)
    grads = [rng.standard_normal((37, 11)).astype(np.float32) for _ in range(50)]
    param = nn.Parameter(p0.copy())
    opt = cls([param], lr=1e-2, weight_decay=0.1)
    for g in grads:
        param.grad = g
        opt.step()
    ref = _np_adam(p0, grads, 1e-2, 0.9, 0.999, 1e-8, 0.1, decoupled, 50)
    err = np.linalg.norm(param.data - ref) / np.linalg.norm(ref)
    assert err <= 1e-5, err
    assert opt.step_count == 50


def test_sgd_class_nesterov_weight_decay_50_steps():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(101).astype(np.float32)
    grads = [rng.standard_normal(101).astype(np.float32) for _ in range(50)]
    param = nn.Parameter(p0.copy())
    opt = SGD([param], lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    p = p0.astype(np.float64)
    buf = None
    for g in grads:
        param.grad = g
        opt.step()
        d = g.astype(np.float64) + 1e-3 * p
        buf = d.copy() if buf is None else 0.9 * buf + d
        p = p - 0.05 * (d + 0.9 * buf)
    assert np.linalg.norm(param.data - p) / np.linalg.norm(p) <= 1e-5


def test_optimizer_skips_nonfinite_step():
    param = nn.Parameter(np.ones(4, np.float32))
    opt = Adam([param])
    param.grad = np.array([1, np.nan, 0, 0], np.float32)
    norm, skipped = opt.step()
    assert skipped and opt.skipped_steps == 1 and opt.step_count == 0
    np.testing.assert_array_equal(param.data, np.ones(4, np.float32))


def test_report_says_which_step_path_ran():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    fused = Trainer(nn.MLP([4, 8, 2]), device="cpu")
    assert fused.step_path is None and "steps:" not in fused.report()
    fused.fit(x, y, epochs=1, verbose=0)
    assert fused.step_path == "fused" and "steps: cpu, fused" in fused.report()
    plain = Trainer(nn.MLP([4, 8, 2], dropout=0.1), device="cpu")  # Dropout: layer by layer
    plain.fit(x, y, epochs=1, verbose=0)
    assert plain.step_path == "layer by layer" and "steps: cpu, layer by layer" in plain.report()


@pytest.mark.parametrize("fit_kwargs, error, message", [
    (dict(y=None), ValueError, r"fit: y is required"),
    (dict(seed=1.7), ValueError, r"fit: seed must be an integer >= 0, got 1.7"),
    (dict(seed=-1), ValueError, r"fit: seed must be an integer >= 0, got -1"),
    (dict(validation_split="0.2"), ValueError,
     r"fit: validation_split must be a number in \[0, 1\), got '0.2'"),
    (dict(validation_split=0.001), ValueError,
     r"fit: validation_split=0.001: .*leaves an empty split"),
])
def test_fit_names_bad_arguments(fit_kwargs, error, message):
    x, y = _blobs(60)
    kw = dict(y=y, epochs=1, verbose=0)
    kw.update(fit_kwargs)
    model = nn.MLP([6, 8, 3], seed=0)
    before = _weights(model)
    with pytest.raises(error, match=message):
        Trainer(model).fit(x, **kw)
    for k, v in _weights(model).items():  # refused before any step
        np.testing.assert_array_equal(v, before[k])


def test_trainer_constructor_messages():
    model = nn.MLP([6, 8, 3], seed=0)
    assert Trainer(model, metrics="accuracy").metrics == ("accuracy",)
    with pytest.raises(TypeError, match=r"Trainer: optimizer 'adam' takes no argument 'momentum' "
                                        r"\(it takes: lr, betas, eps, weight_decay"):
        Trainer(model, momentum=0.9)
    with pytest.raises(TypeError, match=r"a schedule must be an ember.schedules.Schedule .* got "
                                        r"str 'cosine'"):
        Trainer(model, lr_schedule="cosine")
    with pytest.raises(ValueError, match=r"eps must be > 0, got 0.0"):
        Trainer(model, eps=0.0)
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0, got 0.0"):
        Trainer(model, max_grad_norm=0.0)


def test_plotting_an_empty_history_is_a_clear_error():
    from ember.trainer import History
    with pytest.raises(ValueError, match=r"History.plot: nothing to plot yet"):
        History().plot()


def test_a_nan_weight_stops_training_instead_of_training_on():
    x, y = _blobs(60)
    model = nn.MLP([6, 8, 3], seed=0)
    model.layers[0].weight.data[0, 0] = np.nan
    t = Trainer(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(x, y, epochs=3, batch_size=20, verbose=0)
    assert t.stop_reason is not None and "loss became nan" in t.stop_reason
    assert len(t.history) == 1


def test_fit_checks_shuffle_and_verbose_and_takes_any_real_split():
    import fractions
    x, y = _blobs(60)
    with pytest.raises(ValueError, match=r"fit: shuffle must be True or False, got 'no'"):
        Trainer(nn.MLP([6, 8, 3], seed=0)).fit(x, y, epochs=1, shuffle="no", verbose=0)
    with pytest.raises(ValueError, match=r"fit: verbose must be 0 \(silent\) or 1"):
        Trainer(nn.MLP([6, 8, 3], seed=0)).fit(x, y, epochs=1, verbose="quiet")
    a = Trainer(nn.MLP([6, 8, 3], seed=0))
    a.fit(x, y, epochs=2, validation_split=fractions.Fraction(1, 4), verbose=False)
    b = Trainer(nn.MLP([6, 8, 3], seed=0))
    b.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
    assert a.history["val_loss"] == b.history["val_loss"]
    assert a.fit_params["validation_split"] == 0.25 and list(a.history) == list(b.history)
    assert "loss" in list(a.history) and "val_loss" in list(a.history)


def test_model_predict_converts_host_data_like_trainer_predict():
    x, y = _blobs(40)
    model = nn.MLP([6, 8, 3], seed=0)
    want = model.predict(x)
    for variant in (x.astype(np.float64), np.asfortranarray(x), x[::-1][::-1].copy(order="F"),
                    x.astype(np.float16).astype(np.float32)):
        got = model.predict(variant)
        assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(model.predict(np.asfortranarray(x)), want)
    with pytest.raises(TypeError, match=r"predict: x must hold real numbers, got dtype complex"):
        model.predict(x + 1j)


def test_parameters_in_a_numpy_subclass_train(tmp_path):
    """A memory-mapped weight (an ndarray subclass) is NumPy data, not CuPy's."""
    x, y = _blobs(60)
    model = nn.MLP([6, 8, 3], seed=0)
    path = tmp_path / "w.npy"
    np.save(path, model.layers[0].weight.data)
    model.layers[0].weight.data = np.load(path, mmap_mode="r+")
    Trainer(model).fit(x, y, epochs=1, batch_size=20, verbose=0)
    assert np.isfinite(model.layers[0].weight.data).all()


def test_fused_plan_reports_each_layer_when_its_gradients_are_written():
    """FusedPlan.step(layer_done=...) (what a data-parallel fit starts each layer's reduction
    from): each Linear once, last first, its gradients already final when it is reported; the
    step's results are those of the call without a callback; an exception in the callback is
    raised after the step, whose gradients are complete."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((17, 6)).astype(np.float32)
    y = rng.integers(0, 4, 17)
    model = nn.MLP([6, 9, 7, 4], seed=2).train()
    loss = CrossEntropy()
    plan = model.fused_plan(x, loss, True)
    lins = [m for m in model.layers if isinstance(m, nn.Linear)]
    ref = plan.step(x, y)
    ref_grads = [p.grad.copy() for p in model.parameters()]
    seen = []

    def done(layer):
        seen.append((layer, layer.weight.grad.copy()))

    assert plan.step(x, y, done) == ref
    assert [lay for lay, _ in seen] == lins[::-1]
    for lay, g in seen:  # final when reported: what the whole step leaves
        np.testing.assert_array_equal(g, lay.weight.grad)
    for p, g in zip(model.parameters(), ref_grads):
        np.testing.assert_array_equal(p.grad, g)

    def boom(layer):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        plan.step(x, y, boom)
    for p, g in zip(model.parameters(), ref_grads):
        np.testing.assert_array_equal(p.grad, g)
