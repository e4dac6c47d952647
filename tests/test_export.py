"""ONNX export (ember.export.to_onnx, ``ember export``), checked by running the files in
onnxruntime against ember's own forward pass.

The bar everywhere: ``|onnxruntime - ember| <= 1e-5 * max(1, |ember|)`` elementwise, at batch 1,
37 and 4096 through one session (the batch axis is dynamic). ember's output is computed by
ember (``model.predict``, eval mode), and a float64 NumPy forward pass checks that ember's
output is itself the model's function, so a wrong export cannot pass by matching a wrong
reference.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import ember  # noqa: E402
from conftest import act_ref  # noqa: E402
from ember import cli, nn  # noqa: E402
from ember.export import MAX_OPSET, MIN_OPSET, to_onnx  # noqa: E402
from ember.preprocessing import Rescale, RunModel, Standardize  # noqa: E402

BATCHES = (1, 37, 4096)
ACTS = ("identity", "relu", "leaky_relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu")
#: below and from opset 20 (the Gelu operator), and the ends of the supported range
OPSETS = (MIN_OPSET, 17, 20, MAX_OPSET)


# ------------------------------------------------------------------------------------------
# helpers


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess, x, names=None):
    return sess.run(names, {"x": np.ascontiguousarray(x, np.float32)})


def assert_close(got, ref, what=""):
    """``|got - ref| <= 1e-5 * max(1, |ref|)`` elementwise (the issue's bar)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() <= 1e-5, f"{what}: max relative error {err.max():.3e} > 1e-5"


def random_mlp(sizes, activation="relu", seed=0, **kw):
    """An MLP with random weights and random (non-zero) biases."""
    model = nn.MLP(sizes, activation=activation, seed=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data[...] = rng.normal(0, 0.5, p.shape).astype(np.float32)
    return model


def features(n, width, seed=1, scale=2.0):
    return np.random.default_rng(seed).normal(0, scale, (n, width)).astype(np.float32)


def numpy_forward(layers, x):
    """A float64 forward pass of a Sequential's layers (eval mode), independent of ember's
    kernels: Linear as x @ W.T + b, activations by their formulas (conftest.act_ref)."""
    z = np.asarray(x, np.float64)
    for layer in layers:
        if type(layer) is nn.Linear:
            z = z @ np.asarray(layer.weight.data, np.float64).T
            if layer.bias is not None:
                z = z + np.asarray(layer.bias.data, np.float64)
        elif isinstance(layer, nn.Activation):
            z = act_ref(z, layer.name, layer.negative_slope)
        elif isinstance(layer, Standardize):
            z = (z - layer.mean) / layer.std
        elif isinstance(layer, Rescale):
            z = z * layer.scale + layer.offset
        elif not isinstance(layer, nn.Dropout):
            raise AssertionError(type(layer))
    return z


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def op_types(path) -> list:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def check_batches(model, path, width, names=("logits",), seed=1):
    """Run the file at every batch size of BATCHES through one session; compare the logits with
    ember's predict (and that with the float64 NumPy pass). Returns the outputs at 4096."""
    sess = session(path)
    for n in BATCHES:
        x = features(n, width, seed=seed + n)
        outs = run(sess, x, list(names))
        ref = model.predict(x)
        assert_close(outs[0], ref, f"batch {n}")
    return x, outs


# ------------------------------------------------------------------------------------------
# every activation, both sides of opset 20


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("act", ACTS)
def test_every_activation_matches_ember(act, opset, tmp_path):
    model = random_mlp([7, 13, 5], activation=act, seed=ACTS.index(act))
    path = to_onnx(model, tmp_path / "m.onnx", opset=opset)
    assert path == tmp_path / "m.onnx" and path.is_file()
    x, (logits,) = check_batches(model, path, 7)
    # ember's own output is the model's function (so the comparison above means something)
    assert_close(model.predict(x), numpy_forward(model.layers, x), "ember vs float64")
    ops = op_types(path)
    assert ops.count("Gemm") == 2
    if act in ("gelu", "gelu_tanh"):
        assert ("Gelu" in ops) == (opset >= 20)
        if opset >= 20:
            gelu = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Gelu")
            approx = {a.name: a.s.decode() for a in gelu.attribute}.get("approximate", "none")
            assert approx == ("none" if act == "gelu" else "tanh")
        elif act == "gelu":
            assert "Erf" in ops
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Gemm":
            assert {a.name: a.i for a in node.attribute}.get("transB") == 1


def test_gemm_weights_are_stored_as_ember_keeps_them(tmp_path):
    model = random_mlp([7, 13, 5], seed=3)
    path = to_onnx(model, tmp_path / "m.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    weights = [a for a in inits.values() if a.ndim == 2]
    assert [w.shape for w in weights] == [(13, 7), (5, 13)]  # (out, in), transB=1
    np.testing.assert_array_equal(weights[0], model.layers[0].weight.data)


def test_leaky_relu_slope_and_layers_that_are_dropped(tmp_path):
    model = nn.Sequential(nn.Linear(9, 11, seed=1), nn.LeakyReLU(0.2), nn.Dropout(0.4),
                          nn.Linear(11, 8, bias=False, seed=2), nn.Identity(), nn.Tanh(),
                          nn.Sequential(nn.Linear(8, 6, seed=3), nn.SiLU()),
                          nn.Linear(6, 3, seed=4))
    model.train()  # export is of the model in eval mode: dropout left out whatever the mode
    path = to_onnx(model, tmp_path / "m.onnx", opset=17)
    ops = op_types(path)
    assert "Dropout" not in ops and ops.count("Gemm") == 4
    leaky = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "LeakyRelu")
    assert leaky.attribute[0].name == "alpha" and leaky.attribute[0].f == pytest.approx(0.2)
    x, _ = check_batches(model, path, 9)
    flat = [*model.layers[:6], *model.layers[6].layers, model.layers[7]]
    assert_close(model.predict(x), numpy_forward(flat, x), "ember vs float64")
    assert model.training  # the model itself is left as it was


def test_batch_axis_is_dynamic(tmp_path):
    model = random_mlp([7, 13, 5], seed=4)
    path = to_onnx(model, tmp_path / "m.onnx", probabilities=True)
    graph = onnx.load(str(path)).graph
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value"), value.name
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [7]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output] == ["logits", "probabilities"]
    sess = session(path)  # one session, batch 1 then 4096 then 1
    for n in (1, 4096, 1):
        x = features(n, 7, seed=n)
        assert run(sess, x, ["logits"])[0].shape == (n, 5)


# ------------------------------------------------------------------------------------------
# classifier, regressor, standardize, RunModel


def test_classifier_probabilities(tmp_path):
    model = random_mlp([7, 13, 5], activation="gelu", seed=5)
    path = to_onnx(model, tmp_path / "c.onnx", probabilities=True)
    sess = session(path)
    for n in BATCHES:
        x = features(n, 7, seed=n, scale=4.0)
        logits, proba = run(sess, x)
        ref = model.predict(x)
        assert_close(logits, ref, f"logits, batch {n}")
        assert_close(proba, softmax64(ref), f"probabilities, batch {n}")
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert (logits.argmax(1) == ref.argmax(1)).all()


def test_regressor(tmp_path):
    model = random_mlp([7, 13, 1], activation="tanh", seed=6)
    path = to_onnx(model, tmp_path / "r.onnx")
    x, (values,) = check_batches(model, path, 7)
    assert values.shape == (4096, 1)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]


