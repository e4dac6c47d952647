"""The ``ember`` command line: train, lr-find, evaluate, predict, export, info, bench.

    ember train                          # an MLP on the bundled digits, into runs/<timestamp>/
    ember train --data my.csv --target label --hidden 128,64 --epochs 30 --out runs/mine
    ember train --resume runs/mine       # continue an interrupted run (or: the original
                                         # command with --resume appended)
    ember lr-find --hidden 128,64 -o lr  # suggest a learning rate (lr_find.csv, lr_find.png)
    ember train --lr auto                # the same finder first, then train at its suggestion
    ember evaluate runs/mine --data test.csv
    ember predict runs/mine --data new.csv --out preds.csv
    ember export runs/mine               # runs/mine/model.onnx: raw features in, as predict
    ember info                           # version, backends, ISA, devices, threads
    ember bench --quick                  # kernel GFLOP/s vs NumPy, training samples/s vs PyTorch

``ember train`` writes a run directory::

    checkpoints/    resumable checkpoints (see ember.checkpoint); ``latest`` points at the newest
    config.json     every resolved option plus what evaluate/predict/--resume need to rebuild the
                    data pipeline: task, feature names, target column, classes, standardization
    history.csv     one row per epoch
    curves.png      train vs validation loss (and accuracy) per epoch
    summary.json    parameters vs hyperparameters, final train/validation/test metrics, the
                    diagnosis, data description, timings, ember version, device

From Python, ``ember.load_model(run_dir)`` (or ``load_trainer``) gives the run's model behind
the run's standardization (an ``ember.preprocessing.RunModel``): on the raw features it predicts
what ``ember predict`` prints.

CSV files: a header row, then one row per sample; feature cells are numbers, the target may be
numbers or text class labels (``setosa``); a UTF-8 byte-order mark (Excel's "CSV UTF-8") is
ignored. ``ember predict ... | head`` stops quietly when the reader goes away.

Errors in what the user gave (a missing file, a bad option value, a run directory that is not
ember's) print one line ``ember: error: ...`` on stderr and exit with 2 (usage) or 1 (other),
without a traceback and without overwriting anything.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional

from ember import distributed
from ember._version import __version__
from ember.cli.commands import (cmd_bench, cmd_evaluate, cmd_export, cmd_info, cmd_lr_find,
                                cmd_predict, cmd_train, silence_stdout)
from ember.cli.options import (DEVICES, LR_FIND_OPTIONS, TRAIN_OPTIONS, UsageError, choice,
                               int_at_least)
from ember.cli.processes import launch
from ember.errors import CheckpointError, CudaError
from ember.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["main"]

# The package: ember.cli.options (the option table, --config, option values),
# ember.cli.data (loading, task, splits, standardization), ember.cli.runs (run directories and
# the resume policy), ember.cli.commands (the commands); here, the parser and main().


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (raised, so main() decides the exit)."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------------
# parser


def _build_parser() -> _Parser:
    p = _Parser(prog="ember", description="Train MLPs on ember's fused kernels; evaluate, "
                "predict and benchmark from the command line.",
                epilog="Run 'ember COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train_parser(sub)
    _add_lr_find_parser(sub)
    _add_run_parsers(sub)
    _add_export_parser(sub)
    _add_install_parsers(sub)
    return p


def _add_train_parser(sub) -> None:
    """``ember train``: one flag per entry of TRAIN_OPTIONS, plus --no-standardize, --resume,
    --config and -q."""
    t = sub.add_parser(
        "train", help="train an MLP (default: on the bundled digits) into a run directory",
        description="Train an MLP and write a run directory: checkpoints/, config.json, "
        "history.csv, curves.png, confusion.png (classification), summary.json. With no options it trains a 256-256 ReLU MLP "
        "with Adam on the bundled digits (>= 97% test accuracy in seconds).",
        epilog="Options can also come from a TOML file (--config): keys are the option names "
        "(hidden = [256, 256], batch_size = 64, lr = 3e-4, ...), at top level or in a [train] "
        "table; flags given on the command line override the file. Ctrl-C stops training "
        "leaving a resumable run: 'ember train --resume DIR' continues it with the same "
        "configuration.",
        )
    _add_option_table(t, TRAIN_OPTIONS)
    t.add_argument("--no-standardize", dest="standardize", action="store_const", const=False,
                   default=argparse.SUPPRESS,
                   help="do not standardize features (by default each feature is centred and "
                   "scaled by the training split's mean and standard deviation)")
    t.add_argument("--resume", nargs="?", const="", metavar="DIR", default=argparse.SUPPRESS,
                   help="continue an interrupted run from its latest checkpoint, with the "
                   "configuration in its config.json: the run in DIR, else the one named by "
                   "--out (so appending --resume to the original command works), else the only "
                   "interrupted run that ember named itself under runs/ (no --out) started "
                   "with exactly these options. Options that differ from the run's are "
                   "refused; a finished run is left as it is")
    t.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True,
                   default=argparse.SUPPRESS,
                   help="also write TensorBoard event files into RUN/tensorboard/ (view them "
                   "with 'tensorboard --logdir RUN'; needs pip install \"ember[tensorboard]\")")
    t.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                   help="read options from a TOML file; command-line flags override it")
    t.add_argument("-q", "--quiet", dest="quiet", action="store_const", const=True,
                   default=argparse.SUPPRESS, help="print nothing but errors")
    t.add_argument("--processes", dest="processes", type=int_at_least(1), metavar="N",
                   default=argparse.SUPPRESS,
                   help="train data-parallel on N processes: runs 'mpiexec -n N ember train "
                   "...' (the same options; --batch-size is the global batch); needs pip "
                   "install \"ember[mpi]\". Under mpiexec already, leave it out")
    t.set_defaults(func=cmd_train)


def _add_option_table(p, table: dict, short: Optional[dict] = None) -> None:
    """One flag per entry of an option table (TRAIN_OPTIONS, LR_FIND_OPTIONS) that has a help
    text; ``short`` adds short forms (``{"out": "-o"}``)."""
    for name, (default, conv, metavar, help_) in table.items():
        if help_ is None:
            continue
        flags = ["--" + name.replace("_", "-")] + ([short[name]] if short and name in short
                                                   else [])
        p.add_argument(*flags, dest=name, type=conv, metavar=metavar,
                       default=argparse.SUPPRESS, help=help_)


def _add_lr_find_parser(sub) -> None:
    """``ember lr-find``: the options of ``ember train`` (the same data, split, model and
    optimizer), the finder's own, --no-standardize, --config and -q."""
    f = sub.add_parser(
        "lr-find", help="suggest a learning rate (the learning-rate range test)",
        description="Train the model 'ember train' would train, with the same options, on its "
        "training split for a few steps while the learning rate grows exponentially from "
        "--start-lr to --end-lr; print the suggested learning rate (fastai's 'valley' rule) and "
        "write lr_find.csv (lr, loss, smoothed) and lr_find.png into a new directory "
        "(runs/lr-find-<timestamp>, or --out/-o DIR). 'ember train --lr auto' does this "
        "first and trains at the suggestion.")
    _add_option_table(f, TRAIN_OPTIONS, short={"out": "-o"})
    _add_option_table(f, LR_FIND_OPTIONS)
    f.add_argument("--no-standardize", dest="standardize", action="store_const", const=False,
                   default=argparse.SUPPRESS, help="do not standardize features (as ember train)")
    f.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                   help="read the train options from a TOML file (as ember train); "
                   "command-line flags override it")
    f.add_argument("-q", "--quiet", dest="quiet", action="store_const", const=True,
                   default=argparse.SUPPRESS, help="print only the suggested learning rate")
    f.set_defaults(func=cmd_lr_find)


