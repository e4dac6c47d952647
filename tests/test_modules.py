"""A user's own Module (PyTorch style): submodules and parameters registered from attributes,
modes, state dicts with dotted names, training with the Trainer, clear errors for what a custom
module lacks, and registered custom layers round-tripping through configs and checkpoints."""
import json
import os

import numpy as np
import pytest

import ember
from conftest import check_op
from ember import Trainer, nn
from ember.datasets import load_digits


class Net(nn.Module):
    """64 -> 64 -> 10 with ReLU and dropout, written as a PyTorch user writes it."""

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.fc1 = nn.Linear(64, 64, seed=seed)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(p, seed=seed)
        self.fc2 = nn.Linear(64, 10, seed=seed + 1)

    def forward(self, x):
        return self.fc2.forward(self.drop.forward(self.act.forward(self.fc1.forward(x))))

    def backward(self, grad_out):
        g = self.fc2.backward(grad_out)
        return self.fc1.backward(self.act.backward(self.drop.backward(g)))


def _torch_net(torch):
    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(64, 64)
            self.act = torch.nn.ReLU()
            self.drop = torch.nn.Dropout(0.0)
            self.fc2 = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(self.drop(self.act(self.fc1(x))))
    return TNet().double()


def _x(n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def test_attribute_submodules_and_their_parameters_are_registered():
    # was: 650 parameters (fc2's only, found through... nothing: the base class listed none)
    net = Net()
    assert net.num_parameters() == 64 * 64 + 64 + 64 * 10 + 10 == 4810
    assert [n for n, _ in net.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight",
                                                       "fc2.bias"]
    assert net.parameters()[0] is net.fc1.weight and net.parameters()[3] is net.fc2.bias
    assert net.children() == [net.fc1, net.act, net.drop, net.fc2]
    assert [n for n, _ in net.named_modules()] == ["", "fc1", "act", "drop", "fc2"]
    assert list(net.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert "(fc1): Linear(in_features=64" in repr(net)


def test_eval_turns_off_the_dropout_of_an_attribute():
    net = Net(p=0.5)
    x = _x()
    net.eval()
    assert not net.drop.training and not net.fc1.training
    a, b = net.forward(x), net.forward(x)
    np.testing.assert_array_equal(a, b)
    w1, b1 = net.fc1.weight.data.astype(np.float64), net.fc1.bias.data.astype(np.float64)
    w2, b2 = net.fc2.weight.data.astype(np.float64), net.fc2.bias.data.astype(np.float64)
    check_op(a, np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, 1e-5, "eval forward, no dropout")
    net.train()
    assert net.drop.training
    assert not np.array_equal(net.forward(x), a)  # dropout on again


def test_state_dict_loads_into_the_equivalent_pytorch_module_and_back():
    torch = pytest.importorskip("torch")
    net = Net(p=0.0)
    tnet = _torch_net(torch)
    tnet.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                          for k, v in net.state_dict().items()})
    x = _x()
    ref = tnet(torch.from_numpy(x.astype(np.float64))).detach().numpy()
    check_op(net.eval().forward(x), ref, 1e-5, "forward vs PyTorch")
    # and PyTorch's weights into ember, by the same names
    other = _torch_net(torch)
    report = net.load_state_dict(other.state_dict())
    assert report == {"missing": [], "unexpected": [], "mismatched": []}
    ref = other(torch.from_numpy(x.astype(np.float64))).detach().numpy()
    check_op(net.forward(x), ref, 1e-5, "forward after loading PyTorch's weights")
    with pytest.raises(ValueError, match=r"missing keys \['fc2.bias'\]"):
        net.load_state_dict({k: v for k, v in net.state_dict().items() if k != "fc2.bias"})


