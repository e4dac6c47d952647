"""ember.inference: the frozen predictor (compiled Linear stacks, the eval-forward fallback),
load_predictor, and Trainer.predict through it."""
import threading

import numpy as np
import pytest

import ember
from ember import _cpu, nn
from ember.checkpoint import load_checkpoint, save_checkpoint
from ember.errors import CheckpointError
from ember.inference import Predictor, load_predictor
from ember.preprocessing import Rescale, RunModel, Standardize

from conftest import act_ref

ACTS = ["identity", "relu", "leaky_relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu"]


def _act_layer(name):
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU,
            "gelu_tanh": lambda: nn.GELU("tanh"), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "silu": nn.SiLU}[name]()


def _mlp(widths, act, seed=0, bias=True, dropout=False):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias, init="torch", seed=seed + i))
        if i < len(widths) - 2:
            if dropout:
                layers.append(nn.Dropout(0.3))
            if act != "identity":
                layers.append(_act_layer(act))
    return nn.Sequential(*layers)


def _ref64(model, x, act):
    """float64 NumPy forward of a Linear stack with ``act`` between layers."""
    lins = [m for m in model.layers if isinstance(m, nn.Linear)]
    h = x.astype(np.float64)
    for i, lin in enumerate(lins):
        h = h @ lin.weight.data.astype(np.float64).T
        if lin.bias is not None:
            h = h + lin.bias.data
        if i < len(lins) - 1:
            h = act_ref(h, act, 0.2)
    return h


@pytest.mark.parametrize("act", ACTS)
def test_compiled_forward_is_the_eval_forward_bit_for_bit(act, rng):
    # Odd and tiny widths, a wide layer (packed B) and a narrow output (read in place).
    for widths in [(7, 13, 5), (3, 1), (130, 300, 33, 10), (200, 129, 1)]:
        model = _mlp(widths, act, seed=len(widths), bias=widths[0] != 3)
        pred = Predictor(model, block_rows=16)
        assert pred._plan is not None  # the compiled path
        ref_model = model.eval()
        for batch in (1, 2, 15, 16, 37, 100):
            x = rng.standard_normal((batch, widths[0])).astype(np.float32)
            got = pred(x)
            assert got.dtype == np.float32 and got.shape == (batch, widths[-1])
            np.testing.assert_array_equal(got, ref_model.forward(x))
            ref = _ref64(model, x, act)
            np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4 * max(1, np.abs(ref).max()))


def test_compiled_forward_matches_under_every_isa(isa, rng):
    model = _mlp((150, 70, 40, 3), "gelu", seed=4)
    x = rng.standard_normal((21, 150)).astype(np.float32)
    pred = Predictor(model)
    np.testing.assert_array_equal(pred(x), model.eval().forward(x))


def test_plan_refuses_to_run_under_another_isa(rng):
    before = {"base": "base", "x86-64-v3": "v3", "x86-64-v4": "v4"}[_cpu.isa()]
    pred = Predictor(_mlp((64, 96, 4), "relu"))
    other = "base" if before != "base" else "v3"
    try:
        _cpu.set_isa(other)
    except ValueError:
        pytest.skip("only one ISA on this machine")
    try:
        with pytest.raises(ValueError, match="packed for the .* build the predictor again"):
            pred(rng.standard_normal((2, 64)).astype(np.float32))
    finally:
        _cpu.set_isa(before)


def test_dropout_and_identity_are_skipped_and_other_modules_fall_back(rng):
    model = _mlp((12, 9, 4), "tanh", dropout=True)
    pred = Predictor(model)
    assert pred._plan is not None
    x = rng.standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_array_equal(pred(x), model.eval().forward(x))

    class Double(nn.Module):  # not a layer the plan knows
        def forward(self, x):
            return x * 2

    odd = nn.Sequential(nn.Linear(12, 6, seed=1), Double(), nn.Linear(6, 3, seed=2))
    pred = Predictor(odd)
    assert pred._plan is None
    np.testing.assert_array_equal(pred(x), odd.eval().forward(x))
    two_acts = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Tanh(), nn.Linear(6, 2))
    assert two_acts.frozen_layers() is None
    np.testing.assert_array_equal(Predictor(two_acts)(x), two_acts.eval().forward(x))


