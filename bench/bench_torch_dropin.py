"""An ordinary PyTorch training loop before and after ``ember.torch.convert`` + ember's Adam.

    PYTHONPATH=python python bench/bench_torch_dropin.py [--threads 2] [--repeats 7] [--rounds 3]

784-256-256-10 ReLU MLP, Adam, cross-entropy, batches of 128 and 32, on the CPU. Prints the
median time per training step of each loop, the ratio, and what the autograd glue costs: the same
ember kernels called directly on NumPy arrays (no torch) against the converted torch loop.

Each loop runs in a child process of its own (``--child``), alternating torch, ember.torch, raw,
torch, ... for ``--rounds`` rounds; a round's figure is the median of ``--repeats`` runs of
``--steps`` steps after a warm-up run, the table the median over rounds. (Run in one process, a
loop ran up to 1.5x slower after the other one on this 2-core VM, seemingly disturbed by the other
runtime's threads: the glue column moved between 0.4 and 1.4 ms at batch 128.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ember
import ember.ops as ops
import ember.torch as et

DIMS = (784, 256, 256, 10)


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIMS[0], DIMS[1]), nn.ReLU(), nn.Linear(DIMS[1], DIMS[2]),
                         nn.ReLU(), nn.Linear(DIMS[2], DIMS[3]))


def torch_loop(net, opt, loss_fn, xs, ys):
    def run():
        for xb, yb in zip(xs, ys):
            opt.zero_grad()
            loss_fn(net(xb), yb).backward()
            opt.step()
    return run


def raw_ember_loop(net, xs, ys):
    """The kernels of one converted step, called on NumPy arrays: forward GEMMs with the ReLU
    epilogue, the one-pass loss, three linear_backward calls, one adam_step."""
    k = ops.cpu_kernels
    ws = [m.weight.detach().numpy().copy() for m in net if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().numpy().copy() for m in net if isinstance(m, nn.Linear)]
    params = [a for pair in zip(ws, bs) for a in pair]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    acts = ["relu", "relu", "identity"]
    xs = [x.numpy() for x in xs]
    ys = [y.numpy() for y in ys]
    step = [0]

    def run():
        for xb, yb in zip(xs, ys):
            h = [xb]
            for w, b, a in zip(ws, bs, acts):
                h.append(k.gemm(h[-1], w, b, None, None, False, True, a, 0.01, 1.0, 0.0, False,
                                "fp32"))
            _, g = k.softmax_cross_entropy(h[-1], yb, None, 0.0, "mean", 1.0, True, None, None)
            grads = []
            for i in (2, 1, 0):
                g, gw, gb = k.linear_backward(g, h[i], ws[i], h[i + 1], acts[i], 0.01, i > 0,
                                              True, False, None, None, None, None, "fp32")
                grads[:0] = [gw, gb]
            step[0] += 1
            k.adam_step(params, grads, m1, m2, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False,
                        False, step[0], 0.0)
    return run


def median_step_us(runs, steps, repeats):
    """{name: median microseconds per step}, the runs alternated."""
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / steps * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def run_child(name, batch, steps, repeats, threads):
    """One contender's median microseconds per step, in this process."""
    torch.set_num_threads(threads)
    ember.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, DIMS[0], generator=g) for _ in range(steps)]
    ys = [torch.randint(0, DIMS[-1], (batch,), generator=g) for _ in range(steps)]
    if name == "torch":
        ref = model()
        fn = torch_loop(ref, torch.optim.Adam(ref.parameters()), F.cross_entropy, xs, ys)
    elif name == "ember.torch":
        mine = et.convert(model())
        fn = torch_loop(mine, et.optim.Adam(mine.parameters()), et.cross_entropy, xs, ys)
    else:
        fn = raw_ember_loop(model(), xs, ys)
    return median_step_us({name: fn}, steps, repeats)[name]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.batches[0], args.steps, args.repeats,
                                   args.threads)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"torch {torch.__version__}, ember {ember.__version__}, {args.threads} threads, "
          f"{'-'.join(map(str, DIMS))} ReLU MLP, Adam, cross-entropy; median us per step "
          f"over {args.rounds} rounds of {args.repeats} x {args.steps} steps, one process each")
    print(f"{'batch':>5} | {'torch':>8} | {'ember.torch':>11} | {'ratio':>5} | "
          f"{'ember kernels alone':>19} | {'glue':>6}")
    print("-" * 70)
    for batch in args.batches:
        times = {"torch": [], "ember.torch": [], "raw": []}
        for _ in range(args.rounds):
            for name in times:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, "--batches", str(batch),
                     "--steps", str(args.steps), "--repeats", str(args.repeats),
                     "--threads", str(args.threads)],
                    check=True, capture_output=True, text=True, env=env).stdout
                times[name].append(json.loads(out.strip().splitlines()[-1]))
        t = {name: statistics.median(v) for name, v in times.items()}
        ratios = [a / b for a, b in zip(times["torch"], times["ember.torch"])]
        print(f"{batch:>5} | {t['torch']:>8.1f} | {t['ember.torch']:>11.1f} | "
              f"{t['torch'] / t['ember.torch']:>4.2f}x | {t['raw']:>19.1f} | "
              f"{t['ember.torch'] - t['raw']:>6.1f}   (per-round ratios "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