def test_gradients_reach_every_parameter_and_match_pytorch():
    torch = pytest.importorskip("torch")
    net = Net(p=0.0)
    tnet = _torch_net(torch)
    tnet.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                          for k, v in net.state_dict().items()})
    x = _x()
    g = np.random.default_rng(1).standard_normal((16, 10)).astype(np.float32)
    net.forward(x)
    gx = net.backward(g)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    tnet(tx).backward(torch.from_numpy(g.astype(np.float64)))
    check_op(gx, tx.grad.numpy(), 1e-5, "input gradient")
    tgrads = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        check_op(p.grad, tgrads[name].grad.numpy(), 1e-5, name)


def test_zero_grad_freeze_and_to_reach_attribute_submodules():
    net = Net()
    net.forward(_x())
    net.backward(np.ones((16, 10), np.float32))
    assert len(net.parameters()) == 4
    assert all(p.grad is not None and np.any(p.grad) for p in net.parameters())
    net.zero_grad()
    assert all(not np.any(p.grad) for p in net.parameters())
    net.freeze()
    assert net.num_parameters(trainable_only=True) == 0
    net.unfreeze()
    assert net.to("cpu") is net and net.device == "cpu"


def test_lists_nested_modules_owned_parameters_and_shared_modules():
    class Scale(nn.Module):  # owns a Parameter directly
        def __init__(self, width):
            self.scale = nn.Parameter(np.full(width, 2.0, np.float32))

        def forward(self, x):
            self._x = x
            return x * self.scale.data

        def backward(self, grad_out):
            self.scale.add_grad((grad_out * self._x).sum(0))
            return grad_out * self.scale.data

    class Deep(nn.Module):
        def __init__(self):
            self.blocks = [nn.Linear(4, 4, seed=i) for i in range(2)]
            self.body = nn.Sequential(nn.Linear(4, 3, seed=5), nn.Tanh())
            self.scale = Scale(3)
            self.tied = self.blocks[0]  # the same module again: counted once

    deep = Deep()
    names = [n for n, _ in deep.named_parameters()]
    assert names == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                     "body.0.weight", "body.0.bias", "scale.scale"]
    assert deep.num_parameters() == 2 * 20 + 15 + 3
    assert [n for n, _ in deep.named_modules()] == ["", "blocks.0", "blocks.1", "body", "body.0",
                                                    "body.1", "scale"]
    deep.eval()
    assert not deep.body[1].training and not deep.blocks[1].training
    # a Parameter owned directly: add_grad writes after zero_grad, adds otherwise
    s = Scale(3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for _ in range(2):
        s.forward(x)
        s.backward(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(s.scale.grad, 2 * x.sum(0))
    s.zero_grad()
    s.forward(x)
    s.backward(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(s.scale.grad, x.sum(0))


def _digits():
    x, y = load_digits()
    return x[:320], y[:320]


def test_fit_trains_every_parameter_of_a_custom_module_and_turns_dropout_off():
    # was: fit never updated fc1 (the optimizer saw fc2 only) and left the dropout on
    x, y = _digits()
    net = Net(p=0.2)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    trainer = Trainer(net, optimizer="adam", lr=1e-2)
    assert len(trainer.optimizer.params) == 4
    trainer.fit(x, y, epochs=5, batch_size=32, seed=0, verbose=0)
    for name, w in net.state_dict().items():
        assert not np.array_equal(w, before[name]), f"{name} was not trained"
    assert not net.drop.training
    assert trainer.evaluate(x, y)["accuracy"] > 0.9  # (the equivalent MLP: 0.98)
    assert trainer.step_path == "layer by layer"


def test_fit_of_a_custom_module_is_the_pytorch_style_loop():
    # zero_grad / forward / loss / backward / step by hand gives the same bits as fit
    from ember.data import DataLoader
    from ember.losses import CrossEntropy
    from ember.optim import Adam
    x, y = _digits()
    net = Net(p=0.2)
    opt, loss = Adam(net, lr=1e-3), CrossEntropy()
    loader = DataLoader(x.astype(np.float32), y, batch_size=32, seed=4)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            loss.forward(net.forward(xb), yb)
            net.backward(loss.backward())
            opt.step()
    net2 = Net(p=0.2)
    Trainer(net2, optimizer="adam", lr=1e-3).fit(x, y, epochs=2, batch_size=32, seed=4,
                                                  verbose=0)
    for k, w in net.state_dict().items():
        np.testing.assert_array_equal(w, net2.state_dict()[k], err_msg=k)


class NoBackward(nn.Module):
    def __init__(self):
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc.forward(x)


def test_a_module_without_backward_is_refused_before_any_step(tmp_path):
    # was: a bare NotImplementedError from the first step (and with checkpoints a temp folder)
    x, y = _digits()
    model = NoBackward()
    w = model.fc.weight.data.copy()
    with pytest.raises(TypeError, match=r"NoBackward\) does not define backward.*no autograd"):
        Trainer(model).fit(x, y, epochs=1, verbose=0, checkpoint_dir=tmp_path / "run")
    np.testing.assert_array_equal(model.fc.weight.data, w)
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")
    # a direct call says the same
    with pytest.raises(NotImplementedError, match="NoBackward.backward is not defined"):
        model.backward(np.zeros((1, 10), np.float32))


def test_config_is_needed_only_when_checkpoints_are_written(tmp_path):
    x, y = _digits()
    Trainer(Net()).fit(x, y, epochs=1, verbose=0)  # no checkpoints: no config() needed
    run = tmp_path / "run"
    model = Net()
    w = model.fc1.weight.data.copy()
    with pytest.raises(TypeError, match=r"Net.config\(\) is not defined.*register_module"):
        Trainer(model).fit(x, y, epochs=2, verbose=0, checkpoint_dir=run)
    np.testing.assert_array_equal(model.fc1.weight.data, w)  # refused before any step
    assert not run.exists() or not os.listdir(run)  # no checkpoint, no temporary folder left

    class BadConfig(Net):
        def config(self):
            return {"type": "BadConfig", "weights": np.zeros(2)}
    with pytest.raises(TypeError, match=r"config\(\) must return JSON data"):
        Trainer(BadConfig()).fit(x, y, epochs=1, verbose=0, checkpoint_dir=tmp_path / "b")


@nn.register_module
class RegNet(Net):
    """Net with a config: rebuilt by cls(**kwargs)."""

    def __init__(self, p=0.5, seed=0):
        super().__init__(p, seed)
        self.p, self.seed = p, seed

    def config(self):
        return {"type": "RegNet", "p": self.p, "seed": self.seed}


@nn.register_module(name="test_modules.Residual")
class Residual(nn.Module):
    """x + fc(x): rebuilt through its from_config classmethod, its layer from its own config."""

    def __init__(self, fc):
        self.fc = fc

    @classmethod
    def from_config(cls, config):
        return cls(nn.from_config(config["fc"]))

    def config(self):
        return {"type": "test_modules.Residual", "fc": self.fc.config()}

    def forward(self, x):
        return x + self.fc.forward(x)

    def backward(self, grad_out):
        return grad_out + self.fc.backward(grad_out)


def test_registered_modules_round_trip_through_configs():
    net = nn.from_config(json.loads(json.dumps(RegNet(p=0.25, seed=3).config())))
    assert type(net) is RegNet and net.drop.p == 0.25
    seq = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), Residual(nn.Linear(32, 32)),
                        nn.Linear(32, 10))
    back = nn.from_config(json.loads(json.dumps(seq.config())))
    assert back.config() == seq.config()
    assert type(back[2]) is Residual and [n for n, _ in back.named_parameters()] == [
        n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.fc.weight",
                                                  "2.fc.bias", "3.weight", "3.bias"]
    assert "RegNet" in nn.registered_modules()


def test_a_registered_module_checkpoints_loads_and_resumes_exactly(tmp_path):
    x, y = _digits()
    # uninterrupted
    full = Trainer(RegNet(p=0.2), optimizer="adam", lr=1e-3)
    full.fit(x, y, epochs=3, batch_size=32, seed=1, verbose=0, checkpoint_dir=tmp_path / "a")
    # interrupted after the first epoch, resumed
    class Stop(ember.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                raise KeyboardInterrupt
    part = Trainer(RegNet(p=0.2), optimizer="adam", lr=1e-3, callbacks=[Stop()])
    with pytest.raises(KeyboardInterrupt):
        part.fit(x, y, epochs=3, batch_size=32, seed=1, verbose=0,
                 checkpoint_dir=tmp_path / "b")
    resumed = Trainer(RegNet(p=0.2), optimizer="adam", lr=1e-3)
    resumed.fit(x, y, epochs=3, batch_size=32, seed=1, verbose=0,
                checkpoint_dir=tmp_path / "b", resume="latest")
    for k, w in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], w, err_msg=k)
    assert resumed.model.drop.counter == full.model.drop.counter > 0
    # load_model rebuilds the registered class
    loaded = ember.load_model(tmp_path / "a" / "latest")
    assert type(loaded) is RegNet and not loaded.drop.training
    np.testing.assert_array_equal(loaded.forward(x[:8].astype(np.float32)),
                                  full.model.forward(x[:8].astype(np.float32)))


