"""ember.preprocessing: Standardize / Rescale layers and RunModel, against NumPy by hand."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.nn import MLP, Sequential
from ember.preprocessing import Rescale, RunModel, Standardize, from_config


def _data(n=64, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * [1, 10, 100, 0.1, 3] + [5, -50, 1000, 0, 2]).astype(np.float32)
    return x[:, :d]


def test_standardize_and_rescale_match_numpy():
    x = _data()
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    s = Standardize(mean, std)
    got = s.forward(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    # the command line's arithmetic, bit for bit
    np.testing.assert_array_equal(got, (x - mean.astype(np.float32)) / std.astype(np.float32))
    np.testing.assert_allclose(got.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(s.inverse(got), x, rtol=1e-5, atol=1e-4)
    g = np.ones_like(x)
    np.testing.assert_allclose(s.backward(g), np.broadcast_to(1 / std, x.shape), rtol=1e-6)
    r = Rescale(scale=[2.5, 100.0], offset=[-1.0, 300.0])
    z = np.array([[0.0, 1.0], [2.0, -0.5]], np.float32)
    np.testing.assert_array_equal(r.forward(z), np.float32(z * [2.5, 100.0] + [-1.0, 300.0]))
    np.testing.assert_allclose(r.backward(np.ones_like(z)), [[2.5, 100.0]] * 2)
    assert s.num_parameters() == r.num_parameters() == 0
    assert from_config(s.config()).config() == s.config()
    assert from_config(r.config()).config() == r.config()


@pytest.mark.parametrize("args,exc,match", [
    (([1.0, 2.0], [1.0]), ValueError, "mean has 2 values but std has 1"),
    (([1.0], [0.0]), ValueError, r"std\[0\] is 0.0 \(must be > 0\)"),
    (([np.nan], [1.0]), ValueError, r"mean\[0\] is nan"),
    (("abc", [1.0]), TypeError, "mean must be a sequence of numbers"),
    (([[1.0]], [[1.0]]), ValueError, "1-D"),
    (([], []), ValueError, "non-empty"),
])
def test_standardize_bad_arguments_are_named(args, exc, match):
    with pytest.raises(exc, match=match):
        Standardize(*args)


def test_transforms_check_their_input():
    s = Standardize([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"Standardize: x must be 2-D with 2 columns, got shape "
                                         r"\(3, 5\)"):
        s.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="Standardize: x must be a NumPy or CuPy array"):
        s.forward([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"Rescale: scale\[1\] is -1.0"):
        Rescale([1.0, -1.0], [0.0, 0.0])


def test_run_model_is_the_network_behind_its_preprocessing():
    x = _data()
    net = MLP([5, 16, 2], seed=1)
    mean, std = x.mean(0), x.std(0)
    model = RunModel(net, Standardize(mean, std), Rescale([10.0, 0.5], [100.0, -3.0]))
    want = net.predict((x - mean) / std) * [10.0, 0.5] + [100.0, -3.0]
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-4)
    # the same parameters and names: the state dict is the network's
    assert list(model.state_dict()) == list(net.state_dict())
    assert all(a is b for a, b in zip(model.parameters(), net.parameters()))
    # backward: input gradient of sum(outputs) against central differences in float64
    model.train()
    out = model.forward(x[:4])
    gx = model.backward(np.ones_like(out), need_input_grad=True)
    model.eval()
    eps = 1e-2
    for j in range(5):
        d = np.zeros_like(x[:4])
        d[:, j] = eps * std[j]
        num = (model.forward(x[:4] + d).astype(np.float64).sum(1) -
               model.forward(x[:4] - d).astype(np.float64).sum(1)) / (2 * eps * std[j])
        np.testing.assert_allclose(gx[:, j], num, rtol=2e-2, atol=1e-3)
    with pytest.raises(ValueError, match="RunModel: standardize has 3 features, the network "
                                         "takes 5 inputs"):
        RunModel(net, Standardize([0.0] * 3, [1.0] * 3))
    with pytest.raises(ValueError, match="3 classes for a network with 2 outputs"):
        RunModel(net, classes=["a", "b", "c"])
    with pytest.raises(TypeError, match="network must be an ember.nn.Sequential"):
        RunModel(Standardize([0.0], [1.0]))
    with pytest.raises(ValueError, match="predict_labels: this RunModel has no classes"):
        model.predict_labels(x)


def test_run_model_trains_and_round_trips_through_a_checkpoint(tmp_path):
    x = _data(200)
    labels = np.array(["cat", "dog"])
    y = (x[:, 1] > -50).astype(np.int64)
    mean, std = x.mean(0), x.std(0)
    model = RunModel(MLP([5, 16, 2], seed=0), Standardize(mean, std), classes=list(labels))
    trainer = ember.Trainer(model, lr=1e-2)
    trainer.fit(x, y, epochs=10, batch_size=32, checkpoint_dir=tmp_path, verbose=0)
    assert trainer.step_path == "layer by layer"
    assert trainer.evaluate(x, y)["accuracy"] > 0.9
    loaded = ember.load_model(tmp_path)
    assert isinstance(loaded, RunModel) and loaded.classes == ["cat", "dog"]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert (loaded.predict_labels(x) == labels[trainer.predict(x)]).all()
    bare = ember.load_model(tmp_path, preprocessing=False)
    assert type(bare) is Sequential
    np.testing.assert_array_equal(bare.predict((x - mean) / std), model.predict(x))
    # the resumed fit checks the architecture, preprocessing included
    again = ember.Trainer(RunModel(MLP([5, 16, 2], seed=0), Standardize(mean, std),
                                   classes=list(labels)), lr=1e-2)
    again.fit(x, y, epochs=11, batch_size=32, checkpoint_dir=tmp_path, resume="latest", verbose=0)
    assert again.epoch == 11
    other = ember.Trainer(RunModel(MLP([5, 16, 2], seed=0), Standardize(mean + 1, std),
                                   classes=list(labels)), lr=1e-2)
    with pytest.raises(ember.CheckpointError, match="architecture"):
        other.fit(x, y, epochs=12, batch_size=32, checkpoint_dir=tmp_path, resume="latest",
                  verbose=0)


def test_layers_inside_a_users_sequential_save_and_load(tmp_path):
    # where ember.nn has a registry of layer types, these are in it: a model that holds them
    # checkpoints and loads back (without one, nn.from_config refuses them by name)
    if not hasattr(ember.nn, "register_module"):
        pytest.skip("this ember.nn has no layer registry")
    x = _data(100)
    y = (x[:, 0] > 5).astype(np.int64)
    model = Sequential(Standardize(x.mean(0), x.std(0)), *MLP([5, 8, 2], seed=0).layers)
    ember.Trainer(model).fit(x, y, epochs=2, checkpoint_dir=tmp_path, verbose=0)
    loaded = ember.load_model(tmp_path)
    assert isinstance(loaded[0], Standardize)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
