"""The ``ember`` command line: every command, every kind of bad input, resume after Ctrl-C.

Most tests call ``ember.cli.main([...])`` in-process; a few run ``python -m ember`` to check
what a shell sees (exit status, one-line errors, SIGINT).
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ember
import ember.preprocessing  # noqa: F401 - ember.preprocessing.RunModel below
from conftest import subprocess_env
from ember import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "ember", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return Path(path)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory, so default runs/ land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def blobs_csv(tmp_path_factory) -> Path:
    """3 well-separated classes labelled 1, 2, 3 (not 0-based), 4 features, 150 rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (3, 4))
    rows = []
    for i in range(150):
        c = i % 3
        rows.append([f"{v:.5f}" for v in centers[c] + rng.normal(0, 0.5, 4) + 50] +
                    [c + 1])
    return write_csv(tmp_path_factory.mktemp("data") / "blobs.csv",
                     ["f0", "f1", "f2", "f3", "label"], rows)


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory) -> Path:
    """y = 300 + 40 x0 - 25 x1 + 10 x2 + noise: large target scale, so standardization matters."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (240, 3))
    y = 300 + 40 * x[:, 0] - 25 * x[:, 1] + 10 * x[:, 2] + rng.normal(0, 1, 240)
    rows = [[f"{a:.5f}", f"{b:.5f}", f"{c:.5f}", f"{t:.4f}"] for (a, b, c), t in zip(x, y)]
    return write_csv(tmp_path_factory.mktemp("data") / "reg.csv", ["a", "b", "c", "price"],
                     rows)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, float, str]:
    """The default `ember train` (bundled digits, default options): run once, timed."""
    out = tmp_path_factory.mktemp("digits") / "run"
    t0 = time.perf_counter()
    rc = cli.main(["train", "--out", str(out), "--quiet"])
    wall = time.perf_counter() - t0
    assert rc == 0
    return out, wall, ""


# ------------------------------------------------------------------------------------------
# train / evaluate / predict


def test_default_train_on_digits_reaches_97_percent(digits_run):
    run, wall, _ = digits_run
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    test_acc = summary["metrics"]["test"]["accuracy"]
    print(f"default ember train: test accuracy {test_acc:.4f}, {summary['epochs_run']} epochs, "
          f"{wall:.1f}s wall")
    assert test_acc >= 0.97
    assert wall < 120
    png = (run / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    history = read_csv(run / "history.csv")
    assert len(history) == summary["epochs_run"] >= 1
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert (run / "checkpoints" / "latest").is_file()
    # summary: learned parameters vs chosen hyperparameters, metrics, verdict, data, timings
    assert summary["parameters"]["total"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    hp = summary["hyperparameters"]
    assert hp["hidden"] == [256, 256] and hp["optimizer"] == "adam" and hp["lr"] == 1e-3
    assert hp["batch_size"] == 32 and hp["activation"] == "relu"
    assert set(summary["metrics"]) == {"train", "validation", "test"}
    assert summary["diagnosis"]["fit"] in ("good", "overfitting", "underfitting",
                                           "no validation data")
    assert summary["data"]["n_samples"] == 1797 and summary["data"]["classes"] == list(range(10))
    assert summary["ember_version"] == ember.__version__ and summary["device"] in ("cpu", "cuda")
    assert summary["timings"]["train_s"] > 0
    # config: everything evaluate/predict/--resume need
    assert config["format"] == "ember-run" and config["data"]["task"] == "classification"
    assert config["options"]["epochs"] == 60 and config["options"]["patience"] == 15
    assert len(config["data"]["normalization"]["x_mean"]) == 64


def test_default_train_prints_report_metrics_and_paths(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "2", "--hidden", "32"]) == 0
    out = capsys.readouterr().out
    assert "== ember training report ==" in out and "verdict:" in out
    assert "test metrics: accuracy=" in out
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and str(runs[0].relative_to(tmp_path)) in out
    assert (runs[0] / "curves.png").is_file()


def test_evaluate_default_is_the_runs_test_split(digits_run, capsys):
    run, _, _ = digits_run
    summary = json.loads((run / "summary.json").read_text())
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == summary["data"]["splits"]["test"]
    assert got["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["test"]["accuracy"])
    assert cli.main(["evaluate", str(run)]) == 0
    assert "accuracy=" in capsys.readouterr().out


def test_predict_digits_npz(digits_run, tmp_path, capsys):
    run, _, _ = digits_run
    x, y = ember.datasets.load_digits()
    np.savez(tmp_path / "d.npz", x=x[:50], y=y[:50])
    np.savez(tmp_path / "only_x.npz", x=x[:50])
    assert cli.main(["predict", str(run), "--data", "d.npz", "--out", "p.csv"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 50 and list(rows[0]) == ["prediction"] + [f"prob_{c}" for c in range(10)]
    pred = np.array([int(r["prediction"]) for r in rows])
    assert (pred == y[:50]).mean() > 0.9
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert cli.main(["predict", str(run), "--data", "only_x.npz"]) == 0  # to stdout
    assert capsys.readouterr().out.splitlines()[0].startswith("prediction,prob_0")
    assert cli.main(["evaluate", str(run), "--data", "d.npz"]) == 0


def test_predict_reads_only_the_weights_and_matches_load_predictor(digits_run, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(digits_run[0], run)
    x, _ = ember.datasets.load_digits()
    np.savez(tmp_path / "d.npz", x=x[:40])
    ckpt = ember.checkpoint.resolve_checkpoint(run / "checkpoints")
    (ckpt / "optimizer.safetensors").write_bytes(b"damaged")  # ember predict never reads it
    assert cli.main(["predict", str(run), "--data", "d.npz", "--out", "p.csv"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    proba = ember.load_predictor(run).predict_proba(x[:40])  # the raw features, the same model
    got = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6)
    assert [int(r["prediction"]) for r in rows] == list(proba.argmax(axis=1))


def test_classification_csv(blobs_csv, tmp_path, capsys):
    rc = cli.main(["train", "--data", str(blobs_csv), "--target", "label", "--epochs", "20",
                   "--lr", "0.01",
                   "--hidden", "16", "--batch-size", "16", "--out", "cls"])
    assert rc == 0
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert cfg["data"]["task"] == "classification" and cfg["data"]["task_inferred"]
    assert cfg["data"]["classes"] == [1, 2, 3]
    assert cfg["data"]["feature_names"] == ["f0", "f1", "f2", "f3"]
    assert cfg["data"]["target"] == "label"
    summary = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert summary["metrics"]["test"]["accuracy"] >= 0.9
    capsys.readouterr()
    assert cli.main(["evaluate", "cls", "--data", str(blobs_csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] >= 0.9
    assert cli.main(["evaluate", "cls"]) == 0  # default: the unchanged data file's test split
    # predict on rows without the target column: labels come back as the original 1, 2, 3
    rows = read_csv(blobs_csv)
    write_csv(tmp_path / "new.csv", ["f0", "f1", "f2", "f3"],
              [[r[f"f{i}"] for i in range(4)] for r in rows[:30]])
    assert cli.main(["predict", "cls", "--data", "new.csv", "--out", "preds.csv"]) == 0
    preds = read_csv(tmp_path / "preds.csv")
    assert list(preds[0]) == ["prediction", "prob_1", "prob_2", "prob_3"]
    got = [int(p["prediction"]) for p in preds]
    assert set(got) <= {1, 2, 3}
    assert np.mean([g == int(r["label"]) for g, r in zip(got, rows)]) >= 0.9


def test_regression_csv(regression_csv, tmp_path, capsys):
    rc = cli.main(["train", "--data", str(regression_csv), "--epochs", "30", "--hidden", "32",
                   "--out", "reg", "--lr", "3e-3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "rmse=" in out and "r2=" in out
    cfg = json.loads((tmp_path / "reg" / "config.json").read_text())
    assert cfg["data"]["task"] == "regression" and cfg["data"]["target"] == "price"
    assert cfg["data"]["normalization"]["y_std"][0] > 10  # targets were standardized
    test = json.loads((tmp_path / "reg" / "summary.json").read_text())["metrics"]["test"]
    assert test["r2"] > 0.9 and test["rmse"] < 15  # in the target's own units
    assert cli.main(["predict", "reg", "--data", str(regression_csv), "--out", "p.csv"]) == 0
    preds = np.array([float(r["prediction"]) for r in read_csv(tmp_path / "p.csv")])
    truth = np.array([float(r["price"]) for r in read_csv(regression_csv)])
    assert np.sqrt(np.mean((preds - truth) ** 2)) < 15
    assert cli.main(["evaluate", "reg", "--data", str(regression_csv), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["metrics"]) >= {"mse", "rmse", "mae", "r2"}


def test_task_inference_and_override(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 2))
    # integer targets with many distinct values: regression
    write_csv("many.csv", ["a", "b", "y"], [[*r, int(v)] for r, v in
                                            zip(x, rng.integers(0, 1000, 60))])
    assert cli.main(["train", "--data", "many.csv", "--epochs", "1", "--out", "r1", "-q"]) == 0
    assert json.loads(Path("r1/config.json").read_text())["data"]["task"] == "regression"
    # --task overrides the inference; non-integer labels cannot be classes
    write_csv("two.csv", ["a", "b", "y"], [[*r, i % 2] for i, r in enumerate(x)])
    assert cli.main(["train", "--data", "two.csv", "--task", "regression", "--epochs", "1",
                     "--out", "r2", "-q"]) == 0
    assert json.loads(Path("r2/config.json").read_text())["data"]["task"] == "regression"
    write_csv("frac.csv", ["a", "b", "y"], [[*r, 0.5 * i] for i, r in enumerate(x)])
    assert cli.main(["train", "--data", "frac.csv", "--task", "classification",
                     "--out", "r3"]) == 1
    assert not Path("r3").exists()


def test_without_validation_or_test_split(tmp_path, capsys):
    rc = cli.main(["train", "--val-split", "0", "--test-split", "0", "--epochs", "2",
                   "--hidden", "32,16", "--dropout", "0.2", "--activation", "tanh",
                   "--optimizer", "adamw", "--out", "nv", "-q"])
    assert rc == 0 and capsys.readouterr().out == ""  # --quiet
    summary = json.loads(Path("nv/summary.json").read_text())
    assert set(summary["metrics"]) == {"train"} and summary["data"]["splits"] == {"train": 1797}
    assert summary["hyperparameters"]["optimizer_details"]["optimizer"] == "AdamW"
    assert "val_loss" not in read_csv("nv/history.csv")[0]
    assert cli.main(["evaluate", "nv"]) == 2
    assert "no test split" in capsys.readouterr().err


def test_config_toml_and_flags_override(tmp_path, blobs_csv):
    Path("opts.toml").write_text(
        f'data = "{blobs_csv.as_posix()}"\nhidden = [8, 4]\nepochs = 5\nlr = 0.005\n'
        'optimizer = "sgd"\nmomentum = 0.8\n[train]\nbatch-size = 10\nseed = 3\n')
    assert cli.main(["train", "--config", "opts.toml", "--epochs", "2", "--out", "c", "-q"]) == 0
    opts = json.loads(Path("c/config.json").read_text())["options"]
    assert opts["hidden"] == [8, 4] and opts["epochs"] == 2 and opts["lr"] == 0.005
    assert opts["optimizer"] == "sgd" and opts["momentum"] == 0.8
    assert opts["batch_size"] == 10 and opts["seed"] == 3


# ------------------------------------------------------------------------------------------
# resume


def test_sigint_leaves_a_resumable_run_that_completes_identically(tmp_path):
    # ~60 ms an epoch: the signal lands while training is still going on
    args = ["--epochs", "30", "--patience", "0", "--batch-size", "4", "--hidden", "128,128"]
    env = subprocess_env()
    # (SIGINT's default action restored in the child: a test run started in the background of
    # a shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "ember", "train", *args, "--out",
                             "runs/interrupted"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = tmp_path / "runs" / "interrupted" / "checkpoints" / "latest"
    deadline = time.monotonic() + 60
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert latest.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert "ember train --resume" in err
    assert not (tmp_path / "runs" / "interrupted" / "summary.json").exists()

    # the same command with --resume appended continues it
    assert cli.main(["train", *args, "--out", "runs/interrupted", "--resume", "-q"]) == 0
    resumed = tmp_path / "runs" / "interrupted"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["epochs_run"] == 30 and summary["timings"]["resumed"]
    history = read_csv(resumed / "history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(1, 31))

    # the same options without the interruption give the same run, bit for bit
    assert cli.main(["train", *args, "--out", "straight", "-q"]) == 0
    straight = read_csv(tmp_path / "straight" / "history.csv")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [r[key] for r in history] == [r[key] for r in straight], key

    # a finished run resumes to nothing more, and still exits 0
    assert cli.main(["train", "--resume", str(resumed), "-q"]) == 0


def test_resume_refuses_other_options_and_non_runs(tmp_path, capsys):
    Path("plain").mkdir()
    (Path("plain") / "notes.txt").write_text("mine")
    assert cli.main(["train", "--resume", "plain"]) == 1
    assert "not an ember run directory" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "plain", "--lr", "0.1"]) == 1
    assert "not an ember run directory" in capsys.readouterr().err
    assert cli.main(["train", "--resume"]) == 1  # no runs/ here
    assert "no interrupted run that ember train named itself under runs/" in \
        capsys.readouterr().err
    assert (Path("plain") / "notes.txt").read_text() == "mine"


class _InterruptAfter(ember.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of epoch ``n`` (after ModelCheckpoint saved it), as
    Ctrl-C there would: an in-process stand-in for the SIGINT test above."""

    def __init__(self, n: int):
        self.n = n

    def on_epoch_end(self, epoch, logs):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt


