"""Fused softmax cross-entropy (loss + gradient) on the CPU: ember vs NumPy vs PyTorch.

Each contender computes the mean loss and d(loss)/d(logits) for integer labels. Results are
checked against a float64 reference before timing; medians of repeated runs are printed with the
ratio to ember, at 1 and 2 threads (ember's pool for ember, intra-op threads for torch; NumPy's
elementwise code is single-threaded). The cases and their checks are bench/workloads.py's, the
same the pytest-benchmark suite (bench/test_elementwise.py) times.
Run: PYTHONPATH=python python bench/bench_elementwise.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import workloads as w

import ember


def median_time(fn, min_time=0.3, min_reps=5):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128x10,4096x10,4096x1000")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    torch = w.torch_or_none()
    print(f"ember ISA {ember.info()['backends']['cpu']['isa']}; torch "
          f"{torch.__version__ if torch else 'not installed'}")
    print(f"{'shape':>10} {'thr':>3} {'ember us':>9} {'numpy us':>9} {'np/ember':>8} "
          f"{'torch us':>9} {'torch/ember':>11} {'ember GB/s':>10}")
    before = ember.get_num_threads()
    try:
        for shape in args.shapes.split(","):
            rows, classes = (int(v) for v in shape.split("x"))
            case = w.softmax_cross_entropy(rows, classes)
            for who in case.contenders:  # check before timing
                case.check(who)
            for nt in (int(v) for v in args.threads.split(",")):
                ember.set_num_threads(nt)
                te = median_time(case.prepare("ember"))
                tn = median_time(case.prepare("numpy"))
                tt_s, ratio_t = "-", "-"
                if "torch" in case.calls:
                    torch.set_num_threads(nt)
                    tt = median_time(case.prepare("torch"))
                    tt_s, ratio_t = f"{tt * 1e6:9.1f}", f"{tt / te:11.2f}"
                gbs = case.work / te / 1e9  # read logits + write grad
                print(f"{shape:>10} {nt:>3} {te * 1e6:9.1f} {tn * 1e6:9.1f} {tn / te:8.2f} "
                      f"{tt_s:>9} {ratio_t:>11} {gbs:10.1f}")
    finally:
        ember.set_num_threads(before)


if __name__ == "__main__":
    main()
