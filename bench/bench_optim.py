"""Optimizer benchmark: one Adam step over a ~1M-parameter MLP (6 tensors), 1 and 2 threads.

Contenders, all float32 and updating the same state in place:
  ember         ember.ops.adam_step: one fused call (global grad norm + one pass per element)
  numpy         the best vectorised NumPy Adam: in-place ufuncs with out= and one preallocated
                scratch buffer (13 passes over memory per tensor), no grad norm
  torch foreach torch.optim.Adam(foreach=True), when PyTorch is installed
  torch fused   torch.optim.Adam(fused=True), when this PyTorch supports it on the CPU

Every contender is first checked against a float64 NumPy Adam after 3 steps from the same state.
The contenders and the check are bench/workloads.py's (adam_step), the same the pytest-benchmark
suite (bench/test_optim.py) times.
Threads: ember.set_num_threads(n) for ember's OpenMP pool, torch.set_num_threads(n) for PyTorch,
threadpoolctl pinning every BLAS/OpenMP pool NumPy can see (NumPy's ufuncs are single-threaded
anyway). Contenders run in separate blocks with a pause between them, so that one library's idle
spinning workers never share the two cores with another's; each number is a median of samples,
each sample a batch of calls lasting >= 20 ms.

    PYTHONPATH=python python bench/bench_optim.py [--threads 1 2] [--samples 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

from threadpoolctl import threadpool_limits

import workloads as w

import ember
from ember.bench import seconds_per_call

SHAPES = w.ADAM_SHAPES  # 784-1024-200-10 MLP: 1,010,850 parameters in 6 tensors
_SETTLE = w.SETTLE  # seconds for idle workers to stop spinning before another library runs


def sample(fn, min_time: float = 0.02) -> float:
    """Seconds per call of fn over a batch of calls lasting at least min_time."""
    return seconds_per_call(fn, min_time)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=15, help="samples per contender (median)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per contender, alternated")
    args = ap.parse_args(argv)

    torch = w.torch_or_none()
    case = w.adam_step(SHAPES)
    n = int(case.work) // 32
    if torch is not None and "torch fused" not in case.calls:
        print(f"torch fused Adam unavailable on CPU: {w.torch_fused_adam_error(torch)}")
    label = {who: (f"torch {torch.__version__} {who[6:]}" if who.startswith("torch") else who)
             for who in case.contenders}

    # Correctness first: 3 steps from the same state against float64 (workloads.adam_step).
    for who in case.contenders:
        case.check(who)
        print(f"check {label[who]:22s} parameters and update match float64 Adam after "
              f"{w.ADAM_CHECK_STEPS} steps")

    print(f"\nAdam step, {n:,} parameters in {len(SHAPES)} tensors, float32; "
          f"ember ISA {ember._cpu.isa()}; median ms per step")
    print(f"{'threads':>7} {'contender':24} {'ms':>8} {'best ms':>8} {'GB/s*':>7} {'x ember':>8}")
    # Memory traffic of one fused step: read p, g (twice: norm and update), m, v; write p, m, v.
    nbytes = case.work
    speedups = {}
    for nthreads in args.threads:
        ember.set_num_threads(nthreads)
        if torch is not None:
            torch.set_num_threads(nthreads)
        times = {label[who]: [] for who in case.contenders}
        with threadpool_limits(limits=nthreads):
            fresh = w.adam_step(SHAPES)
            steps = {label[who]: fresh.prepare(who) for who in fresh.contenders}
            per_round = max(1, args.samples // args.rounds)
            for _ in range(args.rounds):
                for name, step in steps.items():
                    time.sleep(_SETTLE)
                    step()  # warm-up
                    times[name].extend(sample(step) for _ in range(per_round))
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
