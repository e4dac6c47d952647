"""History: the per-epoch record of a fit (loss, metrics, learning rate, gradient norms, time).

Example:
    >>> from ember.train.history import History
    >>> h = History()
    >>> h.append(0, {"loss": 1.0, "val_loss": 1.2})
    >>> h.append(1, {"loss": 0.5})
    >>> h["val_loss"], len(h)
    ([1.2, None], 2)
"""
from __future__ import annotations

import csv

__all__ = ["History", "pyplot", "finish_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def finish_figure(fig, path=None):
    """Lay ``fig`` out and, when ``path`` is given, save it there and close it. Returns it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        pyplot().close(fig)
    return fig


class History:
    """Per-epoch records of a run: ``history["loss"]``, ``history["val_loss"]``, metrics,
    ``"lr"``, ``"grad_norm"`` (mean global gradient norm over the epoch's steps), ``"time"``
    (seconds), and ``grad_norms`` (per-layer norms at each epoch's end)."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []
        self.grad_norms: list[dict] = []

    def append(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            if k.startswith("_"):
                continue
            self.history.setdefault(k, [None] * (len(self.epochs) - 1)).append(v)
        for k, col in self.history.items():
            if len(col) < len(self.epochs):
                col.append(None)

    def record_grad_norms(self, norms: dict) -> None:
        self.grad_norms.append(dict(norms))

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __iter__(self):
        """The recorded keys (``"loss"``, ``"accuracy"``, ``"val_loss"``...), as a dict's."""
        return iter(self.history)

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self):
        return self.history.keys()

    def to_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in
                                                         self.history.items()},
                "grad_norms": list(self.grad_norms)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls()
        h.epochs = list(d.get("epochs", []))
        h.history = {k: list(v) for k, v in d.get("history", {}).items()}
        h.grad_norms = list(d.get("grad_norms", []))
        return h

    def to_csv(self, path) -> None:
        """Write one row per epoch (``epoch`` numbered from 1)."""
        keys = list(self.history)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch"] + keys)
            for i, e in enumerate(self.epochs):
                w.writerow([e + 1] + [self.history[k][i] for k in keys])

    def plot(self, path=None, title: str = "training curves"):
        """Loss (and each metric) per epoch, train vs validation; saved to ``path`` if given.

        Uses matplotlib's non-interactive Agg backend, so it works without a display.
        Returns the matplotlib Figure.
        """
        from matplotlib.ticker import MaxNLocator
        plt = pyplot()

        metrics = [k for k in self.history if not k.startswith("val_") and
                   k not in ("lr", "grad_norm", "time", "skipped_steps")]
        if not self.epochs or not metrics:
            raise ValueError("History.plot: nothing to plot yet (no epoch recorded); train first")
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
        x = [e + 1 for e in self.epochs]
        for ax, m in zip(axes[0], metrics):
            ax.plot(x, self.history[m], marker="o", ms=3, label=f"train {m}")
            if "val_" + m in self.history:
                ax.plot(x, self.history["val_" + m], marker="o", ms=3, label=f"validation {m}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(m)
            ax.set_title(m)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title)
        return finish_figure(fig, path)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"
