"""Record per-layer gradient norms and warn when gradients vanish or explode."""
from __future__ import annotations

import math
import warnings

from ember import ops
from ember.callbacks.base import Callback

__all__ = ["GradientMonitor", "GradientWarning"]


class GradientWarning(UserWarning):
    """Gradients of a layer vanished or exploded."""


class GradientMonitor(Callback):
    """Record each layer's gradient norm and warn when gradients vanish or explode.

    At the end of every epoch (from the last batch's gradients) it records, per weight matrix,
    ``||grad||`` into ``trainer.history.grad_norms``. A layer's gradients *vanish* when its
    ``||grad|| / ||weight||`` is below ``vanish_ratio`` times the largest such ratio among the
    layers (the signal dies on its way back through the network; a converged model, whose
    gradients all shrink together, is not flagged). They *explode* when ``||grad||`` exceeds
    ``explode_threshold`` or is not finite. Each finding warns once (:class:`GradientWarning`,
    naming the layer) and feeds the trainer's end-of-training verdict.
    """

    def __init__(self, vanish_ratio: float = 1e-4, explode_threshold: float = 1e3,
                 active: bool = True):
        self.vanish_ratio = float(vanish_ratio)
        self.explode_threshold = float(explode_threshold)
        #: False: record nothing and never warn (ember.sklearn's estimators, like MLPClassifier,
        #: do not diagnose gradients unless verbose).
        self.active = bool(active)
        self.flags: dict[str, str] = {}

    def on_train_begin(self, logs):
        if not self.trainer.resuming:
            self.flags = {}

    def on_epoch_end(self, epoch, logs):
        if not self.active:
            return
        norms, rels = {}, {}
        for name, p in self.trainer.model.named_parameters():
            if p.grad is None or not name.endswith("weight") or not p.requires_grad:
                continue
            g = ops.global_norm([p.grad])
            w = ops.global_norm([p.data])
            norms[name] = g
            rels[name] = g / w if w > 0 else float("inf")
        finite = [r for r in rels.values() if math.isfinite(r)]
        top = max(finite) if finite else 0.0
        for name, g in norms.items():
            rel = rels[name]
            kind = None
            if not math.isfinite(g) or g > self.explode_threshold:
                kind = "exploding"
            elif top > 0 and rel < self.vanish_ratio * top:
                kind = "vanishing"
            if kind and self.flags.get(name) != kind:
                self.flags[name] = kind
                layer = name.rsplit(".", 1)[0]
                warnings.warn(f"{kind} gradients in layer {layer} ({name}): |grad| = {g:.3g}, "
                              f"|grad|/|weight| = {rel:.3g} (largest layer: {top:.3g}) at "
                              f"epoch {epoch + 1}", GradientWarning, stacklevel=2)
        self.trainer.history.record_grad_norms(norms)

    def state_dict(self):
        return {"flags": dict(self.flags)}

    def load_state_dict(self, state):
        self.flags = dict(state.get("flags", {}))
