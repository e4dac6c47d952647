"""Data-parallel training over MPI: 2 processes x 1 thread against 1 process x 1 and x 2 threads.

Samples/s and step time of ``Trainer(model, optimizer="adam").fit`` on 784-256-256-10 and
784-1024-1024-10 ReLU MLPs at global batch 128 and 1024, on synthetic MNIST-like data (784
features in [0, 1], 10 classes, 24576 samples: 24 steps an epoch at batch 1024, fixed seed), in
three configurations and a reference:

- ``1x1``: one process, 1 thread (the fused CPU step);
- ``1x2``: one process, 2 threads;
- ``2x1``: ``mpiexec -n 2``, 1 thread each (ember.distributed: each rank trains on its half of
  every global batch, the gradients summed by ``GradientReducer``);
- ``1x1-lbl`` (reference, no target): one process, 1 thread, the layer-by-layer step
  (``trainer.fused_steps = False``) -- the path the data-parallel step runs on each rank --
  at batch 1024, 64 and 512 (one rank's share of a 2x1 step at 128 and 1024, alone).

Threads are pinned in every process (``ember.set_num_threads(n)`` and ``OMP_NUM_THREADS`` /
``EMBER_NUM_THREADS`` = n in its environment). Each configuration runs in processes of its own,
``--rounds`` times, the configurations interleaved round by round (the order rotated each
round). Each process does a 1-epoch warm-up fit, then ``--epochs`` 1-epoch fits of fresh models
(same seeds: a long fit's Adam state used to drift into float32 denormals, which slowed ember's
steps 2.4x until its optimizers stored them as 0; see DENORMALS in the source), each epoch timed whole with ``time.perf_counter`` (an
epoch callback) and divided by its steps: ember does not expose per-step times. A run's step
time is the median of its epochs; the table gives the median over the rounds (and their
min-max). Efficiency is throughput efficiency: samples/s(2x1) / (2 samples/s(1x1)), i.e.
T(1x1) / (2 T(2x1)) in step time.

Targets (the issue): at 784-1024-1024-10, batch 1024, strong-scaling efficiency >= 0.85, and
2x1 within 15 % of 1x2 (samples/s(2x1) >= 0.85 samples/s(1x2)). Also: the bytes each rank sends
per step (trainable parameter bytes x 2 (P-1)/P, checked against the run's
``GradientReducer.bytes_sent``), the reduction alone per step (``start_rest`` + ``finish`` on
the fitted model's gradients, no compute), and -- on paper, labelled as such -- a ring
all-reduce projection of efficiency at 8 and 64 ranks on 25 Gbit/s links.

    python bench/bench_distributed.py [--rounds 5] [--epochs 3] [--quick]

``--quick`` is a smoke run (small data, 1 round, 1 epoch). Every worker runs under a timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import ember  # noqa: E402

MODELS = {"784-256-256-10": (784, 256, 256, 10), "784-1024-1024-10": (784, 1024, 1024, 10)}
BATCHES = (128, 1024)
#: name -> (processes, threads per process, fused steps allowed)
CONFIGS = {"1x1": (1, 1, True), "1x2": (1, 2, True), "2x1": (2, 1, True),
           "1x1-lbl": (1, 1, False)}
TARGET_CASE = ("784-1024-1024-10", 1024)
LINK_BYTES_S = 25e9 / 8  # 25 Gbit/s
ALPHAS_S = (5e-6, 10e-6)  # per-message latency of the projection


# -- worker -------------------------------------------------------------------------------
def synthetic_mnist(n: int, seed: int = 0):
    """``n`` MNIST-like samples: 784 features in [0, 1] (a class prototype plus noise, clipped),
    10 balanced classes, 10 % of the labels drawn at random (the loss stays well above 0)."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((10, 784)) < 0.2).astype(np.float32)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = protos[y] * 0.5 + rng.random((n, 784), dtype=np.float32) * 0.6
    flip = rng.random(n) < 0.1
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return np.clip(x, 0.0, 1.0).astype(np.float32), y.astype(np.int64)


