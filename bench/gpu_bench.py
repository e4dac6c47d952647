"""GPU benchmarks for a lent-GPU session: check, then time, then print one table.

Run by bench/gpu_check.sh after it installs ember and runs the GPU tests. Every figure is checked
against a float64 reference before it is timed; times are CUDA-event medians after warm-up, with
inputs rotated so that the data touched between two timings of one buffer exceeds twice the L2;
the ceilings (device-to-device copy, cuBLAS through CuPy, bf16 through CuPy or PyTorch) are
measured in the same run. The table follows shared/GPU_RESULTS.md and goes to stdout,
bench/results/gpu-<date>-<card>.md and $OUT (with the raw numbers as JSON).

Each figure is measured on its own: one that fails is reported in its row and the rest go on.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RAW: dict = {"figures": {}, "ceilings": {}, "errors": {}}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# measuring


def median_ms(cp, fn, sets: int, warmup: int = 3, repeats: int = 25, budget_s: float = 6.0):
    """Median of CUDA-event times of fn(i) (i picks the input set), after warm-up."""
    for i in range(warmup):
        fn(i % sets)
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    t0 = time.perf_counter()
    for r in range(repeats):
        start.record()
        fn(r % sets)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
        if time.perf_counter() - t0 > budget_s and len(times) >= 5:
            break
    return statistics.median(times), times


def rotation(bytes_per_set: int, l2_bytes: int, cap: int = 8) -> int:
    """Input sets to rotate through so that > 2x L2 is touched between reuses of one set."""
    return max(1, min(cap, -(-2 * l2_bytes // max(1, bytes_per_set))))


def rel_err(cp, got, ref64) -> float:
    got = got.astype(cp.float64)
    return float(cp.linalg.norm(got - ref64) / cp.linalg.norm(ref64))


def tflops(m, n, k, ms):
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


# ---------------------------------------------------------------------------------------------
# ceilings


def copy_bandwidth(cp):
    n = 1 << 28  # 1 GiB of float32 each way
    src = cp.random.random(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    ms, _ = median_ms(cp, lambda i: cp.copyto(dst, src), 1, repeats=20)
    return 2 * src.nbytes / (ms * 1e-3) / 1e12  # TB/s, read + write


def cublas_ms(cp, m, n, k, precision, l2):
    """cupy.matmul (cuBLAS) time for (m x k) @ (k x n) in fp32, tf32 or bf16 (None: unsupported)."""
    from cupy._core import _routines_linalg as linalg

    dtype = cp.float32
    if precision == "bf16":
        dtype = getattr(cp, "bfloat16", None)
        if dtype is None:
            return None
    sets = rotation((m * k + k * n + m * n) * np.dtype(np.float32).itemsize, l2)
    a = [cp.random.standard_normal((m, k), dtype=cp.float32).astype(dtype) for _ in range(sets)]
    b = [cp.random.standard_normal((k, n), dtype=cp.float32).astype(dtype) for _ in range(sets)]
    c = [cp.empty((m, n), dtype=dtype) for _ in range(sets)]
    old = linalg.get_compute_type(cp.float32)
    try:
        if precision == "tf32":
            linalg.set_compute_type(cp.float32, linalg.COMPUTE_TYPE_TF32)
        else:
            linalg.set_compute_type(cp.float32, linalg.COMPUTE_TYPE_DEFAULT)
        ms, _ = median_ms(cp, lambda i: cp.matmul(a[i], b[i], out=c[i]), sets)
    finally:
        linalg.set_compute_type(cp.float32, old)
    return ms


def torch_bf16_ms(m, n, k, l2):
    import torch

    sets = rotation((m * k + k * n + m * n) * 2, l2)
    a = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
    b = [torch.randn(k, n, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
    for i in range(3):
        torch.matmul(a[i % sets], b[i % sets])
    torch.cuda.synchronize()
    times = []
    for r in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.matmul(a[r % sets], b[r % sets])
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# ember figures


def ember_gemm_ms(cp, ops, m, n, k, precision, l2, epilogue=False):
    """Checks ember's gemm at this shape against float64 (cuBLAS fp64), then times it."""
    tol = {"fp32": 1e-5, "tf32": 1e-3, "bf16": 1e-2}[precision]
    sets = rotation((m * k + k * n + m * n) * 4, l2)
    a = [cp.random.standard_normal((m, k), dtype=cp.float32) for _ in range(sets)]
    b = [cp.random.standard_normal((k, n), dtype=cp.float32) for _ in range(sets)]
    c = [cp.full((m, n), cp.nan, dtype=cp.float32) for _ in range(sets)]
    bias = cp.random.standard_normal(n, dtype=cp.float32)
    kw = dict(bias=bias, activation="relu") if epilogue else {}
    ops.gemm(a[0], b[0], out=c[0], precision=precision, **kw)
    ref = a[0].astype(cp.float64) @ b[0].astype(cp.float64)
    if epilogue:
        ref = cp.maximum(ref + bias, 0)
    err = rel_err(cp, c[0], ref)
    del ref
    if not err <= tol:
        raise RuntimeError(f"wrong result: relative error {err:.2e} > {tol:.0e}")
    ms, _ = median_ms(cp, lambda i: ops.gemm(a[i], b[i], out=c[i], precision=precision, **kw), sets)
    return ms, err


