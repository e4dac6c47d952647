"""Small, self-checking benchmarks behind ``ember bench`` (the scripts in ``bench/`` are the
full versions and reuse the training loops here).

Every kernel result is checked against a float64 reference before it is timed. ember and its
peer run in separate blocks with a pause between them: on a 2-core machine one library's idle
worker threads spin for a while after a call and would slow the other down.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time

import numpy as np

from ember import backend, nn, ops
from ember.train import Trainer

__all__ = ["wait_idle", "bench_gemm", "bench_training", "ember_train_rate", "torch_train_rate",
           "blas_threads", "seconds_per_call", "core_check"]


@contextlib.contextmanager
def blas_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def seconds_per_call(fn, min_time: float) -> float:
    """Seconds per call of ``fn``, timed over enough calls to last at least ``min_time``."""
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / reps
        reps = max(reps * 2, int(reps * min_time / max(t, 1e-9) * 1.2) + 1)


def wait_idle(limit: float) -> bool:
    """Waits (up to ``limit`` seconds) until the machine has been >= 95 % idle for two 0.5 s
    looks at /proc/stat: other people's jobs on this shared VM would otherwise land in the
    middle of a measurement. Returns whether it got there."""
    if limit <= 0:
        return True

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    t_end, ok = time.time() + limit, 0
    while time.time() < t_end:
        i0, t0 = snap()
        time.sleep(0.5)
        i1, t1 = snap()
        ok = ok + 1 if (i1 - i0) / max(1, t1 - t0) >= 0.95 else 0
        if ok >= 2:
            return True
    return False


def core_check(threads: int, seconds: float = 0.3) -> str:
    """One line on whether this machine gives us ``threads`` cores right now: ember's 256^3
    GEMM rate on 1 thread and on ``threads``. A shared VM goes through spells where a second
    vCPU is busy elsewhere (measured: 2 threads no faster than 1 for tens of seconds); ratios
    measured then are not comparable. Benchmarks print it before and after their tables."""
    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    out = np.empty_like(a)
    before = backend.get_num_threads()
    rates = {}
    try:
        for n in sorted({1, max(1, int(threads))}):
            backend.set_num_threads(n)
            ops.gemm(a, a, out=out)
            rates[n] = 2 * 256 ** 3 / seconds_per_call(lambda: ops.gemm(a, a, out=out),
                                                       seconds) / 1e9
    finally:
        backend.set_num_threads(before)
    line = f"core check: 256^3 GEMM {rates[1]:.0f} GFLOP/s on 1 thread"
    if threads > 1:
        scaling = rates[threads] / rates[1]
        line += f", {rates[threads]:.0f} on {threads} ({scaling:.2f}x)"
        if scaling < 0.75 * threads:
            line += (f" -- WARNING: {threads} threads scale {scaling:.2f}x, other load holds "
                     f"cores; numbers from this run are not comparable")
    return line


_SETTLE_S = 0.3  # idle OpenMP / OpenBLAS workers spin this long before they sleep


def _compare(ember_fn, numpy_fn, samples: int, min_time: float,
             rounds: int = 2) -> tuple[float, float]:
    """Median seconds per call of each. The two run in separate blocks, alternated over
    ``rounds`` so that load from other processes hits both alike, with a pause before each
    block: after a call each library's idle workers spin for a while, and on a 2-core machine a
    spinning pool halves the other's speed (or worse)."""
    te, tn = [], []
    for _ in range(rounds):
        for fn, times in ((ember_fn, te), (numpy_fn, tn)):
            time.sleep(_SETTLE_S)
            fn()  # warm-up: buffers, thread pool wake-up
            times.extend(seconds_per_call(fn, min_time) for _ in range(samples))
    return statistics.median(te), statistics.median(tn)


def bench_gemm(quick: bool = False) -> list[tuple]:
    """``[(case, ember GFLOP/s, NumPy GFLOP/s)]`` for the MLP-shaped and square GEMMs and the
    fused linear+bias+ReLU forward; each result is checked against float64 first."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    samples, min_time, rounds = (3, 0.01, 1) if quick else (4, 0.03, 2)
    cases = [(128, 256, 784), (128, 256, 256), (32, 256, 64)] + \
        ([(512, 512, 512)] if quick else [(512, 512, 512), (1024, 1024, 1024)])
    rows = []
    for m, n, k in cases:
        x = rng.standard_normal((m, k), dtype=f32)
        w = rng.standard_normal((n, k), dtype=f32) / np.float32(math.sqrt(k))
        bias = rng.standard_normal(n, dtype=f32)
        ye, yn = np.empty((m, n), f32), np.empty((m, n), f32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        _check_close("gemm", ops.gemm(x, w, trans_b=True, out=ye), ref)
        te, tn = _compare(lambda: ops.gemm(x, w, trans_b=True, out=ye),
                          lambda: np.matmul(x, w.T, out=yn), samples, min_time, rounds)
        flops = 2.0 * m * n * k
        rows.append((f"gemm {m}x{k} @ {k}x{n}", flops / te * 1e-9, flops / tn * 1e-9))
        if k <= 784 and m <= 128:
            _check_close("linear", ops.linear_forward(x, w, bias, activation="relu", out=ye),
                         np.maximum(ref + bias, 0))

            def np_linear():
                np.matmul(x, w.T, out=yn)
                np.add(yn, bias, out=yn)
                np.maximum(yn, 0, out=yn)
            te, tn = _compare(lambda: ops.linear_forward(x, w, bias, activation="relu", out=ye),
                              np_linear, samples, min_time, rounds)
            rows.append((f"linear+bias+relu {m}x{k}->{n}", flops / te * 1e-9, flops / tn * 1e-9))
    return rows


def _check_close(what: str, got, ref, tol: float = 1e-4) -> None:
    ref = np.asarray(ref, np.float64)
    err = float(np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref))
    if not err <= tol:
        raise RuntimeError(f"bench: {what} relative error {err:.2e} > {tol:.0e}; not timing a "
                           "wrong kernel")


def bench_training(quick: bool = False, threads: int = 1) -> list[tuple]:
    """``[(case, batch, ember samples/s, PyTorch samples/s or None)]``: Adam, lr 1e-3, same
    model and data; ember through Trainer.fit, PyTorch through a hand-written loop."""
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    n = 1024 if quick else 4096
    repeats = 2 if quick else 3
    cases = [([64, 256, 256, 10], 32)] + ([] if quick else [([784, 256, 256, 10], 128)])
    rows = []
    for sizes, batch in cases:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], n)
        er = ember_train_rate(sizes, batch, x, y, repeats)
        tr = torch_train_rate(torch, sizes, batch, x, y, repeats) if torch is not None else None
        rows.append(("MLP " + "-".join(map(str, sizes)), batch, er, tr))
    return rows


def ember_train_rate(sizes, batch, x, y, repeats) -> float:
    """Median samples/s of ``Trainer.fit`` epochs (Adam, lr 1e-3) after a warm-up epoch."""
    trainer = Trainer(nn.MLP(sizes, seed=0), optimizer="adam", lr=1e-3, device="cpu")
    time.sleep(0.2)
    trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)
        rates.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)


def torch_train_rate(torch, sizes, batch, x, y, repeats) -> float:
    """Median samples/s of the PyTorch loop an expert writes for the same model (Linear/ReLU,
    Adam lr 1e-3, cross-entropy): pre-made tensors, index_select batches, set_to_none."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(tx.index_select(0, idx)),
                                                     ty.index_select(0, idx))
            loss.backward()
            opt.step()
    time.sleep(0.2)
    epoch()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        rates.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)
