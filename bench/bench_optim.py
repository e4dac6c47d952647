"""Optimizer benchmark: one Adam step over a ~1M-parameter MLP (6 tensors), 1 and 2 threads.

Contenders, all float32 and updating the same state in place:
  ember         ember.ops.adam_step: one fused call (global grad norm + one pass per element)
  numpy         the best vectorised NumPy Adam: in-place ufuncs with out= and one preallocated
                scratch buffer (13 passes over memory per tensor), no grad norm
  torch foreach torch.optim.Adam(foreach=True), when PyTorch is installed
  torch fused   torch.optim.Adam(fused=True), when this PyTorch supports it on the CPU

Every contender is first checked against a float64 NumPy Adam after 3 steps from the same state.
Threads: ember.set_num_threads(n) for ember's OpenMP pool, torch.set_num_threads(n) for PyTorch,
threadpoolctl pinning every BLAS/OpenMP pool NumPy can see (NumPy's ufuncs are single-threaded
anyway). Contenders run in separate blocks with a pause between them, so that one library's idle
spinning workers never share the two cores with another's; each number is a median of samples,
each sample a batch of calls lasting >= 20 ms.

    PYTHONPATH=python python bench/bench_optim.py [--threads 1 2] [--samples 15]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import ember
import ember.ops as ops
from ember.bench import seconds_per_call

# (out, in) weights and biases of a 784-1024-200-10 MLP: 1,010,850 parameters in 6 tensors.
SHAPES = [(1024, 784), (1024,), (200, 1024), (200,), (10, 200), (10,)]
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
_SETTLE = 0.3  # seconds for idle OpenMP workers to stop spinning before another library runs


def rel_error(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref))


class NumpyAdam:
    """Adam with in-place ufuncs only: what a careful NumPy user can write."""

    def __init__(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.scratch = np.empty(max(p.size for p in params), np.float32)
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        b1, b2 = BETAS
        step_size = LR / (1 - b1 ** self.t)
        inv_bc2_sqrt = 1 / math.sqrt(1 - b2 ** self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            tmp = self.scratch[:p.size].reshape(p.shape)
            np.subtract(g, m, out=tmp)         # m += (1 - b1) * (g - m)
            tmp *= 1 - b1
            m += tmp
            v *= b2                            # v = b2 * v + (1 - b2) * g * g
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)                # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
            tmp *= inv_bc2_sqrt
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= -step_size
            p += tmp


class EmberAdam:
    def __init__(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        ops.adam_step(params, grads, self.m, self.v, lr=LR, betas=BETAS, eps=EPS, step=self.t)


class TorchAdam:
    def __init__(self, torch, params, grads, **kind):
        # The tensors share memory with the NumPy arrays, so all contenders see the same data.
        self.tp = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
        for tp, g in zip(self.tp, grads):
            tp.grad = torch.from_numpy(g)
        self.opt = torch.optim.Adam(self.tp, lr=LR, betas=BETAS, eps=EPS, **kind)
        self.torch = torch

    def step(self, params, grads):
        with self.torch.no_grad():
            self.opt.step()


def reference_adam(params, grads_seq):
    """float64 Adam from the published rule."""
    p = [x.astype(np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    b1, b2 = BETAS
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] -= LR / (1 - b1 ** t) * m[i] / (np.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + EPS)
    return p


def sample(fn, min_time: float = 0.02) -> float:
    """Seconds per call of fn over a batch of calls lasting at least min_time."""
    return seconds_per_call(fn, min_time)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=15, help="samples per contender (median)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per contender, alternated")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) * 0.05 for s in SHAPES]
    grads = [rng.standard_normal(s).astype(np.float32) * 0.01 for s in SHAPES]
    n = sum(p.size for p in init)

    makers = {"ember": lambda p: EmberAdam(p), "numpy": lambda p: NumpyAdam(p)}
    if torch is not None:
        makers[f"torch {torch.__version__} foreach"] = (
            lambda p: TorchAdam(torch, p, grads, foreach=True))
        try:  # fused Adam on the CPU arrived in PyTorch 2.4
            TorchAdam(torch, [x.copy() for x in init], grads, fused=True).step(None, None)
            makers[f"torch {torch.__version__} fused"] = (
                lambda p: TorchAdam(torch, p, grads, fused=True))
        except (RuntimeError, ValueError, TypeError) as exc:
            print(f"torch fused Adam unavailable on CPU: {exc}")

    # Correctness first: 3 steps from the same state against float64.
    ref = reference_adam(init, [grads] * 3)
    for name, make in makers.items():
        params = [x.copy() for x in init]
        opt = make(params)
        for _ in range(3):
            opt.step(params, grads)
        err = max(rel_error(p, r) for p, r in zip(params, ref))
        # Small updates on O(0.05) params: compare the change, the part Adam computes.
        derr = max(rel_error(p - i, r - i) for p, r, i in zip(params, ref, init))
        assert derr <= 1e-4 and err <= 1e-5, f"{name}: update rel. error {derr:.2e}, params {err:.2e}"
        print(f"check {name:22s} params rel. error {err:.1e}, update rel. error {derr:.1e}")

    print(f"\nAdam step, {n:,} parameters in {len(SHAPES)} tensors, float32; "
          f"ember ISA {ember._cpu.isa()}; median ms per step")
    print(f"{'threads':>7} {'contender':24} {'ms':>8} {'best ms':>8} {'GB/s*':>7} {'x ember':>8}")
    # Memory traffic of one fused step: read p, g (twice: norm and update), m, v; write p, m, v.
    nbytes = 8 * 4 * n
    speedups = {}
    for nthreads in args.threads:
        ember.set_num_threads(nthreads)
        if torch is not None:
            torch.set_num_threads(nthreads)
        times = {name: [] for name in makers}
        with threadpool_limits(limits=nthreads):
            opts = {}
            for name, make in makers.items():
                params = [x.copy() for x in init]
                opts[name] = (make(params), params)
            per_round = max(1, args.samples // args.rounds)
            for _ in range(args.rounds):
                for name, (opt, params) in opts.items():
                    time.sleep(_SETTLE)
                    opt.step(params, grads)  # warm-up
                    times[name].extend(sample(lambda: opt.step(params, grads))
                                       for _ in range(per_round))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, t in med.items():
            print(f"{nthreads:>7} {name:24} {t * 1e3:8.3f} {min(times[name]) * 1e3:8.3f} "
                  f"{nbytes / t / 1e9:7.1f} {t / med['ember']:8.2f}")
        speedups[nthreads] = med["numpy"] / med["ember"]
    print("\n* GB/s as if each contender moved only the fused step's 32 bytes per parameter. "
          "'x ember': median time / ember's median time (> 1: ember is faster).")
    for nthreads, s in speedups.items():
        print(f"ember vs vectorised NumPy, {nthreads} thread(s): {s:.1f}x "
              f"(target >= 3x: {'met' if s >= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