def test_standardize_is_prepended(tmp_path):
    model = random_mlp([7, 13, 5], activation="silu", seed=7)
    rng = np.random.default_rng(7)
    mean, std = rng.normal(50, 10, 7), rng.uniform(0.5, 20, 7)
    scale = Standardize(mean, std)
    for given in ((mean, std), (list(mean), tuple(std)), scale):
        path = to_onnx(model, tmp_path / "s.onnx", standardize=given)
        assert op_types(path)[:2] == ["Sub", "Div"]
        sess = session(path)
        for n in BATCHES:
            raw = (features(n, 7, seed=n) * std + mean).astype(np.float32)
            assert_close(run(sess, raw, ["logits"])[0], model.predict(scale.forward(raw)),
                         f"batch {n}")


def _run_model(task, seed=8):
    net = random_mlp([7, 13, 3 if task == "classification" else 2], activation="relu",
                     seed=seed)
    rng = np.random.default_rng(seed)
    scale = Standardize(rng.normal(100, 30, 7), rng.uniform(1, 40, 7))
    if task == "classification":
        return RunModel(net, scale, None, ["cat", "dog", "eel"])
    return RunModel(net, scale, Rescale(rng.uniform(10, 500, 2), rng.normal(300, 50, 2)))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_run_model_includes_its_preprocessing(task, tmp_path):
    model = _run_model(task)
    classify = task == "classification"
    path = to_onnx(model, tmp_path / "run.onnx", probabilities=classify)
    sess = session(path)
    mean, std = model.standardize.mean, model.standardize.std
    for n in BATCHES:
        raw = (features(n, 7, seed=n) * std + mean).astype(np.float32)
        outs = run(sess, raw)
        ref = model.predict(raw)  # RunModel.forward: standardize, network, rescale
        assert_close(outs[0], ref, f"batch {n}")
        ref64 = numpy_forward([model.standardize, *model.layers] +
                              ([model.rescale] if model.rescale is not None else []), raw)
        # (the float32 network's rounding, times the rescaling's scale)
        units = 1.0 if model.rescale is None else float(model.rescale.scale.max())
        np.testing.assert_allclose(ref, ref64, rtol=1e-5, atol=1e-5 * units)
        if classify:
            assert_close(outs[1], softmax64(ref), f"probabilities, batch {n}")
            labels = np.asarray(model.classes)[outs[0].argmax(1)]
            assert (labels == model.predict_labels(raw)).all()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    if classify:
        assert json.loads(meta["classes"]) == ["cat", "dog", "eel"]
    else:
        assert "classes" not in meta and "Cast" in op_types(path)


