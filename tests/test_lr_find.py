"""The learning-rate finder (ember.train.lr_find): its suggestion trains better than a rate far
too low or far too high, it stops when the loss diverges, it reads the curve as fastai does
(the slope against log lr), and it leaves the trainer exactly as it found it."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import ember
from ember import cli
from ember.callbacks import EarlyStopping
from ember.data import train_val_split
from ember.nn import MLP
from ember.train.lr_find import BETA, LRFindResult, longest_descent, lr_find, smooth


def synthetic(seed=0, n=600, features=8):
    """A seeded 3-class problem: Gaussian blobs that overlap a little."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (3, features))
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(0, 1.5, (n, features))).astype(np.float32)
    return x, y


def digits():
    x, y = ember.datasets.load_digits()  # pixel intensities already in [0, 1]
    return x, y


def final_val_loss(make, lr, xt, yt, xv, yv) -> float:
    """The validation loss after 5 epochs at ``lr`` (the gradient warnings of the fits meant
    to diverge silenced)."""
    trainer = make(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(xt, yt, epochs=5, batch_size=32, validation_data=(xv, yv), seed=0,
                    verbose=0)
    v = trainer.history["val_loss"][-1]
    return v if math.isfinite(v) else math.inf  # a diverged fit is the worst


# ------------------------------------------------------------------------------------------
# acceptance: the suggestion trains better than 1e-6 and than 10

@pytest.mark.parametrize("data,optimizer", [("digits", "adam"), ("synthetic", "adam"),
                                            ("synthetic", "sgd")])
def test_the_suggestion_beats_too_low_and_too_high(data, optimizer):
    x, y = digits() if data == "digits" else synthetic()
    xt, yt, xv, yv = train_val_split(x, y, 0.25, seed=0)
    n_in, n_out = x.shape[1], int(y.max()) + 1

    def make(lr=None):  # the same seeded init every time
        return ember.Trainer(MLP([n_in, 64, n_out], seed=0), optimizer=optimizer, lr=lr)

    result = make().lr_find(xt, yt, batch_size=32, seed=0)
    assert 1e-4 <= result.suggestion <= 1.0, result
    at = {lr: final_val_loss(make, lr, xt, yt, xv, yv) for lr in (result.suggestion, 1e-6, 10.0)}
    print(data, optimizer, result, at)
    assert at[result.suggestion] < at[1e-6]
    assert at[result.suggestion] < at[10.0]


# ------------------------------------------------------------------------------------------
# the curve and its readings

def test_rates_grow_exponentially_and_losses_are_smoothed_as_fastai():
    x, y = synthetic()
    trainer = ember.Trainer(MLP([8, 16, 3], seed=0), optimizer="sgd")
    r = trainer.lr_find(x, y, start_lr=1e-5, end_lr=1e-2, num_steps=30)
    assert not r.stopped_early and len(r.lrs) == len(r.losses) == len(r.smoothed) == 30
    expected = 1e-5 * (1e-2 / 1e-5) ** (np.arange(30) / 29)
    np.testing.assert_allclose(r.lrs, expected, rtol=1e-12)
    assert r.lrs[0] == pytest.approx(1e-5) and r.lrs[-1] == pytest.approx(1e-2)
    avg, by_hand = 0.0, []
    for i, loss in enumerate(r.losses):
        avg = BETA * avg + (1 - BETA) * loss
        by_hand.append(avg / (1 - BETA ** (i + 1)))
    np.testing.assert_allclose(r.smoothed, by_hand, rtol=1e-12)
    np.testing.assert_allclose(smooth(r.losses), by_hand, rtol=1e-12)
    assert r.smoothed[0] == r.losses[0]  # bias correction: no pull toward 0


def test_it_stops_early_when_the_loss_diverges():
    x, y = synthetic()
    trainer = ember.Trainer(MLP([8, 16, 3], seed=0), optimizer="sgd")
    r = trainer.lr_find(x, y, start_lr=1e-4, end_lr=1e3, num_steps=200)
    assert r.stopped_early and len(r.lrs) < 200
    last, before = r.smoothed[-1], r.smoothed[:-1]
    assert not math.isfinite(last) or last > 4 * before.min()
    assert np.all(before <= 4 * np.minimum.accumulate(before))  # it did not stop sooner
    assert r.suggestion is not None and r.suggestion < r.lrs[-1]


def test_epochs_are_cycled_when_the_steps_outnumber_the_batches():
    x, y = synthetic(n=64)  # 2 batches of 32 an epoch
    trainer = ember.Trainer(MLP([8, 16, 3], seed=0), optimizer="adam")
    r = trainer.lr_find(x, y, start_lr=1e-6, end_lr=1e-3, num_steps=25)
    assert len(r.losses) == 25 and np.all(np.isfinite(r.losses))


def test_steepest_is_the_slope_against_log_lr():
    # a loss that falls fastest (against log10 lr) at lr = 1e-3; no smoothing (beta 0)
    lrs = np.logspace(-6, 0, 61)
    losses = 2.0 - np.tanh(2.0 * (np.log10(lrs) + 3.0))
    r = LRFindResult(lrs, losses, 61, False, beta=0.0)
    np.testing.assert_array_equal(r.smoothed, losses)
    assert r.steepest == pytest.approx(1e-3)
    # the slope against lr itself (Lightning issues #14248, #21141) would pick another point
    lo, hi = r.window()
    wrong = lrs[lo:hi][np.argmin(np.gradient(losses[lo:hi], lrs[lo:hi]))]
    assert wrong != pytest.approx(1e-3)


def test_valley_is_halfway_along_the_longest_descent():
    assert longest_descent([3, 5, 4, 3.9, 3.5, 3.6, 3, 2, 6, 1]) == (1, 9)
    assert longest_descent([1, 2, 3]) == (0, 0)
    lrs = np.logspace(-6, 0, 61)
    losses = (np.log10(lrs) + 2.0) ** 2  # falls until 1e-2 (index 40), then rises
    r = LRFindResult(lrs, losses, 61, False, beta=0.0)
    assert r.window() == (6, 56)  # fastai's: without the first tenth and the last 5 steps
    assert r.suggestion_index == 6 + (40 - 6) // 2
    assert r.suggestion == pytest.approx(10 ** -3.7)
    assert r.minimum_tenth == pytest.approx(1e-3)


def test_too_few_points_give_no_suggestion():
    r = LRFindResult([1e-3, 1e-2], [1.0, float("nan")], 100, True)
    assert r.suggestion is None and r.steepest is None and r.minimum_tenth is None
    assert "suggestion=None" in repr(r)


def test_plot(tmp_path):
    x, y = synthetic()
    r = ember.Trainer(MLP([8, 16, 3], seed=0)).lr_find(x, y, num_steps=40)
    fig = r.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert any("suggestion" in t.get_text() for t in ax.get_legend().get_texts())
    r.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# arguments

@pytest.mark.parametrize("kwargs,name", [
    ({"start_lr": 0}, "start_lr"), ({"start_lr": -1e-3}, "start_lr"),
    ({"start_lr": float("nan")}, "start_lr"), ({"start_lr": "1e-3"}, "start_lr"),
    ({"end_lr": float("inf")}, "end_lr"), ({"start_lr": 1e-2, "end_lr": 1e-2}, "end_lr"),
    ({"start_lr": 1e-2, "end_lr": 1e-3}, "end_lr"), ({"num_steps": 1}, "num_steps"),
    ({"num_steps": 2.5}, "num_steps"), ({"num_steps": True}, "num_steps"),
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 3.0}, "batch_size"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_named(kwargs, name):
    x, y = synthetic(n=60)
    trainer = ember.Trainer(MLP([8, 4, 3], seed=0))
    before = trainer.model.state_dict()["0.weight"].copy()
    with pytest.raises(ValueError, match=rf"^lr_find: {name} must be"):
        trainer.lr_find(x, y, **kwargs)
    np.testing.assert_array_equal(trainer.model.state_dict()["0.weight"], before)


def test_bad_data_is_refused_before_any_step():
    x, y = synthetic(n=60)
    trainer = ember.Trainer(MLP([8, 4, 3], seed=0))
    with pytest.raises(ValueError, match="lr_find"):
        trainer.lr_find(x[:, :5], y)
    with pytest.raises(ValueError, match="lr_find: y is required"):
        trainer.lr_find(x, None)
    with pytest.raises(ValueError, match="lr_find"):
        trainer.lr_find(x, y + 5)  # labels beyond the model's 3 outputs
    assert trainer.optimizer.step_count == 0


# ------------------------------------------------------------------------------------------
# the trainer is left as it was

def _state(trainer) -> dict:
    opt = trainer.optimizer.state_dict()
    hist = {k: v for k, v in trainer.history.history.items() if k != "time"}
    return {"weights": {k: np.array(v) for k, v in trainer.model.state_dict().items()},
            "grads": {n: None if p.grad is None else np.array(p.grad)
                      for n, p in trainer.model.named_parameters()},
            "opt_state": {n: {k: np.array(a) for k, a in st.items()}
                          for n, st in opt["state"].items()},
            "opt": (opt["step"], opt["skipped_steps"], opt["hyperparameters"]),
            "history": json.dumps(hist, default=float), "epochs": list(trainer.history.epochs),
            "counters": (trainer.epoch, trainer.global_step, trainer.epochs,
                         json.dumps(trainer.fit_params, sort_keys=True),
                         trainer.base_lr, trainer.initial_lr, trainer.model.training),
            "dropout": [(m.seed, m.counter) for _, m in trainer.model.named_modules()
                        if isinstance(m, ember.nn.Dropout)]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        np.testing.assert_array_equal(a["weights"][k], b["weights"][k], err_msg=k)
    for k in a["grads"]:
        if a["grads"][k] is None or b["grads"][k] is None:
            assert a["grads"][k] is b["grads"][k] is None, k
        else:
            np.testing.assert_array_equal(a["grads"][k], b["grads"][k], err_msg=k)
    assert a["opt_state"].keys() == b["opt_state"].keys()
    for n in a["opt_state"]:
        for k in a["opt_state"][n]:
            np.testing.assert_array_equal(a["opt_state"][n][k], b["opt_state"][n][k])
    for key in ("opt", "history", "epochs", "counters", "dropout"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("optimizer,kw", [("adam", {}), ("sgd", {"momentum": 0.9}),
                                          ("adamw", {"max_grad_norm": 1.0})])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("fitted_before", [False, True])
def test_a_fit_after_lr_find_is_bit_identical(optimizer, kw, fused, fitted_before):
    x, y = synthetic(n=200)

    def make():
        t = ember.Trainer(MLP([8, 32, 32, 3], dropout=0.1, seed=0), optimizer=optimizer,
                          callbacks=[EarlyStopping(patience=2)], **kw)
        t.fused_steps = fused
        if fitted_before:
            t.fit(x, y, epochs=2, validation_split=0.2, seed=1, verbose=0)
        return t

    plain, probed = make(), make()
    before = _state(probed)
    result = probed.lr_find(x, y, num_steps=50)
    assert len(result.losses) > 10
    _assert_same(_state(probed), before)  # at once ...
    again = probed.lr_find(x, y, num_steps=50)  # ... so the test repeats itself, bit for bit
    np.testing.assert_array_equal(again.losses, result.losses)
    for t in (plain, probed):
        t.fit(x, y, epochs=3, validation_split=0.2, seed=2, verbose=0)
    _assert_same(_state(probed), _state(plain))  # ... and after the next fit


def test_the_function_and_the_method_agree():
    x, y = synthetic(n=200)
    a = lr_find(ember.Trainer(MLP([8, 16, 3], seed=0)), x, y, num_steps=30, seed=3)
    b = ember.Trainer(MLP([8, 16, 3], seed=0)).lr_find(x, y, num_steps=30, seed=3)
    np.testing.assert_array_equal(a.losses, b.losses)
    c = ember.Trainer(MLP([8, 16, 3], seed=0)).lr_find(x, y, num_steps=30, seed=4)
    assert not np.array_equal(a.losses, c.losses)  # the seed orders the batches


# ------------------------------------------------------------------------------------------
# the command line

@pytest.fixture()
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_lr_find_writes_the_curve(_in_tmp, capsys):
    assert cli.main(["lr-find", "--hidden", "32", "-o", "lr"]) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate: " in out
    suggested = float(out.split("suggested learning rate: ")[1].split()[0])
    assert 1e-4 <= suggested <= 1.0
    rows = (_in_tmp / "lr" / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss,smoothed" and 10 < len(rows) <= 101
    lr0, loss0, smooth0 = map(float, rows[1].split(","))
    assert lr0 == pytest.approx(1e-7) and loss0 == smooth0
    assert (_in_tmp / "lr" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # quiet: the number alone; without -o: a new folder under runs/ named for the finder
    assert cli.main(["lr-find", "--hidden", "32", "-q"]) == 0
    assert float(capsys.readouterr().out.strip()) == suggested
    (made,) = (_in_tmp / "runs").iterdir()
    assert made.name.startswith("lr-find-") and (made / "lr_find.csv").is_file()
    # the same options as train, checked the same way; and its own
    assert cli.main(["lr-find", "--optimizer", "rmsprop"]) == 2
    assert cli.main(["lr-find", "--start-lr", "1e-2", "--end-lr", "1e-3"]) == 2
    assert cli.main(["lr-find", "--num-steps", "1"]) == 2
    assert cli.main(["lr-find", "-o", "lr"]) == 1  # never overwrites
    assert "--end-lr" in capsys.readouterr().err


def test_cli_train_lr_auto_records_the_rate(_in_tmp, capsys):
    assert cli.main(["lr-find", "--hidden", "32", "-q", "-o", "probe"]) == 0
    suggested = float(capsys.readouterr().out.strip())
    assert cli.main(["train", "--lr", "auto", "--hidden", "32", "--epochs", "3", "-q",
                     "--out", "auto"]) == 0
    run = _in_tmp / "auto"
    cfg = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert cfg["options"]["lr"] == cfg["lr_find"]["lr"] == suggested
    assert cfg["lr_find"]["requested"] == "auto"
    assert cfg["lr_find"]["suggestion"] == pytest.approx(suggested, rel=5e-3)
    assert summary["hyperparameters"]["lr"] == suggested
    assert summary["hyperparameters"]["optimizer_details"]["lr"] == suggested
    assert summary["lr_find"]["lr"] == suggested
    assert (run / "lr_find.csv").is_file() and (run / "lr_find.png").is_file()
    # the run is the one `--lr <suggested>` trains, bit for bit
    assert cli.main(["train", "--lr", str(suggested), "--hidden", "32", "--epochs", "3", "-q",
                     "--out", "fixed"]) == 0
    assert (run / "history.csv").read_text().splitlines()[0] == \
        (_in_tmp / "fixed" / "history.csv").read_text().splitlines()[0]
    ours = json.loads((_in_tmp / "fixed" / "summary.json").read_text())["metrics"]
    assert summary["metrics"] == ours
    # --resume with --lr auto names the same run; another --lr is refused
    assert cli.main(["train", "--lr", "auto", "--hidden", "32", "--epochs", "3", "--out",
                     "auto", "--resume"]) == 0
    assert "has finished" in capsys.readouterr().out
    assert cli.main(["train", "--lr", "0.5", "--hidden", "32", "--epochs", "3", "--out",
                     "auto", "--resume"]) == 2


def test_class_weight_weighs_the_sweep_as_the_fit_will_and_is_undone():
    # A 90/10 problem: with class_weight="balanced" the sweep's losses are those of a loss
    # weighted by n / (2 * count) per class (checked against CrossEntropy(weight=...) given by
    # hand), and the trainer's loss has no weights afterwards.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (rng.random(200) < 0.1).astype(np.int64)
    x[y == 1] += 1.0
    counts = np.bincount(y, minlength=2)
    by_hand = (len(y) / (2 * counts)).astype(np.float32)

    def sweep(**kw):
        t = ember.Trainer(MLP([3, 8, 2], seed=0), optimizer="sgd", **kw.pop("trainer", {}))
        return t, t.lr_find(x, y, num_steps=20, **kw)

    t, weighted = sweep(class_weight="balanced")
    assert t.loss.weight is None
    _, plain = sweep()
    _, manual = sweep(trainer={"loss": ember.losses.CrossEntropy(weight=by_hand)})
    np.testing.assert_array_equal(weighted.losses, manual.losses)
    assert not np.array_equal(weighted.losses, plain.losses)
    with pytest.raises(ValueError, match=r"^lr_find: class_weight"):
        ember.Trainer(MLP([3, 8, 2]), loss="mse").lr_find(x, y.astype(np.float32).reshape(-1, 1),
                                                          class_weight="balanced")
