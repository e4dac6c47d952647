"""Data-parallel training over MPI (ember.distributed): the pieces alone (no MPI), then whole
fits under ``mpiexec -n 2`` (tests/mpi_worker.py), each bounded by a timeout so a hang fails.

The references: the same fit in one process (float tolerance), the same 2-rank fit again (the
same bits), every rank's weights after every step (identical bits).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rel_error, subprocess_env

from ember import Trainer, distributed
from ember.cli.processes import strip_processes
from ember.data import DataLoader
from ember.nn import MLP

WORKER = str(Path(__file__).with_name("mpi_worker.py"))
TIMEOUT = 120  # seconds for one launch; a hang fails the test instead of blocking CI


def _mpiexec():
    from ember.cli.processes import mpiexec
    return mpiexec()


HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and _mpiexec() is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason='needs pip install "ember[mpi]"')


def _env():
    # one thread a rank (two ranks on this 2-core machine); no launcher variables inherited
    env = subprocess_env(OMP_NUM_THREADS="1")
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        env.pop(var, None)
    return env


def launch(tmp_path, name, procs=2, check=True, **cfg):
    """One run of the worker (``procs`` 0: a plain process, no launcher); returns
    (results per rank, the CompletedProcess)."""
    out = tmp_path / name
    cfg["out"] = str(out)
    cmd = [sys.executable, WORKER, json.dumps(cfg)]
    if procs:
        cmd = [_mpiexec(), "-n", str(procs)] + cmd
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    results = []
    for r in range(max(procs, 1)):
        f = out / f"rank{r}.json"
        if f.exists():
            res = json.loads(f.read_text())
            res["weights"] = list(np.load(out / f"rank{r}.npz").values())
            results.append(res)
    return results, proc


def close_to(a, b, tol=1e-4):
    errs = [rel_error(p, q) for p, q in zip(a["weights"], b["weights"])]
    assert max(errs) <= tol, errs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in a["history"]:
            np.testing.assert_allclose(a["history"][key], b["history"][key], rtol=tol, atol=tol)
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.005
    return max(errs)


# ------------------------------------------------------------------------------------------
# the pieces, without MPI


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 100, 101, 128])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shard_bounds_partition_every_batch(rows, size):
    parts = [distributed.shard_bounds(rows, r, size) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == rows
    for (a, b), (c, _) in zip(parts, parts[1:]):
        assert b == c  # contiguous, in rank order, no gap, no overlap
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == rows


@pytest.mark.parametrize("n,bs,size", [(10, 4, 2), (129, 128, 2), (1000, 33, 3), (5, 5, 4)])
def test_sharded_loader_union_is_the_global_batch(n, bs, size):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n)
    whole = DataLoader(x, y, batch_size=bs, seed=4)
    shards = [DataLoader(x, y, batch_size=bs, seed=4, shard=(r, size)) for r in range(size)]
    assert all(len(s) == len(whole) for s in shards)
    for epoch in (0, 3):
        parts = [list(s.batches(epoch)) for s in shards]
        for b, (xb, yb) in enumerate(whole.batches(epoch)):
            ys = np.concatenate([parts[r][b][1] for r in range(size)])
            xs = np.concatenate([parts[r][b][0] for r in range(size)])
            np.testing.assert_array_equal(ys, yb)  # no padding, no duplicate, in order
            np.testing.assert_array_equal(xs, xb)
            np.testing.assert_array_equal(whole.order(epoch)[b * bs:(b + 1) * bs], yb)


def test_loader_shard_is_checked():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="shard rank"):
        DataLoader(x, None, shard=(2, 2))
    with pytest.raises(ValueError, match="shard must be a pair"):
        DataLoader(x, None, shard=3)


def test_duplicate_devices_named():
    assert distributed.duplicate_devices([("a", 0), ("a", 1), ("b", 0)]) is None
    msg = distributed.duplicate_devices([("a", 0), ("a", 1), ("a", 0)])
    assert "ranks 0 and 2" in msg and "GPU 0 on a" in msg


def test_alone_without_launcher(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched_size() == 1
    assert (distributed.rank(), distributed.size()) == (0, 1)
    assert distributed.world() is None
    with pytest.raises(ValueError, match="needs a process started by an MPI launcher"):
        distributed.world(required=True)
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    t = Trainer(MLP([3, 4, 2]), distributed="mpi")
    with pytest.raises(ValueError, match="distributed='mpi' needs"):
        t.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="distributed must be 'auto', 'mpi' or False"):
        Trainer(MLP([3, 4, 2]), distributed="yes")


def test_launcher_without_mpi4py_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    monkeypatch.setattr(distributed, "_world", None)
    with pytest.raises(ImportError, match=r'pip install "ember\[mpi\]"'):
        distributed.world()


def test_import_ember_does_not_import_mpi4py():
    code = ("import sys, numpy as np, ember; from ember.nn import MLP; "
            "x = np.ones((8, 2), np.float32); "
            "ember.Trainer(MLP([2, 3, 2])).fit(x, np.arange(8) % 2, epochs=1, verbose=0); "
            "print('mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_strip_processes():
    assert strip_processes(["train", "--processes", "2", "--epochs", "3"]) == \
        ["train", "--epochs", "3"]
    assert strip_processes(["train", "--processes=4", "-q"]) == ["train", "-q"]


def test_processes_without_mpiexec_is_a_usage_error(monkeypatch, capsys):
    from ember import cli
    from ember.cli import processes
    monkeypatch.setattr(processes, "mpiexec", lambda: None)
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["train", "--processes", "2", "--epochs", "1"]) == 2
    assert 'pip install "ember[mpi]"' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# whole fits under mpiexec -n 2


@needs_mpi
def test_two_ranks_equal_one_process_and_replicas_identical(tmp_path):
    """64-48-32-10, Adam, 3 epochs, 1450 samples at batch 100 (an uneven last batch of 50), a
    validation split: 2 ranks against 1 process."""
    cfg = dict(epochs=3, validation_split=0.2)
    one, _ = launch(tmp_path, "one", procs=0, **cfg)
    two, _ = launch(tmp_path, "two", **cfg)
    assert [r["size"] for r in two] == [2, 2]
    assert two[0]["step_path"].startswith("data-parallel over 2 processes")
    assert one[0]["step_path"] == "fused"
    # every rank holds the same bits after every step
    assert two[0]["digests"] == two[1]["digests"]
    assert len(two[0]["digests"]) == len(one[0]["digests"])
    for a, b in zip(two[0]["weights"], two[1]["weights"]):
        np.testing.assert_array_equal(a, b)
    assert two[0]["history"] == {**two[1]["history"], "time": two[0]["history"]["time"]}
    assert two[0]["grad_norms"] == two[1]["grad_norms"]
    err = close_to(two[0], one[0])
    assert err > 0  # (a different order of additions: equal within rounding, not in bits)


@needs_mpi
@pytest.mark.parametrize("n", [1450, 1401])
def test_dropout_masks_are_the_one_process_masks(tmp_path, n):
    """Each rank's Dropout mask is its rows of the mask one process draws for the whole batch
    (and a rank with no rows, n=1401, still advances its counter): with dropout too, 2 ranks
    equal 1 process within rounding."""
    one, _ = launch(tmp_path, "one", procs=0, n=n, epochs=2, dropout=0.3)
    two, _ = launch(tmp_path, "two", n=n, epochs=2, dropout=0.3)
    assert two[0]["digests"] == two[1]["digests"]
    close_to(two[0], one[0])


@needs_mpi
@pytest.mark.parametrize("options", [dict(accumulate_steps=3), dict(class_weight="balanced"),
                                     dict(accumulate_steps=2, class_weight="balanced", n=1401)],
                         ids=["accumulate", "class_weight", "both"])
def test_accumulation_and_class_weights_equal_one_process(tmp_path, options):
    """Micro-batches per step (each rank's slices of each, the reduction once a step) and
    class-weighted means (each slice's share is its weight over the batch's): one process's."""
    one, _ = launch(tmp_path, "one", procs=0, epochs=2, **options)
    two, _ = launch(tmp_path, "two", epochs=2, **options)
    assert two[0]["digests"] == two[1]["digests"]
    assert len(two[0]["digests"]) == len(one[0]["digests"])
    close_to(two[0], one[0])


@needs_mpi
def test_fused_and_layer_by_layer_ranks_give_the_same_bits(tmp_path):
    """Each rank's step through the fused plan (its per-layer callback starting the reductions)
    and layer by layer (Sequential's grad_ready hook): the same kernels, the same bits."""
    fused, _ = launch(tmp_path, "fused", epochs=2, n=1401)
    layered, _ = launch(tmp_path, "layered", epochs=2, n=1401, fused_steps=False)
    assert fused[0]["step_path"].endswith("(MPI), fused")
    assert layered[0]["step_path"].endswith("(MPI), layer by layer")
    assert fused[0]["digests"] == layered[0]["digests"] == layered[1]["digests"]


@needs_mpi
def test_same_bits_on_a_rerun(tmp_path):
    a, _ = launch(tmp_path, "a", epochs=2)
    b, _ = launch(tmp_path, "b", epochs=2)
    assert a[0]["digests"] == b[0]["digests"] == b[1]["digests"]


@needs_mpi
def test_last_batch_smaller_than_the_ranks(tmp_path):
    """1401 samples at batch 100: the last batch has one sample, rank 1 none; the step is still
    the one-process step."""
    one, _ = launch(tmp_path, "one", procs=0, n=1401, epochs=2)
    two, _ = launch(tmp_path, "two", n=1401, epochs=2)
    assert len(two[0]["digests"]) == len(one[0]["digests"]) == 2 * 15
    assert two[0]["digests"] == two[1]["digests"]
    close_to(two[0], one[0])


@needs_mpi
def test_only_rank0_writes_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    res, _ = launch(tmp_path, "w", epochs=2, checkpoint_dir=str(ck), every_n_steps=4)
    assert res[0]["writes"] and res[1]["writes"] == []
    assert (ck / "latest").is_file()
    names = sorted(p.name for p in ck.iterdir() if p.name.startswith("ckpt-"))
    assert names == sorted({Path(w).name for w in res[0]["writes"]})


def _kill_mid_run(tmp_path, ck, cfg) -> None:
    """Start the 2-rank run, SIGKILL the launcher once a checkpoint past step 8 exists."""
    cfg = dict(cfg, out=str(tmp_path / "killed"))
    proc = subprocess.Popen([_mpiexec(), "-n", "2", sys.executable, WORKER, json.dumps(cfg)],
                            env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p for p in ck.glob("ckpt-*") if (p / "trainer.json").is_file()]
            if any(json.loads((p / "trainer.json").read_text())["global_step"] >= 8
                   for p in done):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the job
        except ProcessLookupError:
            pass


@needs_mpi
def test_killed_and_resumed_is_bit_exact(tmp_path):
    cfg = dict(epochs=2, every_n_steps=4, sleep=0.05)
    whole, _ = launch(tmp_path, "whole", checkpoint_dir=str(tmp_path / "ck0"), **cfg)
    ck = tmp_path / "ck1"
    _kill_mid_run(tmp_path, ck, dict(cfg, checkpoint_dir=str(ck)))
    assert not (tmp_path / "killed" / "rank0.json").exists()  # it really was cut short
    resumed, _ = launch(tmp_path, "resumed", checkpoint_dir=str(ck), resume=True,
                        **dict(cfg, sleep=0))
    for a, b in zip(resumed[0]["weights"], whole[0]["weights"]):
        np.testing.assert_array_equal(a, b)
    assert resumed[0]["digests"] == resumed[1]["digests"] == \
        whole[0]["digests"][-len(resumed[0]["digests"]):]
    assert resumed[0]["history"]["loss"] == whole[0]["history"]["loss"]


@needs_mpi
def test_resume_on_one_process_from_a_two_rank_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    whole, _ = launch(tmp_path, "whole", epochs=3, checkpoint_dir=str(tmp_path / "ck0"))
    part, _ = launch(tmp_path, "part", epochs=1, checkpoint_dir=str(ck))  # 2 ranks, 1 epoch
    more, proc = launch(tmp_path, "more", procs=0, epochs=3, checkpoint_dir=str(ck),
                        resume=True)
    assert "saved by a run on 2 process(es), on 1" in proc.stderr
    assert len(more[0]["digests"]) == 2 * 15  # it continued at epoch 2 of 3
    close_to(more[0], whole[0])


@needs_mpi
def test_an_error_on_rank1_ends_the_job(tmp_path):
    t0 = time.monotonic()
    res, proc = launch(tmp_path, "err", check=False, epochs=3, raise_at=5, raise_rank=1)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 30 + 10  # (10 s: starting the two Pythons)
    assert "rank 1 of 2 failed" in proc.stderr and "a failure on rank 1" in proc.stderr
    assert res == []  # neither rank finished


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    t0 = time.monotonic()
    res, proc = launch(tmp_path, "killed", check=False, epochs=3, die_at=5, die_rank=1)
    assert proc.returncode != 0 and res == []
    assert time.monotonic() - t0 < 30 + 10


@needs_mpi
@pytest.mark.parametrize("options,what", [
    (dict(perturb_rank=1), "training data (x, y)"), (dict(odd_lr_rank=1), "optimizer")])
def test_ranks_with_different_data_or_options_are_refused(tmp_path, options, what):
    res, proc = launch(tmp_path, "mismatch", check=False, epochs=1, **options)
    assert proc.returncode != 0 and res == []
    assert f"differ in {what}: rank(s) 1 disagree with rank 0" in proc.stderr
    # refused on every rank, by an exception a script can catch (every rank raises it: no
    # rank is left waiting, the job needs no abort)
    assert proc.stderr.count("every process of a data-parallel run must be given") == 2
    assert "MPI_Abort" not in proc.stderr


@needs_mpi
def test_cli_processes_2_gives_one_run(tmp_path):
    env = _env()
    cmd = [sys.executable, "-m", "ember", "train", "--epochs", "15", "--processes", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert proc.stdout.count("ember: training MLP") == 1  # rank 0 alone prints
    assert "on 2 processes (data-parallel, MPI)" in proc.stdout
    summary = json.loads((runs[0] / "summary.json").read_text())
    one = subprocess.run([sys.executable, "-m", "ember", "train", "--epochs", "15", "-q",
                          "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr
    ref = json.loads((tmp_path / "one" / "summary.json").read_text())
    acc, ref_acc = summary["metrics"]["test"]["accuracy"], ref["metrics"]["test"]["accuracy"]
    assert acc >= 0.95 and abs(acc - ref_acc) <= 0.005


# ------------------------------------------------------------------------------------------
# GPUs (NCCL through CuPy): run only where a GPU is lent


NCCL_ONE_RANK = """
import numpy as np, cupy
from ember import distributed
from ember.nn import Parameter
w = distributed.world(required=True)
assert w.size == 1
w.use_gpu()
rng = np.random.default_rng(0)
params = [Parameter(cupy.asarray(rng.standard_normal(s).astype(np.float32))) for s in
          [(7, 5), (7,), (3, 7)]]
grads = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
for p, g in zip(params, grads):
    p.grad = cupy.asarray(g)
red = w.reducer([params[:2], params[2:]])
red.start(1)
red.start(0)
loss, correct = red.finish([1.5, 3.0], [0.5])
assert (loss, correct) == (1.5, 3.0)
for p, g in zip(params, grads):
    np.testing.assert_array_equal(cupy.asnumpy(p.grad), g * np.float32(0.5))
print("ok", red.bytes_sent)
"""


@needs_mpi
@pytest.mark.gpu
def test_nccl_one_rank_reducer_on_a_gpu(tmp_path):
    pytest.importorskip("cupy")
    script = tmp_path / "nccl1.py"
    script.write_text(NCCL_ONE_RANK)
    proc = subprocess.run([_mpiexec(), "-n", "1", sys.executable, str(script)], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


@needs_mpi
@pytest.mark.gpu
def test_two_ranks_on_one_gpu_are_refused(tmp_path):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() != 1:
        pytest.skip("needs a machine with exactly one GPU")
    res, proc = launch(tmp_path, "dup", check=False, device="cuda", epochs=1)
    assert proc.returncode != 0 and res == []
    assert "would both use GPU" in proc.stderr


@needs_mpi
@pytest.mark.gpu
def test_two_gpus_equal_one_process(tmp_path):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    one, _ = launch(tmp_path, "one", procs=0, device="cuda", epochs=2)
    two, _ = launch(tmp_path, "two", device="cuda", epochs=2)
    assert two[0]["step_path"].startswith("data-parallel over 2 processes (NCCL)")
    assert two[0]["digests"] == two[1]["digests"]
    close_to(two[0], one[0])