# ---------------------------------------------------------------------------------------------
# the table

ROWS = []  # (figure, shape, precision, ember, peer, peer value, ratio)


def row(*cells):
    ROWS.append(tuple(str(c).replace("|", "/").replace("\n", " ") for c in cells))


def fmt_tf(x):
    return f"{x:.1f} TFLOP/s"


def gemm_row(cp, ops, m, n, k, precision, l2, ceilings):
    shape = f"{m}x{n}x{k}"
    key = f"gemm {shape} {precision}"
    try:
        ms, err = ember_gemm_ms(cp, ops, m, n, k, precision, l2)
        RAW["figures"][key] = {"ms": ms, "tflops": tflops(m, n, k, ms), "rel_err": err}
    except Exception as exc:  # recorded, and the run goes on
        RAW["errors"][key] = traceback.format_exc()
        row("GEMM", shape, precision, f"failed: {type(exc).__name__}: {str(exc)[:60]}", "cuBLAS",
            "", "")
        return
    peer_name, peer_ms = ceilings.get((m, n, k, precision), ("cuBLAS", None))
    if peer_ms is None:
        row("GEMM", shape, precision, fmt_tf(tflops(m, n, k, ms)), peer_name, "not measured", "")
    else:
        ratio = 100.0 * peer_ms / ms
        row("GEMM", shape, precision, fmt_tf(tflops(m, n, k, ms)), peer_name,
            fmt_tf(tflops(m, n, k, peer_ms)), f"{ratio:.1f}% of {peer_name}")


def epilogue_row(cp, ops, l2):
    m = n = k = 4096
    try:
        plain, _ = ember_gemm_ms(cp, ops, m, n, k, "fp32", l2)
        fused, err = ember_gemm_ms(cp, ops, m, n, k, "fp32", l2, epilogue=True)
        RAW["figures"]["gemm+bias+relu 4096 fp32"] = {"ms": fused, "plain_ms": plain, "rel_err": err}
        row("GEMM+bias+relu vs GEMM", "4096x4096x4096", "fp32", f"{fused:.2f} ms", "ember GEMM",
            f"{plain:.2f} ms", f"{fused / plain:.2f}x time")
    except Exception as exc:
        RAW["errors"]["gemm+bias+relu"] = traceback.format_exc()
        row("GEMM+bias+relu vs GEMM", "4096x4096x4096", "fp32",
            f"failed: {type(exc).__name__}: {str(exc)[:60]}", "ember GEMM", "", "")


MLP_GEMMS = [
    # (name, m, n, k, trans_a, trans_b): the products of one 784-1024-1024-10 step at batch 4096
    ("fwd 1: X W1^T", 4096, 1024, 784, False, True),
    ("fwd 2: H1 W2^T", 4096, 1024, 1024, False, True),
    ("fwd 3: H2 W3^T", 4096, 10, 1024, False, True),
    ("dX 3: dZ3 W3", 4096, 1024, 10, False, False),
    ("dX 2: dZ2 W2", 4096, 1024, 1024, False, False),
    ("dW 3: dZ3^T H2", 10, 1024, 4096, True, False),
    ("dW 2: dZ2^T H1", 1024, 1024, 4096, True, False),
    ("dW 1: dZ1^T X", 1024, 784, 4096, True, False),
]


