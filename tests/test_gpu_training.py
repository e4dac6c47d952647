"""Training on the GPU: ``Trainer(..., device="cuda")`` end to end on CuPy arrays.

Tests marked ``gpu`` run only where CUDA is usable (bench/gpu_check.sh runs them); they compare the
GPU loop with the CPU loop it mirrors. The gating test at the end runs everywhere: it fakes a usable
GPU without touching CuPy.
"""
from __future__ import annotations

import numpy as np
import pytest

from ember import Trainer, backend, nn
from ember.callbacks import EarlyStopping
from ember.checkpoint import load_model, load_trainer
from ember.data import DataLoader, train_val_split
from ember.datasets import load_digits
from ember.losses import CrossEntropy

from conftest import rel_error


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return train_val_split(x, y, 0.25, seed=0)  # x_train, y_train, x_test, y_test


def _host_weights(model):
    return {k: (v.get() if hasattr(v, "get") else np.array(v))
            for k, v in model.state_dict().items()}


def _fit(digits, device, epochs, optimizer="adam", dropout=0.0, **kw):
    xtr, ytr, _, _ = digits
    model = nn.MLP([64, 256, 256, 10], dropout=dropout, seed=0)
    trainer = Trainer(model, optimizer=optimizer, device=device, **kw)
    trainer.fit(xtr, ytr, epochs=epochs, batch_size=32, seed=0, verbose=0)
    return trainer


@pytest.mark.gpu
def test_fit_on_cuda_reaches_accuracy(digits):
    trainer = _fit(digits, "cuda", epochs=20, lr=1e-3)
    assert trainer.device == "cuda" and trainer.model.device == "cuda"
    result = trainer.evaluate(digits[2], digits[3])
    assert result["accuracy"] >= 0.95, result  # the CPU run of this setup scores 0.971
    h = trainer.history
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    for key in ("loss", "accuracy", "grad_norm", "lr"):
        assert all(type(v) is float for v in h[key]), (key, h[key])


