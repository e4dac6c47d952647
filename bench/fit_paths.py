"""Work for ``bench/ab_builds.py``: ember's training loop alone (no peer), every step path.

Digits (64-128-128-10 MLP, Adam, batch 32) on one thread: the fused CPU step, the layer-by-layer
step, accumulate_steps=4, a Dropout model, and a fit that checkpoints every epoch. The process's
wall time is the measure (``ab_builds`` times it); each fit's seconds are printed too.

    python bench/ab_builds.py --rounds 6 b4d7f5b WORKTREE -- python bench/fit_paths.py
"""
from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("EMBER_NUM_THREADS", "1")


def main() -> None:
    import ember
    from ember.datasets import load_digits
    from ember.nn import MLP

    ember.set_num_threads(1)
    x, y = load_digits()
    runs = {
        "fused": dict(model=lambda: MLP([64, 128, 128, 10], seed=0)),
        "layer by layer": dict(model=lambda: MLP([64, 128, 128, 10], seed=0), fused=False),
        "accumulate 4": dict(model=lambda: MLP([64, 128, 128, 10], seed=0),
                             fit=dict(accumulate_steps=4, batch_size=8)),
        "dropout": dict(model=lambda: MLP([64, 128, 128, 10], dropout=0.2, seed=0)),
        "checkpoints": dict(model=lambda: MLP([64, 128, 128, 10], seed=0), checkpoint=True),
    }
    for name, run in runs.items():
        trainer = ember.Trainer(run["model"](), optimizer="adam", lr=1e-3)
        if run.get("fused") is False:  # (the attribute's name before and after issue 17)
            trainer.fused_steps = trainer._fused = False
        kw = dict(epochs=60, batch_size=32, validation_split=0.2, verbose=0)
        kw.update(run.get("fit", {}))
        with tempfile.TemporaryDirectory() as tmp:
            if run.get("checkpoint"):
                kw["checkpoint_dir"] = tmp
            t0 = time.perf_counter()
            trainer.fit(x, y, **kw)
            print(f"{name}: {time.perf_counter() - t0:.3f} s, "
                  f"loss {trainer.history['loss'][-1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
