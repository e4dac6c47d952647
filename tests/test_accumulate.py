"""Gradients accumulate until zero_grad (PyTorch's rule), and fit(accumulate_steps=k) sums k
micro-batches into one optimizer step whose gradient is the large batch's."""
import numpy as np
import pytest

import ember
from conftest import check_op
from ember import Trainer, nn
from ember.checkpoint import ModelCheckpoint
from ember.data import DataLoader
from ember.errors import CheckpointError
from ember.losses import MSE, CrossEntropy
from ember.optim import SGD, Adam


def _ref_grads(model, x, g):
    """float64 weight/bias gradients of a one-hidden-layer ReLU MLP for upstream gradient g."""
    w1, b1 = model[0].weight.data.astype(np.float64), model[0].bias.data.astype(np.float64)
    w2 = model[2].weight.data.astype(np.float64)
    x, g = x.astype(np.float64), g.astype(np.float64)
    z1 = x @ w1.T + b1
    h = np.maximum(z1, 0)
    gz1 = (g @ w2) * (z1 > 0)
    return {"0.weight": gz1.T @ x, "0.bias": gz1.sum(0), "2.weight": g.T @ h,
            "2.bias": g.sum(0)}


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = (rng.standard_normal((6, 5)).astype(np.float32) for _ in range(2))
    g1, g2 = (rng.standard_normal((6, 3)).astype(np.float32) for _ in range(2))
    return x1, x2, g1, g2


@pytest.mark.parametrize("zero", ["module", "optimizer"])
def test_two_backward_calls_accumulate_until_zero_grad(zero):
    # was: the second backward overwrote the first micro-batch's gradient
    model = nn.MLP([5, 7, 3], seed=0)
    opt = SGD(model, lr=0.1)
    x1, x2, g1, g2 = _batches()
    r1, r2 = _ref_grads(model, x1, g1), _ref_grads(model, x2, g2)
    model.forward(x1)
    model.backward(g1)
    model.forward(x2)
    model.backward(g2)
    for name, p in model.named_parameters():
        check_op(p.grad, r1[name] + r2[name], 1e-5, f"{name}: sum of two micro-batches")
    (model if zero == "module" else opt).zero_grad()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, 0, err_msg=f"{name} after zero_grad")
    model.zero_grad()
    model.forward(x2)
    model.backward(g2)
    for name, p in model.named_parameters():
        check_op(p.grad, r2[name], 1e-5, f"{name}: after zero_grad, one micro-batch")


def test_accumulation_matches_pytorch():
    torch = pytest.importorskip("torch")
    model = nn.MLP([5, 7, 3], seed=0)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(),
                             torch.nn.Linear(7, 3)).double()
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                        for k, v in model.state_dict().items()})
    x1, x2, g1, g2 = _batches(1)
    for x, g in ((x1, g1), (x2, g2), (x1, g2)):
        model.forward(x)
        model.backward(g)
        tm(torch.from_numpy(x.astype(np.float64))).backward(torch.from_numpy(g.astype(np.float64)))
    tgrads = dict(tm.named_parameters())
    for name, p in model.named_parameters():
        check_op(p.grad, tgrads[name].grad.numpy(), 1e-5, name)


def test_a_step_never_reads_a_gradient_zero_grad_cleared():
    # zero_grad only marks the gradients; a parameter no backward wrote since must step as zero
    model = nn.MLP([5, 7, 3], seed=0)
    extra = nn.Parameter(np.ones(4, np.float32))
    extra.grad = np.ones(4, np.float32)
    opt = SGD(model.parameters() + [extra], lr=0.5)
    x1, _, g1, _ = _batches()
    opt.zero_grad()
    model.forward(x1)
    model.backward(g1)
    before = model[0].weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(extra.data, 1.0)  # was: 1 - 0.5 * (stale gradient 1)
    assert not np.array_equal(model[0].weight.data, before)
    np.testing.assert_array_equal(extra.grad, 0.0)


def test_zero_grad_set_to_none_and_a_first_backward():
    model = nn.MLP([5, 7, 3], seed=0)
    x1, x2, g1, g2 = _batches()
    model.forward(x1)
    model.backward(g1)
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    model.forward(x2)
    model.backward(g2)
    ref = _ref_grads(model, x2, g2)
    for name, p in model.named_parameters():
        check_op(p.grad, ref[name], 1e-5, name)