@pytest.mark.gpu
def test_cuda_runs_are_bit_identical(digits):
    a = _host_weights(_fit(digits, "cuda", epochs=2, lr=1e-3).model)
    b = _host_weights(_fit(digits, "cuda", epochs=2, lr=1e-3).model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.gpu
def test_cuda_matches_cpu_after_one_epoch(digits):
    # SGD with momentum: its update is linear in the gradient, so rounding differences between
    # the backends stay rounding-sized. (Adam's normalised update can turn a gradient that is
    # rounding noise into a full learning-rate step, so it is a poor probe of agreement.)
    kw = dict(optimizer="sgd", lr=0.05, momentum=0.9)
    cpu = _fit(digits, "cpu", epochs=1, **kw)
    gpu = _fit(digits, "cuda", epochs=1, **kw)
    wc, wg = _host_weights(cpu.model), _host_weights(gpu.model)
    for k in wc:
        assert rel_error(wg[k], wc[k]) <= 1e-3, (k, rel_error(wg[k], wc[k]))
    assert abs(gpu.history["loss"][0] - cpu.history["loss"][0]) <= 1e-3 * cpu.history["loss"][0]
    assert gpu.history["accuracy"][0] == pytest.approx(cpu.history["accuracy"][0], abs=5e-3)


@pytest.mark.gpu
def test_gpu_checkpoint_loads_on_cpu(digits, tmp_path):
    xtr, ytr, xte, yte = digits
    trainer = Trainer(nn.MLP([64, 128, 10], seed=0), optimizer="adam", device="cuda")
    trainer.fit(xtr, ytr, epochs=2, batch_size=64, seed=0, verbose=0, checkpoint_dir=tmp_path)
    gpu_out = trainer.predict_raw(xte)
    cpu_trainer = load_trainer(tmp_path, device="cpu")
    assert cpu_trainer.device == "cpu" and cpu_trainer.model.device == "cpu"
    assert rel_error(cpu_trainer.predict_raw(xte), gpu_out) <= 1e-5
    assert np.abs(cpu_trainer.predict_raw(xte) - gpu_out).max() <= 1e-4
    assert cpu_trainer.optimizer.step_count == trainer.optimizer.step_count
    model = load_model(tmp_path, device="cpu")
    assert rel_error(model.predict(xte), gpu_out) <= 1e-5
    # and back onto the GPU: the optimizer state follows the parameters onto the device
    again = load_trainer(tmp_path, device="cuda")
    assert again.model.device == "cuda"
    for st in again.optimizer.state.values():
        assert all(hasattr(a, "__cuda_array_interface__") for a in st.values())
    assert rel_error(again.predict_raw(xte), gpu_out) == 0.0


@pytest.mark.gpu
def test_cpu_checkpoint_resumes_on_gpu(digits, tmp_path):
    """One epoch on the CPU, checkpointed, then the second on the GPU from that checkpoint:
    close to two epochs on the CPU (the optimizer state is restored onto the device)."""
    xtr, ytr, _, _ = digits
    kw = dict(optimizer="sgd", lr=0.05, momentum=0.9)

    def trainer(device):
        return Trainer(nn.MLP([64, 64, 10], seed=0), device=device, **kw)

    ref = trainer("cpu")
    ref.fit(xtr, ytr, epochs=2, batch_size=32, seed=0, verbose=0)
    trainer("cpu").fit(xtr, ytr, epochs=1, batch_size=32, seed=0, verbose=0,
                       checkpoint_dir=tmp_path / "a")
    gpu = trainer("cuda")
    gpu.fit(xtr, ytr, epochs=2, batch_size=32, seed=0, verbose=0, resume=tmp_path / "a")
    assert len(gpu.history) == 2 and gpu.global_step == ref.global_step
    wr, wg = _host_weights(ref.model), _host_weights(gpu.model)
    for k in wr:
        assert rel_error(wg[k], wr[k]) <= 1e-3, k


@pytest.mark.gpu
def test_evaluate_and_predict_return_numpy(digits):
    xtr, ytr, xte, yte = digits
    weight = np.linspace(0.5, 2.0, 10).astype(np.float32)
    trainer = Trainer(nn.MLP([64, 64, 10], seed=0), loss=CrossEntropy(weight=weight),
                      device="cuda", callbacks=[EarlyStopping("val_loss", patience=1,
                                                              restore_best_weights=True)])
    # evaluate before any training step: the class weights are still a NumPy array
    first = trainer.evaluate(xte, yte)
    assert all(type(v) is float for v in first.values())
    trainer.fit(xtr, ytr, epochs=3, batch_size=64, validation_data=(xte, yte), seed=0, verbose=0)
    assert all(type(v) is float for v in trainer.history["val_loss"])
    result = trainer.evaluate(xte, yte)
    assert set(result) == {"loss", "accuracy"} and all(type(v) is float for v in result.values())
    for out, shape, dtype in ((trainer.predict_raw(xte), (len(xte), 10), np.float32),
                              (trainer.predict_proba(xte), (len(xte), 10), np.float32),
                              (trainer.predict(xte), (len(xte),), None)):
        assert type(out) is np.ndarray and out.shape == shape
        assert dtype is None or out.dtype == dtype
    # the same weights on the CPU score the same (weighted) loss and accuracy
    cpu = Trainer(nn.MLP([64, 64, 10], seed=1), loss=CrossEntropy(weight=weight), device="cpu")
    cpu.model.load_state_dict(_host_weights(trainer.model))
    ref = cpu.evaluate(xte, yte)
    assert result["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert result["accuracy"] == pytest.approx(ref["accuracy"], abs=1.5 / len(xte))
    # regression: targets and predictions come back as NumPy too
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8)).astype(np.float32)
    y = (x @ rng.standard_normal(8)).astype(np.float32)
    reg = Trainer(nn.MLP([8, 32, 1], seed=0), loss="mse", lr=1e-2, device="cuda")
    h = reg.fit(x, y, epochs=5, batch_size=64, verbose=0)
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    pred = reg.predict(x)
    assert type(pred) is np.ndarray and pred.shape == (512,)


@pytest.mark.gpu
def test_dropout_model_trains_on_cuda(digits):
    trainer = _fit(digits, "cuda", epochs=10, dropout=0.2, lr=1e-3)
    h = trainer.history
    assert h["loss"][-1] < 0.2 * h["loss"][0]  # the CPU run goes from 1.35 to 0.054
    assert trainer.evaluate(digits[2], digits[3])["accuracy"] >= 0.93
    again = _fit(digits, "cuda", epochs=10, dropout=0.2, lr=1e-3)
    a, b = _host_weights(trainer.model), _host_weights(again.model)
    for k in a:  # counter-based masks: the same seed gives the same run
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.gpu
def test_dataloader_on_device_matches_host_order():
    import cupy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 5)).astype(np.float32)
    y = rng.integers(0, 4, 103)
    host = DataLoader(x, y, batch_size=16, seed=3)
    dev = DataLoader(cupy.asarray(x), cupy.asarray(y), batch_size=16, seed=3)
    for epoch in (0, 1, 2):
        if epoch == 2:
            dev.prefetch(2)  # drawn and copied ahead (on a side stream): the same order
        pairs = list(zip(host.batches(epoch, start=2), dev.batches(epoch, start=2)))
        assert len(pairs) == len(host) - 2
        for (xh, yh), (xd, yd) in pairs:
            assert isinstance(xd, cupy.ndarray) and xd.flags.c_contiguous
            np.testing.assert_array_equal(xd.get(), xh)
            np.testing.assert_array_equal(yd.get(), yh)