def mlp_gemm_rows(cp, ops):
    """ember's fp32 GEMM against cuBLAS (cupy.matmul on the same transposed views) at the shapes
    of one training step: where the step's time goes relative to cuBLAS."""
    for name, m, n, k, ta, tb in MLP_GEMMS:
        key = f"mlp gemm {name}"
        try:
            a = cp.random.standard_normal((k, m) if ta else (m, k), dtype=cp.float32)
            b = cp.random.standard_normal((n, k) if tb else (k, n), dtype=cp.float32)
            c = cp.full((m, n), cp.nan, dtype=cp.float32)
            ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c)
            ref = (a.T if ta else a).astype(cp.float64) @ (b.T if tb else b).astype(cp.float64)
            err = rel_err(cp, c, ref)
            del ref
            if not err <= 1e-5:
                raise RuntimeError(f"wrong result: relative error {err:.2e}")
            ms, _ = median_ms(cp, lambda i: ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c), 1)
            av, bv = (a.T if ta else a), (b.T if tb else b)
            cms, _ = median_ms(cp, lambda i: cp.matmul(av, bv, out=c), 1)
            RAW["figures"][key] = {"ms": ms, "cublas_ms": cms, "rel_err": err}
            row("GEMM in MLP step", f"{name} ({m}x{n}x{k})", "fp32",
                f"{tflops(m, n, k, ms):.1f} TFLOP/s ({ms * 1e3:.0f} us)", "cuBLAS",
                f"{tflops(m, n, k, cms):.1f} TFLOP/s", f"{100 * cms / ms:.1f}% of cuBLAS")
        except Exception as exc:
            RAW["errors"][key] = traceback.format_exc()
            row("GEMM in MLP step", name, "fp32", f"failed: {type(exc).__name__}: {str(exc)[:60]}",
                "cuBLAS", "", "")


def torch_median_ms(fn, sets, warmup=3, repeats=25, budget_s=6.0):
    """median_ms for PyTorch work (its own events and stream)."""
    import torch

    for i in range(warmup):
        fn(i % sets)
    torch.cuda.synchronize()
    times, t0 = [], time.perf_counter()
    for r in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(r % sets)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
        if time.perf_counter() - t0 > budget_s and len(times) >= 5:
            break
    return statistics.median(times)


