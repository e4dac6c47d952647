"""Checkpoint write and load throughput for a ~10M-parameter model with Adam state.

    python bench/bench_checkpoint.py [--dir PATH] [--repeats 5]

A checkpoint of an MLP 784-2048-2048-2048-10 (10.0M parameters) trained one step with Adam holds
the weights (40 MB) and two moment arrays (80 MB): ~120 MB in all. "write" is save_checkpoint
(serialise, SHA-256, fsync every file and directory, rename, pointer update); "load" is
load_checkpoint (read, verify every SHA-256, parse the three files) — what resuming a run
costs. MB/s counts the
bytes of the checkpoint's files. Medians of --repeats runs; the disk is whatever --dir is on.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import ember
from ember import nn
from ember.checkpoint import load_checkpoint, load_model, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="ember-ckpt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    model = nn.MLP([784, 2048, 2048, 2048, 10], seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    trainer = ember.Trainer(model, optimizer="adam")
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=0)
    writes, loads, sizes = [], [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        path = save_checkpoint(trainer, root, name=f"ckpt-e0001-s{i:08d}")
        writes.append(time.perf_counter() - t0)
        sizes.append(sum(f.stat().st_size for f in path.iterdir()))
        t0 = time.perf_counter()
        ck = load_checkpoint(path)
        loads.append(time.perf_counter() - t0)
        m = load_model(path)
        assert np.array_equal(m.state_dict()["0.weight"], model.state_dict()["0.weight"])
        assert len(ck["optimizer"]) == 2 * len(model.parameters())
        shutil.rmtree(path)
    mb = statistics.median(sizes) / 1e6
    w, r = statistics.median(writes), statistics.median(loads)
    print(f"checkpoint of {model.num_parameters():,} parameters + Adam state: {mb:.1f} MB in "
          f"{root} ({os.statvfs(root).f_bsize} B blocks)")
    print("| operation | median time | throughput |")
    print("|---|---|---|")
    print(f"| write (serialise + SHA-256 + fsync + rename) | {w * 1e3:.0f} ms | {mb / w:,.0f} MB/s |")
    print(f"| load (read + verify SHA-256 + parse) | {r * 1e3:.0f} ms | {mb / r:,.0f} MB/s |")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
