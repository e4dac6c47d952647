"""Checkpoint write and load throughput for a ~10M-parameter model with Adam state.

    python bench/bench_checkpoint.py [--dir PATH] [--repeats 5]

A checkpoint of an MLP 784-2048-2048-2048-10 (10.0M parameters) trained one step with Adam holds
the weights (40 MB) and two moment arrays (80 MB): ~120 MB in all. "write" is save_checkpoint
(serialise, SHA-256, fsync every file and directory, rename, pointer update); "load" is
load_checkpoint (read, verify every SHA-256, parse the three files) — what resuming a run
costs. MB/s counts the bytes of the checkpoint's files. Medians of --repeats runs; the disk is
whatever --dir is on. The model, the two operations and the check are bench/workloads.py's, the
same the pytest-benchmark suite (bench/test_checkpoint_io.py) times.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import workloads as w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="ember-ckpt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    trainer = w.checkpoint_trainer()
    model = trainer.model
    writes, loads, sizes = [], [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        path = w.checkpoint_write(trainer, root, i)
        writes.append(time.perf_counter() - t0)
        sizes.append(w.checkpoint_bytes(path))
        t0 = time.perf_counter()
        ck = w.checkpoint_load(path)
        loads.append(time.perf_counter() - t0)
        w.checkpoint_check(trainer, path, ck)
        w.remove_checkpoint(path)
    mb = statistics.median(sizes) / 1e6
    wt, rt = statistics.median(writes), statistics.median(loads)
    print(f"checkpoint of {model.num_parameters():,} parameters + Adam state: {mb:.1f} MB in "
          f"{root} ({os.statvfs(root).f_bsize} B blocks)")
    print("| operation | median time | throughput |")
    print("|---|---|---|")
    print(f"| write (serialise + SHA-256 + fsync + rename) | {wt * 1e3:.0f} ms | {mb / wt:,.0f} MB/s |")
    print(f"| load (read + verify SHA-256 + parse) | {rt * 1e3:.0f} ms | {mb / rt:,.0f} MB/s |")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
