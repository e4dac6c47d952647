"""fit(class_weight=...): imbalanced classes ("balanced" or {class: weight}), the checks, what
is recorded, resume, EmberClassifier(class_weight=...) and ``ember train --class-weight``."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from ember import CheckpointError, Trainer, cli
from ember.callbacks import Callback
from ember.data import train_val_split
from ember.losses import CrossEntropy
from ember.nn import MLP


def imbalanced(n, seed):
    """Two overlapping Gaussians, 95% / 5%: class 1 is the rare one, shifted by 1.5 per axis."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(np.int64)
    x = rng.normal(0.0, 1.0, (n, 2)).astype(np.float32)
    x[y == 1] += 1.5
    return x, y


def minority_recall(trainer, x, y) -> float:
    pred = trainer.predict(x)
    return float(((pred == 1) & (y == 1)).sum() / (y == 1).sum())


def fitted(class_weight, x, y, **kw):
    trainer = Trainer(MLP([2, 16, 2], seed=0), lr=1e-2)
    trainer.fit(x, y, epochs=30, batch_size=32, verbose=0, class_weight=class_weight, **kw)
    return trainer


def test_balanced_raises_minority_recall():
    x, y = imbalanced(400, seed=0)
    xt, yt = imbalanced(4000, seed=1)
    assert 10 <= (y == 1).sum() <= 30
    plain = minority_recall(fitted(None, x, y), xt, yt)
    balanced = minority_recall(fitted("balanced", x, y), xt, yt)
    print(f"minority recall: unweighted {plain:.3f}, balanced {balanced:.3f}")
    assert balanced >= plain + 0.2


def test_balanced_weights_are_sklearns_on_the_training_split():
    x, y = imbalanced(400, seed=0)
    trainer = Trainer(MLP([2, 4, 2], seed=0))
    seen = []
    trainer.user_callbacks.append(_LossWeight(seen))
    trainer.fit(x, y, epochs=1, verbose=0, class_weight="balanced", validation_split=0.25)
    (w,) = seen
    n_train = trainer.fit_params["n_train"]
    assert n_train == 300
    # the split is stratified and seeded: the same one as train_val_split's
    _, y_train, _, _ = train_val_split(x, y, 0.25, seed=0, stratify=True)
    counts = np.bincount(y_train)
    np.testing.assert_allclose(w, len(y_train) / (2 * counts), rtol=1e-6)
    sk = pytest.importorskip("sklearn.utils.class_weight")
    np.testing.assert_allclose(
        w, sk.compute_class_weight("balanced", classes=np.unique(y_train), y=y_train), rtol=1e-6)
    assert trainer.loss.weight is None  # the loss is as it was after the fit


class _LossWeight(Callback):
    """Records the loss's class weights when training begins."""

    def __init__(self, seen):
        self.seen = seen

    def on_train_begin(self, logs):
        self.seen.append(np.asarray(self.trainer.loss.weight).copy())


