"""EmberClassifier vs scikit-learn's MLPClassifier on digits: test accuracy and fit time.

Same architecture, epochs, batch size, optimizer (Adam), learning rate and L2 penalty, on a
fixed stratified 75/25 split of ember's bundled digits (1797 x 64, 10 classes). Neither stops
early (tol=0, n_iter_no_change > epochs), so both run exactly ``--epochs`` epochs. Every thread pool is pinned to ``--threads`` threads:
threadpoolctl limits NumPy's BLAS (OpenBLAS) and any OpenMP runtime, and
``ember.set_num_threads`` sets ember's OpenMP pool. Each run uses a different seed (0, 1, ...)
for both libraries; the table reports medians over ``--repeats`` runs and each fit time as a
multiple of ember's (the speed-up). MLPClassifier is timed twice: given float32 X (computes in
float32, like for like) and given float64 X (computes in float64, what it does with the float64
arrays scikit-learn's loaders return); ember computes in float32 either way.

Two architectures by default: MLPClassifier's default, one hidden layer of 100 (where per-batch
overhead decides the ratio), and two hidden layers of 256 (where matrix products take most of
either library's time, so the ratio approaches that of the GEMMs). Every timed fit starts after
a 0.3 s pause: OpenBLAS's worker threads keep spinning for tens of milliseconds after NumPy's last
matrix product and would slow whichever fit comes next (measured: an ember fit right after
MLPClassifier's took 1.5-1.8x as long); the pause lets every pool go idle, for both libraries.

Usage:
    python bench/bench_sklearn.py [--threads N] [--repeats 5] [--epochs 100]
                                  [--hidden 100 256,256] [--batch-size 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every pool (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="runs per library (median reported)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", nargs="+", default=["100", "256,256"],
                   help="architectures: hidden layer sizes, comma-separated (one table each)")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=1e-4)
    args = p.parse_args(argv)
    from ember.bench import core_check
    print("before: " + core_check(args.threads))
    for spec in args.hidden:
        bench(args, tuple(int(h) for h in spec.split(",")))
    print("after:  " + core_check(args.threads))
    return 0


def bench(args, hidden) -> None:
    """One table: every estimator on ``hidden``, ``args.repeats`` interleaved runs."""
    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_info, threadpool_limits

    import ember
    from ember.datasets import load_digits
    from ember.sklearn import EmberClassifier

    x, y = load_digits()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    common = dict(hidden_layer_sizes=hidden, activation="relu", batch_size=args.batch_size,
                  learning_rate_init=args.lr, alpha=args.alpha, max_iter=args.epochs, tol=0.0,
                  n_iter_no_change=args.epochs + 1, shuffle=True)
    # (estimator factory, training X, test X). MLPClassifier computes in the dtype it is given:
    # float32 is the like-for-like row; float64 is what it does with float64 data (the dtype
    # scikit-learn's own loaders return). ember always computes in float32.
    sk = f"sklearn {sklearn.__version__} MLPClassifier"
    runs = {
        "ember EmberClassifier (X float32)": (
            lambda seed: EmberClassifier(optimizer="adam", random_state=seed, **common), xtr, xte),
        f"{sk} (X float32)": (
            lambda seed: MLPClassifier(solver="adam", random_state=seed, **common), xtr, xte),
        f"{sk} (X float64)": (
            lambda seed: MLPClassifier(solver="adam", random_state=seed, **common),
            xtr.astype(np.float64), xte.astype(np.float64)),
    }
    results = {name: {"acc": [], "time": []} for name in runs}
    with threadpool_limits(limits=args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ember.set_num_threads(args.threads)
        ember_threads = ember.get_num_threads()
        pools = sorted({f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()})
        # warm-up (first-call costs: thread pools, page faults), not timed
        for make, xa, _ in runs.values():
            make(0).set_params(max_iter=1).fit(xa[:256], ytr[:256])
        for seed in range(args.repeats):
            for name, (make, xa, xb) in runs.items():  # interleaved: drifts hit all alike
                est = make(seed)
                time.sleep(0.3)  # idle thread pools (see the module's docstring)
                t0 = time.perf_counter()
                est.fit(xa, ytr)
                results[name]["time"].append(time.perf_counter() - t0)
                assert est.n_iter_ == args.epochs, (name, est.n_iter_)
                results[name]["acc"].append(float(np.mean(est.predict(xb) == yte)))

    print(f"digits: train {len(xtr)}, test {len(xte)}; MLP {hidden}, relu, adam lr={args.lr}, "
          f"alpha={args.alpha}, batch {args.batch_size}, {args.epochs} epochs, float32")
    print(f"threads: {args.threads} (ember OpenMP={ember_threads}; "
          f"threadpoolctl: {', '.join(pools)}); median of {args.repeats} runs "
          f"(seeds 0..{args.repeats - 1})")
    ember_name = next(iter(runs))
    ember_time = statistics.median(results[ember_name]["time"])
    ember_acc = statistics.median(results[ember_name]["acc"])
    # "paired": the median over rounds of (this fit's time / ember's fit time in the same round);
    # a slow spell of the shared machine then slows both sides of a ratio.
    rows = [("estimator", "test acc", "acc - ember", "fit time (s)", "time / ember's",
             "paired", "runs (s)")]
    for name, r in results.items():
        t, acc = statistics.median(r["time"]), statistics.median(r["acc"])
        paired = statistics.median(a / b for a, b in zip(r["time"], results[ember_name]["time"]))
        rows.append((name, f"{acc:.4f}", f"{100 * (acc - ember_acc):+.2f} pt", f"{t:.3f}",
                     f"{t / ember_time:.2f}x", f"{paired:.2f}x",
                     " ".join(f"{v:.3f}" for v in r["time"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()


if __name__ == "__main__":
    raise SystemExit(main())