def _add_run_parsers(sub) -> None:
    """``ember evaluate`` and ``ember predict``: commands on a run directory."""
    e = sub.add_parser("evaluate", help="score a trained run on a dataset",
                       description="Loss and metrics of a run's model (its latest checkpoint: for a "
                       "finished run, its final weights, which are the best epoch's when early "
                       "stopping restored them) on a "
                       "dataset. Without --data: the run's own test split (bundled digits, or "
                       "the run's data file if it is unchanged).")
    e.add_argument("run", metavar="RUN", help="a run directory written by 'ember train'")
    _data_args(e)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict with a trained run",
                        description="Predictions of a run's model for every row of a dataset: "
                        "a 'prediction' column (the class label, or the value) and, for "
                        "classification, one probability column per class 'prob_<label>'. "
                        "A target column in the file, if present, is ignored.")
    pr.add_argument("run", metavar="RUN", help="a run directory written by 'ember train'")
    _data_args(pr, required=True)
    pr.add_argument("--out", metavar="FILE.csv", default="-",
                    help="where to write the predictions (default: standard output)")
    pr.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    pr.set_defaults(func=cmd_predict)


def _opset(value: str) -> int:
    """``--opset``: an integer from MIN_OPSET to MAX_OPSET (argparse's one-line message else)."""
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or not MIN_OPSET <= n <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"must be an integer from {MIN_OPSET} to {MAX_OPSET}, "
                                         f"got {value!r}")
    return n