def test_dict_form_and_absent_classes():
    x, y = imbalanced(200, seed=0)
    seen = []
    trainer = Trainer(MLP([2, 4, 3], seed=0), callbacks=[_LossWeight(seen)])
    trainer.fit(x, y, epochs=1, verbose=0, class_weight={1: 5.0})
    np.testing.assert_array_equal(seen[-1], [1.0, 5.0, 1.0])  # classes not named weigh 1
    trainer.fit(x, y, epochs=1, verbose=0, class_weight="balanced")  # class 2 is absent: 1
    counts = np.bincount(y)
    np.testing.assert_allclose(seen[-1], [len(y) / (2 * counts[0]), len(y) / (2 * counts[1]),
                                          1.0], rtol=1e-6)
    # a weighted fit trains the same as the loss's own weights would
    a = Trainer(MLP([2, 4, 2], seed=0))
    a.fit(x, y, epochs=2, verbose=0, class_weight={0: 0.5, 1: 3.0})
    b = Trainer(MLP([2, 4, 2], seed=0), loss=CrossEntropy(weight=[0.5, 3.0]))
    b.fit(x, y, epochs=2, verbose=0)
    for (_, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert a.history["loss"] == b.history["loss"]


@pytest.mark.parametrize("bad,match", [
    ("balancd", "class_weight must be None, 'balanced' or a dict"),
    ([1.0, 2.0], "class_weight must be None, 'balanced' or a dict"),
    ({2: 1.0}, "class_weight names class 2"),
    ({-1: 1.0}, "class_weight names class -1"),
    ({"1": 1.0}, "class_weight names class '1'"),
    ({1: -1.0}, r"class_weight\[1\] must be a finite number >= 0"),
    ({1: float("nan")}, r"class_weight\[1\] must be a finite number >= 0"),
    ({1: float("inf")}, r"class_weight\[1\] must be a finite number >= 0"),
    ({1: "2"}, r"class_weight\[1\] must be a finite number >= 0"),
])
def test_bad_class_weight(bad, match):
    x, y = imbalanced(64, seed=0)
    trainer = Trainer(MLP([2, 4, 2], seed=0))
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, y, epochs=1, verbose=0, class_weight=bad)
    assert trainer.loss.weight is None and trainer.global_step == 0


def test_regression_and_a_loss_with_its_own_weight_are_refused():
    x, y = imbalanced(64, seed=0)
    reg = Trainer(MLP([2, 4, 1], seed=0), loss="mse")
    with pytest.raises(ValueError, match="class_weight applies to classification"):
        reg.fit(x, y.astype(np.float32), epochs=1, verbose=0, class_weight="balanced")
    own = Trainer(MLP([2, 4, 2], seed=0), loss=CrossEntropy(weight=[1.0, 2.0]))
    with pytest.raises(ValueError, match="give one of the two"):
        own.fit(x, y, epochs=1, verbose=0, class_weight="balanced")
    np.testing.assert_array_equal(own.loss.weight, [1.0, 2.0])  # left as the user set it


def test_recorded_in_hyperparameters_and_checkpoints(tmp_path):
    x, y = imbalanced(128, seed=0)
    trainer = Trainer(MLP([2, 4, 2], seed=0))
    trainer.fit(x, y, epochs=2, verbose=0, class_weight={1: 4}, checkpoint_dir=tmp_path / "a")
    hp = trainer.hyperparameters()
    assert hp["class_weight"] == {"1": 4.0} and hp["loss"]["weight"] is None
    saved = json.loads(next((tmp_path / "a").glob("ckpt-*/trainer.json")).read_text())
    assert saved["fit_params"]["class_weight"] == {"1": 4.0}
    assert saved["loss"]["weight"] is None  # the user's loss; the fit's weights are above
    plain = Trainer(MLP([2, 4, 2], seed=0))
    plain.fit(x, y, epochs=1, verbose=0)
    assert plain.hyperparameters()["class_weight"] is None
    balanced = Trainer(MLP([2, 4, 2], seed=0))
    balanced.fit(x, y, epochs=1, verbose=0, class_weight="balanced")
    assert "class_weight=balanced" in balanced.report()


def test_resume_with_another_class_weight_is_refused(tmp_path):
    x, y = imbalanced(128, seed=0)
    first = Trainer(MLP([2, 4, 2], seed=0))
    first.fit(x, y, epochs=1, verbose=0, class_weight="balanced", checkpoint_dir=tmp_path)
    for other in (None, {1: 2.0}):
        t = Trainer(MLP([2, 4, 2], seed=0))
        with pytest.raises(CheckpointError, match="class_weight='balanced'"):
            t.fit(x, y, epochs=3, verbose=0, class_weight=other, checkpoint_dir=tmp_path,
                  resume="latest")
    t = Trainer(MLP([2, 4, 2], seed=0))
    t.fit(x, y, epochs=3, verbose=0, class_weight="balanced", checkpoint_dir=tmp_path,
          resume="latest")
    ref = Trainer(MLP([2, 4, 2], seed=0))
    ref.fit(x, y, epochs=3, verbose=0, class_weight="balanced")
    assert t.history["loss"] == ref.history["loss"]


