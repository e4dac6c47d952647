"""GEMM thread scaling, ember vs NumPy (OpenBLAS): each side in its own process, interleaved.

    PYTHONPATH=python python bench/bench_gemm_scaling.py [--rounds 6] [--seconds 1.5] [--pair]
                       [--cases 1024,1024,1024 128,256,784] [--wait-idle 30]

A case is m,n,k: C (m x n) = A (m x k) B (k x n), row-major float32 (128,256,784 is the
README's 128x784 . 784x256). Every round runs, for each case and thread count (1, 2), one child
process for ember and one for NumPy, alternating, so that slow spells of this shared VM hit both
alike. A child pins its pool (ember.set_num_threads; threadpoolctl for OpenBLAS; the
environment's OMP/OPENBLAS_NUM_THREADS too, so the other library's pool stays at the same
count), warms up, and reports the median GFLOP/s of back-to-back calls over --seconds. The table
gives medians over rounds, the ratio ember / NumPy, each library's 2-thread / 1-thread scaling,
and the median of the per-round paired ratios; "best" columns give the fastest sample
of any round.

--pair also runs two 1-thread processes of the same library at once, each pinned to its own CPU
(os.sched_setaffinity): their rate against one alone shows what the two cores share (caches,
memory, the host), apart from anything a thread pool does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from ember.bench import wait_idle


def child(lib: str, threads: int, m: int, n: int, k: int, seconds: float, cpu: int | None,
          start: float | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import numpy as np
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    if lib == "ember":
        import ember
        import ember.ops as ops
        ember.set_num_threads(threads)

        def fn():
            ops.gemm(a, b, out=c)
    else:
        def fn():
            np.matmul(a, b, out=c)
    with threadpool_limits(limits=threads, user_api="blas"):
        ref = a.astype(np.float64) @ b
        fn()
        err = float(np.linalg.norm(c - ref) / np.linalg.norm(ref))
        assert err < 1e-5, err
        reps = 1
        while True:  # calls per sample: ~20 ms
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            if time.perf_counter() - t0 > 0.02:
                break
            reps *= 2
        if start is not None:
            while time.time() < start:
                time.sleep(0.001)
        rates = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            rates.append(2.0 * m * n * k * reps / (time.perf_counter() - t0) / 1e9)
    print(json.dumps([statistics.median(rates), max(rates)]))


def spawn(lib, threads, case, seconds, cpu=None, start=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", lib, "--threads", str(threads), "--seconds",
           str(seconds), "--cases", ",".join(map(str, case))]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if start is not None:
        cmd += ["--start", repr(start)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def result(p) -> float:
    out, _ = p.communicate()
    if p.returncode:
        raise SystemExit(f"child failed ({p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--cases", nargs="+", default=["1024,1024,1024", "128,256,784"])
    ap.add_argument("--pair", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for the machine to be idle")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cases = [tuple(int(v) for v in c.split(",")) for c in args.cases]
    if args.child:
        child(args.child, args.threads, *cases[0], args.seconds, args.cpu, args.start)
        return
    libs = ("ember", "numpy")
    keys = [(c, lib, t) for c in cases for t in (1, 2) for lib in libs]
    if args.pair:
        keys += [(c, lib, "pair") for c in cases for lib in libs]
    rates: dict = {key: [] for key in keys}  # each child's median sample
    best: dict = {key: [] for key in keys}   # each child's fastest sample
    for r in range(args.rounds):
        order = keys if r % 2 == 0 else keys[::-1]
        for key in order:
            case, lib, t = key
            wait_idle(args.wait_idle)
            if t == "pair":
                start = time.time() + 2.0  # after both children have imported and warmed up
                ps = [spawn(lib, 1, case, args.seconds, cpu=i, start=start) for i in (0, 1)]
                res = [result(p) for p in ps]
                rates[key].append(statistics.mean(x[0] for x in res))
                best[key].append(statistics.mean(x[1] for x in res))
            else:
                res = result(spawn(lib, t, case, args.seconds))
                rates[key].append(res[0])
                best[key].append(res[1])
        print(f"round {r + 1}: " + "  ".join(
            f"{c[0]}x{c[1]}x{c[2]} {lib} {t}: {rates[(c, lib, t)][-1]:.0f}/{best[(c, lib, t)][-1]:.0f}"
            for c, lib, t in keys), flush=True)

    def med(key):
        return statistics.median(rates[key])

    def top(key):
        return max(best[key])

    print("\nGFLOP/s, medians over rounds (paired: median of the per-round ratios); best: the "
          "fastest sample of any round (what the kernel does when the VM leaves it both cores)")
    print("| case | threads | ember | NumPy | ember / NumPy (paired) | best: ember | NumPy | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases:
        name = f"{c[0]}x{c[2]} . {c[2]}x{c[1]}" if c[0] != c[2] else f"{c[0]}^3"
        for t in (1, 2):
            e, n = rates[(c, "ember", t)], rates[(c, "numpy", t)]
            paired = statistics.median(a / b for a, b in zip(e, n))
            print(f"| {name} | {t} | {med((c, 'ember', t)):.1f} | {med((c, 'numpy', t)):.1f} | "
                  f"{med((c, 'ember', t)) / med((c, 'numpy', t)):.2f} ({paired:.2f}) | "
                  f"{top((c, 'ember', t)):.1f} | {top((c, 'numpy', t)):.1f} | "
                  f"{top((c, 'ember', t)) / top((c, 'numpy', t)):.2f} |")
        for lib in libs:
            s1, s2 = rates[(c, lib, 1)], rates[(c, lib, 2)]
            paired = statistics.median(b / a for a, b in zip(s1, s2))
            line = (f"  {name} {lib}: 2 threads / 1 thread {med((c, lib, 2)) / med((c, lib, 1)):.2f}"
                    f" (paired {paired:.2f}; best {top((c, lib, 2)) / top((c, lib, 1)):.2f})")
            if args.pair:
                sp = rates[(c, lib, "pair")]
                line += (f"; two 1-thread processes on separate CPUs: {med((c, lib, 'pair')):.1f}"
                         f" each ({med((c, lib, 'pair')) / med((c, lib, 1)):.2f} of one alone)")
            print(line)


if __name__ == "__main__":
    main()
