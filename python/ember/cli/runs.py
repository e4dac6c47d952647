"""Run directories of ``ember train``: what is in one, where a new one goes, which one
``--resume`` continues.

A run directory holds ``checkpoints/`` (ember.checkpoint), ``config.json`` (the resolved options
and the data spec, written before training), and once training has finished ``history.csv``,
``curves.png``, ``confusion.png`` (classification with a test split) and ``summary.json`` (a run
without summary.json is an interrupted one).
:func:`new_run_dir` names new runs (``runs/<YYYYmmdd-HHMMSS>`` without --out) and never
overwrites; :func:`run_to_resume` is the resume policy; :func:`load_run` reads and checks a run
for evaluate and predict. Files are written atomically (a temporary file renamed into place).
With ``--lr auto`` (and in the folder of ``ember lr-find``) :func:`write_lr_find` adds
``lr_find.csv`` and ``lr_find.png``.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ember._io import json_default
from ember._version import __version__
from ember.backend import resolve_training_device
from ember.checkpoint import RUN_FORMAT, RUN_FORMAT_VERSION
from ember.inference import load_predictor
from ember.train import load_trainer
from ember.cli.data import file_sha256
from ember.cli.options import (DIGITS, RUN_KEYS, TRAIN_OPTIONS, UsageError, given_options,
                               resolve_train_options)

__all__ = ["write_atomic", "load_run", "run_to_resume", "resume_options", "new_run_dir",
           "write_config", "write_results", "run_trainer", "run_predictor", "write_lr_find"]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file, fsynced, renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dump_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=json_default, allow_nan=True) + "\n")


def load_run(run: str) -> tuple[Path, dict]:
    """The run directory ``run`` and its config.json, checked: ValueError or
    FileNotFoundError naming what is wrong when it is not a run that this ember reads."""
    d = Path(run).expanduser()
    if not d.exists():
        raise FileNotFoundError(f"run directory not found: {run}")
    cfg_path = d / "config.json"
    if not d.is_dir() or not cfg_path.is_file():
        raise ValueError(f"{run}: not an ember run directory (no config.json; expected a "
                         "directory written by 'ember train')")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise ValueError(f"{cfg_path}: not an ember run configuration (written by something "
                         "other than 'ember train')")
    if cfg.get("format_version") != RUN_FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: run format version {cfg.get('format_version')!r} is not "
                         f"supported by this ember (it reads {RUN_FORMAT_VERSION})")
    for key, kind in (("options", dict), ("data", dict)):
        if not isinstance(cfg.get(key), kind):
            raise ValueError(f"{cfg_path}: incomplete run configuration (no {key!r})")
    return d, cfg


def _is_run(d: Path) -> bool:
    try:
        load_run(str(d))
        return True
    except (OSError, ValueError):
        return False


def _same_path(a, b) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _differing(given: dict, cfg: dict) -> list[str]:
    """The options in ``given`` (but --out) whose values differ from the run's config.json, as
    ``"--lr 0.1 (the run's: 0.001)"``."""
    saved, spec = cfg["options"], cfg["data"]
    out = []
    for key, value in given.items():
        if key == "out":
            continue
        if key == "data":
            source = spec.get("source")
            same = (source == DIGITS if value in (None, DIGITS) else
                    source not in (None, DIGITS) and _same_path(value, source))
            was = source
        else:
            was = saved.get(key)
            # --lr auto: the run recorded the rate the finder chose (and that it chose it)
            same = value == was or (key == "lr" and value == "auto" and "lr_find" in cfg)
        if not same:
            flag = "--no-standardize" if key == "standardize" else "--" + key.replace("_", "-")
            shown = "" if key == "standardize" else " " + (
                ",".join(map(str, value)) if isinstance(value, list) else str(value))
            out.append(f"{flag}{shown} (the run's: {was})")
    return out


def _interrupted_runs(root: Path = Path("runs")) -> list[Path]:
    """The runs under ``root`` that have not finished (no summary.json), newest first."""
    runs = [d for d in root.iterdir() if d.is_dir() and _is_run(d) and
            not (d / "summary.json").is_file()] if root.is_dir() else []
    return sorted(runs, key=lambda d: (d / "config.json").stat().st_mtime, reverse=True)


def run_to_resume(ns: dict) -> tuple[Path, dict]:
    """The run ``ember train --resume`` continues, and its config.json: the run named by
    ``--resume DIR`` or by ``--out DIR`` (the original command with --resume appended); without
    either, the one interrupted run that ember named itself under runs/ (its original command
    had no --out) and that was started with exactly the options of this command, defaults
    included. Never another: options that differ from the run's config.json are refused by
    name."""
    given = given_options(ns)
    out = given.get("out")
    if ns["resume"]:
        if out is not None and not _same_path(out, ns["resume"]):
            raise UsageError(f"--resume {ns['resume']} and --out {out} name different runs; "
                             "name the run to continue once")
        run_dir, cfg = load_run(ns["resume"])
    elif out is not None:
        if not Path(out).expanduser().exists():
            raise FileNotFoundError(f"--out {out}: there is no run there to resume (drop "
                                    "--resume to start it)")
        run_dir, cfg = load_run(out)
    else:
        # The original command had no --out, so its run is one that `ember train` named itself
        # (runs/<date>-<time>), started with exactly these options, defaults included. A run
        # started with --out is continued only by naming it.
        runs = [d for d in _interrupted_runs() if _AUTO_RUN_NAME.fullmatch(d.name)]
        if not runs:
            raise FileNotFoundError("no interrupted run that ember train named itself under "
                                    "runs/ to resume (finished runs are left as they are; a run "
                                    "started with --out DIR is continued with --resume DIR)")
        # (an option left unset, such as --target, is whatever the run resolved it to)
        effective = {k: v for k, v in resolve_train_options(ns).items()
                     if k in TRAIN_OPTIONS and k not in ("out", "quiet") and
                     (v is not None or k == "data")}
        matching = [d for d in runs if not _differing(effective, load_run(str(d))[1])]
        if not matching:
            raise UsageError("no interrupted run under runs/ was started with these options ("
                             + ", ".join(str(d) for d in runs) + "); append --resume to the "
                             "run's original command, or name the run: --resume DIR")
        if len(matching) > 1:
            raise UsageError("several interrupted runs under runs/ match: " +
                             ", ".join(str(d) for d in matching) + "; name one: --resume DIR")
        run_dir, cfg = load_run(str(matching[0]))
    diff = _differing(given, cfg)
    if diff:
        raise UsageError(f"--resume: {run_dir} was started with other options: "
                         f"{'; '.join(diff)}. A resumed run keeps the configuration in its "
                         "config.json: drop those options, or start a new run (another --out)")
    return run_dir, cfg


#: The names new_run_dir gives the runs it names itself (no --out): runs/20261202-031500[-2].
_AUTO_RUN_NAME = re.compile(r"\d{8}-\d{6}(-\d+)?")


def new_run_dir(out: Optional[str], prefix: str = "") -> Path:
    """Where a new run goes: ``--out`` (refused when it exists and is not an empty directory),
    else ``runs/<prefix><YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... when that exists; ``ember
    lr-find`` uses the prefix ``lr-find-``). Creates nothing."""
    if out is None:
        base = Path("runs") / (prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        d, n = base, 1
        while d.exists():
            n += 1
            d = base.with_name(f"{base.name}-{n}")
        return d
    d = Path(out).expanduser()
    if d.exists():
        if not d.is_dir():
            raise FileExistsError(f"--out {out}: exists and is not a directory")
        if any(d.iterdir()):
            if _is_run(d):
                raise FileExistsError(f"--out {out}: already holds an ember run; continue it "
                                      f"with 'ember train --resume {out}' or choose a new --out")
            raise FileExistsError(f"--out {out}: exists and is not empty; choose a new "
                                  "directory (nothing was overwritten)")
    return d


def resume_options(cfg: dict, quiet: bool) -> dict:
    """The options of the run to resume (its config.json's), after checking that its data file
    is still there and unchanged (an exact resume needs the same data)."""
    opts = dict(cfg["options"])
    opts["quiet"] = quiet
    for key in ("class_weight", "tensorboard"):  # (runs from before these options: off)
        opts.setdefault(key, None)
    spec_saved = cfg["data"]
    if spec_saved["sha256"] is not None:
        src = Path(spec_saved["source"])
        if not src.is_file():
            raise FileNotFoundError(f"the run's data file is gone: {src}")
        if file_sha256(src) != spec_saved["sha256"]:
            raise ValueError(f"{src}: the data file changed since the run started; an exact "
                             "resume needs the same data")
    return opts


def write_config(run_dir: Path, opts: dict, spec: dict, device: str,
                 lr_find: Optional[dict] = None) -> None:
    """Create ``run_dir`` and write its config.json: every resolved option and the data
    ``spec`` that evaluate, predict and --resume rebuild the data pipeline from; with
    ``--lr auto``, what the learning-rate finder chose (``"lr_find"``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
           "ember_version": __version__,
           "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "options": {k: opts[k] for k in RUN_KEYS}, "data": spec,
           "device": device}
    if lr_find is not None:
        cfg["lr_find"] = lr_find
    _dump_json(run_dir / "config.json", cfg)


def write_results(run_dir: Path, trainer, spec: dict, opts: dict, model_desc: str,
                  metrics: dict, timings: dict, t_start: float, resuming: bool,
                  report: Optional[dict] = None, lr_find: Optional[dict] = None) -> dict:
    """Write a finished run's history.csv, curves.png and summary.json; returns the summary.
    ``timings`` holds ``load_data_s``, ``train_s`` and ``evaluate_s``; ``t_start`` is the
    ``time.perf_counter()`` at which the command started. ``report``, the evaluation report
    of the test split (ember.metrics), goes into summary.json (``"report": {"test": ...}``)
    and, for classification, into confusion.png. ``lr_find`` (``--lr auto``: what the
    learning-rate finder chose) goes into summary.json as ``"lr_find"``."""
    trainer.history.to_csv(run_dir / "history.csv")
    _plot_curves(trainer, spec, model_desc, run_dir / "curves.png")
    if report is not None and spec["task"] == "classification":
        _plot_confusion(report, spec, model_desc, run_dir / "confusion.png")
    model = trainer.model
    epochs_run = len(trainer.history)
    t_train = timings["train_s"]
    summary = {
        "ember_version": __version__,
        "device": trainer.device,
        "run_dir": str(run_dir),
        "data": {k: spec[k] for k in ("source", "description", "task", "target", "n_samples",
                                      "n_features", "classes", "splits")} |
                {"standardized": bool(opts["standardize"])},
        "parameters": {"total": model.num_parameters(),
                       "trainable": model.num_parameters(trainable_only=True),
                       "shapes": {n: list(p.shape) for n, p in model.named_parameters()}},
        "hyperparameters": {k: opts[k] for k in RUN_KEYS
                            if k not in ("data", "target", "out", "tensorboard") and
                            opts[k] is not None}
        | {"task": spec["task"], "optimizer_details": trainer.optimizer.hyperparameters(),
           "loss": trainer.loss.config()},
        "metrics": metrics,
        "epochs_run": epochs_run,
        "steps": trainer.global_step,
        "stop_reason": trainer.stop_reason,
        "best_epoch": None if trainer.restored_epoch is None else trainer.restored_epoch + 1,
        "diagnosis": trainer.diagnosis(),
        **({"report": {"test": report}} if report is not None else {}),
        **({"lr_find": lr_find} if lr_find is not None else {}),  # --lr auto: the finder's
        "timings": {**timings, "total_s": time.perf_counter() - t_start,
                    "train_samples_per_s": (spec["splits"]["train"] * epochs_run / t_train
                                            if t_train > 0 and not resuming else None),
                    "resumed": resuming},
    }
    _dump_json(run_dir / "summary.json", summary)
    return summary


def _plot_curves(trainer, spec: dict, model_desc: str, path: Path) -> None:
    """History.plot, plus a marker at the epoch whose weights were kept (early stopping)."""
    import matplotlib.pyplot as plt
    loss = "cross-entropy" if spec["task"] == "classification" else \
        "MSE of the standardized target"
    data = DIGITS if spec["source"] == DIGITS else Path(spec["source"]).name
    fig = trainer.history.plot(title=f"ember: MLP {model_desc} on {data} (loss: {loss})")
    if trainer.restored_epoch is not None:
        for ax in fig.axes:
            ax.axvline(trainer.restored_epoch + 1, color="gray", ls="--", lw=1,
                       label=f"best epoch ({trainer.restored_epoch + 1}), weights kept")
            ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_confusion(report: dict, spec: dict, model_desc: str, path: Path) -> None:
    """The test split's confusion matrix: counts annotated, colours normalised per row (the
    share of each true class predicted as each class), classes named by the data's labels."""
    from matplotlib.figure import Figure  # a Figure of its own: the Agg canvas, no pyplot
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    names = [str(c) for c in spec["classes"]]
    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = min(max(4.5, 0.5 * k + 2.5), 16)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of the true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=names, rotation=45 if max(map(len, names)) > 3 else 0,
                  ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_yticks(ticks, labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        size = max(5, min(10, 120 // k))
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=size,
                        color="white" if share[i, j] > 0.5 else "black")
    acc = report.get("accuracy")
    data = DIGITS if spec["source"] == DIGITS else Path(spec["source"]).name
    ax.set_title(f"ember: MLP {model_desc} on {data}, test split" +
                 (f" (accuracy {acc:.4f})" if acc is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _checkpoints(run_dir: Path) -> Path:
    """The run's checkpoints/ folder, which must hold a ``latest`` checkpoint."""
    ckpt = run_dir / "checkpoints"
    if not (ckpt / "latest").exists():
        raise ValueError(f"{run_dir}: the run has no checkpoint yet (it was interrupted "
                         "before its first epoch ended); resume it with 'ember train --resume "
                         f"{run_dir}'")
    return ckpt


def run_predictor(run_dir: Path, task: str, batch_size: int):
    """The frozen predictor of the run's latest checkpoint (the bare network, as run_trainer's:
    the command line standardizes itself); reads the weights only, not the optimizer state."""
    return load_predictor(_checkpoints(run_dir), task=task, block_rows=batch_size,
                          preprocessing=False)


def run_trainer(run_dir: Path, device: str):
    """The Trainer in the run's latest checkpoint (the bare network, no standardization)."""
    ckpt = _checkpoints(run_dir)
    # The bare network: the command line applies the run's standardization itself (one code
    # path with training), and evaluate reports the loss of the standardized target as training
    # did. load_trainer's default (a RunModel taking raw features) gives the same predictions.
    return load_trainer(ckpt, device=resolve_training_device(device), preprocessing=False)


def write_lr_find(run_dir: Path, result, title: str) -> None:
    """Write what the learning-rate finder measured into ``run_dir`` (created if need be):
    ``lr_find.csv`` (``lr,loss,smoothed`` per step) and ``lr_find.png`` (the curve, the
    suggestion marked)."""
    import matplotlib.pyplot as plt
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = ["lr,loss,smoothed"] + [f"{lr!r},{loss!r},{s!r}" for lr, loss, s in result.rows()]
    write_atomic(run_dir / "lr_find.csv", "\n".join(lines) + "\n")
    fig = result.plot(title=title)
    fig.savefig(run_dir / "lr_find.png", dpi=110)
    plt.close(fig)