def test_ember_classifier_class_weight():
    pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    warnings.simplefilter("ignore", ConvergenceWarning)  # (30 epochs: pytest restores filters)

    from ember.sklearn import EmberClassifier
    x, y = imbalanced(400, seed=0)
    xt, yt = imbalanced(4000, seed=1)
    labels = np.array(["common", "rare"])[y]
    kw = dict(hidden_layer_sizes=(16,), learning_rate_init=1e-2, batch_size=32, max_iter=30,
              n_iter_no_change=100, random_state=0)
    plain = EmberClassifier(**kw).fit(x, labels)
    by_label = EmberClassifier(class_weight={"rare": 10.0}, **kw).fit(x, labels)
    balanced = clone(EmberClassifier(class_weight="balanced", **kw)).fit(x, labels)
    assert balanced.get_params()["class_weight"] == "balanced"

    def recall(clf):
        return float((clf.predict(xt)[yt == 1] == "rare").mean())
    assert recall(balanced) >= recall(plain) + 0.2
    assert recall(by_label) >= recall(plain) + 0.2
    with pytest.raises(ValueError, match="class_weight names the label 'other'"):
        EmberClassifier(class_weight={"other": 2.0}, **kw).fit(x, labels)
    with pytest.raises(ValueError, match="partial_fit"):
        EmberClassifier(class_weight="balanced", **kw).partial_fit(x, labels,
                                                                   classes=["common", "rare"])


def test_ember_train_class_weight(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    x, y = imbalanced(400, seed=0)
    np.savez(tmp_path / "imb.npz", x=x, y=y)
    assert cli.main(["train", "--data", "imb.npz", "--epochs", "2", "--hidden", "8",
                     "--class-weight", "balanced", "--out", "run", "-q"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["options"]["class_weight"] == "balanced"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hyperparameters"]["class_weight"] == "balanced"
    trainer = __import__("ember").load_trainer(tmp_path / "run")
    assert trainer.fit_params["class_weight"] == "balanced"
    assert cli.main(["train", "--data", "imb.npz", "--epochs", "1", "--hidden", "8",
                     "--class-weight", "banana", "--out", "bad", "-q"]) == 2
    assert "--class-weight" in capsys.readouterr().err
    np.savez(tmp_path / "reg.npz", x=x, y=x[:, 0] * 2.0)
    assert cli.main(["train", "--data", "reg.npz", "--task", "regression", "--epochs", "1",
                     "--class-weight", "balanced", "--out", "reg", "-q"]) == 2
    assert "--class-weight applies to classification" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()


@pytest.mark.gpu
def test_on_the_gpu_class_weight_is_the_losss_weight_and_keeps_cuda_graphs(tmp_path):
    pytest.importorskip("tensorboardX")
    from ember.callbacks import TensorBoard
    x, y = imbalanced(256, seed=0)
    a = Trainer(MLP([2, 16, 2], seed=0), device="cuda", callbacks=[TensorBoard(tmp_path)])
    a.fit(x, y, epochs=3, verbose=0, class_weight={0: 0.5, 1: 4.0})
    assert a.step_path == "cuda graphs" and a.loss.weight is None
    b = Trainer(MLP([2, 16, 2], seed=0), device="cuda", loss=CrossEntropy(weight=[0.5, 4.0]))
    b.fit(x, y, epochs=3, verbose=0)
    assert a.history["loss"] == b.history["loss"]
    for (_, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.data.get(), q.data.get())
    c = Trainer(MLP([2, 16, 2], seed=0), device="cuda")
    c.fit(x, y, epochs=3, verbose=0, class_weight="balanced", accumulate_steps=2)
    assert np.isfinite(c.history["loss"]).all()