def _interrupted_train(monkeypatch, argv: list, after: int) -> None:
    make = cli.commands.make_trainer

    def make_and_interrupt(*a, **k):
        trainer = make(*a, **k)
        trainer.user_callbacks.append(_InterruptAfter(after))
        return trainer

    monkeypatch.setattr(cli.commands, "make_trainer", make_and_interrupt)
    try:
        assert cli.main(["train", *argv]) == 130
    finally:
        monkeypatch.setattr(cli.commands, "make_trainer", make)


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


SMALL = ["--epochs", "4", "--patience", "0", "--hidden", "16", "-q"]


def test_resume_appended_to_the_original_command_continues_that_run(tmp_path, monkeypatch,
                                                                     capsys):
    # issue 16, item 6: a finished run under runs/, then a run into --out mine interrupted;
    # 'ember train --resume' resumed (and rewrote) the newest run under runs/ instead.
    assert cli.main(["train", *SMALL, "--out", "runs/old"]) == 0
    old = _snapshot(tmp_path / "runs" / "old")
    _interrupted_train(monkeypatch, [*SMALL, "--out", "mine"], after=2)
    assert not Path("mine/summary.json").exists()
    capsys.readouterr()

    # a bare --resume does not write into the finished run (nor pick one the user did not name)
    assert cli.main(["train", "--resume", "-q"]) == 1
    assert "no interrupted run that ember train named itself" in capsys.readouterr().err
    # an option that differs from the run's is refused by name, before anything is written
    assert cli.main(["train", *SMALL, "--out", "mine", "--lr", "0.05", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.05 (the run's: 0.001)" in err and "mine" in err
    assert cli.main(["train", *SMALL, "--out", "other", "--resume", "mine"]) == 2
    assert "name different runs" in capsys.readouterr().err
    assert cli.main(["train", *SMALL, "--out", "nothere", "--resume"]) == 1
    assert "no run there to resume" in capsys.readouterr().err
    assert not Path("nothere").exists() and not Path("other").exists()

    # the original command with --resume appended continues 'mine'
    assert cli.main(["train", *SMALL, "--out", "mine", "--resume"]) == 0
    summary = json.loads(Path("mine/summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["timings"]["resumed"]
    assert _snapshot(tmp_path / "runs" / "old") == old  # untouched
    # ... to the same result as never interrupting it
    assert cli.main(["train", *SMALL, "--out", "straight"]) == 0
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [r[key] for r in read_csv("mine/history.csv")] == \
            [r[key] for r in read_csv("straight/history.csv")], key

    # resuming a finished run, even by name, changes nothing and says so
    done = _snapshot(tmp_path / "mine")
    assert cli.main(["train", "--resume", "mine"]) == 0
    assert "has finished" in capsys.readouterr().out
    assert cli.main(["train", "--resume", "runs/old", "-q"]) == 0
    assert _snapshot(tmp_path / "mine") == done
    assert _snapshot(tmp_path / "runs" / "old") == old


def test_bare_resume_continues_only_an_unambiguous_interrupted_run(tmp_path, monkeypatch,
                                                                   capsys):
    # the original command had no --out: its run is one ember named under runs/; appending
    # --resume finds it among the interrupted runs there by all its options (defaults too), and
    # never guesses between two, nor picks a run that was started with --out
    def runs_now():
        return {json.loads((d / "config.json").read_text())["options"]["seed"]: d
                for d in Path("runs").iterdir()}

    _interrupted_train(monkeypatch, [*SMALL, "--seed", "1"], after=1)
    _interrupted_train(monkeypatch, [*SMALL, "--seed", "2"], after=1)
    a, b = runs_now()[1], runs_now()[2]
    snap_b = _snapshot(b)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "-q"]) == 2  # the defaults are not these runs' options
    assert "no interrupted run under runs/ was started with these options" in \
        capsys.readouterr().err
    assert cli.main(["train", *SMALL, "--seed", "3", "--resume"]) == 2
    assert "no interrupted run under runs/ was started with these options" in \
        capsys.readouterr().err
    assert cli.main(["train", *SMALL, "--seed", "1", "--resume"]) == 0
    assert json.loads((a / "summary.json").read_text())["epochs_run"] == 4
    assert _snapshot(b) == snap_b
    Path("opts.toml").write_text("seed = 2\nhidden = [16]\nepochs = 4\npatience = 0\n")
    assert cli.main(["train", "--config", "opts.toml", "--resume", "-q"]) == 0  # --config too
    assert json.loads((b / "summary.json").read_text())["epochs_run"] == 4
    # two interrupted runs of the same command: refused, both named
    _interrupted_train(monkeypatch, [*SMALL, "--seed", "5"], after=1)
    _interrupted_train(monkeypatch, [*SMALL, "--seed", "5", "--val-split", "0.15"], after=1)
    capsys.readouterr()
    assert cli.main(["train", *SMALL, "--seed", "5", "--resume"]) == 2
    assert "several interrupted runs" in capsys.readouterr().err
    # a run started with --out is continued only by naming it
    _interrupted_train(monkeypatch, [*SMALL, "--seed", "7", "--out", "runs/mine"], after=1)
    mine = _snapshot(Path("runs/mine"))
    assert cli.main(["train", *SMALL, "--seed", "7", "--resume"]) == 2
    assert "name the run: --resume DIR" in capsys.readouterr().err
    assert _snapshot(Path("runs/mine")) == mine
    assert cli.main(["train", *SMALL, "--seed", "7", "--out", "runs/mine", "--resume"]) == 0


# ------------------------------------------------------------------------------------------
# info, bench, help


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ember {ember.__version__}" in out and "ISA" in out and "threads" in out
    assert "cuda backend:" in out
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backends"]["cpu"]["usable"] is True


def test_bench_quick(capsys):
    t0 = time.perf_counter()
    assert cli.main(["bench", "--quick"]) == 0
    assert time.perf_counter() - t0 < 60
    out = capsys.readouterr().out
    assert "| kernel | ember GFLOP/s | NumPy GFLOP/s | ember / NumPy |" in out
    assert "| training (Adam) |" in out and "MLP 64-256-256-10" in out


def test_help_and_version(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "info", "bench"):
        assert command in out
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--target", "--task", "--hidden", "--activation", "--dropout",
                 "--optimizer", "--lr", "--momentum", "--weight-decay", "--batch-size",
                 "--epochs", "--val-split", "--test-split", "--patience", "--seed", "--device",
                 "--out", "--resume", "--config", "--quiet"):
        assert flag in out, flag
    assert cli.main(["--version"]) == 0
    assert ember.__version__ in capsys.readouterr().out


def test_python_dash_m_and_exit_codes(tmp_path):
    ok = run_cli("info")
    assert ok.returncode == 0 and "ember" in ok.stdout
    usage = run_cli("train", "--optimizer", "rmsprop")
    assert usage.returncode == 2
    assert usage.stderr.strip().count("\n") == 0
    assert usage.stderr.startswith("ember: error: ") and "rmsprop" in usage.stderr
    other = run_cli("evaluate", "no-such-run")
    assert other.returncode == 1
    assert other.stderr.strip() == "ember: error: run directory not found: no-such-run"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------
# bad input: one line on stderr, the right exit status, nothing created or overwritten


def _bad_files(d: Path, blobs_csv: Path) -> None:
    write_csv(d / "text.csv", ["a", "b", "label"], [[1, 2, 0], [3, "oops", 1], [5, 6, 0]])
    (d / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00" * 20)
    (d / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (d / "data.json").write_text("{}")
    (d / "adir.csv").mkdir()
    (d / "existing").mkdir()
    (d / "existing" / "keep.txt").write_text("precious")
    (d / "notarun").mkdir()
    (d / "notarun" / "config.json").write_text('{"something": "else"}')
    (d / "preds.csv").write_text("precious")


BAD = [
    # (argv, exit status, text the message must contain)
    (["train", "--data", "missing.csv"], 1, "data file not found: "),
    (["train", "--data", "adir.csv"], 1, "is a directory"),
    (["train", "--data", "binary.csv"], 1, "not a text CSV"),
    (["train", "--data", "broken.npz"], 1, "not a readable .npz"),
    (["train", "--data", "data.json"], 1, "unsupported data file type"),
    (["train", "--data", "text.csv"], 1, "row 3, column 'b': 'oops' is not a number"),
    (["train", "--data", "{blobs}", "--target", "nope"], 1, "target column 'nope' not found"),
    (["train", "--optimizer", "rmsprop"], 2, "rmsprop"),
    (["train", "--activation", "swish"], 2, "swish"),
    (["train", "--task", "ranking"], 2, "ranking"),
    (["train", "--device", "tpu"], 2, "tpu"),
    (["train", "--lr", "-1"], 2, "must be > 0"),
    (["train", "--hidden", "64,abc"], 2, "comma-separated integers"),
    (["train", "--epochs", "0"], 2, "must be an integer >= 1"),
    (["train", "--val-split", "1.5"], 2, "must be in [0, 1)"),
    (["train", "--val-split", "0.5", "--test-split", "0.5"], 2, "leaves no training data"),
    (["train", "--momentum", "0.9"], 2, "--momentum applies to --optimizer sgd"),
    (["train", "--no-such-flag"], 2, "unrecognized arguments"),
    (["frobnicate"], 2, "invalid choice"),
    (["train", "--config", "missing.toml"], 1, "config file not found"),
    (["train", "--out", "existing"], 1, "exists and is not empty"),
    (["evaluate", "missing-run"], 1, "run directory not found"),
    (["evaluate", "existing"], 1, "not an ember run directory"),
    (["evaluate", "notarun"], 1, "not an ember run configuration"),
    (["predict", "existing", "--data", "{blobs}"], 1, "not an ember run directory"),
    (["predict", "notarun"], 2, "--data"),
    (["train", "--resume", "existing"], 1, "not an ember run directory"),
]


@pytest.mark.parametrize("argv,status,message", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input(argv, status, message, tmp_path, blobs_csv, capsys):
    _bad_files(tmp_path, blobs_csv)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.replace("{blobs}", str(blobs_csv)) for a in argv]
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("ember: error: ") and "\n" not in err, err
    assert message in err, err
    assert "Traceback" not in captured.err + captured.out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "existing" / "keep.txt").read_text() == "precious"


def test_bad_config_file_values(tmp_path, capsys):
    Path("a.toml").write_text("hiden = [8]\n")
    assert cli.main(["train", "--config", "a.toml"]) == 2
    assert "unknown option 'hiden'" in capsys.readouterr().err
    Path("b.toml").write_text('optimizer = "lbfgs"\n')
    assert cli.main(["train", "--config", "b.toml"]) == 2
    assert "optimizer: invalid choice 'lbfgs'" in capsys.readouterr().err
    Path("c.toml").write_text("epochs = [\n")
    assert cli.main(["train", "--config", "c.toml"]) == 1
    assert "not valid TOML" in capsys.readouterr().err
    assert not Path("runs").exists()


@pytest.mark.skipif(ember.backend.cuda_training_available()[0], reason="a GPU is usable here")
def test_device_cuda_without_gpu(capsys):
    assert cli.main(["train", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ember: error: ") and "cuda" in err.lower() and err.count("\n") == 1
    assert not Path("runs").exists()


def test_existing_outputs_are_never_overwritten(digits_run, tmp_path, capsys):
    run, _, _ = digits_run
    before = (run / "summary.json").read_bytes()
    assert cli.main(["train", "--out", str(run)]) == 1
    assert "ember train --resume" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before
    Path("preds.csv").write_text("precious")
    x, y = ember.datasets.load_digits()
    np.savez("d.npz", x=x[:5], y=y[:5])
    assert cli.main(["predict", str(run), "--data", "d.npz", "--out", "preds.csv"]) == 1
    assert "--force" in capsys.readouterr().err
    assert Path("preds.csv").read_text() == "precious"
    assert cli.main(["predict", str(run), "--data", "d.npz", "--out", "preds.csv",
                     "--force"]) == 0
    assert Path("preds.csv").read_text().startswith("prediction,")


def test_evaluate_rejects_mismatched_data(digits_run, blobs_csv, tmp_path, capsys):
    run, _, _ = digits_run
    assert cli.main(["evaluate", str(run), "--data", str(blobs_csv)]) == 1
    assert "the model expects 64" in capsys.readouterr().err
    x, y = ember.datasets.load_digits()
    np.savez("bad_labels.npz", x=x[:5], y=y[:5] + 20)
    assert cli.main(["evaluate", str(run), "--data", "bad_labels.npz"]) == 1
    assert "label 20" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# a run loaded from Python (issue 16, item 2): the same answers as 'ember predict'


def _cli_predictions(run, data, tmp_path, name="ref.csv") -> list[dict]:
    out = tmp_path / name
    assert cli.main(["predict", str(run), "--data", str(data), "--out", str(out),
                     "--force"]) == 0
    return read_csv(out)


def test_load_model_of_a_run_predicts_like_ember_predict(digits_run, tmp_path):
    run, _, _ = digits_run
    x, y = ember.datasets.load_digits()
    np.savez("all.npz", x=x, y=y)
    ref = _cli_predictions(run, "all.npz", tmp_path)
    ref_pred = np.array([int(r["prediction"]) for r in ref])
    ref_prob = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in ref])
    cfg = json.loads((run / "config.json").read_text())
    # the run's own arithmetic by hand: standardize with config.json, then the bare network
    norm = cfg["data"]["normalization"]
    bare = ember.load_model(run, preprocessing=False)
    assert type(bare) is ember.nn.Sequential
    by_hand = bare.predict((x - np.float32(norm["x_mean"])) / np.float32(norm["x_std"]))
    for where in (run, run / "checkpoints", run / "checkpoints" / "latest"):
        model = ember.load_model(where)
        assert isinstance(model, ember.preprocessing.RunModel)
        assert model.classes == list(range(10))
        logits = model.predict(x)  # raw pixels, as the command line reads them
        np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-5)
        assert (logits.argmax(1) == ref_pred).all()
        assert (model.predict_labels(x) == ref_pred).all()
    trainer = ember.load_trainer(run)
    assert (trainer.predict(x) == ref_pred).all()
    np.testing.assert_allclose(trainer.predict_proba(x), ref_prob, atol=2e-6)
    acc_cli = float((ref_pred == y).mean())
    acc_model = float((ember.load_model(run).predict(x).argmax(1) == y).mean())
    acc_bare = float((bare.predict(x).argmax(1) == y).mean())  # what load_model gave before
    print(f"digits accuracy: ember predict {acc_cli:.4f}, load_model {acc_model:.4f}, "
          f"bare network on raw pixels {acc_bare:.4f}")
    assert acc_model == acc_cli
    assert trainer.evaluate(x, y)["accuracy"] == pytest.approx(acc_cli)


def test_load_model_of_a_regression_run_gives_the_targets_units(regression_csv, tmp_path):
    assert cli.main(["train", "--data", str(regression_csv), "--epochs", "10", "--hidden", "16",
                     "--out", "reg", "--lr", "3e-3", "-q"]) == 0
    ref = np.array([float(r["prediction"]) for r in _cli_predictions("reg", regression_csv,
                                                                      tmp_path)])
    rows = read_csv(regression_csv)
    x = np.array([[float(r[c]) for c in "abc"] for r in rows], np.float32)
    truth = np.array([float(r["price"]) for r in rows])
    model = ember.load_model("reg")
    got = model.predict(x)
    assert got.shape == (len(x), 1)
    np.testing.assert_allclose(got[:, 0], ref, rtol=1e-6)
    trainer = ember.load_trainer("reg")
    np.testing.assert_allclose(trainer.predict(x), ref, rtol=1e-6)
    # the run's arithmetic by hand, from config.json and the bare network
    norm = json.loads(Path("reg/config.json").read_text())["data"]["normalization"]
    z = ember.load_model("reg", preprocessing=False).predict(
        (x - np.float32(norm["x_mean"])) / np.float32(norm["x_std"]))
    np.testing.assert_allclose(got[:, 0], z[:, 0] * norm["y_std"][0] + norm["y_mean"][0],
                               rtol=1e-6)
    # evaluate's loss is the MSE in the target's units
    mse = float(np.mean((ref - truth) ** 2))
    assert trainer.evaluate(x, truth)["loss"] == pytest.approx(mse, rel=1e-4)
    print(f"regression, first row: ember predict {ref[0]:.4f}, load_model {got[0, 0]:.4f}, "
          f"bare network {z[0, 0]:.4f}")


def test_load_model_of_a_run_with_labels_and_without_standardization(blobs_csv, tmp_path):
    assert cli.main(["train", "--data", str(blobs_csv), "--epochs", "5", "--hidden", "8",
                     "--no-standardize", "--out", "cls", "-q"]) == 0
    ref = [int(r["prediction"]) for r in _cli_predictions("cls", blobs_csv, tmp_path)]
    x = np.array([[float(r[f"f{i}"]) for i in range(4)] for r in read_csv(blobs_csv)],
                 np.float32)
    model = ember.load_model("cls")
    assert model.standardize is None and model.classes == [1, 2, 3]
    assert model.predict_labels(x).tolist() == ref  # labels 1, 2, 3, not indices 0, 1, 2
    assert (np.asarray(model.classes)[ember.load_trainer("cls").predict(x)] == ref).all()


def test_load_model_refuses_a_run_whose_config_cannot_be_applied(digits_run, tmp_path):
    import shutil
    run, _, _ = digits_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data"]["normalization"]["x_std"] = cfg["data"]["normalization"]["x_std"][:10]
    (copy / "config.json").write_text(json.dumps(cfg))
    for load in (ember.load_model, ember.load_trainer):
        with pytest.raises(ember.CheckpointError, match=r"config\.json.*preprocessing=False"):
            load(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ember.CheckpointError, match=r"config\.json: unreadable.*"
                                                    r"preprocessing=False"):
        ember.load_model(copy / "checkpoints")
    x, _ = ember.datasets.load_digits()
    bare = ember.load_model(copy, preprocessing=False)  # the way out the message names
    np.testing.assert_array_equal(bare.predict(x[:5]),
                                  ember.load_model(run, preprocessing=False).predict(x[:5]))
    # a run that lost its config.json was loaded as the bare network, without a word (84.6 %
    # on digits instead of 98.8 %): refused as `ember predict` refuses it
    (copy / "config.json").unlink()
    for load in (ember.load_model, ember.load_trainer):
        with pytest.raises(ember.CheckpointError, match=r"looks like an `ember train` run.*"
                                                        r"no config\.json.*preprocessing=False"):
            load(copy)
    ember.load_model(copy, preprocessing=False)


def test_fine_tuning_a_loaded_run_saves_a_model_that_loads_back(digits_run, tmp_path):
    run, _, _ = digits_run
    x, y = ember.datasets.load_digits()
    trainer = ember.load_trainer(run)
    trainer.fit(x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path / "ft", verbose=0)
    again = ember.load_model(tmp_path / "ft")  # not inside a run: the saved RunModel itself
    assert isinstance(again, ember.preprocessing.RunModel)
    np.testing.assert_array_equal(again.predict(x), trainer.model.predict(x))
    assert (again.predict(x).argmax(1) == y).mean() > 0.9
    # the same fine-tuning as the bare network's on the standardized features
    norm = json.loads((run / "config.json").read_text())["data"]["normalization"]
    bare = ember.load_trainer(run, preprocessing=False)
    bare.fit((x[:200] - np.float32(norm["x_mean"])) / np.float32(norm["x_std"]), y[:200],
             epochs=1, verbose=0)
    for (name, a), (_, b) in zip(trainer.model.named_parameters(),
                                 bare.model.named_parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------
# CSV files as people have them (issue 16, item 11)


def _iris_like(path, encoding="utf-8", label=lambda c: ["setosa", "versicolor", "virginica"][c]):
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 4, (3, 4))
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
        for i in range(150):
            c = i % 3
            w.writerow([f"{v:.4f}" for v in centers[c] + rng.normal(0, 0.3, 4)] + [label(c)])
    return Path(path)


def test_text_class_labels(tmp_path, capsys):
    data = _iris_like("iris.csv")
    assert cli.main(["train", "--data", "iris.csv", "--epochs", "20", "--hidden", "16",
                     "--out", "iris", "-q"]) == 0
    cfg = json.loads(Path("iris/config.json").read_text())
    assert cfg["data"]["task"] == "classification" and cfg["data"]["task_inferred"]
    assert cfg["data"]["classes"] == ["setosa", "versicolor", "virginica"]
    rows = _cli_predictions("iris", data, tmp_path)
    assert list(rows[0]) == ["prediction", "prob_setosa", "prob_versicolor", "prob_virginica"]
    truth = [r["species"] for r in read_csv(data)]
    assert np.mean([r["prediction"] == t for r, t in zip(rows, truth)]) >= 0.9
    capsys.readouterr()
    assert cli.main(["evaluate", "iris", "--data", "iris.csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] >= 0.9
    assert cfg["data"]["classes"] == sorted(set(truth))  # as EmberClassifier's classes_
    x = np.array([[float(v) for v in list(r.values())[:4]] for r in read_csv(data)], np.float32)
    assert ember.load_model("iris").predict_labels(x).tolist() == \
        [r["prediction"] for r in rows]
    # a label the model does not know is named
    write_csv("unseen.csv", list(read_csv(data)[0]), [list(read_csv(data)[0].values())[:4] +
                                                      ["rosa"]])
    assert cli.main(["evaluate", "iris", "--data", "unseen.csv"]) == 1
    assert "label 'rosa'" in capsys.readouterr().err


def test_text_targets_that_are_not_labels_are_refused_clearly(tmp_path, capsys):
    _iris_like("iris.csv")
    assert cli.main(["train", "--data", "iris.csv", "--task", "regression", "--out", "r"]) == 1
    err = capsys.readouterr().err
    assert "regression needs numeric targets" in err and "'setosa'" in err
    # numbers with one typo: not silently hundreds of classes
    _iris_like("typo.csv", label=lambda c: "12..5" if c == 2 else str(c + 0.5))
    assert cli.main(["train", "--data", "typo.csv", "--out", "t"]) == 1
    err = capsys.readouterr().err
    assert "mixes numbers and text" in err and "'12..5'" in err and "--task classification" in err
    assert not Path("r").exists() and not Path("t").exists()
    assert cli.main(["train", "--data", "typo.csv", "--task", "classification", "--epochs", "2",
                     "--out", "t", "-q"]) == 0
    assert json.loads(Path("t/config.json").read_text())["data"]["classes"] == \
        ["0.5", "1.5", "12..5"]
    assert cli.main(["evaluate", "t", "--data", "typo.csv"]) == 0  # "0.5" stays a text label


def test_utf8_byte_order_mark(tmp_path, blobs_csv, capsys):
    # Excel's "CSV UTF-8" starts the file with a byte-order mark
    Path("bom.csv").write_bytes(b"\xef\xbb\xbf" + blobs_csv.read_bytes())
    assert cli.main(["train", "--data", "bom.csv", "--epochs", "5", "--hidden", "8",
                     "--out", "bom", "-q"]) == 0
    spec = json.loads(Path("bom/config.json").read_text())["data"]
    assert spec["feature_names"] == ["f0", "f1", "f2", "f3"] and spec["target"] == "label"
    # files with and without the mark are the same data to the run
    a = _cli_predictions("bom", blobs_csv, tmp_path, "a.csv")
    b = _cli_predictions("bom", "bom.csv", tmp_path, "b.csv")
    assert a == b
    # and the first column can be named as the target
    assert cli.main(["train", "--data", "bom.csv", "--target", "f0", "--epochs", "1",
                     "--out", "first", "-q"]) == 0
    assert json.loads(Path("first/config.json").read_text())["data"]["target"] == "f0"


def test_predict_into_a_closed_pipe_exits_quietly(digits_run, tmp_path):
    # 'ember predict ... | head -1': the reader goes away; no "Broken pipe" error, no traceback
    run, _, _ = digits_run
    x, _ = ember.datasets.load_digits()
    np.savez(tmp_path / "x.npz", x=np.concatenate([x] * 3))  # ~600 KB of CSV: > a pipe buffer
    proc = subprocess.Popen([sys.executable, "-m", "ember", "predict", str(run), "--data",
                             "x.npz"], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"prediction,prob_0")
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert err == ""


def test_train_into_a_closed_pipe_still_writes_its_run(tmp_path):
    """'ember train | head -1': the pipe closed at the final report, after all the training,
    and the run was left without history.csv and summary.json (it looked interrupted)."""
    proc = subprocess.Popen([sys.executable, "-m", "ember", "train", "--epochs", "2", "--out",
                             "r"], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().startswith(b"ember: training")
    proc.stdout.close()  # the reader goes away before the report
    assert proc.wait(timeout=300) == 0
    for name in ("config.json", "history.csv", "curves.png", "summary.json"):
        assert (tmp_path / "r" / name).is_file(), name
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs_run"] == 2