# Why each timed epoch trains a fresh model (DENORMALS): Adam's first moment of a parameter whose
# gradient is exactly 0 from some step on (a dead ReLU unit's weights) decays by beta1 = 0.9 a
# step and reaches the float32 denormals some hundreds of steps later; from then on ember's CPU
# step ran 2.4x slower here (784-1024-1024-10, batch 64, layer by layer, 1 thread: 6.6 ms a
# step over the first epoch of 384 steps, 16.1 ms over the third, with ~0.9M denormals in
# exp_avg; Adam's step() alone on that state 12.8 ms, 2.0 ms once they were set to 0), which
# would time the denormals, not the configurations. A fresh model's first epoch
# (<= 192 steps here) had none; the worker counts them at the end of its last timed epoch.
# (Since 2026-12-03 ember's CPU optimizers store such moments as 0, bench/bench_dead_units.py;
# the fresh models stay, so that every configuration times the same steps.)


def denormals(optimizer) -> int:
    """Nonzero float32 values below the smallest normal in the optimizer's state arrays."""
    tiny, count = np.finfo(np.float32).tiny, 0
    stack = [getattr(optimizer, "state", None)]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, np.ndarray) and o.dtype == np.float32:
            count += int(np.count_nonzero((o != 0) & (np.abs(o) < tiny)))
    return count


def worker(config: str, samples: int, epochs: int, reduce_calls: int) -> dict | None:
    """Every case of ``config`` in this process (each rank of an mpiexec job runs it too);
    the result on rank 0, None elsewhere."""
    from ember import distributed, nn
    from ember.callbacks import Callback

    procs, threads, fused = CONFIGS[config]
    ember.set_num_threads(threads)
    made = []  # every GradientReducer the fits build (to read bytes_sent and time a reduction)

    class Recording(distributed.GradientReducer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    distributed.GradientReducer = Recording  # (the DataParallel step looks it up per fit)

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds, self.t0 = [], 0.0

        def on_epoch_begin(self, epoch, logs):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs):
            self.seconds.append(time.perf_counter() - self.t0)

    x, y = synthetic_mnist(samples)
    world = distributed.world()
    size = 1 if world is None else world.size
    if size != procs:
        raise SystemExit(f"worker {config}: {size} process(es), expected {procs}")
    out = {"config": config, "processes": size, "threads": ember.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cases": []}
    if world is not None:
        from mpi4py import MPI
        out["mpi"] = MPI.Get_library_version().strip().splitlines()[0]
    # the reference also times the half batches: one rank's compute at 2x1, alone
    batches = BATCHES[-1:] + tuple(b // 2 for b in BATCHES) if config == "1x1-lbl" else BATCHES
    for label, widths in MODELS.items():
        for batch in batches:
            made.clear()
            timer = EpochTimer()
            warm = ember.Trainer(nn.MLP(list(widths), seed=0), optimizer="adam")
            warm.fused_steps = fused
            warm.fit(x, y, epochs=1, batch_size=batch, seed=0, verbose=0)  # warm-up
            fit_s = []
            for _ in range(epochs):  # each timed epoch: a fresh model's first (DENORMALS above)
                model = nn.MLP(list(widths), seed=0)
                trainer = ember.Trainer(model, optimizer="adam", callbacks=[timer])
                trainer.fused_steps = fused
                t0 = time.perf_counter()
                trainer.fit(x, y, epochs=1, batch_size=batch, seed=1, verbose=0)
                fit_s.append(time.perf_counter() - t0)
            steps = trainer.steps_per_epoch
            step_s = [s / steps for s in timer.seconds]
            params = sum(int(p.data.size) for p in model.parameters() if p.requires_grad)
            case = {"model": label, "batch": batch, "steps_per_epoch": steps,
                    "step_ms_epochs": [round(s * 1e3, 4) for s in step_s],
                    "step_ms": statistics.median(step_s) * 1e3,
                    "fit_s": fit_s, "step_path": trainer.step_path,
                    "adam_state_denormals": denormals(trainer.optimizer),
                    "threads_after": ember.get_num_threads(),
                    "loss": trainer.history["loss"][-1], "params": params,
                    "bytes_sent_computed": 4 * params * 2 * (size - 1) / size,
                    "bytes_sent_reducer": None, "reduce_ms": None}
            if made:
                red = made[-1]
                case["bytes_sent_reducer"] = red.bytes_sent
                case["reducers_built"] = len(made)
                world.barrier()
                times = []
                for _ in range(reduce_calls):  # the reduction alone: no forward or backward
                    t1 = time.perf_counter()
                    red.start_rest()
                    red.finish([0.0, 0.0], [1.0] * distributed.size())
                    times.append(time.perf_counter() - t1)
                case["reduce_ms"] = statistics.median(times) * 1e3
            out["cases"].append(case)
    return out if (world is None or world.rank == 0) else None


# -- driver -------------------------------------------------------------------------------
def launch(config: str, args, timeout: float) -> dict:
    """One worker process (or mpiexec job) for ``config``, its threads pinned; its JSON."""
    procs, threads, _ = CONFIGS[config]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), EMBER_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config,
           "--samples", str(args.samples), "--epochs", str(args.epochs),
           "--reduce-calls", str(args.reduce_calls)]
    if procs > 1:
        cmd = ["mpiexec", "-n", str(procs)] + cmd
    # a session of its own: on a timeout the whole group (mpiexec and its ranks) is killed
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError(f"{config}: worker timed out after {timeout:.0f} s")
    if p.returncode != 0:
        raise RuntimeError(f"{config}: worker exited {p.returncode}:\n{stderr[-3000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{config}: no result line; stderr:\n{stderr[-3000:]}")
    return json.loads(lines[-1])


