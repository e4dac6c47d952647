"""Inference: ember's frozen predictor against onnxruntime and PyTorch eager, in one run.

Latency at batch 1 (median and p99 over 2000 calls) and throughput at batch 4096 (median of 3
calls) for 64-256-256-10 and
784-1024-1024-10 ReLU MLPs, at 1 and 2 threads (each library pinned to the same count). The
batch-1 floor is the Python call itself: an empty pybind11 call and one ``np.empty`` are timed
too. The model goes to onnxruntime through ``ember.export.to_onnx``; every peer's outputs are
checked against ember's before anything is timed.

Each library is measured alone in a process of its own, the libraries in turn, 3 processes each
(the table gives the medians of their figures): in one process, onnxruntime's and OpenMP's idle
workers kept spinning after a call and held the second core from whoever ran next.

    python bench/bench_inference.py [--threads 1 2] [--calls 2000]

``bench/test_inference.py`` runs the same cases on pytest-benchmark.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import ember  # noqa: E402
from ember import _cpu, nn  # noqa: E402

MODELS = {"64-256-256-10": (64, 256, 256, 10), "784-1024-1024-10": (784, 1024, 1024, 10)}


def make_peers(widths, threads: int, tmpdir: str) -> dict:
    """{name: callable(x) -> outputs} for ember, onnxruntime and PyTorch (those installed), all
    holding the same weights, each library pinned to ``threads``."""
    ember.set_num_threads(threads)
    model = nn.MLP(list(widths), seed=1).eval()
    pred = ember.Predictor(model, task="classification")
    peers = {"ember": pred}
    try:
        import onnxruntime as ort
        from ember.export import to_onnx
        path = to_onnx(model, os.path.join(tmpdir, f"mlp{'-'.join(map(str, widths))}.onnx"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = sess.run
        peers["onnxruntime"] = lambda x: run(None, {name: x})[0]
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(threads)
        layers = []
        lins = [m for m in model.layers if isinstance(m, nn.Linear)]
        for i, lin in enumerate(lins):
            t = torch.nn.Linear(lin.in_features, lin.out_features)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(lin.weight.data))
                t.bias.copy_(torch.from_numpy(lin.bias.data))
            layers.append(t)
            if i < len(lins) - 1:
                layers.append(torch.nn.ReLU())
        tmod = torch.nn.Sequential(*layers).eval()

        def torch_call(x):
            with torch.inference_mode():
                return tmod(torch.from_numpy(x)).numpy()
        peers["pytorch"] = torch_call
    except ImportError:
        pass
    return peers


def check_peers(peers, width, rng) -> None:
    x = rng.standard_normal((37, width)).astype(np.float32)
    ref = peers["ember"](x)
    for name, f in peers.items():
        got = f(x)
        err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
        if err > 1e-4:
            raise AssertionError(f"{name} disagrees with ember: max rel error {err:.2e}")


def floor_calls() -> dict:
    """The batch-1 floor: what a call from Python costs before any work."""
    return {"empty pybind11 call": _cpu.get_num_threads,
            "np.empty((1, 10))": lambda: np.empty((1, 10), np.float32)}


def latency(fns: dict, calls: int, rounds: int = 10) -> dict:
    """{name: (median_us, p99_us)}: ``calls`` timed calls each, in ``rounds`` interleaved
    rounds."""
    times = {n: [] for n in fns}
    per = max(1, calls // rounds)
    for f in fns.values():  # warm up
        for _ in range(20):
            f()
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for n, f in fns.items():
            t = times[n]
            for _ in range(per):
                t0 = clock()
                f()
                t.append(clock() - t0)
    return {n: (float(np.median(t)) / 1e3, float(np.percentile(t, 99)) / 1e3)
            for n, t in times.items()}


#: Seconds to wait before timing a library, so that the previous one's idle workers (onnxruntime
#: and OpenMP spin after a call) have stopped and do not hold the second core.
SETTLE = 0.3


def throughput(fns: dict, repeats: int = 3, rounds: int = 3) -> dict:
    """{name: median seconds per call}: ``rounds`` rounds, each timing every library in turn
    (``repeats`` calls after a warm-up, once the previous library's workers have settled)."""
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for n, f in fns.items():
            time.sleep(SETTLE)
            f()
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def worker(lib: str, label: str, threads: int, calls: int, batch: int) -> dict:
    """One library alone in this process: its batch-1 latency and batch throughput."""
    rng = np.random.default_rng(0)
    widths = MODELS[label]
    with tempfile.TemporaryDirectory() as tmp:
        peers = make_peers(widths, threads, tmp)
        check_peers(peers, widths[0], rng)
        f = peers[lib]
        x1 = rng.standard_normal((1, widths[0])).astype(np.float32)
        xb = rng.standard_normal((batch, widths[0])).astype(np.float32)
        med, p99 = latency({lib: lambda: f(x1)}, calls)[lib]
        thr = throughput({lib: lambda: f(xb)}, repeats=3, rounds=1)[lib]
    return {"median_us": med, "p99_us": p99, "batch_s": thr}


def isolated(lib, label, threads, calls, batch) -> dict:
    """:func:`worker` in a fresh process: no other library's threads share the cores (the
    onnxruntime and OpenMP pools spin for a while after a call, and slowed whoever ran next)."""
    import json
    import subprocess
    out = subprocess.run([sys.executable, __file__, "--worker", lib, label, str(threads),
                          "--calls", str(calls), "--batch", str(batch)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3,
                    help="processes per library and case, in turn (medians of their figures)")
    ap.add_argument("--worker", nargs=3, metavar=("LIB", "MODEL", "THREADS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import json
        lib, label, threads = args.worker
        print(json.dumps(worker(lib, label, int(threads), args.calls, args.batch)))
        return 0
    print(f"ember {ember.__version__}, isa {_cpu.isa()}, cpus available "
          f"{len(os.sched_getaffinity(0))}; each figure: the median over {args.rounds} "
          "processes per library, taken in turn")
    from ember.bench import core_check
    print("before: " + core_check(max(args.threads)))
    with tempfile.TemporaryDirectory() as tmp:
        libs = list(make_peers(MODELS["64-256-256-10"], 1, tmp))
    for threads in args.threads:
        for label in MODELS:
            runs = {lib: [] for lib in libs}
            for _ in range(args.rounds):
                for lib in libs:
                    runs[lib].append(isolated(lib, label, threads, args.calls, args.batch))
            fig = {lib: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
                   for lib, rs in runs.items()}
            print(f"\n{label}, {threads} thread(s)")
            print(f"  {'':12s} {'batch 1 median':>15s} {'p99':>9s} "
                  f"{'batch ' + str(args.batch):>13s} {'samples/s':>11s}")
            for lib, f in fig.items():
                print(f"  {lib:12s} {f['median_us']:12.1f} us {f['p99_us']:6.1f} us "
                      f"{f['batch_s'] * 1e3:10.2f} ms {args.batch / f['batch_s']:11.0f}")
            if "onnxruntime" in fig:
                e, o = fig["ember"], fig["onnxruntime"]
                print(f"  ember / onnxruntime: batch-1 median {e['median_us'] / o['median_us']:.2f}x "
                      f"the time, p99 {e['p99_us'] / o['p99_us']:.2f}x; batch {args.batch} "
                      f"throughput {o['batch_s'] / e['batch_s']:.2f}x")
    print("after:  " + core_check(max(args.threads)))
    floor = latency(floor_calls(), args.calls)
    print("\nthe batch-1 floor (a call from Python):")
    for n, (med, p99) in floor.items():
        print(f"  {n:22s} {med:6.2f} us (p99 {p99:.2f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
