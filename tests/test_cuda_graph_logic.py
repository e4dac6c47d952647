"""The parts of ember.train.cuda_graph and ember.train.steps that need no GPU: which fits may replay CUDA graphs (and why not),
and the recording allocator's replay checks. The graphs themselves are tested on a GPU
(tests/test_gpu_training.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ember import Trainer, nn
from ember.train.cuda_graph import Recorder as _Recorder
from ember.train.steps import graph_ok
from ember.callbacks import Callback, CallbackList, EarlyStopping, ProgressBar, TerminateOnNaN
from ember.checkpoint import ModelCheckpoint
from ember.losses import MSE, CrossEntropy
from ember.optim import SGD, Adam


def _trainer(model=None, **kw):
    t = Trainer(model or nn.MLP([4, 8, 3]), device="cpu", **kw)
    t.device = "cuda"  # graph_ok reads the trainer's configuration only
    return t


def _why(trainer, *callbacks):
    return graph_ok(trainer, CallbackList([TerminateOnNaN(), trainer.gradient_monitor,
                                           *callbacks], trainer))


def test_plain_mlp_with_ember_callbacks_replays_graphs(tmp_path):
    t = _trainer()
    assert _why(t) is None
    assert _why(t, ProgressBar(), EarlyStopping("loss"), ModelCheckpoint(tmp_path)) is None
    assert _why(_trainer(loss="mse", optimizer="sgd", momentum=0.9)) is None
    assert _why(_trainer(optimizer="adamw")) is None


class Custom(nn.Module):
    def forward(self, x):
        return x

    def backward(self, g):
        return g


class MyLoss(CrossEntropy):
    pass


class MyAdam(Adam):
    pass


class BatchLogger(Callback):
    def on_batch_end(self, batch, logs):
        pass


@pytest.mark.parametrize("case, reason", [
    ("cpu", "not on the GPU"),
    ("off", "turned off"),
    ("dropout", "not a plain stack"),
    ("custom layer", "not a plain stack"),
    ("subclassed loss", "loss MyLoss"),
    ("subclassed optimizer", "optimizer MyAdam"),
    ("batch callback", "callback BatchLogger"),
    ("step checkpoints", "callback ModelCheckpoint"),
])
def test_what_keeps_a_fit_step_by_step(tmp_path, case, reason):
    cbs = []
    if case == "cpu":
        t = _trainer()
        t.device = "cpu"
    elif case == "off":
        t = _trainer()
        t.cuda_graphs = False
    elif case == "dropout":
        t = _trainer(nn.MLP([4, 8, 3], dropout=0.2))
    elif case == "custom layer":
        t = _trainer(nn.Sequential(nn.Linear(4, 8), Custom(), nn.Linear(8, 3)))
    elif case == "subclassed loss":
        t = _trainer(loss=MyLoss())
    elif case == "subclassed optimizer":
        model = nn.MLP([4, 8, 3])
        t = _trainer(model, optimizer=MyAdam(model))
    elif case == "batch callback":
        t, cbs = _trainer(), [BatchLogger()]
    else:
        t, cbs = _trainer(), [ModelCheckpoint(tmp_path, every_n_steps=5)]
    why = _why(t, *cbs)
    assert why is not None and reason in why, why


def test_recorder_replays_the_same_arrays_in_order():
    rec = _Recorder()
    rec.arrays = [np.zeros(3, np.float32), np.zeros((2, 2), np.int64)]
    rec.replaying = True
    assert rec((3,)) is rec.arrays[0]
    assert rec([2, 2], "int64") is rec.arrays[1]
    with pytest.raises(RuntimeError, match="more than the recorded"):
        rec((1,))
    rec.i = 0
    with pytest.raises(RuntimeError, match="other arrays"):
        rec((4,))
    rec.i = 0
    with pytest.raises(RuntimeError, match="other arrays"):
        rec((3,), "int64")


def test_allocation_hook_is_per_thread_and_nests():
    """The recorder is installed for the recording thread only: another thread's kernels keep
    allocating from CuPy's pool while a step is recorded or captured."""
    import threading

    from ember import backend
    if not backend.cuda_built():  # the default build on a machine without a GPU has no _cuda
        pytest.skip(backend.NOT_BUILT_WITH_CUDA)
    from ember import _cuda_ops as cuda_ops

    def hook(shape, dtype="float32"):
        return ("recorded", tuple(shape), dtype)

    seen = []
    with cuda_ops.allocating_from(hook):
        assert cuda_ops._alloc((3,)) == ("recorded", (3,), "float32")
        worker = threading.Thread(target=lambda: seen.append(
            getattr(cuda_ops._local, "allocator", None)))
        worker.start()
        worker.join()
        with cuda_ops.allocating_from(None):
            assert getattr(cuda_ops._local, "allocator", None) is None
        assert cuda_ops._local.allocator is hook  # restored after the inner block
    assert seen == [None]
    assert getattr(cuda_ops._local, "allocator", None) is None


def test_a_failed_capture_is_reported_once():
    from types import SimpleNamespace

    from ember.train.cuda_graph import GraphRunner

    runner = SimpleNamespace(failed=None, _failure_reported=False)
    assert GraphRunner.unreported_failure(runner) is None
    runner.failed = "RuntimeError: CuPy allocated memory during a CUDA-graph capture"
    assert GraphRunner.unreported_failure(runner) == runner.failed
    assert GraphRunner.unreported_failure(runner) is None  # once per fit