def test_weights_are_a_snapshot(rng):
    model = _mlp((10, 8, 3), "relu")
    x = rng.standard_normal((4, 10)).astype(np.float32)
    pred = Predictor(model)
    before = pred(x)
    model.layers[0].weight.data[...] += 1.0  # the model changes after the predictor was built
    np.testing.assert_array_equal(pred(x), before)
    assert not np.array_equal(model.eval().forward(x), before)


def test_concurrent_calls_from_many_threads(rng):
    model = _mlp((96, 300, 10), "silu")
    pred = Predictor(model, block_rows=8)
    xs = [rng.standard_normal((b, 96)).astype(np.float32) for b in (1, 7, 33, 64, 5, 130)]
    refs = [model.eval().forward(x) for x in xs]
    errors, barrier = [], threading.Barrier(6)

    def work(i):
        barrier.wait()
        for _ in range(30):
            if not np.array_equal(pred(xs[i]), refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_inputs_converted_or_refused_by_name(rng):
    model = _mlp((6, 5, 3), "relu")
    pred = Predictor(model, task="classification")
    x = rng.standard_normal((4, 6))
    ref = model.eval().forward(x.astype(np.float32))
    np.testing.assert_array_equal(pred(x), ref)  # float64: converted as check_xy does
    np.testing.assert_array_equal(pred(np.asfortranarray(x.astype(np.float32))), ref)
    np.testing.assert_array_equal(pred(x.tolist() and np.asarray(x.tolist())), ref)
    with pytest.raises(ValueError, match="predict: x has 5 features, the model expects 6"):
        pred(np.zeros((2, 5), np.float32))
    bad = np.zeros((3, 6), np.float32)
    bad[2, 4] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at row 2, column 4\)"):
        pred(bad)
    with pytest.raises(ValueError, match="predict: x must not be empty"):
        pred(np.zeros((0, 6), np.float32))
    with pytest.raises(ValueError, match="x must be 2-D"):
        pred(np.zeros(6, np.float32))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        pred(np.array([["a"] * 6]))
    with pytest.raises(TypeError, match="model must be an ember.nn.Module"):
        Predictor("model")
    with pytest.raises(ValueError, match="task must be one of"):
        Predictor(model, task="ranking")
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        Predictor(model, block_rows=0)


def test_predict_and_proba(rng):
    model = _mlp((6, 5, 4), "relu")
    x = rng.standard_normal((9, 6)).astype(np.float32)
    z = model.eval().forward(x).astype(np.float64)
    pred = Predictor(model, task="classification")
    np.testing.assert_array_equal(pred.predict(x), z.argmax(axis=1))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(pred.predict_proba(x), p / p.sum(axis=1, keepdims=True), rtol=1e-6)
    reg = Predictor(_mlp((6, 5, 1), "relu"), task="regression")
    assert reg.predict(x).shape == (9,)
    with pytest.raises(ValueError, match="predict_proba: the model is not a classifier"):
        reg.predict_proba(x)


def test_run_model_standardization_folded_in(rng):
    net = _mlp((5, 8, 3), "gelu")
    mean, std = rng.standard_normal(5), rng.uniform(0.5, 3, 5)
    run = RunModel(net, Standardize(mean, std), classes=["a", "b", "c"])
    pred = Predictor(run)
    assert pred.task == "classification" and pred.classes == ["a", "b", "c"]
    x = (rng.standard_normal((11, 5)) * 4 + 2).astype(np.float32)
    np.testing.assert_array_equal(pred(x), run.eval().forward(x))
    xs = (x - mean.astype(np.float32)) / std.astype(np.float32)
    np.testing.assert_allclose(pred(x), _ref64(net, xs, "gelu"), rtol=1e-4, atol=1e-5)
    reg = RunModel(_mlp((5, 8, 2), "tanh"), Standardize(mean, std), Rescale([2.0, 0.5], [10, -1]))
    rp = Predictor(reg)
    assert rp.task == "regression"
    np.testing.assert_array_equal(rp(x), reg.eval().forward(x))


