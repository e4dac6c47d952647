"""ember.callbacks.TensorBoard: the event files read back record by record (TFRecord framing by
hand, tensorboardX's Event protobuf), a resumed run's steps once each, ``ember train
--tensorboard``."""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: E402

from conftest import subprocess_env  # noqa: E402
from ember import Trainer, cli  # noqa: E402
from ember.callbacks import Callback, TensorBoard  # noqa: E402
from ember.callbacks.tensorboard import flatten_hyperparameters  # noqa: E402
from ember.nn import MLP  # noqa: E402


def read_events(path: Path) -> list:
    """The Event records of one file: 8-byte length, 4-byte CRC, the data, 4-byte CRC."""
    data = path.read_bytes()
    events, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        events.append(ev)
        i += 12 + n + 4
    assert i == len(data)
    return events


def scalars(log_dir: Path, purge: bool = True) -> dict:
    """``{tag: [(step, value), ...]}`` over the event files of ``log_dir`` (not its subfolders)
    in file-name order, as TensorBoard reads them: with ``purge``, a SessionLog START at step
    s drops what earlier records hold at steps >= s."""
    out: dict = {}
    files = sorted(p for p in log_dir.iterdir() if p.name.startswith("events.out.tfevents"))
    assert files, f"no event file in {log_dir}"
    for f in files:
        for ev in read_events(f):
            if purge and ev.HasField("session_log") and \
                    ev.session_log.status == SessionLog.START:
                out = {t: [(s, v) for s, v in sv if s < ev.step] for t, sv in out.items()}
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def texts(log_dir: Path) -> list:
    found = []
    for f in sorted(log_dir.glob("events.out.tfevents*")):
        for ev in read_events(f):
            for v in ev.summary.value:
                if v.HasField("tensor") and v.tensor.string_val:
                    found.append((v.tag, v.tensor.string_val[0].decode()))
    return found


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def test_one_scalar_per_epoch_equal_to_the_history(tmp_path):
    x, y = _data()
    trainer = Trainer(MLP([4, 8, 2], seed=0), callbacks=[TensorBoard(tmp_path / "tb")])
    h = trainer.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0)
    got = scalars(tmp_path / "tb")
    for tag, key in [("train/loss", "loss"), ("val/loss", "val_loss"),
                     ("train/accuracy", "accuracy"), ("val/accuracy", "val_accuracy"),
                     ("lr", "lr"), ("grad_norm", "grad_norm")]:
        assert [s for s, _ in got[tag]] == [1, 2, 3, 4], tag
        assert [v for _, v in got[tag]] == [np.float32(v) for v in h[key]], tag
    for layer in ("0", "2"):  # the two Linear layers' weight-gradient norms
        assert [v for _, v in got[f"grad_norm/{layer}"]] == \
            [np.float32(n[f"{layer}.weight"]) for n in h.grad_norms]
    (tag, table), = texts(tmp_path / "tb")
    assert tag.startswith("hyperparameters") and "| batch_size | 16 |" in table
    assert "| lr | 0.001 |" in table and "| loss/type | CrossEntropy |" in table


def test_every_n_steps_writes_batch_losses_at_the_global_step(tmp_path):
    x, y = _data()

    class Losses(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, batch, logs):
            self.seen.append((self.trainer.global_step, np.float32(logs["loss"])))

    seen = Losses()
    trainer = Trainer(MLP([4, 8, 2], seed=0),
                      callbacks=[seen, TensorBoard(tmp_path / "tb", every_n_steps=3)])
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)  # 8 steps an epoch
    got = scalars(tmp_path / "tb" / "steps")["train/batch_loss"]
    assert got == [(s, v) for s, v in seen.seen if s % 3 == 0]
    assert [s for s, _ in got] == [3, 6, 9, 12, 15]
    assert [s for s, _ in scalars(tmp_path / "tb")["train/loss"]] == [1, 2]


class _Interrupt(Callback):
    """Ctrl-C at a given optimizer step (after the callbacks before it wrote theirs)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_batch_end(self, batch, logs):
        if self.trainer.global_step == self.at_step:
            raise KeyboardInterrupt


def test_a_resumed_run_writes_each_step_once(tmp_path):
    x, y = _data()
    tb, ck = tmp_path / "tb", tmp_path / "ck"

    def fit(extra):
        trainer = Trainer(MLP([4, 8, 2], seed=0),
                          callbacks=[TensorBoard(tb, every_n_steps=2), *extra])
        trainer.resume_hint = False
        return trainer, trainer.fit(x, y, epochs=5, batch_size=16, verbose=0,
                                    checkpoint_dir=ck, resume="latest")

    with pytest.raises(KeyboardInterrupt):  # in epoch 3 (8 steps an epoch), after step 20
        fit([_Interrupt(at_step=21)])
    raw = scalars(tb, purge=False)
    assert [s for s, _ in raw["train/loss"]] == [1, 2]
    trainer, h = fit([])
    got = scalars(tb)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in got["train/loss"]] == [np.float32(v) for v in h["loss"]]
    steps = [s for s, _ in scalars(tb / "steps")["train/batch_loss"]]
    assert steps == list(range(2, 41, 2))  # once each: the crashed run's 18, 20 are purged
    raw_steps = [s for s, _ in scalars(tb / "steps", purge=False)["train/batch_loss"]]
    assert raw_steps.count(18) == 2  # (written by both processes)
    # the same run uninterrupted writes the same values
    ref_dir = tmp_path / "ref"
    ref = Trainer(MLP([4, 8, 2], seed=0), callbacks=[TensorBoard(ref_dir, every_n_steps=2)])
    ref.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert scalars(ref_dir)["train/loss"] == got["train/loss"]
    assert scalars(ref_dir / "steps") == scalars(tb / "steps")
    assert len(texts(tb)) == 1  # the hyperparameters once


def test_state_dict_round_trip_and_bad_arguments(tmp_path):
    cb = TensorBoard(tmp_path)
    cb.last_epoch_step, cb.last_batch_step, cb.hparams_written = 3, 40, True
    other = TensorBoard(tmp_path)
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == {"last_epoch_step": 3, "last_batch_step": 40,
                                  "hparams_written": True}
    with pytest.raises(ValueError, match="every_n_steps"):
        TensorBoard(tmp_path, every_n_steps=0)
    with pytest.raises(TypeError, match="log_dir"):
        TensorBoard(3)
    assert flatten_hyperparameters({"a": {"b": 1, "c": [1, 2]}, "d": None,
                                    "e": [{"t": "x"}]}) == \
        {"a/b": 1, "a/c": "[1, 2]", "d": "None", "e/0/t": "x"}


def test_without_tensorboardx_a_clear_import_error(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorboardX"] = None   # any `import tensorboardX` now raises ImportError
        import numpy as np
        import ember
        from ember.callbacks import TensorBoard
        x = np.zeros((8, 2), np.float32); y = np.array([0, 1] * 4)
        t = ember.Trainer(ember.nn.MLP([2, 2]), callbacks=[TensorBoard({str(tmp_path)!r})])
        try:
            t.fit(x, y, epochs=1, verbose=0)
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'pip install "ember[tensorboard]"' in out.stdout


def test_ember_train_tensorboard_writes_event_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "3", "--hidden", "16", "--out", "run",
                     "--tensorboard", "-q"]) == 0
    got = scalars(tmp_path / "run" / "tensorboard")
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3] and len(hist) == 4
    assert "val/loss" in got and "grad_norm/0" in got
    assert cli.main(["train", "--epochs", "2", "--hidden", "16", "--out", "plain", "-q"]) == 0
    assert not (tmp_path / "plain" / "tensorboard").exists()