def test_run_model_refusals(tmp_path):
    with pytest.raises(ValueError, match="probabilities=True needs a classifier.*regression"):
        to_onnx(_run_model("regression"), tmp_path / "r.onnx", probabilities=True)
    with pytest.raises(ValueError, match="has its own standardization"):
        to_onnx(_run_model("classification"), tmp_path / "c.onnx",
                standardize=(np.zeros(7), np.ones(7)))
    assert not list(tmp_path.iterdir())


def test_saved_and_loaded_model_exports_the_same(tmp_path):
    model = random_mlp([7, 13, 5], activation="gelu_tanh", seed=9)
    loaded = ember.load_model(model.save(tmp_path / "saved"))
    path = to_onnx(loaded, tmp_path / "m.onnx", opset=20)
    check_batches(model, path, 7)


@pytest.mark.gpu
def test_model_on_the_gpu(tmp_path):
    if not ember.cuda_available():
        pytest.skip("no usable CUDA device")
    model = random_mlp([7, 13, 5], activation="gelu", seed=10)
    path_cpu = to_onnx(model, tmp_path / "cpu.onnx")
    x = features(37, 7)
    ref = model.predict(x)
    model.to("cuda")
    path = to_onnx(model, tmp_path / "gpu.onnx")
    assert model.device == "cuda"
    assert_close(run(session(path), x, ["logits"])[0], ref, "exported from the GPU")
    assert path.read_bytes() == path_cpu.read_bytes()


# ------------------------------------------------------------------------------------------
# bad input: clear errors, nothing written


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class MyReLU(nn.ReLU):
    def forward(self, x):
        return np.maximum(x, 0.5)


class OwnForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1


def test_unsupported_layers_are_named(tmp_path):
    out = tmp_path / "m.onnx"
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), Doubler(), nn.Linear(5, 2))
    with pytest.raises(TypeError, match=r"layer 2 \(Doubler\)"):
        to_onnx(model, out)
    with pytest.raises(TypeError, match=r"layer 1 \(MyReLU\)"):
        to_onnx(nn.Sequential(nn.Linear(4, 5), MyReLU()), out)
    nested = nn.Sequential(nn.Linear(4, 5), nn.Sequential(nn.Tanh(), Doubler()))
    with pytest.raises(TypeError, match=r"layer 1\.1 \(Doubler\)"):
        to_onnx(nested, out)
    with pytest.raises(TypeError, match="OwnForward: it defines its own forward"):
        to_onnx(OwnForward(nn.Linear(4, 2)), out)
    with pytest.raises(TypeError, match="model must be an ember.nn.Sequential.*got Linear"):
        to_onnx(nn.Linear(4, 2), out)
    with pytest.raises(TypeError, match="got dict"):
        to_onnx({"0.weight": np.zeros((2, 4))}, out)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [12, 22, 9, "17", 17.0, True, None])