def _fit_and_save(tmp_path, rng):
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    trainer = ember.Trainer(nn.MLP([6, 16, 3]), loss="cross_entropy", optimizer="adam")
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return trainer, x, save_checkpoint(trainer, tmp_path / "ck")


def test_load_predictor_reads_only_the_weights(tmp_path, rng):
    trainer, x, ck = _fit_and_save(tmp_path, rng)
    ref = trainer.predict_raw(x)
    for path in (ck, ck / "model.safetensors", tmp_path / "ck"):
        pred = load_predictor(path)
        assert pred.task == "classification"
        np.testing.assert_array_equal(pred(x), ref)
        np.testing.assert_array_equal(pred.predict(x), trainer.predict(x))
    # A damaged optimizer state: a full load refuses it, the predictor never reads it.
    (ck / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_checkpoint(ck)
    np.testing.assert_array_equal(load_predictor(ck)(x), ref)
    # The weights themselves are verified.
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_predictor(ck)
    with pytest.raises(CheckpointError, match="not found"):
        load_predictor(tmp_path / "nothing")


def test_trainer_predict_goes_through_the_predictor(rng):
    model = _mlp((9, 20, 4), "sigmoid")
    trainer = ember.Trainer(model, loss="cross_entropy", optimizer="sgd")
    x = rng.standard_normal((50, 9)).astype(np.float32)
    full = model.eval().forward(x)
    model.train()
    for bs in (1, 7, 1024):
        np.testing.assert_array_equal(trainer.predict_raw(x, batch_size=bs), full)
    assert model.training  # the Trainer's model is left as it was


@pytest.mark.gpu
def test_cupy_in_cupy_out_on_the_gpu(rng):
    cp = pytest.importorskip("cupy")
    model = _mlp((30, 64, 5), "gelu")
    pred = Predictor(model, task="classification")
    x = rng.standard_normal((70, 30)).astype(np.float32)
    got = pred(cp.asarray(x))
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(got.get(), pred(x), rtol=1e-4, atol=1e-5)
    assert isinstance(pred.predict_proba(cp.asarray(x)), cp.ndarray)
    # A Trainer on the GPU predicts there, through the same class.
    trainer = ember.Trainer(_mlp((30, 64, 5), "gelu"), loss="cross_entropy", device="cuda")
    np.testing.assert_allclose(trainer.predict_raw(x), pred(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="predict: x must be 2-D with 30 columns"):
        pred(cp.zeros((2, 3), dtype=cp.float32))


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_a_rows_bits_do_not_depend_on_the_batch(act, isa, rng):
    # Batch 1 runs its own kernel (one row across several panels at once); a row inside a batch
    # runs the register tile. Both must give the same bits, on every ISA and either path.
    model = _mlp((300, 520, 130, 7), act, seed=9)
    x = rng.standard_normal((19, 300)).astype(np.float32)
    pred = Predictor(model)
    full, each = model.eval().forward(x), pred(x)
    np.testing.assert_array_equal(each, full)
    for i in (0, 8, 18):
        np.testing.assert_array_equal(pred(x[i:i + 1]), full[i:i + 1])
        np.testing.assert_array_equal(model.forward(x[i:i + 1]), full[i:i + 1])


def test_pickle_round_trip_compiles_again(rng):
    import pickle
    model = _mlp((11, 17, 3), "silu")
    pred = Predictor(model, task="classification")
    x = rng.standard_normal((6, 11)).astype(np.float32)
    back = pickle.loads(pickle.dumps(pred))
    np.testing.assert_array_equal(back(x), pred(x))
    assert back._plan is not None and back.task == "classification"
    np.testing.assert_array_equal(back.predict(x), pred.predict(x))
