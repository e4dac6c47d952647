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
import statistics
import sys
import time

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
    from ember import nn

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
            trainer = ember.Trainer(nn.MLP(sizes, seed=0), optimizer="adam", lr=1e-3,
                                    metrics=("accuracy",))
            trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up
            ember_rates = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)
                ember_rates.append(args.samples / (time.perf_counter() - t0))
            e = statistics.median(ember_rates)
            t = None
            if torch is not None:
                t = torch_rate(torch, sizes, batch, x, y, args.repeats)
            rows.append((name, batch, e, t))

    print(f"\ntraining throughput, Adam, {args.samples} samples/epoch, {args.threads} threads "
          f"(ember isa {ember.info()['backends']['cpu']['isa']})")
    print(f"| model | batch | ember samples/s | PyTorch samples/s | ember / PyTorch |")
    print("|---|---|---|---|---|")
    for name, batch, e, t in rows:
        ratio = f"{e / t:.2f}x" if t else "n/a (torch not installed)"
        tt = f"{t:,.0f}" if t else "-"
        print(f"| {name} | {batch} | {e:,.0f} | {tt} | {ratio} |")


def torch_rate(torch, sizes, batch, x, y, repeats):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    n = len(x)
    gen = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = tx.index_select(0, idx), ty.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()

    epoch()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


if __name__ == "__main__":
    sys.exit(main())
