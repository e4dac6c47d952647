"""Under load: a digits fit alone, next to a second fit, and next to a CPU-bound PyTorch job.

    python bench/bench_contention.py [--window 3] [--rounds 3] [--threads 2]
                                     [--ember-path python] [--ember-path build/ab/<sha>/python]
                                     [--wait-idle 30] [--only "ember alone" ...]

The fit is issue 16's "digits 8-epoch fit": ember.Trainer(MLP([64, 256, 256, 10]), Adam lr
1e-3).fit(digits x, y, epochs=8, batch_size=32), all 1797 samples. Every job runs in its own
process with its thread pools pinned to --threads (OMP_NUM_THREADS, ember.set_num_threads,
torch.set_num_threads, OPENBLAS_NUM_THREADS). A scenario starts its processes, lets each import
and warm up (one 1-epoch fit, or a few matmuls), then starts them together and lets them run for
--window seconds: a fit job repeats its fit until the window closes and reports the times of the
fits that finished inside it; the PyTorch matmul job (torch.mm of 512x512 in a loop, CPU-bound,
PyTorch's OpenMP) reports its rate. So every timed fit ran with its partner running throughout.

Scenarios (rotated each round, so slow spells of this shared VM hit all of them):
  ember alone, ember + ember, ember + torch matmul,
  torch fit alone, torch fit + torch fit, torch fit + torch matmul,
where "torch fit" is the same model, data, epochs, batch and optimizer in a PyTorch eager loop.
Each figure is the median over rounds of the round's median fit time; the ratios are each
contended median over its alone median (the target of issue 16: ember + ember <= 2.5x, ember +
torch matmul no worse than torch fit + torch matmul).

With several --ember-path values every scenario involving ember runs once per build each round
(same rotation), for an A/B of thread-pool changes.
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

EPOCHS, BATCH, SIZES = 8, 32, [64, 256, 256, 10]


# ---- child processes ------------------------------------------------------------------------

def _wait_until(t: float) -> None:
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 0.01))


def child(kind: str, threads: int) -> None:
    """Warm up, print "ready", read "<start> <end>" (epoch seconds), run until end, print JSON."""
    import numpy as np
    if kind == "ember-fit":
        import ember
        from ember.datasets import load_digits
        ember.set_num_threads(threads)
        x, y = load_digits()

        def job(epochs=EPOCHS):
            t = ember.Trainer(ember.nn.MLP(SIZES, seed=0), optimizer="adam", lr=1e-3)
            t.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    else:
        import torch
        torch.set_num_threads(threads)
        if kind == "torch-fit":
            from ember.datasets import load_digits
            x, y = load_digits()
            tx, ty = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

            def job(epochs=EPOCHS):
                torch.manual_seed(0)
                model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                            torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                            torch.nn.Linear(256, 10))
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                for _ in range(epochs):
                    perm = torch.randperm(len(tx))
                    for i in range(0, len(tx), BATCH):
                        idx = perm[i:i + BATCH]
                        opt.zero_grad(set_to_none=True)
                        torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx]).backward()
                        opt.step()
        else:  # torch-matmul
            a = torch.randn(512, 512)
            b = torch.randn(512, 512)
            c = torch.empty(512, 512)

            def job(epochs=None):
                for _ in range(20):
                    torch.mm(a, b, out=c)
    job(1)
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    _wait_until(start)
    times = []
    while True:
        t0 = time.time()
        job()
        t1 = time.time()
        if t1 > end:
            break
        times.append(t1 - t0)
    print(json.dumps(times), flush=True)


# ---- parent ---------------------------------------------------------------------------------

def run_scenario(jobs, threads: int, window: float):
    """jobs: [(kind, ember python path)]; returns each job's list of completed-job seconds."""
    procs = []
    for kind, path in jobs:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), PYTHONPATH=path)
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", kind, "--threads",
                                       str(threads)], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"child failed: {line!r}")
    time.sleep(0.3)  # the warm-ups' idle workers go to sleep before the window opens
    start = time.time() + 0.05
    for p in procs:
        p.stdin.write(f"{start} {start + window}\n")
        p.stdin.flush()
    out = []
    for p in procs:
        res = p.stdout.readline()
        p.wait()
        out.append(json.loads(res))
    return out


