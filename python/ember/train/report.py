"""What a fit's history says, in words: the verdict (good, underfitting, overfitting,
diverging) and the end-of-training report (parameters vs hyperparameters, final metrics).

:meth:`ember.Trainer.diagnosis` and :meth:`ember.Trainer.report` are these functions; they read
the trainer's public state only (history, fit_params, optimizer, loss, model, gradient_monitor).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

__all__ = ["diagnosis", "report", "chosen_lr", "divergence", "loss_baseline", "r_squared",
           "DATA_FACTS", "mean_variance"]

#: fit_params entries that describe the data rather than a choice (not hyperparameters).
DATA_FACTS = ("target_variance", "val_target_variance", "target_mean_square")


def mean_variance(y) -> float:
    """The targets' variance averaged over their columns: the MSE of predicting the mean."""
    return float(y.reshape(len(y), -1).astype("float64").var(axis=0).mean())


def loss_baseline(trainer) -> Optional[float]:
    """The training loss of a model that has learned nothing: ``ln(classes)`` for
    cross-entropy (a uniform guess), the targets' variance for MSE (predicting the mean).
    None when unknown (another loss, or the targets' variance was not recorded)."""
    kind = trainer.loss.config().get("type")
    if kind == "CrossEntropy" and trainer.task == "classification":
        c = trainer.output_size()
        return math.log(c) if c and c > 1 else None
    if kind == "MSE":
        v = trainer.fit_params.get("target_variance")
        return float(v) if v else None
    return None


def _peak(losses: list, bound: float, what: str, reference: str) -> Optional[str]:
    """``what`` reached over 10x ``bound`` (the loss of ``reference``) at its worst epoch, in
    words; None when it never did."""
    worst, last = max(losses), losses[-1]
    if worst <= 10.0 * bound:
        return None
    when = "" if worst == last else f" at epoch {losses.index(worst) + 1} (it ended at {last:.4g})"
    return (f"{what} reached {worst:.4g}{when}, {worst / bound:.3g}x that of {reference} "
            f"({bound:.4g})")


def divergence(trainer) -> Optional[str]:
    """Why the loss says the steps overshoot (the learning rate is too high), or None: the
    loss became NaN/Inf, ended far above what a model that learned nothing scores, or rose
    well above its best after falling (an exploding loss)."""
    losses = [v for v in trainer.history.history.get("loss", []) if v is not None]
    if not losses:
        return None
    last = losses[-1]
    if not math.isfinite(last):
        return f"the training loss became {last}"
    base = loss_baseline(trainer)
    # Cross-entropy starts near ln(classes): an epoch far above it means it blew up, even
    # if it came back down (to a model that predicts one class: Adam at lr=5 on digits went
    # 1.2e6, 2.7e3, 26, 2.6, 2.6 with the validation loss stuck at 4.5e3). (An MSE can start
    # far above the targets' variance when they are offset: that is slow, not diverging,
    # and is judged by the rules below and by R².)
    if base is not None and trainer.task == "classification":
        peak = _peak(losses, base, "the training loss", "a uniform guess")
        if peak:
            return peak
        val = [v for v in trainer.history.history.get("val_loss", []) if v is not None]
        if val and math.isfinite(val[-1]) and val[-1] > 10.0 * base:
            return (f"the validation loss is {val[-1]:.4g}, {val[-1] / base:.3g}x that of a "
                    f"uniform guess ({base:.4g})")
    square = trainer.fit_params.get("target_mean_square")
    if square is not None and trainer.loss.config().get("type") == "MSE":
        # A network starts out predicting about 0 (outputs of order 1): an MSE far above
        # both the targets' mean square and 1 came from steps that overshot.
        peak = _peak(losses, max(float(square), 1.0), "the training loss (MSE)",
                     "predicting 0")
        if peak:
            return peak
    if len(losses) >= 2 and (base is None or last > base):
        best = min(losses)
        if last > 2.0 * best:
            return f"the training loss rose from its best {best:.4g} to {last:.4g}"
        if last > losses[0]:
            return f"the training loss ended above where it began ({losses[0]:.4g} -> {last:.4g})"
    return None