# ---------------------------------------------------------------------------------------------
# Steps replayed as CUDA graphs (ember._cuda_graph) against the same fit step by step


def _graph_vs_steps(make, x, y, fit_kw, **trainer_kw):
    """Fits twice from the same start, with CUDA graphs and step by step; returns both."""
    out = []
    for graphs in (True, False):
        trainer = Trainer(make(), device="cuda", **trainer_kw)
        trainer.cuda_graphs = graphs
        trainer.fit(x, y, verbose=0, **fit_kw)
        out.append(trainer)
    return out


def _assert_same_training(g, s):
    assert g.step_path == "cuda graphs", g.step_path
    assert s.step_path.startswith("step by step"), s.step_path
    for key in ("loss", "grad_norm", "skipped_steps", "lr"):
        assert g.history[key] == s.history[key], (key, g.history[key], s.history[key])
    if "accuracy" in s.history:  # counted exactly on the device, as a fraction step by step
        np.testing.assert_allclose(g.history["accuracy"], s.history["accuracy"], rtol=1e-12)
    wg, ws = _host_weights(g.model), _host_weights(s.model)
    for k in ws:
        np.testing.assert_array_equal(wg[k], ws[k], err_msg=k)
    og, os_ = g.optimizer, s.optimizer
    assert og.step_count == os_.step_count and og.skipped_steps == os_.skipped_steps
    assert og.last_grad_norm == os_.last_grad_norm
    for name, st in os_.state.items():
        for k, arr in st.items():
            np.testing.assert_array_equal(og.state[name][k].get(), arr.get(), err_msg=(name, k))


