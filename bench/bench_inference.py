"""Inference: ember's frozen predictor against onnxruntime and PyTorch eager, in one run.

Latency at batch 1 (median and p99 over >= 2000 calls, taken in interleaved rounds so that a
noisy spell hits every peer alike) and throughput at batch 4096, for 64-256-256-10 and
784-1024-1024-10 ReLU MLPs, at 1 and 2 threads (each library pinned to the same count). The
batch-1 floor is the Python call itself: an empty pybind11 call and one ``np.empty`` are timed
too. The model goes to onnxruntime through ``ember.export.to_onnx``; every peer's outputs are
checked against ember's before anything is timed.

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


def throughput(fns: dict, repeats: int = 7) -> dict:
    """{name: median seconds per call}, interleaved."""
    times = {n: [] for n in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"ember {ember.__version__}, isa {_cpu.isa()}, cpus available "
          f"{len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            for label, widths in MODELS.items():
                peers = make_peers(widths, threads, tmp)
                check_peers(peers, widths[0], rng)
                x1 = rng.standard_normal((1, widths[0])).astype(np.float32)
                xb = rng.standard_normal((args.batch, widths[0])).astype(np.float32)
                lat = latency({n: (lambda f=f: f(x1)) for n, f in peers.items()}, args.calls)
                thr = throughput({n: (lambda f=f: f(xb)) for n, f in peers.items()})
                print(f"\n{label}, {threads} thread(s)")
                print(f"  {'':12s} {'batch 1 median':>15s} {'p99':>9s} "
                      f"{'batch ' + str(args.batch):>13s} {'samples/s':>11s}")
                for n in peers:
                    med, p99 = lat[n]
                    print(f"  {n:12s} {med:12.1f} us {p99:6.1f} us {thr[n] * 1e3:10.2f} ms "
                          f"{args.batch / thr[n]:11.0f}")
                if "onnxruntime" in peers:
                    print(f"  ember / onnxruntime: batch-1 median "
                          f"{lat['ember'][0] / lat['onnxruntime'][0]:.2f}x the time, p99 "
                          f"{lat['ember'][1] / lat['onnxruntime'][1]:.2f}x; batch {args.batch} "
                          f"throughput {thr['onnxruntime'] / thr['ember']:.2f}x")
        floor = latency(floor_calls(), args.calls)
        print("\nthe batch-1 floor (a call from Python):")
        for n, (med, p99) in floor.items():
            print(f"  {n:22s} {med:6.2f} us (p99 {p99:.2f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
