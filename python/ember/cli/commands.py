"""The commands of ``ember``: train, evaluate, predict, info and bench.

Each ``cmd_<name>(ns)`` takes the parsed command line as a dict and returns the exit status;
errors are raised (:exc:`ember.cli.options.UsageError` for exit status 2, ValueError, OSError
and ember's errors for 1) and reported by :func:`ember.cli.main`. The data pipeline is in
:mod:`ember.cli.data`, run directories in :mod:`ember.cli.runs`; here are the Trainer a run
trains (:func:`make_trainer`), its metrics, and what each command prints.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ember import distributed
from ember._version import __version__
from ember.backend import (array_module, cuda_training_available, get_num_threads,
                           resolve_device, resolve_training_device, set_num_threads, to_host)
from ember.backend import info as backend_info
from ember.bench import bench_gemm, bench_training, blas_threads
from ember.callbacks import EarlyStopping, ModelCheckpoint, TensorBoard
from ember.checkpoint import load_checkpoint, model_from
from ember.cli.data import eval_data, prepare_training, untransform_y
from ember.cli.options import LR_FIND_OPTIONS, UsageError, resolve_train_options
from ember.cli.processes import on_rank0
from ember.cli.runs import (load_run, new_run_dir, resume_options, run_predictor, run_to_resume,
                            run_trainer, write_atomic, write_config, write_lr_find, write_results)
from ember.export import to_onnx
from ember.metrics import format_classification_report, regression_report
from ember.nn import MLP
from ember.preprocessing import RunModel
from ember.train import Trainer

__all__ = ["cmd_train", "cmd_lr_find", "cmd_evaluate", "cmd_predict", "cmd_export", "cmd_info",
           "cmd_bench", "make_trainer", "silence_stdout"]


# ------------------------------------------------------------------------------------------
# messages and output


def _say(opts_or_quiet, *lines) -> None:
    quiet = opts_or_quiet if isinstance(opts_or_quiet, bool) else opts_or_quiet.get("quiet")
    if not quiet:
        for line in lines:
            print(line, flush=True)


def silence_stdout() -> None:
    """Point the process's standard output at /dev/null (after the reader of a pipe went
    away), so that later writes and the interpreter's final flush do not fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _ClosedPipeGuard:
    """sys.stdout for ``ember train``: when the reader of its output goes away (``ember train
    | head``), stdout is silenced and the run goes on, so its files are still written (the
    run is the command's product; the printed lines are a view of it)."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_pipe = False

    def _lost(self) -> None:
        self.closed_pipe = True
        silence_stdout()

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._lost()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lost()

    def __getattr__(self, name):  # isatty, fileno, encoding...
        return getattr(self._stream, name)


# ------------------------------------------------------------------------------------------
# model, trainer and metrics


def make_trainer(opts: dict, spec: dict, checkpoint_dir: Path) -> Trainer:
    """The Trainer of a run: its MLP, optimizer, loss, metrics, early stopping and
    checkpoints, from the resolved options and the data spec; building it validates every
    hyperparameter. ``ember train`` looks it up in this module's namespace when it runs (so a
    test can wrap it with monkeypatch)."""
    model = MLP([spec["n_features"], *opts["hidden"], spec["n_outputs"]],
                activation=opts["activation"], dropout=opts["dropout"], seed=opts["seed"])
    kw: dict[str, Any] = {"weight_decay": opts["weight_decay"]}
    if opts["optimizer"] == "sgd":
        kw["momentum"] = opts["momentum"]
    callbacks = []
    has_val = spec["splits"].get("val", 0) > 0
    if opts["patience"] > 0 and has_val:
        callbacks.append(EarlyStopping("val_loss", patience=opts["patience"],
                                       restore_best_weights=True))
    callbacks.append(ModelCheckpoint(checkpoint_dir, save_best=has_val, keep_last=2))
    classify = spec["task"] == "classification"
    if opts.get("class_weight") is not None and not classify:
        raise UsageError(f"--class-weight applies to classification, not {spec['task']}")
    if opts.get("tensorboard"):
        if importlib.util.find_spec("tensorboardX") is None:
            raise UsageError('--tensorboard needs tensorboardX: pip install "ember[tensorboard]"')
        callbacks.append(TensorBoard(checkpoint_dir.parent / "tensorboard"))
    trainer = Trainer(model, loss="cross_entropy" if classify else "mse",
                      optimizer=opts["optimizer"], lr=opts["lr"],
                      metrics=("accuracy",) if classify else (), callbacks=callbacks,
                      device=opts["device"], **kw)
    trainer.resume_hint = False  # on Ctrl-C the CLI says how to resume: `ember train --resume`
    return trainer


def _metrics(trainer, spec: dict, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> dict:
    """Loss and metrics; regression metrics are in the target's own units (the loss is the
    MSE of the standardized target, as in the training curves)."""
    return _metrics_and_report(trainer, spec, x, y, batch_size)[0]


def _metrics_and_report(trainer, spec: dict, x: np.ndarray, y: np.ndarray,
                        batch_size: int = 1024, report: bool = False) -> tuple[dict, Any]:
    """:func:`_metrics`, and with ``report`` the evaluation report (ember.metrics) of the same
    predictions: per class, named by the data's labels (classification), or in the target's
    own units (regression); None without ``report``."""
    classify = spec["task"] == "classification"
    names = [str(c) for c in spec["classes"]] if classify and spec.get("classes") else None
    ev = trainer.evaluate(x, y, batch_size=batch_size, report=report and classify,
                          class_names=names)
    rep = ev.pop("report", None)
    m = {k: float(v) for k, v in ev.items()}
    if spec["task"] == "regression":
        pred = untransform_y(spec, trainer.predict_raw(x, batch_size))
        true = untransform_y(spec, y)
        err = pred - true
        mse = float(np.mean(err ** 2))
        ss_tot = float(np.sum((true - true.mean(axis=0)) ** 2))
        m.update({"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(err))),
                  "r2": 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")})
        if report:
            rep = regression_report(true, pred)
    return m, rep


def _fmt_metrics(m: dict) -> str:
    order = ["accuracy", "loss", "rmse", "mae", "r2", "mse"]
    keys = [k for k in order if k in m] + [k for k in m if k not in order]
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys)


# ------------------------------------------------------------------------------------------
# train


def cmd_train(ns: dict) -> int:
    stdout = sys.stdout
    sys.stdout = _ClosedPipeGuard(stdout)
    try:
        return _train(ns)
    finally:
        sys.stdout = stdout


def _train(ns: dict) -> int:
    t_start = time.perf_counter()
    resuming = "resume" in ns
    # Under mpiexec (ember train --processes N): every rank trains; rank 0 alone creates the
    # run folder, writes its files and prints.
    world = distributed.world()
    if world is not None and world.rank != 0:
        ns["quiet"] = True
    if resuming:
        run_dir, cfg = run_to_resume(ns)
        if (run_dir / "summary.json").is_file():
            _say(ns.get("quiet", False),
                 f"ember: the run in {run_dir} has finished (it has its summary.json): nothing "
                 "to resume, nothing was changed")
            return 0
        opts = resume_options(cfg, ns.get("quiet", False))
    else:
        opts = resolve_train_options(ns)
    resolve_device(opts["device"])  # fail on --device cuda without a GPU before any work

    t0 = time.perf_counter()
    spec, arrays = prepare_training(opts)
    t_data = time.perf_counter() - t0
    if not resuming:
        run_dir = on_rank0(world, lambda: new_run_dir(opts["out"]))
    ckpt_dir = run_dir / "checkpoints"
    found, lr_info = None, (cfg.get("lr_find") if resuming else None)
    if opts["lr"] == "auto":  # --lr auto: the learning-rate finder first (sets opts["lr"])
        found, lr_info = _find_lr(opts, spec, arrays, ckpt_dir, required=True)
    trainer = make_trainer(opts, spec, ckpt_dir)  # validates every hyperparameter
    opts["out"] = str(run_dir)

    if not resuming:
        on_rank0(world, lambda: write_config(run_dir, opts, spec, trainer.device,
                                             lr_find=lr_info))
        if found is not None:
            on_rank0(world, lambda: write_lr_find(run_dir, found, _lr_find_title(opts, spec)))
            _say(opts, f"ember: --lr auto: the learning-rate finder suggests {opts['lr']:.3g} "
                       f"({_readings(found)}); wrote lr_find.csv and lr_find.png")
    model_desc = "-".join(str(s) for s in [spec["n_features"], *opts["hidden"],
                                           spec["n_outputs"]])
    on = "" if world is None else f" on {world.size} processes (data-parallel, MPI)"
    _say(opts, f"ember: {'resuming' if resuming else 'training'} MLP {model_desc} "
               f"({opts['activation']}) on {spec['description']}; {spec['task']}, "
               f"device {trainer.device}{on}; run directory {run_dir}")

    t0 = time.perf_counter()
    if not _fit(trainer, opts, arrays, run_dir, resuming):
        return 130
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = {"train": _metrics(trainer, spec, arrays["x_train"], arrays["y_train"])}
    if "x_val" in arrays:
        metrics["validation"] = _metrics(trainer, spec, arrays["x_val"], arrays["y_val"])
    report = None  # the evaluation report of the test split (ember.metrics)
    if "x_test" in arrays:
        metrics["test"], report = _metrics_and_report(trainer, spec, arrays["x_test"],
                                                      arrays["y_test"], report=True)
    t_eval = time.perf_counter() - t0

    summary = on_rank0(world, lambda: write_results(
        run_dir, trainer, spec, opts, model_desc, metrics,
        {"load_data_s": t_data, "train_s": t_train, "evaluate_s": t_eval}, t_start, resuming,
        report=report, lr_find=lr_info))
    epochs_run = summary["epochs_run"]
    lines = [f"{name} metrics: {_fmt_metrics(m)}" for name, m in metrics.items()]
    classify = report is not None and spec["task"] == "classification"
    if classify:
        lines.append(f"test report:\n{format_classification_report(report)}")
    took = (f"{epochs_run} epochs in all, {t_train:.1f}s of training in this session" if resuming
            else f"trained {epochs_run} epochs in {t_train:.1f}s")
    lines.append(f"{took}; wrote {run_dir}/ (checkpoints/, config.json, history.csv, "
                 f"curves.png, {'confusion.png, ' if classify else ''}summary.json)")
    _say(opts, *lines)
    return 0


def _fit(trainer, opts: dict, arrays: dict, run_dir: Path, resuming: bool) -> bool:
    """Train (or continue training) into the run's checkpoints. False when Ctrl-C stopped it,
    after saying on stderr how to resume the run."""
    ckpt_dir = run_dir / "checkpoints"
    has_val = "x_val" in arrays
    try:
        trainer.fit(arrays["x_train"], arrays["y_train"], epochs=opts["epochs"],
                    batch_size=opts["batch_size"],
                    validation_data=(arrays["x_val"], arrays["y_val"]) if has_val else None,
                    seed=opts["seed"], verbose=0 if opts["quiet"] else 1,
                    checkpoint_dir=ckpt_dir, resume="latest" if resuming else None,
                    class_weight=opts.get("class_weight"))
    except KeyboardInterrupt:
        latest = ckpt_dir / "latest"
        done = int(latest.read_text().strip()[6:10]) if latest.is_file() else 0  # ckpt-eNNNN-..
        saved = (f"its checkpoints hold {done} finished epochs" if done else
                 "no epoch had finished, so it will start over")
        print(f"\nember: interrupted; the run in {run_dir} is resumable ({saved}). Continue "
              f"it with: ember train --resume {run_dir} (or the same command with --resume)",
              file=sys.stderr, flush=True)
        return False
    return True


# ------------------------------------------------------------------------------------------
# lr-find, and train --lr auto


def _find_lr(opts: dict, spec: dict, arrays: dict, ckpt_dir: Path,
             start_lr: float = LR_FIND_OPTIONS["start_lr"][0],
             end_lr: float = LR_FIND_OPTIONS["end_lr"][0],
             num_steps: int = LR_FIND_OPTIONS["num_steps"][0],
             required: bool = False) -> tuple[Any, dict]:
    """The learning-rate range test of the trainer ``opts`` describe (the one ``ember train``
    builds; its lr is the finder's), on the training split with the run's batch size and
    seed. Sets ``opts["lr"]`` to the suggestion rounded to 3 significant digits (what is
    printed, so ``--lr <printed>`` trains the same run); returns the result and what
    config.json and summary.json record of it. With ``required``, a ValueError when it has no
    suggestion (too few steps before the loss diverged)."""
    probe = make_trainer({**opts, "lr": None}, spec, ckpt_dir)  # (nothing is written there)
    result = probe.lr_find(arrays["x_train"], arrays["y_train"], start_lr=start_lr,
                           end_lr=end_lr, num_steps=num_steps, batch_size=opts["batch_size"],
                           seed=opts["seed"], class_weight=opts.get("class_weight"))
    info = {"requested": "auto", "suggestion": result.suggestion, "steepest": result.steepest,
            "minimum_tenth": result.minimum_tenth, "start_lr": start_lr, "end_lr": end_lr,
            "num_steps": num_steps, "steps_run": len(result.lrs),
            "stopped_early": result.stopped_early}
    if result.suggestion is not None:
        opts["lr"] = info["lr"] = float(f"{result.suggestion:.3g}")
    elif required:
        raise ValueError(f"--lr auto: the loss diverged after {len(result.lrs)} steps of the "
                         "learning-rate finder, too few to suggest a learning rate; give --lr")
    return result, info


def _readings(result) -> str:
    steps = (f"{len(result.lrs)} of {result.num_steps} steps, stopped early: the loss diverged"
             if result.stopped_early else f"{len(result.lrs)} steps")
    return (f"valley rule; steepest descent at {result.steepest:.3g}, minimum/10 "
            f"{result.minimum_tenth:.3g}; {steps}")


def _finder_setup(opts: dict, spec: dict) -> str:
    model_desc = "-".join(str(s) for s in [spec["n_features"], *opts["hidden"],
                                           spec["n_outputs"]])
    return f"MLP {model_desc}, {opts['optimizer']}, batch {opts['batch_size']}"


def _lr_find_title(opts: dict, spec: dict) -> str:
    return f"ember lr-find: {_finder_setup(opts, spec)}"


def cmd_lr_find(ns: dict) -> int:
    """``ember lr-find``: the suggestion printed, lr_find.csv and lr_find.png written."""
    opts = resolve_train_options(ns)
    kw = {k: ns.get(k, v[0]) for k, v in LR_FIND_OPTIONS.items()}
    if kw["end_lr"] <= kw["start_lr"]:
        raise UsageError(f"--end-lr ({kw['end_lr']:g}) must be greater than --start-lr "
                         f"({kw['start_lr']:g})")
    resolve_device(opts["device"])  # fail on --device cuda without a GPU before any work
    spec, arrays = prepare_training(opts)
    out_dir = new_run_dir(opts["out"], prefix="lr-find-")
    result, info = _find_lr(opts, spec, arrays, out_dir / "checkpoints", **kw)
    write_lr_find(out_dir, result, _lr_find_title(opts, spec))
    if result.suggestion is None:
        raise ValueError(f"lr-find: the loss diverged after {len(result.lrs)} steps, too few "
                         f"to suggest a learning rate (see {out_dir}/lr_find.png); try a "
                         "smaller --end-lr or more --num-steps")
    if opts["quiet"]:
        print(f"{info['lr']:.3g}")
        return 0
    _say(opts, f"ember: learning-rate finder on {spec['description']} "
               f"({spec['splits']['train']} training rows), {_finder_setup(opts, spec)}",
         f"suggested learning rate: {info['lr']:.3g} ({_readings(result)})",
         f"wrote {out_dir}/ (lr_find.csv, lr_find.png); train at it with the same options "
         f"and --lr {info['lr']:.3g} (or --lr auto)")
    return 0


# ------------------------------------------------------------------------------------------
# evaluate, predict, info, bench


def cmd_evaluate(ns: dict) -> int:
    run_dir, cfg = load_run(ns["run"])
    x, y, where = eval_data(cfg, ns, require_target=True)
    trainer = run_trainer(run_dir, ns["device"])
    m, report = _metrics_and_report(trainer, cfg["data"], x, y, batch_size=ns["batch_size"],
                                    report=True)
    if ns.get("json"):
        print(json.dumps({"run": str(run_dir), "data": where, "n": int(len(x)), "metrics": m,
                          "report": report}, indent=2))
    else:
        print(f"{run_dir} on {where} ({len(x)} rows): {_fmt_metrics(m)}")
        if cfg["data"]["task"] == "classification":
            print(format_classification_report(report))
    return 0


def cmd_predict(ns: dict) -> int:
    run_dir, cfg = load_run(ns["run"])
    spec = cfg["data"]
    out = ns["out"]
    if out != "-" and Path(out).exists() and not ns.get("force"):
        raise FileExistsError(f"--out {out}: exists; pass --force to overwrite it")
    x, _, _ = eval_data(cfg, ns, require_target=False)
    # The frozen predictor (weights only), on the GPU when --device says so.
    pred = run_predictor(run_dir, spec["task"], ns["batch_size"])
    if resolve_training_device(ns["device"]) == "cuda":
        x = array_module("cuda").asarray(x)
    rows: list[list] = []
    if spec["task"] == "classification":
        classes = spec["classes"]
        proba = to_host(pred.predict_proba(x))
        header = ["prediction"] + [f"prob_{c}" for c in classes]
        pred = proba.argmax(axis=1)
        for i in range(len(x)):
            rows.append([classes[pred[i]]] + [f"{p:.6g}" for p in proba[i]])
    else:
        vals = untransform_y(spec, to_host(pred(x)))
        header = ["prediction"] if vals.shape[1] == 1 else \
            [f"prediction_{j}" for j in range(vals.shape[1])]
        rows = [[f"{v:.8g}" for v in r] for r in vals]
    if out == "-":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    p = Path(out)
    if p.parent and not p.parent.exists():
        raise FileNotFoundError(f"--out {out}: the directory {p.parent} does not exist")
    write_atomic(p, buf.getvalue())
    print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    return 0


def cmd_export(ns: dict) -> int:
    """``ember export``: the run's (or checkpoint's) model as an ONNX file, with the run's
    standardization and, for a classifier, ``probabilities``; prints the path written."""
    ck = load_checkpoint(ns["path"])  # CheckpointError naming the path when it is none
    model = model_from(ck, "cpu")
    if isinstance(model, RunModel):  # an `ember train` run: its config.json says the task
        classify = model.classes is not None
    else:  # a checkpoint of a fit in Python: its loss says the task
        loss = ck["state"].get("loss")
        classify = isinstance(loss, dict) and loss.get("type") == "CrossEntropy"
    out = ns.get("out")
    if out is None:
        ckpt = ck["path"]
        run = ckpt.parent.parent  # <run>/checkpoints/<ckpt> for an `ember train` run
        in_run = ckpt.parent.name == "checkpoints" and (run / "config.json").is_file()
        out = run / "model.onnx" if in_run else ckpt.with_name(ckpt.name + ".onnx")
    out = Path(out).expanduser()
    if out.exists() and not ns.get("force"):
        raise FileExistsError(f"-o {out}: exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"-o {out}: the directory {out.parent} does not exist")
    to_onnx(model, out, opset=ns["opset"], probabilities=classify)
    outputs = "logits, probabilities" if classify else "logits"
    if isinstance(model, RunModel):
        takes = ("raw feature rows, standardized in the graph" if model.standardize is not None
                 else "raw feature rows")
    else:
        takes = "the network's input"
    print(f"wrote {out} (ONNX opset {ns['opset']}, from {ck['path']}; input x: {takes}; "
          f"outputs: {outputs})")
    return 0


def cmd_info(ns: dict) -> int:
    info = backend_info()
    if ns.get("json"):
        print(json.dumps(info, indent=2, default=str))
        return 0
    cpu, cuda = info["backends"]["cpu"], info["backends"]["cuda"]
    print(f"ember {info['version']}  (python {sys.version.split()[0]}, numpy {np.__version__})")
    print(f"cpu backend:  built, usable; kernels ISA {cpu['isa']}; {cpu['threads']} threads "
          f"(OMP_NUM_THREADS={info.get('omp_num_threads_env') or 'unset'})")
    if not cuda["built"]:
        print(f"cuda backend: not built ({cuda.get('reason', '')})")
    else:
        rt = cuda.get("runtime_version")
        state = "usable" if cuda["usable"] else f"not usable: {cuda.get('reason', '')}"
        print(f"cuda backend: built (runtime {rt}, driver {cuda.get('driver_version')}); {state}")
        for i, d in enumerate(cuda["devices"]):
            desc = ", ".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) else d
            print(f"  device {i}: {desc}")
    ok, why = cuda_training_available()
    print(f"training devices: cpu{', cuda' if ok else ''}")
    return 0


# ------------------------------------------------------------------------------------------
# bench: small, self-checking measurements (ember/bench.py; bench/ holds the full versions)


def cmd_bench(ns: dict) -> int:
    before = get_num_threads()
    threads = ns.get("threads") or before
    isa = backend_info()["backends"]["cpu"]["isa"]
    t0 = time.perf_counter()
    print(f"ember {__version__} bench: CPU kernels ISA {isa}, {threads} threads for ember, "
          "NumPy's BLAS and PyTorch"
          f"{'' if _has('threadpoolctl') else ' (threadpoolctl absent: BLAS threads unpinned)'}")
    set_num_threads(threads)
    try:
        with blas_threads(threads):
            gemm_rows = bench_gemm(ns.get("quick", False))
            print("\n| kernel | ember GFLOP/s | NumPy GFLOP/s | ember / NumPy |")
            print("|---|---:|---:|---:|")
            for name, ge, gn in gemm_rows:
                print(f"| {name} | {ge:.1f} | {gn:.1f} | {ge / gn:.2f}x |", flush=True)
            train_rows = bench_training(ns.get("quick", False), threads)
    finally:
        set_num_threads(before)
    print("\n| training (Adam) | batch | ember samples/s | PyTorch samples/s | ember / PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for name, batch, e, t in train_rows:
        print(f"| {name} | {batch} | {e:,.0f} | {f'{t:,.0f}' if t else '-'} | "
              f"{f'{e / t:.2f}x' if t else 'n/a (PyTorch not installed)'} |")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    note = (f"; load average {load:.1f} on {cores} cores: other processes were running, the "
            "numbers are noisy" if load > 0.75 * cores + 1 else "")
    print(f"\n({time.perf_counter() - t0:.1f}s{note})")
    return 0


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
