"""Steady-state training throughput (samples/s): ember vs PyTorch (CPU), same model, data, batch
size and optimizer (Adam, lr 1e-3), measured in the same run.

    python bench/train_throughput.py [--threads 2] [--repeats 5] [--rounds 3]

Threads: OMP_NUM_THREADS and ember.set_num_threads for ember, torch.set_num_threads for PyTorch,
threadpoolctl for OpenBLAS, all set to --threads. Each framework runs in its own child process
(PyTorch ships its own OpenMP runtime: two runtimes in one process, each with spinning idle
workers, would slow whichever runs second), alternating ember, PyTorch, ember, ... for --rounds
rounds so that background load hits both alike. A round's figure is the median of --repeats
timed epochs after a warm-up epoch; the table gives the median over rounds. ember is timed
through Trainer.fit (what users run: shuffling, batching, metrics included); PyTorch through the
loop an expert writes (pre-made tensors, index_select batches, zero_grad(set_to_none=True)).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = [  # (name, sizes, batch)
    ("MLP 784-256-256-10", [784, 256, 256, 10], 128),
    ("MLP 784-256-256-10", [784, 256, 256, 10], 32),
    ("MLP 64-128-128-10", [64, 128, 128, 10], 32),
]


def child(framework: str, threads: int, samples: int, repeats: int) -> dict:
    """Runs in a fresh process: one framework, every case; prints {case index: samples/s}."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import ember
    from ember.bench import ember_train_rate, torch_train_rate

    ember.set_num_threads(threads)
    torch = None
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    out = {}
    with threadpool_limits(threads):
        for i, (_, sizes, batch) in enumerate(CASES):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((samples, sizes[0])).astype(np.float32)
            y = rng.integers(0, sizes[-1], samples)
            out[i] = (ember_train_rate(sizes, batch, x, y, repeats) if framework == "ember"
                      else torch_train_rate(torch, sizes, batch, x, y, repeats))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8192, help="training set size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=["ember", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.samples, args.repeats)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    from ember.bench import core_check
    checks = [core_check(args.threads)]  # before importing torch here (its own OpenMP runtime)
    try:
        import torch  # noqa: F401  (only whether it is installed)
        frameworks = ["ember", "torch"]
    except ImportError:
        frameworks = ["ember"]
    rates: dict = {f: {i: [] for i in range(len(CASES))} for f in frameworks}
    for _ in range(args.rounds):
        for f in frameworks:
            cmd = [sys.executable, __file__, "--child", f, "--threads", str(args.threads),
                   "--samples", str(args.samples), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            for i, r in json.loads(res.stdout.strip().splitlines()[-1]).items():
                rates[f][int(i)].append(r)

    import ember
    print(f"\ntraining throughput, Adam, {args.samples} samples/epoch, {args.threads} threads "
          f"(ember isa {ember.info()['backends']['cpu']['isa']}), median of {args.rounds} "
          "alternating rounds, each framework in its own process")
    print("| model | batch | ember samples/s | PyTorch samples/s | ember / PyTorch |")
    print("|---|---|---|---|---|")
    for i, (name, _, batch) in enumerate(CASES):
        e = statistics.median(rates["ember"][i])
        t = statistics.median(rates["torch"][i]) if "torch" in rates else None
        ratio = f"{e / t:.2f}x" if t else "n/a (torch not installed)"
        tt = f"{t:,.0f}" if t else "-"
        print(f"| {name} | {batch} | {e:,.0f} | {tt} | {ratio} |")
    checks.append(core_check(args.threads))
    print("\n".join(["before: " + checks[0], "after:  " + checks[1]]))


if __name__ == "__main__":
    sys.exit(main())
