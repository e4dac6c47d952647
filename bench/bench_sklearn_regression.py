"""EmberRegressor vs scikit-learn's MLPRegressor: training R^2 and fit time on a synthetic
regression (make_regression, 2000 x 20, standardised target), same architecture, epochs, batch
size, Adam learning rate and L2 penalty; neither stops early. As in bench_sklearn.py: pools
pinned to --threads, rounds interleaved with a 0.3 s pause before every timed fit, medians, and
MLPRegressor timed on float32 X (like for like) and on float64 X.

    python bench/bench_sklearn_regression.py [--threads 2] [--repeats 3] [--hidden 100]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", default="100", help="hidden layer sizes, comma-separated")
    args = p.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))

    import numpy as np
    from sklearn.datasets import make_regression
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from threadpoolctl import threadpool_limits

    import ember
    from ember.bench import core_check
    from ember.sklearn import EmberRegressor

    print("before: " + core_check(args.threads))
    x, y = make_regression(n_samples=2000, n_features=20, noise=0.1, random_state=0)
    y = (y - y.mean()) / y.std()
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    common = dict(hidden_layer_sizes=hidden, batch_size=200, max_iter=args.epochs, tol=0.0,
                  n_iter_no_change=args.epochs + 1, learning_rate_init=1e-3, alpha=1e-4)
    runs = {"ember EmberRegressor (X float32)": (EmberRegressor, x32, y32),
            "sklearn MLPRegressor (X float32)": (MLPRegressor, x32, y32),
            "sklearn MLPRegressor (X float64)": (MLPRegressor, x, y)}
    results = {name: [] for name in runs}
    with threadpool_limits(limits=args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ember.set_num_threads(args.threads)
        for cls, xa, ya in runs.values():  # warm-up, not timed
            cls(**dict(common, max_iter=1), random_state=0).fit(xa[:256], ya[:256])
        for seed in range(args.repeats):
            for name, (cls, xa, ya) in runs.items():
                est = cls(**common, random_state=seed)
                time.sleep(0.3)
                t0 = time.perf_counter()
                est.fit(xa, ya)
                results[name].append((time.perf_counter() - t0, est.score(xa, ya)))
    print(f"make_regression 2000x20; MLP {hidden}, relu, adam lr=1e-3, alpha=1e-4, batch 200, "
          f"{args.epochs} epochs; {args.threads} threads; median of {args.repeats} runs")
    base = statistics.median(t for t, _ in next(iter(results.values())))
    for name, r in results.items():
        t = statistics.median(v[0] for v in r)
        r2 = statistics.median(v[1] for v in r)
        print(f"{name:34s} train R2 {r2:.4f}  fit {t:.3f} s  {t / base:.2f}x ember's")
    print("after:  " + core_check(args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