def projection(per_sample_s: float, widths, ranks: int, batch: int, alpha: float) -> dict:
    """Ring all-reduce model (on paper): per-rank compute = per_sample_s x batch / P; the
    reduction = 2 (P-1)/P S / B + 2 (P-1) alpha per bucket (ember: one bucket per Linear).
    Best overlap (an upper bound): every bucket but the first layer's (ready last) hidden
    behind the backward, taken as 2/3 of the compute."""
    sizes = [(a + 1) * b * 4 for a, b in zip(widths[:-1], widths[1:])]  # weight + bias bytes
    s = sum(sizes)
    f = 2 * (ranks - 1) / ranks
    comm = f * s / LINK_BYTES_S + len(sizes) * 2 * (ranks - 1) * alpha
    first = f * sizes[0] / LINK_BYTES_S + 2 * (ranks - 1) * alpha
    compute = per_sample_s * batch / ranks
    exposed = max(first, comm - 2 / 3 * compute)
    return {"compute_ms": compute * 1e3, "comm_ms": comm * 1e3,
            "eff": compute / (compute + comm), "eff_overlap": compute / (compute + exposed)}


def fmt_bytes(b) -> str:
    return "-" if not b else f"{b / 1e6:.3f} MB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per worker")
    ap.add_argument("--samples", type=int, default=24576)
    ap.add_argument("--reduce-calls", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--timeout", type=float, default=240, help="seconds per worker")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4096 samples, 1 round, "
                    "1 epoch")
    ap.add_argument("--worker", metavar="CONFIG", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.samples, args.reduce_calls = 1, 1, 4096, 5
    if args.worker:
        res = worker(args.worker, args.samples, args.epochs, args.reduce_calls)
        if res is not None:
            print(json.dumps(res), flush=True)
        return 0

    from ember import _cpu
    from ember.bench import core_check, wait_idle
    t_start = time.perf_counter()
    print(f"ember {ember.__version__}, isa {_cpu.isa()}, cpus available "
          f"{len(os.sched_getaffinity(0))}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"data: synthetic MNIST-like, {args.samples} samples x 784, 10 classes; Adam; "
          f"{args.rounds} round(s) x {args.epochs} timed epoch(s) after a 1-epoch warm-up; "
          "threads pinned per process (set_num_threads + OMP_NUM_THREADS)")
    print("before: " + core_check(2))
    runs: dict = {c: [] for c in args.configs}
    meta: dict = {}
    for r in range(args.rounds):
        order = args.configs[r % len(args.configs):] + args.configs[:r % len(args.configs)]
        for config in order:
            idle = wait_idle(5.0)
            time.sleep(0.3)  # the driver's own idle workers (core_check) asleep
            t0 = time.perf_counter()
            res = launch(config, args, args.timeout)
            runs[config].append(res)
            meta[config] = {k: res.get(k) for k in ("processes", "threads", "omp_num_threads",
                                                     "mpi") if res.get(k) is not None}
            steps = "  ".join(f"{c['model'].split('-')[1]}/b{c['batch']} {c['step_ms']:.2f}"
                              for c in res["cases"])
            print(f"round {r + 1} {config:8s} {time.perf_counter() - t0:5.1f} s"
                  f"{'' if idle else ' (machine not idle)'}: step ms {steps}", flush=True)
    print("after:  " + core_check(2))
    for config, m in meta.items():
        print(f"  {config}: " + ", ".join(f"{k} {v}" for k, v in m.items()))

    def cases(config):
        """{(model, batch): [case of each round]}"""
        out: dict = {}
        for res in runs.get(config, []):
            for c in res["cases"]:
                out.setdefault((c["model"], c["batch"]), []).append(c)
        return out

    by = {c: cases(c) for c in args.configs}
    med = {c: {k: statistics.median(x["step_ms"] for x in v) for k, v in by[c].items()}
           for c in args.configs}
    print(f"\nstep time: median over {args.rounds} round(s) (min-max of the rounds); "
          "samples/s = batch / median step; x1x1 = samples/s over 1x1's; eff = x1x1 / "
          "(processes x threads)")
    print(f"{'config':8s} {'model':17s} {'batch':>5s} {'step ms':>8s} {'(min-max)':>15s} "
          f"{'samples/s':>10s} {'x1x1':>6s} {'eff':>5s} {'sent/step/rank':>15s}  step_path")
    for label in MODELS:
        for batch in BATCHES:
            key = (label, batch)
            for config in args.configs:
                if key not in by[config]:
                    continue
                procs, threads, _ = CONFIGS[config]
                ms = med[config][key]
                lo = min(x["step_ms"] for x in by[config][key])
                hi = max(x["step_ms"] for x in by[config][key])
                ratio = (med["1x1"][key] / ms) if "1x1" in med and key in med["1x1"] else None
                last = by[config][key][-1]
                rs = "-" if ratio is None else f"{ratio:.2f}"
                es = "-" if ratio is None else f"{ratio / (procs * threads):.2f}"
                print(f"{config:8s} {label:17s} {batch:5d} {ms:8.2f} {f'({lo:.2f}-{hi:.2f})':>15s} "
                      f"{batch / ms * 1e3:10.0f} {rs:>6s} {es:>5s} "
                      f"{fmt_bytes(last['bytes_sent_computed']):>15s}  {last['step_path']}")
            print()

    worst = max((x.get("adam_state_denormals") or 0) for c in by.values() for v in c.values()
                for x in v)
    print(f"float32 denormals in Adam's state at the end of a worker's last timed epoch: at most "
          f"{worst}{'' if worst == 0 else ' -- WARNING: those steps ran slow (DENORMALS)'}\n")

    if "2x1" in by:
        print("bytes each rank sends per step at 2x1 (and receives as many): computed = "
              "4 B x trainable params x 2(P-1)/P; reducer = GradientReducer.bytes_sent")
        for label in MODELS:
            c = by["2x1"].get((label, BATCHES[-1]), [None])[-1]
            if c is None:
                continue
            red = [x["reduce_ms"] for b in BATCHES for x in by["2x1"].get((label, b), [])]
            print(f"  {label:17s} {c['params']:8d} params: computed {c['bytes_sent_computed']:.0f} B,"
                  f" reducer {c['bytes_sent_reducer']} B; the reduction alone (start_rest + "
                  f"finish, no compute) {statistics.median(red):.2f} ms median "
                  f"({min(red):.2f}-{max(red):.2f})")
        print()

    if "2x1" in by and "1x1-lbl" in by:
        print("where a 2x1 step goes (medians, ms): one process, 1 thread, layer by layer, at "
              "half the batch (one rank's compute alone) + the reduction alone; the rest is "
              "what running side by side costs (shared caches and memory bandwidth, waiting "
              "for the slower rank, MPI progress)")
        for label in MODELS:
            for batch in BATCHES:
                k, half = (label, batch), (label, batch // 2)
                if k not in med["2x1"] or half not in med["1x1-lbl"]:
                    continue
                red = statistics.median(x["reduce_ms"] for x in by["2x1"][k])
                t, c = med["2x1"][k], med["1x1-lbl"][half]
                print(f"  {label:17s} batch {batch:4d}: 2x1 step {t:7.2f} = compute@{batch // 2} "
                      f"{c:7.2f} + reduction {red:5.2f} + rest {t - c - red:6.2f}")
        print()
        print("final training loss of the timed fit (same data, model seed and shuffle seed; "
              "round 1):")
        for label in MODELS:
            for batch in BATCHES:
                k = (label, batch)
                print(f"  {label:17s} batch {batch:4d}: " + ", ".join(
                    f"{c} {by[c][k][0]['loss']:.8g}" for c in args.configs if k in by[c]))
        print()

    if all(c in med for c in ("1x1", "1x2", "2x1")) and TARGET_CASE in med["2x1"]:
        k = TARGET_CASE
        eff = med["1x1"][k] / (2 * med["2x1"][k])
        vs = med["1x2"][k] / med["2x1"][k]  # samples/s(2x1) / samples/s(1x2)
        paired = [a["step_ms"] / (2 * b["step_ms"]) for a, b in zip(by["1x1"][k], by["2x1"][k])]
        paired2 = [a["step_ms"] / b["step_ms"] for a, b in zip(by["1x2"][k], by["2x1"][k])]
        ok1, ok2 = eff >= 0.85, vs >= 0.85
        print(f"checks at {k[0]}, batch {k[1]} (medians; per round, paired: "
              f"{', '.join(f'{e:.2f}' for e in paired)} / {', '.join(f'{e:.2f}' for e in paired2)})")
        print(f"  strong-scaling efficiency samples/s(2x1) / (2 samples/s(1x1)) = {eff:.3f} "
              f"(target >= 0.85): {'PASS' if ok1 else 'FAIL'}")
        print(f"  samples/s(2x1) / samples/s(1x2) = {vs:.3f} (target >= 0.85, within 15 %): "
              f"{'PASS' if ok2 else 'FAIL'}")
        for label in MODELS:
            for batch in BATCHES:
                kk = (label, batch)
                if kk != k and kk in med["2x1"]:
                    print(f"  (info) {label} batch {batch}: efficiency "
                          f"{med['1x1'][kk] / (2 * med['2x1'][kk]):.3f}, 2x1 / 1x2 "
                          f"{med['1x2'][kk] / med['2x1'][kk]:.3f}")
        print()

    if "1x1" in med:
        print("PROJECTION (on paper, not measured): ring all-reduce on 25 Gbit/s links "
              f"(B = {LINK_BYTES_S / 1e9:.3f} GB/s), 2(P-1)/P S/B + 2(P-1) alpha per bucket "
              "(3 buckets, one per Linear); compute per rank = the 1x1 per-sample time at batch "
              f"{BATCHES[-1]} x batch / P; eff = compute / (compute + comm); best overlap = the "
              "first layer's bucket always exposed, the rest hidden behind a backward of 2/3 "
              "of the compute (an upper bound)")
        print(f"  {'model':17s} {'P':>3s} {'batch':>5s} {'compute ms':>10s} "
              + " ".join(f"{'comm ms a=' + str(int(a * 1e6)) + 'us':>16s} "
                         f"{'eff':>5s} {'best':>5s}" for a in ALPHAS_S))
        for label, widths in MODELS.items():
            key = (label, BATCHES[-1])
            if key not in med["1x1"]:
                continue
            per_sample = med["1x1"][key] / 1e3 / BATCHES[-1]
            for ranks in (8, 64):
                for batch in (1024, 8192):
                    row = [projection(per_sample, widths, ranks, batch, a) for a in ALPHAS_S]
                    print(f"  {label:17s} {ranks:3d} {batch:5d} {row[0]['compute_ms']:10.2f} "
                          + " ".join(f"{p['comm_ms']:16.2f} {p['eff']:5.2f} "
                                     f"{p['eff_overlap']:5.2f}" for p in row))
        print()
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
