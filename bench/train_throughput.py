"""Steady-state training throughput (samples/s): ember vs PyTorch (CPU), same model, data, batch
size and optimizer (Adam, lr 1e-3), measured in the same run.

    python bench/train_throughput.py [--threads 2] [--seconds 3]

Threads: OMP_NUM_THREADS and ember.set_num_threads for ember, torch.set_num_threads for PyTorch,
threadpoolctl for OpenBLAS, all set to --threads. Each figure is the median of 5 timed windows
after a warm-up epoch. ember is timed through Trainer.fit (what users run: shuffling, batching,
metrics included); PyTorch through the loop an expert writes (pre-made tensors, index_select
batches, zero_grad(set_to_none=True)), no DataLoader overhead.
"""
from __future__ import annotations

import argparse
import os
import sys

CASES = [  # (name, sizes, batch)
    ("MLP 784-256-256-10", [784, 256, 256, 10], 128),
    ("MLP 784-256-256-10", [784, 256, 256, 10], 32),
    ("MLP 64-128-128-10", [64, 128, 128, 10], 32),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8192, help="training set size")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import numpy as np
    from threadpoolctl import threadpool_limits

    import ember
    from ember.bench import ember_train_rate, torch_train_rate

    ember.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    rows = []
    with threadpool_limits(args.threads):
        for name, sizes, batch in CASES:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.samples, sizes[0])).astype(np.float32)
            y = rng.integers(0, sizes[-1], args.samples)
            e = ember_train_rate(sizes, batch, x, y, args.repeats)
            t = None
            if torch is not None:
                t = torch_train_rate(torch, sizes, batch, x, y, args.repeats)
            rows.append((name, batch, e, t))

    print(f"\ntraining throughput, Adam, {args.samples} samples/epoch, {args.threads} threads "
          f"(ember isa {ember.info()['backends']['cpu']['isa']})")
    print("| model | batch | ember samples/s | PyTorch samples/s | ember / PyTorch |")
    print("|---|---|---|---|---|")
    for name, batch, e, t in rows:
        ratio = f"{e / t:.2f}x" if t else "n/a (torch not installed)"
        tt = f"{t:,.0f}" if t else "-"
        print(f"| {name} | {batch} | {e:,.0f} | {tt} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