def test_bad_opset(opset, tmp_path):
    with pytest.raises(ValueError, match=f"to_onnx: opset must be an integer from {MIN_OPSET} "
                       f"to {MAX_OPSET}, got"):
        to_onnx(random_mlp([4, 3]), tmp_path / "m.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


def test_bad_standardize(tmp_path):
    model, out = random_mlp([7, 13, 5]), tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="standardize has 6 values.*takes 7 input features"):
        to_onnx(model, out, standardize=(np.zeros(6), np.ones(6)))
    with pytest.raises(ValueError, match=r"to_onnx: standardize: .*std\[2\] is 0"):
        to_onnx(model, out, standardize=(np.zeros(7), [1, 1, 0, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="to_onnx: standardize: .*mean has 7 values but std"):
        to_onnx(model, out, standardize=(np.zeros(7), np.ones(5)))
    with pytest.raises(TypeError, match=r"standardize must be a \(mean, std\) pair"):
        to_onnx(model, out, standardize=np.ones(7))
    with pytest.raises(TypeError, match=r"standardize must be a \(mean, std\) pair"):
        to_onnx(model, out, standardize="zscore")
    with pytest.raises(ValueError, match="probabilities must be True or False"):
        to_onnx(model, out, probabilities="yes")
    assert not list(tmp_path.iterdir())


def test_bad_paths(tmp_path):
    model = random_mlp([4, 3])
    with pytest.raises(TypeError, match="to_onnx: path must be a path"):
        to_onnx(model, None)
    with pytest.raises(ValueError, match="to_onnx: path is an empty path"):
        to_onnx(model, "")
    with pytest.raises(FileNotFoundError, match="directory .*missing.* does not exist"):
        to_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        to_onnx(model, tmp_path)
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    to_onnx(random_mlp([4, 3], seed=1), out)
    before = out.read_bytes()
    to_onnx(random_mlp([4, 3], seed=2), out)  # replaced whole
    assert out.read_bytes() != before
    before = out.read_bytes()

    def torn(path, data):
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ember._io, "write_file", torn)
    with pytest.raises(OSError, match="No space left"):
        to_onnx(random_mlp([4, 3], seed=3), out)
    assert out.read_bytes() == before  # the previous file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ImportError, match=r'pip install "ember\[onnx\]"'):
        to_onnx(random_mlp([4, 3]), tmp_path / "m.onnx")


def test_public_names():
    assert ember.export.to_onnx is to_onnx
    assert "export" in ember.__all__


# ------------------------------------------------------------------------------------------
# the command line: ember export RUN_DIR gives ember predict's answers


def write_csv(path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Features far from 0 with unequal scales (standardization matters); a text-labelled
    class (3 classes) and a regression target."""
    d = tmp_path_factory.mktemp("export-data")
    rng = np.random.default_rng(0)
    n = 150
    cls = np.arange(n) % 3
    x = rng.normal(0, 1, (n, 5)) * [1, 10, 100, 0.1, 3] + [50, -20, 1000, 5, 0]
    x[:, 0] += 3 * cls
    x[:, 2] += 150 * (cls == 1)
    y = 300 + 40 * x[:, 0] - 0.2 * x[:, 2] + rng.normal(0, 1, n)
    names = [f"f{i}" for i in range(5)]
    rows = [[f"{v:.6g}" for v in r] for r in x]
    labels = np.array(["red", "green", "blue"])[cls]
    write_csv(d / "cls.csv", names + ["label"], [r + [c] for r, c in zip(rows, labels)])
    write_csv(d / "reg.csv", names + ["price"], [r + [f"{t:.5f}"] for r, t in zip(rows, y)])
    write_csv(d / "x.csv", names, rows)
    return d, np.array([[float(v) for v in r] for r in rows], np.float32)


def _train(tmp_path, csv_path, target, *extra) -> Path:
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--data", str(csv_path), "--target", target, "--epochs", "3",
                     "--hidden", "9,7", "--batch-size", "16", "--out", str(run_dir), "-q",
                     *extra]) == 0
    return run_dir


def _predict(run_dir, data_csv, tmp_path) -> list:
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(run_dir), "--data", str(data_csv), "--out", str(out),
                     "--force"]) == 0
    return read_csv(out)


@pytest.mark.parametrize("activation,opset", [("relu", 17), ("gelu", 20), ("silu", 13)])
def test_cli_export_of_a_classifier_run_answers_as_ember_predict(activation, opset, data,
                                                                 tmp_path, capsys):
    d, x = data
    run_dir = _train(tmp_path, d / "cls.csv", "label", "--activation", activation)
    capsys.readouterr()
    assert cli.main(["export", str(run_dir), "--opset", str(opset)]) == 0
    path = run_dir / "model.onnx"
    assert f"wrote {path}" in capsys.readouterr().out
    preds = _predict(run_dir, d / "x.csv", tmp_path)
    classes = json.loads((run_dir / "config.json").read_text())["data"]["classes"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["classes"]) == classes
    logits, proba = run(session(path), x, ["logits", "probabilities"])
    assert [classes[i] for i in logits.argmax(1)] == [p["prediction"] for p in preds]
    ref = np.array([[float(p[f"prob_{c}"]) for c in classes] for p in preds])
    assert_close(proba, ref, "probabilities vs ember predict")
    # and at every batch size, against the run's model in Python
    model = ember.load_model(run_dir)
    sess = session(path)
    for n in BATCHES:
        rows = x[np.arange(n) % len(x)]
        assert_close(run(sess, rows, ["logits"])[0], model.predict(rows), f"batch {n}")


def test_cli_export_of_a_regression_run_answers_as_ember_predict(data, tmp_path, capsys):
    d, x = data
    run_dir = _train(tmp_path, d / "reg.csv", "price", "--activation", "tanh")
    out = tmp_path / "elsewhere.onnx"
    assert cli.main(["export", str(run_dir), "-o", str(out)]) == 0
    assert not (run_dir / "model.onnx").exists()
    preds = np.array([float(p["prediction"]) for p in _predict(run_dir, d / "x.csv", tmp_path)])
    sess = session(out)
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    values = run(sess, x, ["logits"])[0]
    assert_close(values[:, 0], preds, "values vs ember predict")
    assert np.abs(preds).max() > 100  # in the target's units: the rescaling is in the graph
    model = ember.load_model(run_dir)
    for n in BATCHES:
        rows = x[np.arange(n) % len(x)]
        assert_close(run(sess, rows, ["logits"])[0], model.predict(rows), f"batch {n}")


def test_cli_export_of_a_checkpoint_outside_a_run(tmp_path, capsys):
    x = features(64, 6)
    y = (x[:, 0] > 0).astype(np.int64)
    model = random_mlp([6, 9, 2], seed=11)
    ember.Trainer(model).fit(x, y, epochs=2, checkpoint_dir=tmp_path / "ck", verbose=0)
    assert cli.main(["export", str(tmp_path / "ck")]) == 0
    ckpt = ember.checkpoint.resolve_checkpoint(tmp_path / "ck")
    path = ckpt.with_name(ckpt.name + ".onnx")  # beside the checkpoint directory
    assert f"wrote {path}" in capsys.readouterr().out
    logits, proba = run(session(path), x)  # cross-entropy: a classifier, probabilities too
    assert_close(logits, model.predict(x))
    assert_close(proba, softmax64(model.predict(x)))


def test_cli_export_errors(data, tmp_path, capsys, monkeypatch):
    d, _ = data
    run_dir = _train(tmp_path, d / "cls.csv", "label")
    assert cli.main(["export", str(run_dir)]) == 0
    first = (run_dir / "model.onnx").read_bytes()
    capsys.readouterr()
    cases = [
        (["export", str(run_dir)], 1, "exists; pass --force"),
        (["export", str(tmp_path / "nope")], 1, "not found"),
        (["export", str(d / "cls.csv")], 1, "not a checkpoint"),
        (["export", str(tmp_path)], 1, "not an ember checkpoint"),
        (["export", str(run_dir), "--opset", "12"], 2, "--opset: must be an integer from 13"),
        (["export", str(run_dir), "--opset", "x"], 2, "--opset: must be an integer from 13"),
        (["export", str(run_dir), "-o", str(tmp_path / "no" / "m.onnx")], 1, "does not exist"),
        (["export"], 2, "required"),
    ]
    for argv, status, message in cases:
        assert cli.main(argv) == status, argv
        err = capsys.readouterr().err
        assert err.startswith("ember: error:") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert (run_dir / "model.onnx").read_bytes() == first  # never overwritten without --force
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)  # not installed
        assert cli.main(["export", str(run_dir), "-o", str(tmp_path / "x.onnx")]) == 1
        assert 'pip install "ember[onnx]"' in capsys.readouterr().err
        assert not (tmp_path / "x.onnx").exists()
    assert cli.main(["export", str(run_dir), "--force", "--opset", "21"]) == 0
    assert onnx.load(str(run_dir / "model.onnx")).opset_import[0].version == 21
    assert math.isfinite(float(run(session(run_dir / "model.onnx"), data[1])[0].sum()))