GRAPH_CASES = [
    # (sizes, activation, n, batch, trainer kwargs)
    ([64, 96, 10], "relu", 1000, 64, dict(optimizer="adam", lr=1e-3)),  # tail batch of 40
    ([64, 33, 17, 10], "tanh", 777, 100, dict(optimizer="sgd", lr=0.05, momentum=0.9,
                                               nesterov=True, weight_decay=1e-4)),
    ([64, 50, 10], "leaky_relu", 512, 128,
     dict(optimizer="adamw", lr=2e-3, max_grad_norm=0.5, metrics=(),
          loss=CrossEntropy(label_smoothing=0.1, weight=np.linspace(0.5, 1.5, 10)))),
    ([64, 40, 10], "gelu", 300, 1, dict(optimizer="adam", amsgrad=True, lr=1e-3)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("sizes, act, n, batch, kw", GRAPH_CASES)
def test_graph_steps_match_step_by_step(digits, sizes, act, n, batch, kw):
    xtr, ytr, _, _ = digits
    kw = dict(kw)
    loss = kw.pop("loss", "cross_entropy")
    g, s = _graph_vs_steps(lambda: nn.MLP(sizes, activation=act, seed=3), xtr[:n], ytr[:n],
                           dict(epochs=3, batch_size=batch, seed=1, validation_split=0.0),
                           loss=loss, **kw)
    _assert_same_training(g, s)


@pytest.mark.gpu
def test_graph_steps_regression_and_lr_schedule():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((700, 13)).astype(np.float32)
    y = (x @ rng.standard_normal(13) + 0.1 * rng.standard_normal(700)).astype(np.float32)
    from ember.schedules import CosineWithWarmup
    sched = CosineWithWarmup(total_steps=30, warmup_steps=5)  # a new rate every step
    g, s = _graph_vs_steps(lambda: nn.MLP([13, 31, 1], seed=2), x, y,
                           dict(epochs=4, batch_size=96, seed=0), loss="mse", optimizer="adam",
                           lr=1e-2, lr_schedule=sched)
    _assert_same_training(g, s)


@pytest.mark.gpu
def test_graph_steps_resume_exactly(digits, tmp_path):
    """A run checkpointed every epoch and resumed matches an uninterrupted one, both replaying
    graphs; the optimizer's step count on the host follows the device's."""
    xtr, ytr, _, _ = digits
    full = Trainer(nn.MLP([64, 64, 10], seed=0), device="cuda")
    full.fit(xtr, ytr, epochs=3, batch_size=50, verbose=0)
    part = Trainer(nn.MLP([64, 64, 10], seed=0), device="cuda")
    part.fit(xtr, ytr, epochs=2, batch_size=50, verbose=0, checkpoint_dir=tmp_path)
    assert part.step_path == "cuda graphs"
    assert part.optimizer.step_count == 2 * -(-len(xtr) // 50)
    resumed = Trainer(nn.MLP([64, 64, 10], seed=1), device="cuda")  # weights from the file
    resumed.fit(xtr, ytr, epochs=3, batch_size=50, verbose=0, resume=tmp_path)
    assert resumed.step_path == "cuda graphs"
    assert resumed.history["loss"] == full.history["loss"]
    a, b = _host_weights(full.model), _host_weights(resumed.model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::ember.callbacks.GradientWarning")  # NaN gradients: expected
def test_graph_steps_stop_on_nonfinite_loss_at_epoch_end(digits):
    """Adam at lr 1e30: step 1 throws the weights to ~1e30, so from batch 2 on the logits
    overflow and the loss is NaN; every such step is skipped. Step by step stops after batch 2;
    with graphs the epoch runs out (all its later steps skipped) and stops with the same reason
    and the same weights."""
    xtr, ytr, _, _ = digits
    g, s = _graph_vs_steps(lambda: nn.MLP([64, 32, 10], seed=0), xtr[:640], ytr[:640],
                           dict(epochs=5, batch_size=32, seed=0), optimizer="adam", lr=1e30)
    assert g.step_path == "cuda graphs"
    assert s.stop_reason.endswith("at epoch 1, batch 2"), s.stop_reason
    assert g.stop_training and g.stop_reason == s.stop_reason
    assert g.epoch == s.epoch == 1
    assert g.history["skipped_steps"] == [19] and s.history["skipped_steps"] == [1]
    assert g.optimizer.step_count == s.optimizer.step_count == 1
    wg, ws = _host_weights(g.model), _host_weights(s.model)
    for k in ws:
        assert np.isfinite(wg[k]).all(), k
        np.testing.assert_array_equal(wg[k], ws[k], err_msg=k)


@pytest.mark.gpu
def test_graph_steps_fall_back_for_batch_callbacks(digits):
    from ember.callbacks import Callback

    class Losses(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, batch, logs):
            self.seen.append(logs["loss"])

    cb = Losses()
    xtr, ytr, _, _ = digits
    trainer = Trainer(nn.MLP([64, 16, 10], seed=0), device="cuda", callbacks=[cb])
    trainer.fit(xtr[:200], ytr[:200], epochs=1, batch_size=50, verbose=0)
    assert trainer.step_path.startswith("step by step (callback Losses")
    assert len(cb.seen) == 4 and all(type(v) is float for v in cb.seen)


# ---------------------------------------------------------------------------------------------
# Gating: runs without a GPU (CuPy is never touched)


def test_auto_trains_on_cpu_until_gpu_training_is_verified(monkeypatch):
    monkeypatch.setattr(backend, "cuda_available", lambda: True)
    assert backend.resolve_device("auto") == "cuda"
    monkeypatch.setattr(backend, "GPU_TRAINING_VERIFIED", False)
    ok, why = backend.cuda_training_available()
    assert ok and "not been verified" in why

    assert backend.resolve_training_device("auto") == "cpu"
    assert backend.resolve_training_device("cuda") == "cuda"
    assert backend.resolve_training_device("cpu") == "cpu"
    trainer = Trainer(nn.MLP([2, 3, 2]), device="auto")
    assert trainer.device == "cpu" and trainer.model.device == "cpu"

    monkeypatch.setattr(backend, "GPU_TRAINING_VERIFIED", True)
    assert backend.resolve_training_device("auto") == "cuda"
    assert backend.resolve_training_device("cpu") == "cpu"
    assert backend.cuda_training_available() == (True, "")
    assert Trainer(nn.MLP([2, 3, 2]), device="cpu").device == "cpu"

    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    assert backend.resolve_training_device("auto") == "cpu"
    assert backend.cuda_training_available()[0] is False
    with pytest.raises(ValueError, match="CUDA is not usable"):
        backend.resolve_training_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not usable"):
        Trainer(nn.MLP([2, 2]), device="cuda")