def adam_rows(cp, copy_tbs):
    """Fused Adam over 10.5M parameters in 128 tensors: checked against float64, then timed through
    the graph-friendly path (device state: no host synchronisation inside the timed region);
    bandwidth counts the 28 bytes per element an Adam step must move (read p, g, m, v; write p, m, v)."""
    from ember import _cuda_ops

    shape, prec, n_t = "10.5M params, 128 tensors", "fp32", 128
    sizes = [10_500_000 // n_t + (1 if i < 10_500_000 % n_t else 0) for i in range(n_t)]
    total = sum(sizes)
    try:
        rng = np.random.default_rng(0)
        p = [cp.asarray(rng.standard_normal(n, dtype=np.float32)) for n in sizes]
        g = [cp.asarray(rng.standard_normal(n, dtype=np.float32)) for n in sizes]
        m = [cp.zeros(n, cp.float32) for n in sizes]
        v = [cp.zeros(n, cp.float32) for n in sizes]
        p0, g0 = cp.asnumpy(p[0]).astype(np.float64), cp.asnumpy(g[0]).astype(np.float64)
        _cuda_ops.adam_step(p, g, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1,
                            0.0)
        mr, vr = 0.1 * g0, 0.001 * g0 * g0
        ref = p0 - 1e-3 / 0.1 * mr / (np.sqrt(vr) / np.sqrt(0.001) + 1e-8)
        err = float(np.linalg.norm(cp.asnumpy(p[0]) - ref) / np.linalg.norm(ref))
        if not err <= 1e-5:
            raise RuntimeError(f"wrong result: relative error {err:.2e}")
        state = _cuda_ops.step_state(2, 1e-3)
        ms, _ = median_ms(cp, lambda i: _cuda_ops.adam_step(
            p, g, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 0.0,
            state=state, advance_step=True), 1)
        host_ms, _ = median_ms(cp, lambda i: _cuda_ops.adam_step(
            p, g, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 5, 0.0), 1,
            repeats=10)
        graph_ms = adam_graph_ms(cp, _cuda_ops, p, g, m, v, state)
        # The optimizer object, as a user steps it (like torch's opt.step()): its lists are
        # checked once (an OptimPlan), each step returns (grad_norm, skipped) to the host.
        from ember import optim
        from ember.nn import Parameter
        params = [Parameter(a) for a in p]
        for prm, gr in zip(params, g):
            prm.grad = gr
        eopt = optim.Adam(params, lr=1e-3)
        obj_ms, _ = median_ms(cp, lambda i: eopt.step(), 1)
        RAW["figures"]["ember optim.Adam.step"] = {"ms": obj_ms}
        del eopt, params
        tbs = 28 * total / (graph_ms * 1e-3) / 1e12
        RAW["figures"]["fused adam"] = {"ms": ms, "host_path_ms": host_ms, "graph_ms": graph_ms,
                                        "tbs": tbs, "rel_err": err}
        copy = f"{copy_tbs:.2f} TB/s" if copy_tbs else "not measured"
        row("fused Adam (graph replay: the kernels)", shape, prec,
            f"{tbs:.2f} TB/s ({graph_ms:.3f} ms)", "copy", copy,
            f"{100 * tbs / copy_tbs:.1f}% of copy" if copy_tbs else "")
    except Exception as exc:
        RAW["errors"]["fused adam"] = traceback.format_exc()
        row("fused Adam", shape, prec, f"failed: {type(exc).__name__}: {str(exc)[:60]}", "copy", "", "")
        row("fused Adam vs torch fused", shape, prec, "failed (see fused Adam)",
            "torch Adam(fused=True)", "", "")
        return
    finally:
        cp.get_default_memory_pool().free_all_blocks()
    try:
        import torch

        tp = [torch.randn(n, device="cuda") for n in sizes]
        for t in tp:
            t.grad = torch.randn_like(t)
        opt = torch.optim.Adam(tp, lr=1e-3, fused=True)
        tms = torch_median_ms(lambda i: opt.step(), 1)
        RAW["figures"]["torch fused adam"] = {"ms": tms}
        row("fused Adam vs torch fused (one call each)", shape, prec, f"{ms:.3f} ms",
            "torch Adam(fused=True)", f"{tms:.3f} ms", f"{tms / ms:.2f}x faster")
        row("fused Adam vs torch fused (optimizer.step())", shape, prec,
            f"{obj_ms:.3f} ms (ember.optim.Adam)", "torch Adam(fused=True)", f"{tms:.3f} ms",
            f"{tms / obj_ms:.2f}x faster")
        # Both as CUDA-graph replays: the kernels against the kernels.
        opt = torch.optim.Adam(tp, lr=1e-3, fused=True, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        tg = torch.cuda.CUDAGraph()
        with torch.cuda.graph(tg):
            opt.step()
        tgms = torch_median_ms(lambda i: tg.replay(), 1)
        RAW["figures"]["torch fused adam graph"] = {"ms": tgms}
        row("fused Adam vs torch fused (graph replays)", shape, prec, f"{graph_ms:.3f} ms",
            "torch Adam(fused, capturable)", f"{tgms:.3f} ms", f"{tgms / graph_ms:.2f}x faster")
        del tg
        del tp, opt
        torch.cuda.empty_cache()
    except Exception as exc:
        RAW["errors"]["torch fused adam"] = traceback.format_exc()
        row("fused Adam vs torch fused", shape, prec, f"{ms:.3f} ms", "torch Adam(fused=True)",
            f"failed: {type(exc).__name__}: {str(exc)[:60]}", "")


def adam_graph_ms(cp, cuda_ops, p, g, m, v, state):
    """One device-state Adam step captured as a CUDA graph (its workspace and result held by the
    recorder of ember._cuda_graph), then the median of timed replays."""
    from ember._cuda_graph import _Recorder

    rec, stream = _Recorder(), cp.cuda.Stream(non_blocking=True)
    args = (p, g, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 0.0)
    with stream, cuda_ops.allocating_from(rec):
        cuda_ops.adam_step(*args, state=state, advance_step=True)
        stream.synchronize()
        rec.replaying = True
        stream.begin_capture()
        try:
            cuda_ops.adam_step(*args, state=state, advance_step=True)
        finally:
            graph = stream.end_capture()
    with stream:
        ms, _ = median_ms(cp, lambda i: graph.launch(), 1, repeats=50)
    return ms


def xent_row(cp, classes, l2):
    """Softmax-CE forward + backward (gradient written), 8192 rows: checked against float64, timed
    on the no-sync path (device loss); the peer is torch F.cross_entropy forward + autograd grad."""
    from ember import _cuda_ops

    rows, shape = 8192, f"8192x{classes}"
    try:
        sets = rotation(2 * rows * classes * 4, l2)
        rng = np.random.default_rng(1)
        xs = [cp.asarray(3 * rng.standard_normal((rows, classes), dtype=np.float32)) for _ in range(sets)]
        y = cp.asarray(rng.integers(0, classes, rows))
        gs = [cp.empty_like(x) for x in xs]
        loss, g = _cuda_ops.softmax_cross_entropy(xs[0], y, None, 0.0, "mean", 1.0, True, gs[0], None)
        x64 = xs[0].astype(cp.float64)
        lse = cp.log(cp.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
        ref = float((lse - x64[cp.arange(rows), y]).mean())
        pr = cp.exp(x64 - lse[:, None])
        pr[cp.arange(rows), y] -= 1
        err = max(abs(loss - ref) / abs(ref), rel_err(cp, g, pr / rows))
        del x64, pr
        if not err <= 1e-5:
            raise RuntimeError(f"wrong result: relative error {err:.2e}")
        ms, _ = median_ms(cp, lambda i: _cuda_ops.softmax_cross_entropy(
            xs[i], y, None, 0.0, "mean", 1.0, True, gs[i], None, device_loss=True), sets)
        RAW["figures"][f"softmax-ce {shape}"] = {"ms": ms, "rel_err": err}
    except Exception as exc:
        RAW["errors"][f"softmax-ce {shape}"] = traceback.format_exc()
        row("softmax-CE fwd+bwd", shape, "fp32", f"failed: {type(exc).__name__}: {str(exc)[:60]}",
            "torch F.cross_entropy", "", "")
        return
    try:
        import torch
        import torch.nn.functional as tf

        txs = [torch.as_tensor(x, device="cuda").clone().requires_grad_(True) for x in xs]
        ty = torch.as_tensor(y, device="cuda")
        tms = torch_median_ms(lambda i: torch.autograd.grad(tf.cross_entropy(txs[i], ty), txs[i]), sets)
        RAW["figures"][f"torch softmax-ce {shape}"] = {"ms": tms}
        row("softmax-CE fwd+bwd", shape, "fp32", f"{1e3 * ms:.1f} us", "torch F.cross_entropy",
            f"{1e3 * tms:.1f} us", f"{tms / ms:.2f}x faster")
    except Exception as exc:
        RAW["errors"][f"torch softmax-ce {shape}"] = traceback.format_exc()
        row("softmax-CE fwd+bwd", shape, "fp32", f"{1e3 * ms:.1f} us", "torch F.cross_entropy",
            f"failed: {type(exc).__name__}: {str(exc)[:60]}", "")
    cp.get_default_memory_pool().free_all_blocks()


def later_rows(cp, cuda_mod, copy_tbs, l2):
    """The optimizer and loss figures, and those of later issues (not measured yet)."""
    if hasattr(cuda_mod, "adam_step"):
        adam_rows(cp, copy_tbs)
    else:
        for fig, peer in (("fused Adam", "copy"), ("fused Adam vs torch fused", "torch Adam(fused=True)")):
            row(fig, "10.5M params, 128 tensors", "fp32",
                "not measured: ember._cuda has no adam_step", peer, "", "")
    for classes in (10, 1000):
        if hasattr(cuda_mod, "softmax_cross_entropy"):
            xent_row(cp, classes, l2)
        else:
            row("softmax-CE fwd+bwd", f"8192x{classes}", "fp32",
                "not measured: ember._cuda has no softmax_cross_entropy", "torch F.cross_entropy", "", "")
    train_rows(cp)


def _ratio(ours: float, peer: float) -> str:
    """Throughput ratio (higher is better) as 'N.NNx faster' / 'N.NNx slower'."""
    r = ours / peer
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


TRAIN_CONFIGS = [
    # (figure, sizes, batches, samples): issue 8's and 10's figures
    ("train MLP 784-1024-1024-10", [784, 1024, 1024, 10], (256, 4096), 65536),
    ("train MLP 64-64-64-64-10", [64, 64, 64, 64, 10], (65536,), 65536 * 16),
]


def ember_train(x, y, sizes, batch, epochs, graphs=True):
    """Trainer.fit on the GPU; (samples/s over the epochs after the first, history, step path)."""
    from ember import Trainer, nn
    trainer = Trainer(nn.MLP(sizes, seed=0), optimizer="adam", lr=1e-3, metrics=(),
                      device="cuda")
    trainer.cuda_graphs = graphs
    h = trainer.fit(x, y, epochs=epochs, batch_size=batch, seed=0, verbose=0)
    if not h["loss"][-1] < h["loss"][0]:
        raise RuntimeError(f"loss did not fall: {h['loss']}")
    return len(x) / statistics.median(h["time"][1:]), h, trainer.step_path


def train_rows(cp, epochs=3):
    """Trainer.fit on the GPU vs a hand-written PyTorch eager loop: Adam, fp32, synthetic samples
    labelled by a random linear teacher. Each side trains ``epochs`` epochs with the data already
    on the GPU (ember copies it once per fit, before the epoch clock starts); the figure is the
    samples over the median time of the epochs after the first (warm-up, graph capture). Checked
    first: the loss must fall from the first epoch to the last. ember runs twice: with its steps
    replayed as CUDA graphs (what Trainer.fit does) and step by step (Trainer.cuda_graphs = False)."""
    for fig, sizes, batches, n in TRAIN_CONFIGS:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, sizes[0]), dtype=np.float32)
        y = np.argmax(x @ rng.standard_normal((sizes[0], sizes[-1])).astype(np.float32),
                      axis=1).astype(np.int64)
        for batch in batches:
            shape, key = f"batch {batch}", f"{fig} batch {batch}"
            try:
                ours, h, path = ember_train(x, y, sizes, batch, epochs)
                steps, _, spath = ember_train(x, y, sizes, batch, epochs, graphs=False)
                RAW["figures"][key] = {"samples_s": ours, "loss": h["loss"], "epoch_s": h["time"],
                                       "step_path": path, "step_by_step_samples_s": steps,
                                       "step_by_step_path": spath}
            except Exception as exc:
                RAW["errors"][key] = traceback.format_exc()
                row(fig, shape, "fp32", f"failed: {type(exc).__name__}: {str(exc)[:60]}",
                    "torch eager", "", "")
                continue
            finally:
                cp.get_default_memory_pool().free_all_blocks()
            try:
                peer = torch_train_samples_s(x, y, sizes, batch, epochs)
                RAW["figures"][key + " torch"] = {"samples_s": peer}
                row(fig, shape, "fp32", f"{ours:,.0f} samples/s ({path})", "torch eager",
                    f"{peer:,.0f} samples/s", _ratio(ours, peer))
                row(fig + " step by step", shape, "fp32", f"{steps:,.0f} samples/s",
                    "torch eager", f"{peer:,.0f} samples/s", _ratio(steps, peer))
            except Exception as exc:
                RAW["errors"][key + " torch"] = traceback.format_exc()
                row(fig, shape, "fp32", f"{ours:,.0f} samples/s ({path})", "torch eager",
                    f"failed: {type(exc).__name__}: {str(exc)[:40]}", "")


def torch_train_samples_s(x, y, sizes, batch, epochs, compile_mode=None, warm_epochs=1):
    """The same model, loss and optimizer in PyTorch eager: data on the GPU, a seeded permutation
    per epoch, batches by index_select, the loss summed on the device (one read per epoch).
    ``compile_mode``: the forward and loss go through ``torch.compile(mode=...)`` (with
    "reduce-overhead" the compiled forward and backward replay as CUDA graphs; Adam stays eager);
    the first ``warm_epochs`` epochs (compilation, graph recording) are left out of the figure."""
    import torch
    import torch.nn.functional as tf

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32, as ember's default precision
    torch.manual_seed(0)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fwd_loss(xb, yb):
        return tf.cross_entropy(model(xb), yb)

    step_loss = fwd_loss if compile_mode is None else torch.compile(fwd_loss, mode=compile_mode)
    xt, yt = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
    n = len(x)
    losses, times = [], []
    try:
        for epoch in range(epochs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            perm = torch.randperm(n, device="cuda")
            total = torch.zeros((), device="cuda")
            for b in range(0, n, batch):
                idx = perm[b:b + batch]
                xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
                if compile_mode is not None:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = step_loss(xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            losses.append(float(total) / n)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if not losses[-1] < losses[0]:
            raise RuntimeError(f"torch loss did not fall: {losses}")
        return n / statistics.median(times[warm_epochs:])
    finally:
        torch.cuda.empty_cache()


def compile_peer_main(out_dir: str | None) -> int:
    """The torch.compile(mode="reduce-overhead") peer on the 784-1024-1024-10 rows, on its own
    (compilation takes tens of seconds, so gpu_check.sh runs it as a separate stage): prints
    rows and writes compile_peer.json under ``out_dir``."""
    rng = np.random.default_rng(0)
    sizes, n = [784, 1024, 1024, 10], 65536
    x = rng.standard_normal((n, 784), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((784, 10)).astype(np.float32), axis=1).astype(np.int64)
    result = {}
    for batch in (256, 4096):
        try:
            t0 = time.perf_counter()
            s = torch_train_samples_s(x, y, sizes, batch, 5, compile_mode="reduce-overhead",
                                      warm_epochs=2)
            result[f"batch {batch}"] = {"samples_s": s, "wall_s": time.perf_counter() - t0}
            print(f"| train MLP 784-1024-1024-10 | batch {batch} | fp32 | torch.compile "
                  f"reduce-overhead | {s:,.0f} samples/s |", flush=True)
        except Exception:
            result[f"batch {batch}"] = {"error": traceback.format_exc()}
            print(f"batch {batch}: failed\n{traceback.format_exc()}", flush=True)
    if out_dir:
        Path(out_dir, "compile_peer.json").write_text(json.dumps(result, indent=1))
    return 0


def render(header: str, ceilings_line: str, tests_line: str) -> str:
    lines = [header, "", ceilings_line, "",
             "| figure | shape | precision | ember | peer | peer value | ratio |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in ROWS]
    lines += ["", tests_line, ""]
    return "\n".join(lines)


def sources_digest(root: Path = ROOT) -> str:
    """SHA-256 (first 12 hex digits) of the sources that decide the results: csrc/, python/,
    bench/, tests/ and the build files, path and bytes, in path order. The device machine gets a
    copy of the working tree whose .git may be older than the tree (seen: it kept reporting the
    session's first commit), so the table names this digest too; ``python bench/gpu_bench.py
    --digest`` prints it for a checkout, to match a table to a commit."""
    import hashlib

    h = hashlib.sha256()
    files = [p for d in ("csrc", "python/ember", "bench", "tests") for p in (root / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".cpp", ".cu", ".cuh", ".h", ".sh", ".txt")
             and "__pycache__" not in p.parts and "results" not in p.parts]
    files += [root / "CMakeLists.txt", root / "pyproject.toml"]
    for p in sorted(f for f in files if f.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def git_hash() -> str:
    if os.environ.get("EMBER_GIT_HASH"):
        rev = os.environ["EMBER_GIT_HASH"]
    else:
        try:
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                 capture_output=True, check=True).stdout.strip()
        except Exception:
            rev = "unknown"
    return f"{rev} (sources {sources_digest()})"


def tests_line_from(path: str | None) -> str:
    if not path or not Path(path).exists():
        return "GPU tests: not run (no pytest log)."
    text = Path(path).read_text(errors="replace")
    counts = {w: 0 for w in ("passed", "failed", "error", "skipped")}
    summary = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    if summary:
        for num, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary[-1]):
            counts[word.rstrip("s") if word.startswith("error") else word] += int(num)
    failures = [ln.split(" ", 1)[1].split(" - ")[0] for ln in text.splitlines()
                if ln.startswith(("FAILED ", "ERROR "))]
    line = (f"GPU tests: {counts['passed']} passed, {counts['failed'] + counts['error']} failed"
            f" ({counts['skipped']} skipped)")
    if not summary:
        line += " (no pytest summary line found: see the tests log)"
    if failures:
        line += " — failures:\n" + "\n".join(f"- {f}" for f in failures[:30])
    else:
        line += "."
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests-log", help="pytest -m gpu output, for the tests line")
    ap.add_argument("--quick", action="store_true", help="smaller shapes (smoke test)")
    ap.add_argument("--compile-peer", action="store_true",
                    help="only the torch.compile(mode='reduce-overhead') training peer")
    ap.add_argument("--digest", action="store_true",
                    help="print the sources digest the table's header names, and exit")
    args = ap.parse_args()
    if args.digest:
        print(sources_digest())
        return 0
    if args.compile_peer:
        return compile_peer_main(os.environ.get("OUT"))

    import cupy as cp

    import ember
    from ember import _cuda, ops

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    l2 = int(dev.attributes.get("L2CacheSize", 50 << 20))
    card = "h200" if "H200" in name else "h100" if "H100" in name else re.sub(r"\W+", "-", name.lower())
    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                text=True, capture_output=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        pass
    rt = cp.cuda.runtime.runtimeGetVersion()
    today = _dt.date.today().isoformat()
    header = (f"# GPU check — {name}, driver {driver}, CUDA {rt // 1000}.{rt % 1000 // 10}, "
              f"ember {git_hash()}, {today}")
    RAW.update(device=name, l2_bytes=l2, driver=driver, cuda_runtime=rt,
               ember_info=ember.info()["backends"]["cuda"])
    log(header)

    big, wide, bf = (4096, (8192, 1024, 1024), 8192) if not args.quick else (1024, (2048, 256, 256), 2048)

    # ---- ceilings, in this run
    ceil_parts = []
    copy_tbs = None
    try:
        copy_tbs = copy_bandwidth(cp)
        RAW["ceilings"]["copy_tbs"] = copy_tbs
        ceil_parts.append(f"copy {copy_tbs:.2f} TB/s (read+write)")
    except Exception:
        RAW["errors"]["copy"] = traceback.format_exc()
        ceil_parts.append("copy failed")
    ceilings = {}
    gemm_shapes = [(big, big, big, "fp32"), (*wide, "fp32"), (big, big, big, "tf32"), (bf, bf, bf, "bf16")]
    for m, n, k, prec in gemm_shapes:
        key = f"cuBLAS {prec} {m}x{n}x{k}"
        peer = "cuBLAS"
        try:
            try:
                ms = cublas_ms(cp, m, n, k, prec, l2)
            except Exception:
                if prec != "bf16":
                    raise
                RAW["errors"][key + " (CuPy)"] = traceback.format_exc()
                ms = None
            if ms is None:  # CuPy without bfloat16 matmul: PyTorch's (cuBLAS too) is the ceiling
                peer = "torch bf16"
                ms = torch_bf16_ms(m, n, k, l2)
            ceilings[(m, n, k, prec)] = (peer, ms)
            RAW["ceilings"][key] = {"ms": ms, "tflops": tflops(m, n, k, ms), "via": peer}
            cube = f"{m}³" if m == n == k else f"{m}x{n}x{k}"
            ceil_parts.append(f"{peer} {prec} {cube} {tflops(m, n, k, ms):.1f} TFLOP/s")
        except Exception:
            RAW["errors"][key] = traceback.format_exc()
            ceil_parts.append(f"{key} failed")
        cp.get_default_memory_pool().free_all_blocks()
    ceilings_line = "Ceilings measured in this run: " + "; ".join(ceil_parts)

    # ---- ember
    for m, n, k, prec in gemm_shapes:
        gemm_row(cp, ops, m, n, k, prec, l2, ceilings)
        cp.get_default_memory_pool().free_all_blocks()
    epilogue_row(cp, ops, l2)
    later_rows(cp, _cuda, copy_tbs, l2)
    mlp_gemm_rows(cp, ops)

    text = render(header, ceilings_line, tests_line_from(args.tests_log))
    print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-{today}-{card}.md"
    path.write_text(text)
    log(f"wrote {path}")
    out = os.environ.get("OUT")
    if out:
        Path(out, path.name).write_text(text)
        Path(out, "gpu_bench_raw.json").write_text(json.dumps(RAW, indent=1, default=str))
    for key, tb in RAW["errors"].items():
        log(f"--- {key}\n{tb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
