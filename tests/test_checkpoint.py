"""Checkpoints: exact resume after SIGKILL, atomic saves, bad files, fine-tuning, PyTorch."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember import CheckpointError, Trainer, nn
from ember.callbacks import ReduceLROnPlateau
from ember.checkpoint import (ModelCheckpoint, list_checkpoints, load_checkpoint, load_model,
                              load_trainer, save_checkpoint)

WORKER = Path(__file__).with_name("ckpt_worker.py")


def _worker(run_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(WORKER), str(run_dir), *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def _final_state(run_dir):
    ck = load_checkpoint(run_dir)
    hist = ck["state"]["history"]
    hist["history"].pop("time", None)
    return ck, hist


def _assert_same_run(a_dir, b_dir):
    a, ha = _final_state(a_dir)
    b, hb = _final_state(b_dir)
    assert a["state"]["finished"] == b["state"]["finished"]
    assert a["state"]["global_step"] == b["state"]["global_step"]
    assert ha == hb
    for part in ("model", "optimizer", "callbacks"):
        assert sorted(a[part]) == sorted(b[part]), part
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=f"{part} {k}")
    assert a["state"]["rng"] == b["state"]["rng"]
    assert a["state"]["callbacks"] == b["state"]["callbacks"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    out = _worker(d)
    assert out.returncode == 0, out.stderr
    return d


@pytest.mark.slow
@pytest.mark.parametrize("kills", [("--kill-at-step", "5"), ("--kill-at-step", "17"),
                                   ("--kill-at-step", "31"), ("--kill-in-save", "3"),
                                   ("--kill-in-save", "14"), ("--kill-in-save", "27")])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference_run, kills):
    out = _worker(tmp_path, *kills)
    assert out.returncode == -9, (out.returncode, out.stderr)
    # a torn save leaves a temporary directory that must be ignored and then cleaned up
    out = _worker(tmp_path)
    assert out.returncode == 0, out.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    _assert_same_run(reference_run, tmp_path)


@pytest.mark.slow
def test_two_kills_in_a_row(tmp_path, reference_run):
    assert _worker(tmp_path, "--kill-at-step", "8").returncode == -9
    assert _worker(tmp_path, "--kill-in-save", "9").returncode == -9
    assert _worker(tmp_path).returncode == 0
    _assert_same_run(reference_run, tmp_path)


def test_resuming_a_finished_run_trains_no_more(reference_run, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(reference_run, d)
    before = sorted(p.name for p in d.iterdir())
    out = _worker(d)
    assert out.returncode == 0
    ck, _ = _final_state(d)
    assert ck["state"]["finished"]
    assert sorted(p.name for p in d.iterdir()) == before


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((3, 5))[y] * 2 + rng.standard_normal((n, 5))).astype(np.float32)
    return x, y


class Boom(Exception):
    pass


class CrashAt(ember.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, batch, logs):
        if self.trainer.global_step == self.step:
            raise Boom()


def test_in_process_resume_mid_epoch(tmp_path):
    x, y = _blobs()
    ref = Trainer(nn.MLP([5, 16, 3], dropout=0.1, seed=0), lr=1e-2)
    ref.fit(x, y, epochs=4, batch_size=10, seed=3, checkpoint_dir=tmp_path / "ref",
            verbose=0)
    t = Trainer(nn.MLP([5, 16, 3], dropout=0.1, seed=0), lr=1e-2,
                callbacks=[ModelCheckpoint(tmp_path / "run", every_n_steps=1), CrashAt(17)])
    with pytest.raises(Boom):
        t.fit(x, y, epochs=4, batch_size=10, seed=3, checkpoint_dir=tmp_path / "run",
              verbose=0)
    t2 = Trainer(nn.MLP([5, 16, 3], dropout=0.1, seed=0), lr=1e-2,
                 callbacks=[ModelCheckpoint(tmp_path / "run", every_n_steps=1)])
    t2.fit(x, y, epochs=4, batch_size=10, seed=3, checkpoint_dir=tmp_path / "run",
           resume="latest", verbose=0)
    for k, v in ref.model.state_dict().items():
        np.testing.assert_array_equal(v, t2.model.state_dict()[k])
    strip = lambda h: {k: v for k, v in h.history.items() if k != "time"}  # noqa: E731
    assert strip(ref.history) == strip(t2.history)


def test_keep_last_and_best_across_two_restarts(tmp_path):
    x, y = _blobs()
    for epochs in (3, 5, 8):  # three sessions: start, restart, restart
        cb = ModelCheckpoint(tmp_path, keep_last=2, monitor="val_loss")
        t = Trainer(nn.MLP([5, 16, 3], seed=0), lr=5e-2, callbacks=[cb])
        t.fit(x, y, epochs=epochs, batch_size=10, validation_split=0.25, seed=1,
              checkpoint_dir=tmp_path, resume="latest", verbose=0)
        names = [p.name for p in list_checkpoints(tmp_path)]
        best = (tmp_path / "best").read_text().strip()
        val = t.history["val_loss"]
        best_epoch = int(np.argmin(val)) + 1
        assert best == [n for n in names if n == best][0]
        assert load_checkpoint(tmp_path / best)["state"]["epoch"] == best_epoch
        recent = names[-2:]
        assert set(names) == set(recent) | {best}, names
        assert load_checkpoint(tmp_path)["state"]["epoch"] == epochs


def _saved(tmp_path):
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3], seed=0), lr=1e-2)
    t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    return load_checkpoint(tmp_path)["path"], t, x


def _rewrite_manifest(ck: Path):
    import hashlib
    lines = []
    for f in sorted(p.name for p in ck.iterdir() if p.name != "MANIFEST.sha256"):
        lines.append(f"{hashlib.sha256((ck / f).read_bytes()).hexdigest()}  {f}\n")
    (ck / "MANIFEST.sha256").write_text("".join(lines))


def test_load_model_predicts_like_the_trained_one(tmp_path):
    path, t, x = _saved(tmp_path)
    model = load_model(tmp_path)
    np.testing.assert_array_equal(model.predict(x), t.predict_raw(x))
    t2 = load_trainer(path)
    np.testing.assert_array_equal(t2.predict(x), t.predict(x))
    assert t2.optimizer.step_count == t.optimizer.step_count


@pytest.mark.parametrize("damage,message", [
    (lambda ck: (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:-7]),
     r"model.safetensors: SHA-256 does not match"),
    (lambda ck: (ck / "optimizer.safetensors").write_bytes(
        bytes([(ck / "optimizer.safetensors").read_bytes()[0] ^ 1]) +
        (ck / "optimizer.safetensors").read_bytes()[1:]), r"optimizer.safetensors: SHA-256"),
    (lambda ck: (ck / "trainer.json").unlink(), r"trainer.json: missing"),
    (lambda ck: (ck / "MANIFEST.sha256").unlink(), r"MANIFEST.sha256: missing"),
])
def test_damaged_checkpoints_are_named(tmp_path, damage, message):
    path, _, _ = _saved(tmp_path)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_header_that_lies_about_sizes(tmp_path):
    path, _, _ = _saved(tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [s * 2 for s in header[key]["shape"]]
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    f.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n:])
    _rewrite_manifest(path)  # the manifest is consistent: the header itself lies
    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable safetensors"):
        load_model(tmp_path)


def test_incompatible_format_version(tmp_path):
    path, _, _ = _saved(tmp_path)
    st = json.loads((path / "trainer.json").read_text())
    st["format_version"] = 99
    (path / "trainer.json").write_text(json.dumps(st))
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_model(tmp_path)


def test_architecture_mismatch_on_resume(tmp_path):
    _saved(tmp_path)
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 9, 3], seed=0))
    with pytest.raises(CheckpointError, match=r"Linear\(5->8\).*differs.*Linear\(5->9\)"):
        t.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path, resume="latest",
              verbose=0)
    with pytest.raises(CheckpointError, match="batch_size=20 but fit was called with batch_size=7"):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=3, batch_size=7, checkpoint_dir=tmp_path,
                                       resume="latest", verbose=0)


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "random").mkdir()
    with pytest.raises(CheckpointError, match="not an ember checkpoint"):
        load_model(tmp_path / "random")
    (tmp_path / "latest").write_text("../etc\n")
    with pytest.raises(CheckpointError, match="points at"):
        load_model(tmp_path)


def test_leftover_temporaries_are_ignored_and_cleaned(tmp_path):
    path, t, _ = _saved(tmp_path)
    junk = tmp_path / ".tmp-ckpt-e0009-s00000999-deadbeef"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    assert load_checkpoint(tmp_path)["path"] == path
    save_checkpoint(t, tmp_path, name="manual")
    assert not junk.exists()


def test_fine_tuning_new_head_and_frozen_layers(tmp_path):
    x, y = _blobs(n=300)
    base = Trainer(nn.MLP([5, 16, 16, 3], seed=0), lr=1e-2)
    base.fit(x, y, epochs=5, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    model = nn.MLP([5, 16, 16, 6], seed=5)
    with pytest.raises(ValueError, match=r"4.weight: model \(6, 16\) vs state \(3, 16\)"):
        model.load_state_dict(load_model(tmp_path).state_dict())
    report = model.load_state_dict(load_model(tmp_path).state_dict(), strict=False)
    assert [m[0] for m in report["mismatched"]] == ["4.weight", "4.bias"]
    model[0].freeze()
    frozen = model[0].weight.data.copy()
    y6 = np.where(x[:, 0] > 0, y + 3, y)
    t = Trainer(model, lr=1e-2)
    t.fit(x, y6, epochs=15, batch_size=20, verbose=0)
    np.testing.assert_array_equal(model[0].weight.data, frozen)
    assert t.evaluate(x, y6)["accuracy"] > 0.8
    # replacing the output layer of a loaded model
    m2 = load_model(tmp_path).train()
    m2.replace(4, nn.Linear(16, 6, seed=1))
    assert m2.predict(x).shape == (300, 6)


def test_safetensors_load_into_pytorch_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file
    path, t, x = _saved(tmp_path)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tm.load_state_dict(load_file(path / "model.safetensors"))
    with torch.no_grad():
        out = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, t.predict_raw(x), rtol=1e-5, atol=1e-5)
    save_file(tm.state_dict(), tmp_path / "from_torch.safetensors")
    from safetensors.numpy import load_file as np_load
    m = nn.MLP([5, 8, 3], seed=9)
    m.load_state_dict(np_load(tmp_path / "from_torch.safetensors"))
    np.testing.assert_allclose(m.predict(x), out, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# robustness: other people's files, a used folder, a lost pointer, bad files and arguments


def _tree(d: Path) -> dict:
    """Every path under ``d`` with its bytes (None for directories)."""
    return {str(p.relative_to(d)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(d.rglob("*"))}


def test_saving_deletes_only_embers_own_temporaries(tmp_path):
    x, y = _blobs()
    (tmp_path / "results.tmp").write_text("the user's results")
    (tmp_path / ".tmp-cache").mkdir()
    (tmp_path / ".tmp-cache" / "blob").write_bytes(b"cached")
    (tmp_path / ".tmp-build-0123abcd").mkdir()  # named like ember's, holds something else
    (tmp_path / ".tmp-build-0123abcd" / "main.o").write_bytes(b"obj")
    (tmp_path / "latest.tmp").write_text("not a pointer temporary")
    stale = tmp_path / ".tmp-ckpt-e0009-s00000999-deadbeef"  # a torn save of ember's
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    old = tmp_path / ".tmp-old-ckpt-e0001-s00000006-0badf00d"
    old.mkdir()
    (old / "trainer.json").write_text("{}")
    ptr_tmp = tmp_path / f"latest.{'ab' * 16}.tmp"
    ptr_tmp.write_text("ckpt-e0009-s00000999\n")
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=1, batch_size=20,
                                           checkpoint_dir=tmp_path, verbose=0)
    assert (tmp_path / "results.tmp").read_text() == "the user's results"
    assert (tmp_path / ".tmp-cache" / "blob").read_bytes() == b"cached"
    assert (tmp_path / ".tmp-build-0123abcd" / "main.o").read_bytes() == b"obj"
    assert (tmp_path / "latest.tmp").read_text() == "not a pointer temporary"
    assert not stale.exists() and not old.exists() and not ptr_tmp.exists()
    assert load_checkpoint(tmp_path)["state"]["epoch"] == 1


def test_a_fresh_fit_into_a_folder_holding_a_run_is_refused(tmp_path):
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=3, batch_size=20,
                                           checkpoint_dir=tmp_path, verbose=0)
    before = _tree(tmp_path)
    t = Trainer(nn.MLP([5, 8, 3], seed=1))
    w0 = t.model.state_dict()["0.weight"].copy()
    with pytest.raises(CheckpointError, match=r"checkpoint_dir '.*' already holds checkpoints "
                       r"of a run \(latest: ckpt-e0003-s00000018\); pass resume='latest'"):
        t.fit(x, y, epochs=1, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    assert t.global_step == 0  # refused before any training step
    np.testing.assert_array_equal(t.model.state_dict()["0.weight"], w0)
    # the same through a ModelCheckpoint callback, without checkpoint_dir
    t = Trainer(nn.MLP([5, 8, 3], seed=1), callbacks=[ModelCheckpoint(tmp_path)])
    with pytest.raises(CheckpointError, match=r"ModelCheckpoint: directory '.*' already holds.*"
                                              r"pass checkpoint_dir='.*', resume='latest' to fit"):
        t.fit(x, y, epochs=5, batch_size=20, verbose=0)
    assert t.global_step == 0
    # a folder with only a 'latest' pointer counts too
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "latest").write_text("ckpt-e0001-s00000006\n")
    with pytest.raises(CheckpointError, match=r"already holds checkpoints of a run"):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=1, checkpoint_dir=tmp_path / "other",
                                       verbose=0)
    (tmp_path / "other" / "latest").unlink()
    (tmp_path / "other").rmdir()
    assert _tree(tmp_path) == before


def test_resuming_another_run_into_a_used_folder_is_refused(tmp_path):
    x, y = _blobs()
    for d in ("a", "b"):
        Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                               checkpoint_dir=tmp_path / d, verbose=0)
    before = _tree(tmp_path)
    t = Trainer(nn.MLP([5, 8, 3], seed=0))
    with pytest.raises(CheckpointError, match=r"'.*b' already holds checkpoints of another run"):
        t.fit(x, y, epochs=4, batch_size=20, checkpoint_dir=tmp_path / "b",
              resume=tmp_path / "a", verbose=0)
    assert t.global_step == 0
    assert _tree(tmp_path) == before


def test_pruning_keeps_later_checkpoints_and_the_one_just_written(tmp_path):
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3], seed=0), callbacks=[ModelCheckpoint(tmp_path, keep_last=5)]).fit(
        x, y, epochs=4, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert len(names) == 4
    e4 = _tree(tmp_path / names[3])
    # continue the run from epoch 2 for one more epoch, keeping only the last checkpoint
    t = Trainer(nn.MLP([5, 8, 3], seed=0), callbacks=[ModelCheckpoint(tmp_path, keep_last=1)])
    t.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path,
          resume=tmp_path / names[1], verbose=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == names[2:]
    assert (tmp_path / "latest").read_text().strip() == names[2]
    assert load_checkpoint(tmp_path)["state"]["epoch"] == 3  # 'latest' is loadable
    assert _tree(tmp_path / names[3]) == e4  # a later step: not this run's, untouched


def test_resume_latest_without_the_pointer_uses_the_newest_checkpoint(tmp_path):
    x, y = _blobs()
    ref = Trainer(nn.MLP([5, 8, 3], seed=0))
    ref.fit(x, y, epochs=4, batch_size=20, seed=2, verbose=0)
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20, seed=2,
                                           checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing"), \
            pytest.raises(CheckpointError, match=r"Linear\(5->8\).*differs.*Linear\(5->9\)"):
        Trainer(nn.MLP([5, 9, 3])).fit(x, y, epochs=4, batch_size=20, seed=2,
                                       checkpoint_dir=tmp_path, resume="latest", verbose=0)
    t = Trainer(nn.MLP([5, 8, 3], seed=7))
    with pytest.warns(UserWarning, match=r"latest is missing; resuming from the newest complete "
                      r"checkpoint, .*ckpt-e0002-s00000012"):
        t.fit(x, y, epochs=4, batch_size=20, seed=2, checkpoint_dir=tmp_path,
              resume="latest", verbose=0)
    assert t.history["loss"][:2] == ref.history["loss"][:2]  # epochs 1-2 came from the file
    for k, v in ref.model.state_dict().items():
        np.testing.assert_array_equal(v, t.model.state_dict()[k])
    # no complete checkpoint (no manifest) and no pointer: a fresh run, as before
    fresh = tmp_path / "fresh"
    (fresh / "ckpt-e0001-s00000006").mkdir(parents=True)
    t = Trainer(nn.MLP([5, 8, 3], seed=0))
    t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=fresh, resume="latest", verbose=0)
    assert len(t.history["loss"]) == 2
    assert load_checkpoint(fresh)["state"]["epoch"] == 2


def test_bad_pointers_paths_and_arguments_are_named(tmp_path):
    path, t, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"model.safetensors is a file, not a checkpoint "
                                              r"directory"):
        load_model(path / "model.safetensors")
    for bad in (None, 3):
        with pytest.raises(TypeError, match=r"load_model: path must be a path"):
            load_model(bad)
        with pytest.raises(TypeError, match=r"load_trainer: path must be a path"):
            load_trainer(bad)
    assert load_model(path / ".." / "latest").predict(_blobs()[0]).shape == (120, 3)
    (tmp_path / "latest").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match=r"latest: not a text pointer"):
        load_model(tmp_path)
    (tmp_path / "latest").write_bytes(b"ckpt\n" * 2000)  # not one short line
    with pytest.raises(CheckpointError, match=r"latest: not a text pointer"):
        load_trainer(tmp_path)
    x, y = _blobs()
    with pytest.raises(TypeError, match=r"fit: resume must be 'latest' or a checkpoint path"):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=1, resume=3, verbose=0)
    for name in ("latest", "../up", ".tmp-x"):
        with pytest.raises(ValueError, match=r"save_checkpoint: name must be a plain directory"):
            save_checkpoint(t, tmp_path / "manual", name=name)
    assert not (tmp_path / "manual").exists() and not (tmp_path / "up").exists()


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    x, y = _blobs()
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    t = Trainer(nn.MLP([5, 8, 3], seed=0))
    with pytest.raises(CheckpointError, match=r"checkpoint_dir '.*notes.txt' is a file, not a "
                                              r"directory"):
        t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=f, verbose=0)
    assert t.global_step == 0 and f.read_text() == "mine"
    with pytest.raises(CheckpointError, match=r"checkpoint_dir '.*notes.txt/run': cannot create"):
        t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=f / "run", verbose=0)
    assert t.global_step == 0
    with pytest.raises(TypeError, match=r"fit: checkpoint_dir must be a path"):
        t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=3, verbose=0)


@pytest.mark.parametrize("key", ["rng", "history", "epoch", "base_lr", "optimizer_step"])
def test_trainer_json_lacking_a_key_is_named(tmp_path, key):
    path, _, _ = _saved(tmp_path)
    st = json.loads((path / "trainer.json").read_text())
    del st[key]
    (path / "trainer.json").write_text(json.dumps(st))
    _rewrite_manifest(path)  # consistent with the manifest: the content itself is short
    x, y = _blobs()
    with pytest.raises(CheckpointError, match=rf"trainer.json lacks '{key}'"):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path,
                                       resume="latest", verbose=0)
    if key != "rng" and key != "base_lr":  # what load_trainer needs
        with pytest.raises(CheckpointError, match=rf"trainer.json lacks '{key}'"):
            load_trainer(tmp_path)
    load_model(tmp_path)  # the model itself is still readable


def test_trainer_json_with_wrong_types_is_named(tmp_path):
    path, _, _ = _saved(tmp_path)
    st = json.loads((path / "trainer.json").read_text())
    st["epoch"] = "two"
    st["rng"]["dropout"] = {"7": {"seed": 1}}
    (path / "trainer.json").write_text(json.dumps(st))
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError, match=r"'epoch' should be a non-negative integer, "
                                              r"got \"two\""):
        load_trainer(tmp_path)
    st["epoch"] = 2
    (path / "trainer.json").write_text(json.dumps(st))
    _rewrite_manifest(path)
    x, y = _blobs()
    with pytest.raises(CheckpointError, match=r"bad dropout state for layer '7'"):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path,
                                       resume="latest", verbose=0)


def test_non_finite_weights_are_reported_as_such(tmp_path, monkeypatch):
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3], seed=0))
    t.fit(x, y, epochs=1, batch_size=20, verbose=0)
    t.model[0].weight.data[1, 2] = np.nan
    with pytest.raises(CheckpointError, match=r"save_checkpoint: parameter '0.weight' holds NaN "
                                              r"or Inf; .* none is written"):
        save_checkpoint(t, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    # one written anyway (by an earlier ember, which did not check) is named when loaded
    import ember.checkpoint as ck
    monkeypatch.setattr(ck, "non_finite_parameter", lambda model: None)
    save_checkpoint(t, tmp_path)
    message = (r"model.safetensors: 0.weight holds NaN or Inf \(the run's weights were not "
               r"finite when saved\)$")
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_trainer(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        Trainer(nn.MLP([5, 8, 3])).fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path,
                                       resume="latest", verbose=0)


def test_resume_warns_when_given_hyperparameters_are_replaced(tmp_path):
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                           checkpoint_dir=tmp_path / "a", verbose=0)
    t = Trainer(nn.MLP([5, 8, 3], seed=0), lr=0.5)
    with pytest.warns(UserWarning, match=r"the run's hyperparameters are used, not the "
                                         r"trainer's: lr=0.5 \(checkpoint: 0.001\)$"):
        t.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path / "a", resume="latest",
              verbose=0)
    assert t.optimizer.lr == 0.001
    # the same explicit lr, reduced by ReduceLROnPlateau during the run: nothing to warn about
    cbs = lambda: [ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)]  # noqa: E731
    first = Trainer(nn.MLP([5, 8, 3], seed=0), lr=0.05, callbacks=cbs())
    first.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path / "b", verbose=0)
    assert first.optimizer.lr < 0.05
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Trainer(nn.MLP([5, 8, 3], seed=0), lr=0.05, callbacks=cbs())
        again.fit(x, y, epochs=4, batch_size=20, checkpoint_dir=tmp_path / "b",
                  resume="latest", verbose=0)
    assert again.epoch == 4


@pytest.mark.filterwarnings("ignore::ember.callbacks.GradientWarning")
def test_non_finite_weights_are_not_saved_over_good_checkpoints(tmp_path):
    """A run whose weights turn non-finite keeps its last good checkpoint as latest (and
    loadable): the epoch-end and final saves are skipped with a warning, nothing is pruned."""
    from ember.callbacks import Callback

    class Poison(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                self.trainer.model[0].weight.data[0, 0] = np.inf

    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3], seed=0), callbacks=[Poison()])
    with pytest.warns(RuntimeWarning, match=r"ModelCheckpoint: not saving step \d+: parameter "
                                            r"'0.weight' holds NaN or Inf"):
        t.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt-e0001-s00000006"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-e0001-s00000006"
    model = load_model(tmp_path)  # the good one
    assert np.isfinite(model[0].weight.data).all()


@pytest.mark.parametrize("crash_after", ["old moved aside", "both renamed aside"])
def test_a_save_interrupted_between_its_renames_is_recovered(tmp_path, crash_after):
    """Saving a step that is already saved (the end-of-training save) moves the old copy aside,
    then renames the new one in: a crash between the two left latest pointing at nothing. The
    complete copy is put back when the run is resumed or loaded (and is not cleaned away)."""
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3], seed=0))
    t.fit(x, y, epochs=2, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    name = (tmp_path / "latest").read_text().strip()
    want = load_model(tmp_path).state_dict()
    # simulate the crash: the final directory moved aside as the interrupted save leaves it
    os.replace(tmp_path / name, tmp_path / f".tmp-old-{name}-0123abcd")
    if crash_after == "both renamed aside":  # plus the new copy, complete, not yet renamed in
        import shutil
        shutil.copytree(tmp_path / f".tmp-old-{name}-0123abcd", tmp_path / f".tmp-{name}-89abcdef")
    got = load_model(tmp_path).state_dict()
    assert (tmp_path / name).is_dir()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    t2 = Trainer(nn.MLP([5, 8, 3], seed=0))
    t2.fit(x, y, epochs=3, batch_size=20, checkpoint_dir=tmp_path, resume="latest", verbose=0)
    assert len(t2.history) == 3 and t2.history["loss"][:2] == t.history["loss"]  # resumed


@pytest.mark.parametrize("kwargs, message", [
    (dict(every_n_epochs="1"), r"every_n_epochs must be an integer >= 0, got '1'"),
    (dict(every_n_epochs=-1), r"every_n_epochs must be an integer >= 0, got -1"),
    (dict(every_n_steps=0), r"every_n_steps must be an integer >= 1 or None, got 0"),
    (dict(keep_last=1.5), r"keep_last must be an integer >= 1, got 1.5"),
])
def test_model_checkpoint_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match="ModelCheckpoint: " + message):
        ModelCheckpoint(tmp_path, **kwargs)


def test_resuming_on_other_data_of_the_same_size_is_refused(tmp_path):
    """The data check covered only the number of samples: reversed rows resumed silently, and
    the run went on with a different order of batches than it started with."""
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                           checkpoint_dir=tmp_path, verbose=0)
    model = nn.MLP([5, 8, 3], seed=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"trained on other data \(same number of samples"):
        Trainer(model).fit(x[::-1].copy(), y[::-1].copy(), epochs=3, batch_size=20,
                           checkpoint_dir=tmp_path, resume="latest", verbose=0)
    for k, v in model.state_dict().items():  # refused before anything was restored
        np.testing.assert_array_equal(v, before[k])
    t = Trainer(nn.MLP([5, 8, 3], seed=0))  # the same data resumes
    t.fit(x.copy(), y.copy(), epochs=3, batch_size=20, checkpoint_dir=tmp_path, resume="latest",
          verbose=0)
    assert len(t.history) == 3


def test_a_folder_in_use_by_another_fit_is_refused(tmp_path):
    """Two fits into one folder deleted each other's in-flight saves (a raw FileNotFoundError)
    and interleaved their checkpoints: a fit holds <folder>/.ember-lock while it runs."""
    fcntl = pytest.importorskip("fcntl")
    from ember.checkpoint import LOCK_FILE
    x, y = _blobs()
    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a fit in another process would
    try:
        with pytest.raises(CheckpointError, match=r"is in use by another fit"):
            Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                                   checkpoint_dir=tmp_path, verbose=0)
        assert list_checkpoints(tmp_path) == []
    finally:
        os.close(fd)
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                           checkpoint_dir=tmp_path, verbose=0)
    assert len(list_checkpoints(tmp_path)) == 2


def test_an_interrupted_fit_releases_its_folder(tmp_path):
    """A fit stopped by an exception (Ctrl-C in a notebook) must not keep the folder locked:
    resuming in the same process works."""
    from ember.callbacks import Callback

    class Interrupt(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                raise KeyboardInterrupt

    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3], seed=0), callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        t.fit(x, y, epochs=4, batch_size=20, checkpoint_dir=tmp_path, verbose=0)
    t2 = Trainer(nn.MLP([5, 8, 3], seed=0))
    t2.fit(x, y, epochs=4, batch_size=20, checkpoint_dir=tmp_path, resume="latest", verbose=0)
    assert len(t2.history) == 4


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch):
    """flock failing for another reason than a holder (ENOLCK on some network mounts) must not
    be reported as a folder in use, nor stop the fit."""
    import errno
    fcntl = pytest.importorskip("fcntl")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3], seed=0)).fit(x, y, epochs=2, batch_size=20,
                                           checkpoint_dir=tmp_path, verbose=0)
    assert len(list_checkpoints(tmp_path)) == 2
