"""Checkpoint write and load of a 10.0M-parameter MLP with its Adam state (~120 MB), the figure
of bench_checkpoint.py: ``save_checkpoint`` (serialise, SHA-256, fsync, rename) and
``load_checkpoint`` (read, verify SHA-256, parse). Fixed rounds (each call is ~0.1-0.5 s); the
disk is pytest's temporary directory. Run:
``python -m pytest bench/test_checkpoint_io.py --benchmark-only``."""
from __future__ import annotations

import itertools

import pytest

import workloads as w

ROUNDS = 5


@pytest.fixture(scope="module")
def trainer():
    return w.checkpoint_trainer()


def _group(benchmark, trainer, path, threads, what):
    mb = w.checkpoint_bytes(path) / 1e6
    benchmark.group = f"checkpoint {trainer.model.num_parameters()} params + Adam @ {threads} thr"
    benchmark.extra_info.update(contender=f"ember {what}", megabytes=mb, threads=threads)


def test_checkpoint_write(benchmark, bench_threads, trainer, tmp_path):
    path = w.checkpoint_write(trainer, tmp_path, 0)
    w.checkpoint_check(trainer, path, w.checkpoint_load(path))
    _group(benchmark, trainer, path, bench_threads, "write")
    w.remove_checkpoint(path)
    counter = itertools.count(1)
    written = []

    def write():
        written.append(w.checkpoint_write(trainer, tmp_path, next(counter)))

    def remove_previous():  # not timed: keep one checkpoint on disk at a time
        while written:
            w.remove_checkpoint(written.pop())
        return (), {}

    benchmark.pedantic(write, setup=remove_previous, rounds=ROUNDS)
    remove_previous()


def test_checkpoint_load(benchmark, bench_threads, trainer, tmp_path):
    path = w.checkpoint_write(trainer, tmp_path, 0)
    w.checkpoint_check(trainer, path, w.checkpoint_load(path))
    _group(benchmark, trainer, path, bench_threads, "load")
    benchmark.pedantic(w.checkpoint_load, args=(path,), rounds=ROUNDS, warmup_rounds=0)
    w.remove_checkpoint(path)
