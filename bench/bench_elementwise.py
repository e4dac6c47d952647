"""Fused softmax cross-entropy (loss + gradient) on the CPU: ember vs NumPy vs PyTorch.

Each contender computes the mean loss and d(loss)/d(logits) for integer labels. Results are
checked against a float64 reference before timing; medians of repeated runs are printed with the
ratio to ember, at 1 and 2 threads (OpenMP for ember, intra-op threads for torch; NumPy's
elementwise code is single-threaded). Run: PYTHONPATH=python python bench/bench_elementwise.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import ember
import ember.ops as ops

try:
    import torch
except ImportError:  # optional peer
    torch = None


def numpy_ce(logits, labels):
    rows = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    idx = np.arange(rows)
    loss = float(np.mean(np.log(s[:, 0]) - (logits[idx, labels] - m[:, 0])))
    grad = e / s
    grad[idx, labels] -= 1.0
    grad /= rows
    return loss, grad


def torch_ce(logits_t, labels_t):
    x = logits_t.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x, labels_t)
    loss.backward()
    return loss.item(), x.grad


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
    rng = np.random.default_rng(0)
    print(f"ember ISA {ember.info()['backends']['cpu']['isa']}; torch "
          f"{torch.__version__ if torch else 'not installed'}")
    print(f"{'shape':>10} {'thr':>3} {'ember us':>9} {'numpy us':>9} {'np/ember':>8} "
          f"{'torch us':>9} {'torch/ember':>11} {'ember GB/s':>10}")
    before = ember.get_num_threads()
    try:
        for shape in args.shapes.split(","):
            rows, classes = (int(v) for v in shape.split("x"))
            logits = (rng.standard_normal((rows, classes)) * 2).astype(np.float32)
            labels = rng.integers(0, classes, rows)
            grad = np.empty_like(logits)
            # check before timing
            ref_l, ref_g = numpy_ce(logits.astype(np.float64), labels)
            l, g = ops.softmax_cross_entropy(logits, labels, grad=grad)
            assert abs(l - ref_l) <= 1e-5 * abs(ref_l) and np.abs(g - ref_g).max() <= 1e-6
            for nt in (int(v) for v in args.threads.split(",")):
                ember.set_num_threads(nt)
                te = median_time(lambda: ops.softmax_cross_entropy(logits, labels, grad=grad))
                tn = median_time(lambda: numpy_ce(logits, labels))
                tt_s, ratio_t = "-", "-"
                if torch is not None:
                    torch.set_num_threads(nt)
                    xt, yt = torch.from_numpy(logits), torch.from_numpy(labels)
                    tl, tg = torch_ce(xt, yt)
                    assert abs(tl - ref_l) <= 1e-4 * abs(ref_l)
                    tt = median_time(lambda: torch_ce(xt, yt))
                    tt_s, ratio_t = f"{tt * 1e6:9.1f}", f"{tt / te:11.2f}"
                gbs = 2 * logits.nbytes / te / 1e9  # read logits + write grad
                print(f"{shape:>10} {nt:>3} {te * 1e6:9.1f} {tn * 1e6:9.1f} {tn / te:8.2f} "
                      f"{tt_s:>9} {ratio_t:>11} {gbs:10.1f}")
    finally:
        ember.set_num_threads(before)


if __name__ == "__main__":
    main()
