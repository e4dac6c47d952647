"""Schedules given as plain functions, schedules added on resume, save_model/load_model, the
Ctrl-C hint and the resume message (issue 16, item 13)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import Trainer, nn
from ember.callbacks import Callback, LRScheduler
from ember.schedules import CosineWithWarmup, FunctionSchedule, StepLR


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 5)) + y[:, None]).astype(np.float32)
    return x, y


class LrLog(Callback):
    def __init__(self):
        self.lrs = []

    def on_epoch_end(self, epoch, logs):
        self.lrs.append(self.trainer.optimizer.lr)


def test_a_plain_function_of_the_epoch_is_a_schedule_returning_the_lr():
    """Keras' LearningRateScheduler takes fn(epoch) -> lr (or fn(epoch, lr)); ember refused it
    ("a schedule must be an ember.schedules.Schedule")."""
    x, y = _blobs()
    log = LrLog()
    t = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1,
                lr_schedule=lambda epoch: 0.1 / (1 + epoch), callbacks=[log])
    t.fit(x, y, epochs=4, batch_size=30, verbose=0)
    assert log.lrs == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert t.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])

    log2 = LrLog()
    halve = lambda epoch, lr: lr if epoch == 0 else lr / 2  # noqa: E731 (Keras' two-argument form)
    t2 = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.2, callbacks=[LRScheduler(halve), log2])
    t2.fit(x, y, epochs=3, batch_size=30, verbose=0)
    assert log2.lrs == pytest.approx([0.2, 0.1, 0.05])


def test_a_schedule_function_returning_a_bad_lr_is_named():
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1,
                lr_schedule=lambda epoch: float("nan"))
    with pytest.raises(ValueError, match=r"lr schedule .*at epoch 0 it returned nan"):
        t.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="function of the epoch"):
        Trainer(nn.MLP([5, 8, 3]), lr_schedule="cosine")
    assert FunctionSchedule(lambda e: 0.1 * 0.5 ** e).learning_rate(2, 0, 0.1, 0.1) == 0.025
    with pytest.raises(TypeError, match=r"takes no argument.*fn\(epoch\)"):
        Trainer(nn.MLP([5, 8, 3]), lr_schedule=lambda: 0.1)


def test_a_schedule_added_on_resume_counts_from_the_resume_point(tmp_path):
    """A run trained 3 epochs without a schedule, resumed with StepLR(2, 0.1): the schedule's
    first epochs are the resumed run's (lr 0.1, 0.1, then 0.01), not epochs 3.. of the whole run
    (which gave 0.01 at once, as if it had been there from epoch 0)."""
    x, y = _blobs()
    Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1).fit(
        x, y, epochs=3, batch_size=30, checkpoint_dir=tmp_path, verbose=0)
    log = LrLog()
    t = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1, lr_schedule=StepLR(2, 0.1),
                callbacks=[log])
    t.fit(x, y, epochs=6, batch_size=30, checkpoint_dir=tmp_path, resume="latest", verbose=0)
    assert log.lrs == pytest.approx([0.1, 0.1, 0.01])


def test_a_run_resumed_with_its_own_schedule_continues_it_exactly(tmp_path):
    """The schedule was part of the run: resuming continues it (same bits as uninterrupted)."""
    x, y = _blobs()
    sched = lambda: CosineWithWarmup(total_steps=24, warmup_steps=5)  # noqa: E731
    ref = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1, lr_schedule=sched())
    ref.fit(x, y, epochs=6, batch_size=30, verbose=0)

    class Interrupt(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                raise KeyboardInterrupt

    first = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1, lr_schedule=sched())
    first.user_callbacks.append(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=6, batch_size=30, checkpoint_dir=tmp_path, verbose=0)
    t = Trainer(nn.MLP([5, 8, 3]), optimizer="sgd", lr=0.1, lr_schedule=sched())
    t.fit(x, y, epochs=6, batch_size=30, checkpoint_dir=tmp_path, resume="latest", verbose=0)
    assert t.history["lr"] == ref.history["lr"]
    for k, v in ref.model.state_dict().items():
        np.testing.assert_array_equal(v, t.model.state_dict()[k])


def test_ctrl_c_in_a_fit_with_checkpoints_says_how_to_resume(tmp_path, capsys):
    x, y = _blobs()

    class Interrupt(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                raise KeyboardInterrupt

    t = Trainer(nn.MLP([5, 8, 3]), callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        t.fit(x, y, epochs=4, batch_size=30, checkpoint_dir=tmp_path, verbose=0)
    err = capsys.readouterr().err
    assert "training interrupted" in err
    assert f"checkpoint_dir={str(tmp_path)!r}, resume='latest'" in err
    assert "ckpt-e0001" in err  # the checkpoint of epoch 1 (saved before the interrupt)
    # and following the hint works, printing where it resumed
    t2 = Trainer(nn.MLP([5, 8, 3]))
    t2.fit(x, y, epochs=4, batch_size=30, checkpoint_dir=tmp_path, resume="latest", verbose=1)
    out = capsys.readouterr().out
    assert "resumed" in out and "at epoch 2 of 4 (its start), step 4" in out
    # without checkpoints there is nothing to say
    t3 = Trainer(nn.MLP([5, 8, 3]), callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        t3.fit(x, y, epochs=4, batch_size=30, verbose=0)
    assert "training interrupted" not in capsys.readouterr().err


def test_save_model_mirrors_load_model(tmp_path):
    x, y = _blobs()
    t = Trainer(nn.MLP([5, 16, 3], dropout=0.1))
    t.fit(x, y, epochs=2, batch_size=30, verbose=0)
    path = ember.save_model(t.model, tmp_path / "m")
    back = ember.load_model(path)
    assert back.config() == t.model.config()
    for k, v in t.model.state_dict().items():
        np.testing.assert_array_equal(v, back.state_dict()[k])
    t.model.eval()
    np.testing.assert_array_equal(back.predict(x), t.model.predict(x))
    # saving again replaces the save whole
    t.fit(x, y, epochs=1, batch_size=30, verbose=0)
    ember.save_model(t.model, tmp_path / "m")
    again = ember.load_model(tmp_path / "m")
    np.testing.assert_array_equal(again.state_dict()["0.weight"], t.model.state_dict()["0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporaries left


def test_save_model_refuses_what_it_cannot_save(tmp_path):
    m = nn.MLP([5, 4, 3])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        ember.save_model(m, tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files"):
        ember.save_model(m, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(TypeError, match="must be an ember.nn.Module"):
        ember.save_model(object(), tmp_path / "x")
    m.layers[0].weight.data[0, 0] = np.nan
    with pytest.raises(ember.CheckpointError, match="NaN or Inf"):
        ember.save_model(m, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_model_checkpoint_is_importable_from_callbacks():
    from ember.callbacks import ModelCheckpoint
    from ember.checkpoint import ModelCheckpoint as Same
    assert ModelCheckpoint is Same
    assert "ModelCheckpoint" in dir(ember.callbacks)


def test_module_save_and_hyperparameters_of_a_model_without_config(tmp_path):
    x, y = _blobs()
    m = nn.MLP([5, 4, 3])
    m.save(tmp_path / "m")
    back = ember.load_model(tmp_path / "m")
    np.testing.assert_array_equal(back.predict(x), m.eval().predict(x))

    class NoConfig(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x)

        def backward(self, g):
            return self.fc.backward(g)

    t = Trainer(NoConfig())
    t.fit(x, y, epochs=1, verbose=0)
    assert t.hyperparameters()["model"] is None  # (it raised NotImplementedError)
    with pytest.raises(TypeError, match="has no config()"):
        t.model.save(tmp_path / "n")


def test_callbacks_and_nn_import_nothing_above_them():
    """ModelCheckpoint in ember.callbacks and Module.save must not make these lower layers
    import what is above them (an import cycle, even inside a function): nn nothing of the
    checkpoint format or above, callbacks (which builds on the format) nothing of training."""
    import ast
    from pathlib import Path
    root = Path(ember.__file__).parent
    above_nn = {"ember.checkpoint", "ember.trainer", "ember.train", "ember.callbacks", "ember.cli",
                "ember.sklearn", "ember.preprocessing"}
    above_callbacks = above_nn - {"ember.checkpoint", "ember.callbacks", "ember.preprocessing"}
    files = [(root / "nn.py", above_nn)] + [(p, above_callbacks)
                                            for p in sorted((root / "callbacks").glob("*.py"))]
    assert len(files) > 5
    for path, above in files:
        used = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ember"):
                used |= ({node.module} if node.module != "ember" else
                         {f"ember.{a.name}" for a in node.names})
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("ember")}
        used = {".".join(u.split(".")[:2]) for u in used}
        assert not used & above, (path.name, sorted(used & above))