def core_line(threads: int, path: str) -> str:
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", "from ember.bench import core_check; "
                        f"print(core_check({threads}))"], env=env, capture_output=True, text=True)
    return r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=float, default=3.0, help="seconds each scenario runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ember-path", action="append",
                    help="python/ directory of an ember build (repeatable; default: PYTHONPATH)")
    ap.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for the machine to be idle")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    default = os.environ.get("PYTHONPATH", "python")
    paths = args.ember_path or [default]
    torch_path = paths[0]  # torch jobs import ember only for load_digits
    scenarios = []  # (label, build label, jobs); the first job is the one whose fits are timed
    for bi, p in enumerate(paths):
        tag = f"[{p}]" if len(paths) > 1 else ""
        scenarios += [
            (f"ember alone{tag}", [("ember-fit", p)]),
            (f"ember + ember{tag}", [("ember-fit", p), ("ember-fit", p)]),
            (f"ember + torch matmul{tag}", [("ember-fit", p), ("torch-matmul", torch_path)]),
        ]
    scenarios += [
        ("torch fit alone", [("torch-fit", torch_path)]),
        ("torch fit + torch fit", [("torch-fit", torch_path), ("torch-fit", torch_path)]),
        ("torch fit + torch matmul", [("torch-fit", torch_path), ("torch-matmul", torch_path)]),
        ("torch matmul alone", [("torch-matmul", torch_path)]),
    ]
    if args.only:
        scenarios = [s for s in scenarios if any(s[0].startswith(o) for o in args.only)]
    print(f"threads pinned to {args.threads} in every process; window {args.window} s; "
          f"{args.rounds} rounds; fit = digits 64-256-256-10, Adam, {EPOCHS} epochs, batch {BATCH}")
    print("before: " + core_line(args.threads, paths[0]), flush=True)
    med: dict = {name: [] for name, _ in scenarios}
    partner: dict = {name: [] for name, _ in scenarios}
    for r in range(args.rounds):
        k = r % len(scenarios)
        for name, jobs in scenarios[k:] + scenarios[:k]:
            wait_idle(args.wait_idle)
            res = run_scenario(jobs, args.threads, args.window)
            if not res[0]:
                print(f"  round {r + 1} {name}: no job finished inside the window", flush=True)
                continue
            med[name].append(statistics.median(res[0]))
            extra = ""
            if len(res) > 1 and res[1]:
                partner[name].append(statistics.median(res[1]))
                extra = f"; partner median {partner[name][-1] * 1e3:.1f} ms ({len(res[1])} runs)"
            print(f"  round {r + 1} {name}: median {med[name][-1] * 1e3:.1f} ms over "
                  f"{len(res[0])} runs (min {min(res[0]) * 1e3:.1f}, max {max(res[0]) * 1e3:.1f})"
                  f"{extra}", flush=True)
    print("after:  " + core_line(args.threads, paths[0]))

    def m(name):
        return statistics.median(med[name]) if med.get(name) else float("nan")

    print(f"\n| scenario ({args.threads} threads each) | median of the first job | vs alone |"
          " partner's median |")
    print("|---|---|---|---|")
    for name, _ in scenarios:
        if name.startswith("torch matmul"):
            base = m("torch matmul alone")
            unit = "ms per 20 mm"
        else:
            base = m(("ember alone" + name[name.index("["):]) if "[" in name else "ember alone")
            if name.startswith("torch fit"):
                base = m("torch fit alone")
            unit = "ms per fit"
        pm = statistics.median(partner[name]) * 1e3 if partner[name] else None
        ps = f"{pm:.1f} ms" if pm is not None else "-"
        print(f"| {name} | {m(name) * 1e3:.1f} {unit} | {m(name) / base:.2f}x | {ps} |")


if __name__ == "__main__":
    main()