# -- fit(accumulate_steps=k) ---------------------------------------------------------------------

def _data(task, n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    if task == "classification":
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    else:
        y = np.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5], 1).astype(np.float32)
    return x, y


LOSSES = {
    "cross_entropy": lambda: CrossEntropy(),
    "weighted": lambda: CrossEntropy(weight=[1.0, 2.5, 0.5], label_smoothing=0.1),
    "sum": lambda: CrossEntropy(reduction="sum"),
    "mse": lambda: MSE(),
}


def _torch_large_batch_run(torch, model, loss_name, x, y, batch, epochs, lr, order_of):
    tm = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                             torch.nn.Linear(16, model[2].out_features)).double()
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                        for k, v in model.state_dict().items()})
    opt = torch.optim.SGD(tm.parameters(), lr=lr)
    tx = torch.from_numpy(x.astype(np.float64))
    ty = torch.from_numpy(y if loss_name != "mse" else y.astype(np.float64))
    F = torch.nn.functional
    for epoch in range(epochs):
        order = order_of(epoch)
        for i in range(0, len(x), batch):
            idx = torch.from_numpy(order[i:i + batch])
            out = tm(tx[idx])
            if loss_name == "mse":
                loss = F.mse_loss(out, ty[idx])
            elif loss_name == "weighted":
                loss = F.cross_entropy(out, ty[idx], weight=torch.tensor(
                    [1.0, 2.5, 0.5], dtype=torch.float64), label_smoothing=0.1)
            else:
                loss = F.cross_entropy(out, ty[idx],
                                       reduction="sum" if loss_name == "sum" else "mean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_accumulated_steps_equal_the_large_batch_pytorch_reference(loss_name):
    # 100 samples, micro-batches of 8, 4 a step: steps of 32, 32, 32 and the last 4 samples
    # (one short micro-batch): the same samples as batches of 32, a step each
    torch = pytest.importorskip("torch")
    task = "regression" if loss_name == "mse" else "classification"
    x, y = _data(task)
    n_out = 2 if task == "regression" else 3
    lr = 0.002 if loss_name == "sum" else 0.1
    model = nn.MLP([6, 16, n_out], seed=0)
    ref = _torch_large_batch_run(torch, model, loss_name, x, y, 32, 3, lr,
                                 DataLoader(x, y, batch_size=8, seed=5).order)
    trainer = Trainer(model, loss=LOSSES[loss_name](), optimizer="sgd", lr=lr)
    trainer.fit(x, y, epochs=3, batch_size=8, accumulate_steps=4, seed=5, verbose=0)
    for k, w in model.state_dict().items():
        check_op(w, ref[k], 2e-5, f"{loss_name}: {k}")
    assert trainer.steps_per_epoch == 4
    assert trainer.global_step == trainer.optimizer.step_count == 12
    assert trainer.fit_params["accumulate_steps"] == 4
    assert trainer.step_path == "layer by layer"
    # the epoch's loss is the same average as the large-batch fit's
    big = Trainer(nn.MLP([6, 16, n_out], seed=0), loss=LOSSES[loss_name](), optimizer="sgd",
                  lr=lr)
    big.fit(x, y, epochs=3, batch_size=32, seed=5, verbose=0)
    np.testing.assert_allclose(trainer.history["loss"], big.history["loss"], rtol=1e-5)


def test_accumulate_steps_1_is_the_default_bit_for_bit():
    x, y = _data("classification")
    runs = []
    for kw in ({}, {"accumulate_steps": 1}):
        m = nn.MLP([6, 16, 3], dropout=0.1, seed=2)
        Trainer(m, optimizer="adam", lr=1e-2).fit(x, y, epochs=2, batch_size=16, seed=1,
                                                   verbose=0, **kw)
        runs.append(m.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


class Record(ember.callbacks.Callback):
    def __init__(self):
        self.seen, self.lrs = [], []

    def on_batch_end(self, batch, logs):
        self.seen.append((self.trainer.epoch, batch, logs["size"], self.trainer.global_step))
        self.lrs.append(self.trainer.optimizer.lr)


def test_callbacks_schedules_and_counters_see_optimizer_steps():
    x, y = _data("classification")
    rec = Record()
    schedule = ember.schedules.CosineWithWarmup(total_steps=6, warmup_steps=2)
    t = Trainer(nn.MLP([6, 16, 3], seed=0), optimizer="sgd", lr=0.1, callbacks=[rec],
                lr_schedule=schedule)
    t.fit(x, y, epochs=2, batch_size=8, accumulate_steps=5, seed=0, verbose=0)
    # 13 micro-batches an epoch: steps of 5, 5 and 3 micro-batches (40, 40, 20 samples)
    assert rec.seen == [(0, 0, 40, 1), (0, 1, 40, 2), (0, 2, 20, 3),
                        (1, 0, 40, 4), (1, 1, 40, 5), (1, 2, 20, 6)]
    assert t.optimizer.step_count == 6 and t.history["skipped_steps"] == [0, 0]
    # a per-step schedule moves once an optimizer step
    assert rec.lrs == pytest.approx([0.1 * schedule.factor(0, s) for s in range(6)])


def _manual_accumulated_fit(model, x, y, batch, k, epochs, seed, lr):
    """The documented rule by hand: zero_grad, then each micro-batch's mean-loss gradient
    scaled by its share of the step's samples, summed by backward; one step per k."""
    loss, opt = CrossEntropy(), Adam(model, lr=lr)
    loader = DataLoader(x, y, batch_size=batch, seed=seed)
    for epoch in range(epochs):
        kept = list(loader)  # new arrays, valid as long as they are kept
        for s in range(0, len(kept), k):
            group = kept[s:s + k]
            total = sum(len(yb) for _, yb in group)
            opt.zero_grad()
            for xb, yb in group:
                loss.forward(model.forward(xb), yb)
                model.backward(loss.backward() * np.float32(len(yb) / total))
            opt.step()


@pytest.mark.parametrize("custom", [False, True])
def test_accumulating_fit_is_the_manual_loop_with_dropout_and_custom_modules(custom):
    class Net(nn.Module):
        def __init__(self):
            self.fc1 = nn.Linear(6, 16, seed=1)
            self.act = nn.ReLU()
            self.drop = nn.Dropout(0.2, seed=4)
            self.fc2 = nn.Linear(16, 3, seed=2)

        def forward(self, x):
            return self.fc2.forward(self.drop.forward(self.act.forward(self.fc1.forward(x))))

        def backward(self, g):
            g = self.fc2.backward(g)
            return self.fc1.backward(self.act.backward(self.drop.backward(g)))

    def make():
        return Net() if custom else nn.MLP([6, 16, 3], dropout=0.2, seed=3)

    x, y = _data("classification", n=90)
    manual = make()
    _manual_accumulated_fit(manual, x, y, 8, 3, 2, 7, 1e-2)
    fitted = make()
    Trainer(fitted, optimizer="adam", lr=1e-2).fit(x, y, epochs=2, batch_size=8,
                                                    accumulate_steps=3, seed=7, verbose=0)
    for k, w in manual.state_dict().items():
        np.testing.assert_array_equal(fitted.state_dict()[k], w, err_msg=k)


class CrashAt(ember.callbacks.Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, batch, logs):
        if self.trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_an_accumulating_fit_resumes_exactly_mid_epoch(tmp_path):
    x, y = _data("classification", n=110)
    kw = dict(epochs=3, batch_size=8, accumulate_steps=3, seed=3, verbose=0)
    ref = Trainer(nn.MLP([6, 16, 3], dropout=0.1, seed=0), lr=1e-2)
    ref.fit(x, y, checkpoint_dir=tmp_path / "ref", **kw)
    for crash in (4, 7):  # mid-epoch (5 steps an epoch), and right after an epoch's first
        run = tmp_path / f"run{crash}"
        t = Trainer(nn.MLP([6, 16, 3], dropout=0.1, seed=0), lr=1e-2,
                    callbacks=[CrashAt(crash), ModelCheckpoint(run, every_n_steps=1)])
        with pytest.raises(KeyboardInterrupt):
            t.fit(x, y, checkpoint_dir=run, **kw)
        t2 = Trainer(nn.MLP([6, 16, 3], dropout=0.1, seed=0), lr=1e-2,
                     callbacks=[ModelCheckpoint(run, every_n_steps=1)])
        t2.fit(x, y, checkpoint_dir=run, resume="latest", **kw)
        for k, v in ref.model.state_dict().items():
            np.testing.assert_array_equal(t2.model.state_dict()[k], v, err_msg=k)
        assert t2.global_step == ref.global_step == 15
        assert t2.optimizer.step_count == 15
        strip = lambda h: {k: v for k, v in h.history.items() if k != "time"}  # noqa: E731
        assert strip(t2.history) == strip(ref.history)


def test_resuming_with_other_accumulate_steps_is_refused(tmp_path):
    x, y = _data("classification")
    Trainer(nn.MLP([6, 8, 3]), lr=1e-2).fit(x, y, epochs=1, batch_size=8, accumulate_steps=2,
                                            checkpoint_dir=tmp_path, verbose=0)
    with pytest.raises(CheckpointError, match="accumulate_steps=2 but fit was called with "
                                              "accumulate_steps=4"):
        Trainer(nn.MLP([6, 8, 3]), lr=1e-2).fit(x, y, epochs=2, batch_size=8,
                                                accumulate_steps=4, checkpoint_dir=tmp_path,
                                                resume="latest", verbose=0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_accumulate_steps_is_named(bad):
    x, y = _data("classification")
    with pytest.raises(ValueError, match="fit: accumulate_steps must be a positive integer"):
        Trainer(nn.MLP([6, 8, 3])).fit(x, y, epochs=1, accumulate_steps=bad, verbose=0)


def test_more_micro_batches_a_step_than_an_epoch_has():
    x, y = _data("classification", n=20)
    t = Trainer(nn.MLP([6, 8, 3]), optimizer="sgd", lr=0.1)
    t.fit(x, y, epochs=2, batch_size=8, accumulate_steps=10, verbose=0)
    assert t.steps_per_epoch == 1 and t.global_step == 2


def test_a_weight_shared_by_two_layers_gets_both_gradients_in_fit():
    # tied weights: the step's gradient is the sum of both uses (it was the last one written)
    torch = pytest.importorskip("torch")
    x, y = _data("classification", n=48)
    lin, lin2 = nn.Linear(6, 6, seed=1), nn.Linear(6, 6)
    lin2.weight, lin2.bias = lin.weight, lin.bias  # two layers, one weight
    model = nn.Sequential(lin, nn.Tanh(), lin2, nn.Tanh(), nn.Linear(6, 3, seed=2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "4.weight",
                                                        "4.bias"]
    tm = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Identity(),
                             torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    tm[2] = tm[0]
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                        for k, v in model.state_dict().items()}, strict=False)
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    order = DataLoader(x, y, batch_size=16, seed=1).order(0)
    tx, ty = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)
    for i in range(0, 48, 16):
        idx = torch.from_numpy(order[i:i + 16])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(tx[idx]), ty[idx]).backward()
        opt.step()
    Trainer(model, optimizer="sgd", lr=0.1).fit(x, y, epochs=1, batch_size=16, seed=1,
                                                verbose=0)
    check_op(lin.weight.data, tm[0].weight.detach().numpy(), 1e-5, "tied weight")
    check_op(model[4].weight.data, tm[4].weight.detach().numpy(), 1e-5, "head")


def test_a_loop_without_zero_grad_is_warned_once():
    """A hand-written loop from before gradients accumulated (no zero_grad) now sums every
    step's gradients into the next: say so instead of training differently without a word."""
    import warnings

    from ember import nn as enn
    from ember import optim as optim_module
    from ember.optim import SGD
    from ember.losses import CrossEntropy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model = enn.MLP([4, 5, 3])
    loss, opt = CrossEntropy(), SGD(model, lr=0.1)
    optim_module._carried_over_warned = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):  # zero_grad every step: no warning
            opt.zero_grad()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            opt.step()
        assert not seen
        for _ in range(3):  # no zero_grad: the second backward adds to used gradients
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            opt.step()
    assert len(seen) == 1 and "zero_grad()" in str(seen[0].message)
    # accumulating on purpose (two backward passes, then one step) is not warned about
    optim_module._carried_over_warned = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        opt.zero_grad()
        for _ in range(2):
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
        opt.step()
    assert not seen
