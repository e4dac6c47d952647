"""Digits (1797 8x8 images): 64-256-256-10 MLP, Adam lr 1e-3, batch 32, 100 epochs.
Wall time of the whole fit and test accuracy for ember, scikit-learn's MLPClassifier and
PyTorch (CPU), same split, model, epochs and batch size, measured in the same run.

    python bench/train_digits.py [--threads 2] [--epochs 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import numpy as np
    from threadpoolctl import threadpool_limits

    import ember
    from ember.data import train_val_split
    from ember.datasets import load_digits

    ember.set_num_threads(args.threads)
    x, y = load_digits()
    xtr, ytr, xte, yte = train_val_split(x, y, 0.2, seed=0)
    results = {}

    def run_ember():
        t = ember.Trainer(ember.nn.MLP([64, 256, 256, 10], seed=0), optimizer="adam", lr=1e-3)
        t0 = time.perf_counter()
        t.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch, verbose=0)
        return time.perf_counter() - t0, float(np.mean(t.predict(xte) == yte))

    def run_sklearn():
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        clf = MLPClassifier((256, 256), solver="adam", learning_rate_init=1e-3, alpha=0.0,
                            batch_size=args.batch, max_iter=args.epochs, tol=0.0,
                            n_iter_no_change=args.epochs + 1, random_state=0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xtr, ytr)
        return time.perf_counter() - t0, float(clf.score(xte, yte))

    def run_torch():
        import torch
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tx, ty = torch.from_numpy(xtr), torch.from_numpy(ytr)
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            perm = torch.randperm(len(tx))
            for i in range(0, len(tx), args.batch):
                idx = perm[i:i + args.batch]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx]).backward()
                opt.step()
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
        return elapsed, acc

    peers = [("ember", run_ember), ("scikit-learn MLPClassifier", run_sklearn),
             ("PyTorch (CPU, eager)", run_torch)]
    from ember.bench import core_check
    checks = [core_check(args.threads)]
    runs: dict = {name: [] for name, _ in peers}
    with threadpool_limits(args.threads):
        # Rounds alternate the trainers, so that a slow spell of the machine hits all of them.
        for _ in range(args.repeats):
            for name, fn in peers:
                if runs[name] is None:
                    continue
                try:
                    runs[name].append(fn())
                except ImportError as exc:
                    runs[name] = None
                    print(f"{name}: skipped ({exc})")
    for name, r in runs.items():
        results[name] = None if r is None else (statistics.median(v[0] for v in r),
                                                statistics.median(v[1] for v in r))
    base = results["ember"][0]
    print(f"\ndigits, 64-256-256-10, Adam lr 1e-3, batch {args.batch}, {args.epochs} epochs, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| trainer | fit wall time | test accuracy | time / ember's |")
    print("|---|---|---|---|")
    for name, r in results.items():
        if r is None:
            print(f"| {name} | not installed | - | - |")
        else:
            print(f"| {name} | {r[0]:.2f} s | {r[1]:.2%} | {r[0] / base:.2f}x |")
    checks.append(core_check(args.threads))
    print("\n".join(["before: " + checks[0], "after:  " + checks[1]]))


if __name__ == "__main__":
    main()