def _add_export_parser(sub) -> None:
    """``ember export``: a run's model as an ONNX file."""
    x = sub.add_parser(
        "export", help="write a trained run's model as an ONNX file",
        description="Write the model of a run (its latest checkpoint) or of a checkpoint as an "
        "ONNX file (needs pip install \"ember[onnx]\"). For a run written by 'ember train' "
        "the file includes the run's feature standardization (and, for regression, the "
        "target's scaling) and, for a classifier, a 'probabilities' output: it takes the same "
        "raw feature rows as 'ember predict' (input 'x', float32, any number of rows) and "
        "gives the same answers (output 'logits': argmax is the class index into the run's "
        "classes, which the file's metadata lists; 'probabilities': the prob_<label> columns; "
        "for regression, the predicted values).")
    x.add_argument("path", metavar="RUN_DIR|CHECKPOINT",
                   help="a run directory written by 'ember train', a checkpoint directory, or "
                   "a folder holding a 'latest' pointer")
    x.add_argument("-o", "--out", metavar="FILE.onnx", default=None,
                   help="where to write the file (default: RUN_DIR/model.onnx for a run, else "
                   "<checkpoint>.onnx beside the checkpoint directory)")
    x.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, metavar="N",
                   help=f"the ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET}; "
                   "from 20 GELU is the Gelu operator)")
    x.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    x.set_defaults(func=cmd_export)


def _add_install_parsers(sub) -> None:
    """``ember info`` and ``ember bench``: commands about this install."""
    i = sub.add_parser("info", help="version, backends, ISA, devices, threads",
                       description="What this ember install can use: version, CPU and CUDA "
                       "backends (built / usable, and why not), the CPU kernels' ISA, GPUs, "
                       "threads.")
    i.add_argument("--json", action="store_true", help="print ember.info() as JSON")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="kernel GFLOP/s vs NumPy, training samples/s vs PyTorch",
                       description="Small benchmarks, each checked for correctness before it "
                       "is timed: the GEMM / fused linear kernels against NumPy (its BLAS), "
                       "and MLP training throughput against PyTorch (when installed), same "
                       "thread count, ratio tables. Under a minute; --quick: a few seconds.")
    b.add_argument("--quick", action="store_true", help="fewer, smaller cases (seconds)")
    b.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="threads for every library (default: ember's current setting)")
    b.set_defaults(func=cmd_bench)


def _data_args(p, required: bool = False) -> None:
    p.add_argument("--data", metavar="PATH", required=required, default=None,
                   help="a CSV file with a header row, or an .npz file with array x (and y)")
    p.add_argument("--target", metavar="COLUMN", default=None,
                   help="the CSV target column (default: the one the run was trained on)")
    p.add_argument("--batch-size", dest="batch_size", type=int_at_least(1), default=1024,
                   metavar="N", help="rows per forward pass (default: 1024)")
    p.add_argument("--device", type=choice(*DEVICES), default="auto",
                   metavar="{auto,cpu,cuda}", help="where to run the model (default: auto)")


# ------------------------------------------------------------------------------------------
# main


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"ember: warning: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[list] = None) -> int:
    """Entry point of the ``ember`` console script and ``python -m ember``. Returns the exit
    status: 0 success, 1 an error in the data, files or environment, 2 a usage error, 130
    interrupted."""
    try:
        try:
            ns = vars(_build_parser().parse_args(argv))
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        processes = ns.pop("processes", 1)
        if processes > 1 or distributed.launched_size() > 1:
            if distributed.launched_size() == 1:  # --processes N: mpiexec -n N ember train ...
                return launch(list(sys.argv[1:] if argv is None else argv), processes)
            if processes not in (1, distributed.launched_size()):
                raise UsageError(f"--processes {processes}: this is one of "
                                 f"{distributed.launched_size()} processes mpiexec started; "
                                 "leave --processes out under mpiexec")
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            status = ns.pop("func")(ns)
        sys.stdout.flush()  # here, so that a closed pipe is reported below, not at exit
        return status
    except BrokenPipeError:
        # The reader of our output went away ('ember predict ... | head'): stop quietly, as the
        # Python documentation recommends (signal module, "Note on SIGPIPE"): point stdout at
        # /dev/null so that the interpreter's final flush does not fail again, and exit 1.
        silence_stdout()
        return 1
    except UsageError as exc:
        print(f"ember: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError, CheckpointError, CudaError) as exc:
        print(f"ember: error: {_error_text(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nember: interrupted", file=sys.stderr)
        return 130