def test_an_unregistered_type_warns_that_load_model_cannot_rebuild_it(tmp_path):
    class Unregistered(Net):
        def config(self):
            return {"type": "Unregistered"}
    x, y = _digits()
    with pytest.warns(UserWarning, match="'Unregistered' is not registered"):
        Trainer(Unregistered()).fit(x, y, epochs=1, verbose=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown layer type 'Unregistered'.*register_module"):
        nn.from_config({"type": "Unregistered"})


def test_register_module_checks_its_arguments():
    with pytest.raises(TypeError, match="cls must be a subclass of ember.nn.Module"):
        nn.register_module(int)
    with pytest.raises(ValueError, match="'Linear' is one of ember's own layer types"):
        nn.register_module(Net, name="Linear")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        nn.register_module(Net, name="")
    with pytest.raises(ValueError, match="the name 'RegNet' is taken by"):
        nn.register_module(Net, name="RegNet")
    nn.register_module(RegNet)  # again, the same class: fine

    @nn.register_module(name="test_modules.NeedsArgs")
    class NeedsArgs(nn.Module):
        def __init__(self, width):
            self.width = width
    with pytest.raises(ValueError, match=r"NeedsArgs\(\*\*\{\}\) failed"):
        nn.from_config({"type": "test_modules.NeedsArgs"})
    assert nn.from_config({"type": "test_modules.NeedsArgs", "width": 3}).width == 3


def test_a_sequential_holding_a_custom_module_trains_as_the_manual_loop():
    from ember.data import DataLoader
    from ember.losses import CrossEntropy
    from ember.optim import SGD

    def make():
        return nn.Sequential(nn.Linear(64, 32, seed=1), nn.ReLU(),
                             Residual(nn.Linear(32, 32, seed=2)), nn.Linear(32, 10, seed=3))
    x, y = _digits()
    manual = make()
    opt, loss = SGD(manual, lr=0.05, momentum=0.9), CrossEntropy()
    loader = DataLoader(x.astype(np.float32), y, batch_size=16, seed=2)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            loss.forward(manual.forward(xb), yb)
            manual.backward(loss.backward())
            opt.step()
    fitted = make()
    t = Trainer(fitted, optimizer="sgd", lr=0.05, momentum=0.9)
    t.fit(x, y, epochs=2, batch_size=16, seed=2, verbose=0)
    assert t.step_path == "layer by layer"
    for k, w in manual.state_dict().items():
        np.testing.assert_array_equal(fitted.state_dict()[k], w, err_msg=k)
    assert "2.fc.weight" in fitted.state_dict()
