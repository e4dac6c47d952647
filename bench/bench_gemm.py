"""GEMM family benchmark: ember vs NumPy (OpenBLAS), 1 and 2 threads, ratio table.

Every case is checked against a float64 reference before it is timed. The cases and their
checks are bench/workloads.py's, the same the pytest-benchmark suite (bench/test_gemm.py) times.
Both libraries run with the same thread count (ember.set_num_threads; OpenBLAS pinned with
threadpoolctl), and samples of the two are interleaved so that load from other processes hits
both alike; each number is a median.

    PYTHONPATH=python python bench/bench_gemm.py [--threads 1 2] [--samples 21] [--quick] [--cpu-time]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import workloads as w

import ember

SQUARE = (256, 512, 1024, 2048)
_SETTLE = w.SETTLE  # seconds for idle OpenMP / OpenBLAS workers to stop spinning
MLP = ((128, 784, 256), (128, 256, 256), (128, 256, 10))  # (batch, in, out): x @ W.T


_clock = time.perf_counter


def sample(fn, min_time: float = 2e-3) -> float:
    """Seconds per call of fn, from one batch of calls that lasts at least min_time."""
    reps, t = 1, 0.0
    while True:
        t0 = _clock()
        for _ in range(reps):
            fn()
        t = _clock() - t0
        if t >= min_time:
            return t / reps
        reps *= 2 if t * 4 < min_time else 1
        reps = max(reps, int(reps * min_time / max(t, 1e-9)) + 1) if t * 4 >= min_time else reps


def compare(ember_fn, numpy_fn, samples: int, rounds: int = 3):
    """Per-call seconds of each: (median, best) for ember, then for NumPy.

    The two run in separate blocks, never interleaved: after a call each library's idle workers
    spin for a while (GOMP for its spin count, OpenBLAS up to ~0.1 s), and on a 2-core machine a
    spinning pool halves the other's speed. The pause before a block lets the other pool's workers
    go to sleep. The best sample is printed too: on a machine shared with other jobs it is the
    better estimate of what the kernel does when it has the cores to itself."""
    te, tn = [], []
    per_round = max(1, samples // rounds)
    for _ in range(rounds):
        for fn, times in ((ember_fn, te), (numpy_fn, tn)):
            time.sleep(_SETTLE)
            fn()  # warm-up: packing buffers, thread pools, page faults
            times.extend(sample(fn) for _ in range(per_round))
    return (statistics.median(te), min(te)), (statistics.median(tn), min(tn))


def check(case: w.Case) -> None:
    """Both contenders against the float64 reference before timing (workloads.Case.check)."""
    for who in ("ember", "numpy"):
        try:
            case.check(who)
        except AssertionError as exc:
            raise SystemExit(f"not timing a wrong kernel: {exc}") from None


def row(name: str, threads: int, flops: float, te, tn, target) -> str:
    """One table line: median GFLOP/s of each, the ratio of medians, and the ratio of bests."""
    ge, gn = flops / te[0] * 1e-9, flops / tn[0] * 1e-9
    ratio, best = tn[0] / te[0], tn[1] / te[1]
    verdict = "" if target is None else f"{target:.2f} {'ok' if ratio >= target else 'LOW'}"
    return f"{name:<34}{threads:>3}{ge:>9.1f}{gn:>9.1f}{ratio:>7.2f}{best:>7.2f}  {verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=21)
    ap.add_argument("--quick", action="store_true", help="skip 2048^3")
    ap.add_argument("--cpu-time", action="store_true",
                    help="1-thread runs: time with the calling thread's CPU clock, which does not "
                         "count time the thread was descheduled (for a machine busy with other jobs)")
    args = ap.parse_args()

    from ember.bench import core_check
    print(f"ember {ember.__version__}, CPU build {ember._cpu.isa()}, numpy {np.__version__}")
    print("before: " + core_check(max(args.threads)))
    print("GFLOP/s are medians; ratio = numpy time / ember time (medians), best = the same for "
          "the fastest samples")
    print(f"{'case':<34}{'thr':>3}{'ember':>9}{'numpy':>9}{'ratio':>7}{'best':>7}  target")
    global _clock
    for threads in args.threads:
        ember.set_num_threads(threads)
        _clock = time.thread_time if args.cpu_time and threads == 1 else time.perf_counter
        with threadpool_limits(limits=threads, user_api="blas"):
            cases = [w.matmul(s, s, s) for s in SQUARE if not (args.quick and s > 1024)]
            cases += [w.matmul(b, o, i) for b, i, o in MLP]
            targets = [0.85] * len(cases)
            for b, i, o in MLP:
                cases += [w.linear_forward(b, i, o), w.linear_backward(b, i, o)]
                targets += [1.2, None]
            for case, target in zip(cases, targets):
                check(case)
                te, tn = compare(case.prepare("ember"), case.prepare("numpy"), args.samples)
                print(row(case.name, threads, case.work, te, tn, target), flush=True)
    print("after:  " + core_check(max(args.threads)))


if __name__ == "__main__":
    main()