def r_squared(trainer, key: str, var_key: str) -> Optional[float]:
    """R² = 1 - MSE / variance of the targets, from the last epoch's ``key`` loss (MSE)."""
    h = trainer.history.history
    var = trainer.fit_params.get(var_key)
    if trainer.loss.config().get("type") != "MSE" or not var or key not in h:
        return None
    v = h[key][-1]
    return None if v is None or not math.isfinite(v) else 1.0 - v / float(var)


def diagnosis(trainer) -> dict:
    """Plain verdicts from the history: fit quality and gradient health.

    ``fit`` is ``"diverging (learning rate too high)"`` when the loss overshoots (it became
    NaN/Inf, ended above 10x a model that learned nothing, or rose to over twice its best),
    ``"underfitting"``, ``"overfitting"``, ``"good"``, ``"no validation data"`` or
    ``"unknown"``. A regression fit is judged on R² (1 - MSE / the targets' variance), which
    does not depend on the targets' scale; ``"r2"`` and ``"val_r2"`` are included."""
    h = trainer.history.history
    out: dict[str, Any] = {"fit": "unknown", "gradients": "healthy", "notes": []}
    if not trainer.history.epochs:
        return out
    losses = [v for v in h["loss"] if v is not None]
    train_loss = h["loss"][-1]
    lr = chosen_lr(trainer)
    diverging = divergence(trainer)
    if diverging is not None:
        out["fit"] = "diverging (learning rate too high)"
        out["notes"].append(
            f"{diverging}: the steps overshoot the minimum. Lower the learning rate (try "
            f"lr={lr / 10:.3g}, a tenth of {lr:.3g}) or clip gradients (max_grad_norm); "
            "if the loss was this high from the first steps, standardize the features")
    # "try a higher learning rate" only when the loss fell at every epoch, just too slowly.
    steady = all(b <= a for a, b in zip(losses, losses[1:]))
    slower = ("more epochs, a larger model or a higher learning rate" if steady else
              "more epochs or a larger model")
    if diverging is not None:
        pass
    elif "accuracy" in h and h["accuracy"][-1] is not None:  # classification, metric kept
        train_acc = h["accuracy"][-1]
        val_acc = h.get("val_accuracy", [None])[-1]
        if train_acc < 0.7 and (val_acc is None or val_acc < 0.7):
            out["fit"] = "underfitting"
            out["notes"].append(f"train accuracy {train_acc:.1%} is low: try {slower}")
        elif val_acc is not None and train_acc - val_acc > 0.05:
            out["fit"] = "overfitting"
            out["notes"].append(f"train accuracy {train_acc:.1%} vs validation "
                                f"{val_acc:.1%}: add dropout/weight decay, more data, or "
                                "early stopping")
        else:
            out["fit"] = "good" if val_acc is not None else "no validation data"
    elif r_squared(trainer, "loss", "target_variance") is not None:  # regression with MSE: R²
        r2 = out["r2"] = r_squared(trainer, "loss", "target_variance")
        val_r2 = out["val_r2"] = r_squared(trainer, "val_loss", "val_target_variance")
        if r2 < 0.5 and (val_r2 is None or val_r2 < 0.5):
            out["fit"] = "underfitting"
            out["notes"].append(f"training R² {r2:.3g} is low (1 is perfect, 0 is no better "
                                f"than predicting the mean): try {slower}")
        elif val_r2 is not None and r2 - val_r2 > 0.1:
            out["fit"] = "overfitting"
            out["notes"].append(f"training R² {r2:.3g} vs validation {val_r2:.3g}: add "
                                "dropout/weight decay, more data, or early stopping")
        else:
            out["fit"] = "good" if val_r2 is not None else "no validation data"
    else:
        if not math.isfinite(train_loss) or train_loss > 0.5 * h["loss"][0]:
            out["fit"] = "underfitting"
            out["notes"].append(f"training loss fell by less than half: try {slower}")
        else:
            out["fit"] = "good"
    if "val_loss" in h and len(h["val_loss"]) >= 3 and out["fit"] in (
            "good", "no validation data", "overfitting"):
        vl = [v for v in h["val_loss"] if v is not None and math.isfinite(v)]
        if vl and vl[-1] > 1.1 * min(vl) and h["loss"][-1] < h["loss"][int(np.argmin(vl))]:
            if out["fit"] != "overfitting":
                out["fit"] = "overfitting"
            out["notes"].append(f"validation loss rose from its best {min(vl):.4g} to "
                                f"{vl[-1]:.4g} while training loss kept falling")
    flags = trainer.gradient_monitor.flags
    if flags:
        kinds = sorted(set(flags.values()))
        out["gradients"] = " and ".join(kinds)
        out["notes"].append("gradient problems in " + ", ".join(
            f"{k} ({v})" for k, v in sorted(flags.items())))
    if not math.isfinite(train_loss):
        out["gradients"] = "exploding"
    elif diverging is not None and out["gradients"] == "healthy":
        # The gradients are what a too-large step makes them: not "healthy".
        out["gradients"] = "large (the loss is diverging)"
    return out


def chosen_lr(trainer) -> float:
    """The learning rate the user chose (before any schedule or ReduceLROnPlateau)."""
    configured = trainer.configured_optimizer or {}
    lr = configured.get("lr", trainer.initial_lr)
    return float(trainer.optimizer.lr if lr is None else lr)


def report(trainer) -> str:
    """A short text report: parameters vs hyperparameters, final metrics, verdict."""
    lines = ["", "== ember training report =="]
    total = trainer.model.num_parameters()
    trainable = trainer.model.num_parameters(trainable_only=True)
    lines.append(f"parameters (learned): {total:,} ({trainable:,} trainable, "
                 f"{total - trainable:,} frozen)")
    hp = trainer.optimizer.hyperparameters()
    fp = trainer.fit_params
    chosen, now = chosen_lr(trainer), float(hp["lr"])
    lines.append("hyperparameters (chosen): " + ", ".join(
        [f"epochs={fp.get('epochs')}", f"batch_size={fp.get('batch_size')}",
         f"optimizer={hp['optimizer']}", f"lr={chosen:.6g}"] +
        [f"{k}={v}" for k, v in hp.items() if k not in ("optimizer", "lr") and v] +
        [f"loss={trainer.loss.config()['type']}", f"seed={fp.get('seed')}"] +
        ([f"class_weight={fp['class_weight']}"] if fp.get("class_weight") else [])))
    if not math.isclose(now, chosen, rel_tol=1e-12, abs_tol=0.0):
        lines.append(f"learning rate now: {now:.6g} (set by a schedule or "
                     "ReduceLROnPlateau; the run started at the chosen "
                     f"{chosen:.6g})")
    h = trainer.history.history
    if trainer.history.epochs:
        final = "  ".join(f"{k}={h[k][-1]:.4f}" for k in h
                          if k in ("loss", "accuracy", "val_loss", "val_accuracy")
                          and h[k][-1] is not None)
        lines.append(f"after {len(trainer.history)} epochs ({trainer.global_step} steps): {final}")
    if trainer.step_path:
        lines.append(f"steps: {trainer.device}, {trainer.step_path}")
    if trainer.stop_reason:
        lines.append(f"stopped: {trainer.stop_reason}")
    if trainer.restored_epoch is not None:
        lines.append(f"restored the weights of epoch {trainer.restored_epoch + 1}")
    d = diagnosis(trainer)
    r2 = "".join(f", {name} {d[key]:.4g}" for key, name in (("r2", "R²"),
                                                           ("val_r2", "validation R²"))
                 if d.get(key) is not None)
    lines.append(f"verdict: fit {d['fit']}{r2}; gradients {d['gradients']}")
    for note in d["notes"]:
        lines.append(f"  - {note}")
    return "\n".join(lines)
