"""Layers: forward/backward against a float64 NumPy reference and against PyTorch."""
import numpy as np
import pytest

from conftest import check_op
from ember import nn
from ember.losses import MSE, CrossEntropy


def _np_act(name, z):
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(np.float64)
    if name == "tanh":
        t = np.tanh(z)
        return t, 1 - t * t
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s, s * (1 - s)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return z * s, s * (1 + z * (1 - s))
    raise KeyError(name)


def _reference_mlp(model, x, act, grad_out):
    """Float64 forward and backward of a Linear/act stack, written from the formulas."""
    ws = [p.data.astype(np.float64) for n, p in model.named_parameters() if n.endswith("weight")]
    bs = [p.data.astype(np.float64) for n, p in model.named_parameters() if n.endswith("bias")]
    hs, zs = [x.astype(np.float64)], []
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = hs[-1] @ w.T + b
        zs.append(z)
        hs.append(_np_act(act, z)[0] if i < len(ws) - 1 else z)
    g = grad_out.astype(np.float64)
    grads = {}
    for i in range(len(ws) - 1, -1, -1):
        if i < len(ws) - 1:
            g = g * _np_act(act, zs[i])[1]
        grads[i] = (g.T @ hs[i], g.sum(0))
        g = g @ ws[i]
    return hs[-1], grads, g


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky_relu", "silu"])
@pytest.mark.parametrize("sizes,batch", [([5, 7, 3], 1), ([13, 31, 17, 4], 9), ([64, 33, 10], 65)])
def test_mlp_forward_backward_matches_float64(act, sizes, batch):
    rng = np.random.default_rng(7)
    model = nn.MLP(sizes, activation=act, seed=3)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    g = rng.standard_normal((batch, sizes[-1])).astype(np.float32)
    y = model.forward(x)
    ref_y, ref_grads, _ = _reference_mlp(model, x, act, g)
    check_op(y, ref_y, 1e-5, "forward")
    model.backward(g)
    linears = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    for i, lin in enumerate(linears):
        check_op(lin.weight.grad, ref_grads[i][0], 1e-5, f"layer {i} weight grad")
        check_op(lin.bias.grad, ref_grads[i][1], 1e-5, f"layer {i} bias grad")


@pytest.mark.parametrize("slope", [0.2, 0.0, -0.5])
def test_leaky_relu_slopes_and_relu_derivative_from_output(slope):
    # relu and leaky_relu with slope >= 0 evaluate act' at the layer's output (no pre-activation
    # stored); a negative slope flips the output's sign below 0, so it keeps the pre-activation.
    # Both must give the float64 gradients; zeros and exact-zero pre-activations included.
    rng = np.random.default_rng(11)
    batch, sizes = 37, [9, 23, 6]
    model = nn.Sequential(nn.Linear(9, 23, seed=1), nn.LeakyReLU(slope), nn.Linear(23, 6, seed=2))
    model.layers[0].bias.data[:5] = 0.0
    x = rng.standard_normal((batch, 9)).astype(np.float32)
    x[:4] = 0.0  # these rows have z = bias exactly: 0 in the first 5 columns (act'(0) = slope)
    g = rng.standard_normal((batch, 6)).astype(np.float32)
    first_w, first_b = model.layers[0].weight.data, model.layers[0].bias.data
    w1, b1 = first_w.astype(np.float64), first_b.astype(np.float64)
    w2 = model.layers[2].weight.data.astype(np.float64)
    z = x.astype(np.float64) @ w1.T + b1
    h = np.where(z > 0, z, slope * z)
    dz = (g.astype(np.float64) @ w2) * np.where(z > 0, 1.0, slope)
    y = model.forward(x)
    check_op(y, h @ w2.T + model.layers[2].bias.data, 1e-5, "forward")
    first = model.layers[0]
    assert (first._z is model.layers[2]._x) == (slope >= 0)  # the output stands in for z
    model.backward(g)
    check_op(first.weight.grad, dz.T @ x, 1e-5, "weight grad")
    check_op(first.bias.grad, dz.sum(0), 1e-5, "bias grad")
    check_op(model.layers[2].weight.grad, g.T.astype(np.float64) @ h, 1e-5, "output weight grad")


def test_relu_output_kept_apart_when_the_caller_or_a_custom_module_may_change_it():
    # A ReLU at the end of the model, or before a user's module, keeps its pre-activation: the
    # caller (or that module) may modify the output in place before backward.
    class Negate(nn.Module):  # modifies its input in place
        def forward(self, x):
            np.negative(x, out=x)
            return x

        def backward(self, grad_out):
            return -grad_out

    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    g = rng.standard_normal((9, 4)).astype(np.float32)
    for model in (nn.Sequential(nn.Linear(5, 4, seed=1), nn.ReLU()),
                  nn.Sequential(nn.Linear(5, 4, seed=1), nn.ReLU(), Negate()),
                  nn.Sequential(nn.Linear(5, 4, seed=1), nn.ReLU(), nn.Dropout(0.0), Negate())):
        lin = model.layers[0]
        z = x.astype(np.float64) @ lin.weight.data.T.astype(np.float64) + lin.bias.data
        y = model.forward(x)
        assert lin._z is not y
        y -= 100.0  # the caller scribbles on the output
        model.backward(g)
        sign = -1.0 if isinstance(model.layers[-1], Negate) else 1.0
        dz = sign * g.astype(np.float64) * (z > 0)
        check_op(lin.weight.grad, dz.T @ x, 1e-5, "weight grad")


def test_unfused_activation_and_input_gradient():
    """An activation not preceded by Linear runs as its own layer; grads flow to the input."""
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Tanh(), nn.Linear(6, 4, seed=1), nn.ReLU(), nn.Linear(4, 2, seed=2))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    g = rng.standard_normal((5, 2)).astype(np.float32)
    y = model.forward(x)
    gx = model.backward(g)
    # reference: the same network in float64
    w1, b1 = model[1].weight.data.astype(np.float64), model[1].bias.data.astype(np.float64)
    w2, b2 = model[3].weight.data.astype(np.float64), model[3].bias.data.astype(np.float64)
    t = np.tanh(x.astype(np.float64))
    z1 = t @ w1.T + b1
    gz1 = (g @ w2) * (z1 > 0)
    check_op(y, np.maximum(z1, 0) @ w2.T + b2, 1e-5, "forward through the unfused tanh")
    ref_gx = (gz1 @ w1) * (1 - t * t)
    check_op(gx, ref_gx, 1e-5, "input grad through the unfused tanh")
    check_op(model[1].weight.grad, gz1.T @ t, 1e-5, "w1 grad")


def test_first_linear_input_gradient_only_on_request():
    rng = np.random.default_rng(3)
    model = nn.MLP([5, 4, 2], seed=1)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((3, 2)).astype(np.float32)
    model.forward(x)
    assert model.backward(g, need_input_grad=False) is None  # what a fit asks for
    _, _, ref_gx = _reference_mlp(model, x, "relu", g)
    for kw in ({"need_input_grad": True}, {}):  # by default, as every layer's backward does
        model.forward(x)
        check_op(model.backward(g, **kw), ref_gx, 1e-5, "input grad")


def test_eval_mode_returns_fresh_arrays_and_no_dropout():
    model = nn.MLP([8, 16, 3], dropout=0.5, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    a = model.forward(x)
    b = model.forward(x)
    assert a is not b
    np.testing.assert_array_equal(a, b)


def test_dropout_masks_reproducible_and_scaled():
    x = np.ones((64, 32), np.float32)
    d1, d2 = nn.Dropout(0.25, seed=5), nn.Dropout(0.25, seed=5)
    y1, y2 = d1.forward(x), d2.forward(x)
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y1 == 0).mean() - 0.25) < 0.05
    y3 = d1.forward(x)  # the counter advanced: a new mask
    assert not np.array_equal(y1, y3)
    g = d1.backward(np.ones_like(x))
    np.testing.assert_array_equal(g, y3)


def test_state_dict_names_follow_pytorch():
    model = nn.MLP([4, 8, 8, 2], dropout=0.1)
    names = list(model.state_dict())
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
    assert model.state_dict()["0.weight"].shape == (8, 4)
    assert model.num_parameters() == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2


def test_load_state_dict_strict_and_lenient():
    a = nn.MLP([4, 8, 3], seed=1)
    b = nn.MLP([4, 8, 5], seed=2)
    with pytest.raises(ValueError, match=r"2.weight: model \(5, 8\) vs state \(3, 8\)"):
        b.load_state_dict(a.state_dict())
    before = b.state_dict()["2.weight"].copy()
    report = b.load_state_dict(a.state_dict(), strict=False)
    assert [m[0] for m in report["mismatched"]] == ["2.weight", "2.bias"]
    np.testing.assert_array_equal(b.state_dict()["0.weight"], a.state_dict()["0.weight"])
    np.testing.assert_array_equal(b.state_dict()["2.weight"], before)
    with pytest.raises(ValueError, match="missing keys"):
        b.load_state_dict({"0.weight": a.state_dict()["0.weight"]})
    bad = dict(a.state_dict())
    bad["0.weight"] = np.full((8, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        a.load_state_dict(bad)


def test_init_scales():
    he = nn.Linear(1000, 500, init="he", seed=0).weight.data
    assert abs(he.std() - np.sqrt(2 / 1000)) < 0.05 * np.sqrt(2 / 1000)
    xa = nn.Linear(1000, 500, init="xavier", seed=0).weight.data
    assert abs(xa.std() - np.sqrt(2 / 1500)) < 0.05 * np.sqrt(2 / 1500)
    np.testing.assert_array_equal(nn.Linear(3, 4, seed=9).weight.data,
                                  nn.Linear(3, 4, seed=9).weight.data)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(0, 3)


def test_summary_and_config_roundtrip():
    model = nn.MLP([64, 32, 10], activation="gelu", dropout=0.2)
    model[0].freeze()
    s = model.summary()
    assert "parameters: 2,410 (330 trainable, 2,080 frozen)" in s
    clone = nn.from_config(model.config())
    assert [type(layer).__name__ for layer in clone.layers] == ["Linear", "GELU", "Dropout", "Linear"]
    clone.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval().forward(x), model.eval().forward(x))


def test_losses_forward_backward():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 7)
    ce = CrossEntropy()
    loss = ce.forward(logits, labels)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert abs(loss - (-np.log(p[np.arange(7), labels]).mean())) < 1e-6
    onehot = np.eye(5)[labels]
    check_op(ce.backward(), (p - onehot) / 7, 1e-5, "ce grad")
    mse = MSE()
    pred = rng.standard_normal((6, 1)).astype(np.float32)
    target = rng.standard_normal(6).astype(np.float32)
    loss = mse.forward(pred, target)
    d = pred[:, 0].astype(np.float64) - target
    assert abs(loss - (d ** 2).mean()) < 1e-6
    check_op(mse.backward()[:, 0], 2 * d / 6, 1e-5, "mse grad")


def test_matches_pytorch_sequential():
    torch = pytest.importorskip("torch")
    model = nn.MLP([10, 16, 16, 3], activation="relu", seed=4)
    tm = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                             torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64))
                        for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 10)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    out = model.forward(x)
    ce = CrossEntropy()
    ce.forward(out, y)
    model.backward(ce.backward())
    tx = torch.from_numpy(x.astype(np.float64))
    tout = tm(tx)
    tloss = torch.nn.functional.cross_entropy(tout, torch.from_numpy(y))
    tloss.backward()
    check_op(out, tout.detach().numpy(), 1e-5, "forward vs torch")
    for (name, p), (tname, tp) in zip(model.named_parameters(), tm.named_parameters()):
        assert name == tname
        check_op(p.grad, tp.grad.numpy(), 1e-5, f"{name} grad vs torch")
    # and back: PyTorch weights load into ember
    back = nn.MLP([10, 16, 16, 3], seed=99)
    back.load_state_dict(tm.float().state_dict())
    np.testing.assert_array_equal(back.state_dict()["2.weight"], model.state_dict()["2.weight"])


# -- ember._cpu.MlpPlan (Sequential's training fast path): its checks -----------------------------
def _plan_args(batch=6, sizes=(5, 4, 3), act="tanh"):
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    L = len(sizes) - 1
    ws = [f(o, i) for i, o in zip(sizes[:-1], sizes[1:])]
    return dict(
        batch=batch, in_features=sizes[0], weights=ws, biases=[f(o) for o in sizes[1:]],
        activations=[act] * (L - 1) + ["identity"], slopes=[0.01] * L,
        outputs=[f(batch, o) for o in sizes[1:]],
        preacts=[f(batch, o) for o in sizes[1:-1]] + [None],
        grad_weights=[np.zeros_like(w) for w in ws], grad_biases=[f(o) for o in sizes[1:]],
        grad_inputs=[None] + [f(batch, i) for i in sizes[1:-1]],
        workspaces=[f(batch, o) for o in sizes[1:-1]] + [None],
        loss_grad=f(batch, sizes[-1]), class_weight=None, label_smoothing=0.0,
        reduction="mean", count_correct=True)


def _replace(args, key, i, value):
    args = dict(args)
    args[key] = list(args[key])
    args[key][i] = value
    return args


@pytest.mark.parametrize("change, exc, msg", [
    (lambda a: dict(a, weights=[]), ValueError, "at least one layer"),
    (lambda a: dict(a, slopes=[0.01]), ValueError, "one entry per layer"),
    (lambda a: _replace(a, "weights", 1, np.zeros((3, 5), np.float32)), ValueError,
     r"weights\[1\] must have shape \(3, 4\)"),
    (lambda a: _replace(a, "weights", 0, np.zeros((4, 5))), TypeError,
     r"weights\[0\] must have dtype float32"),
    (lambda a: _replace(a, "preacts", 0, None), ValueError, "preacts.* is required"),
    (lambda a: _replace(a, "grad_inputs", 0, np.zeros((6, 5), np.float32)), ValueError,
     r"grad_inputs\[0\] must be None"),
    (lambda a: _replace(a, "grad_biases", 1, None), ValueError, "exactly when biases"),
    (lambda a: _replace(a, "outputs", 1, a["loss_grad"]), ValueError, "must not share memory"),
    (lambda a: dict(a, activations=["swish", "identity"]), ValueError, "activation"),
    (lambda a: dict(a, label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda a: dict(a, loss="hinge"), ValueError, "loss must be 'cross_entropy' or 'mse'"),
    (lambda a: dict(a, loss="mse"), ValueError, "takes no class_weight, label_smoothing or count"),
])
def test_mlp_plan_rejects_bad_arrays(change, exc, msg):
    from ember import _cpu
    with pytest.raises(exc, match=msg):
        _cpu.MlpPlan(**change(_plan_args()))


def test_mlp_plan_step_checks_its_batch():
    from ember import _cpu
    args = _plan_args()
    plan = _cpu.MlpPlan(**args)
    x, y = np.ones((6, 5), np.float32), np.array([0, 1, 2, 0, 1, 2])
    loss, correct = plan.step(x, y)
    assert loss == pytest.approx(np.log(3)) and 0 <= correct <= 6  # zero weights: uniform
    with pytest.raises(ValueError, match=r"MlpPlan.step: x must have shape \(6, 5\)"):
        plan.step(np.ones((5, 5), np.float32), y[:5])
    with pytest.raises(ValueError, match=r"labels\[2\] = 3 is out of range \[0, 3\)"):
        plan.step(x, np.array([0, 1, 3, 0, 1, 2]))
    with pytest.raises(TypeError, match="labels must have dtype int64"):
        plan.step(x, y.astype(np.float32))
    buf = np.zeros(100, np.float32)
    shared = _cpu.MlpPlan(**_replace(args, "outputs", 0, buf[:24].reshape(6, 4)))
    with pytest.raises(ValueError, match="must not share memory with x"):
        shared.step(buf[:30].reshape(6, 5), y)


def test_mlp_plan_mse_checks_its_targets():
    from ember import _cpu
    plan = _cpu.MlpPlan(**dict(_plan_args(), loss="mse", count_correct=False))
    x = np.ones((6, 5), np.float32)
    loss, correct = plan.step(x, np.full((6, 3), 2.0, np.float32))
    assert loss == pytest.approx(4.0) and correct == 0  # zero weights: outputs 0, error 2
    with pytest.raises(TypeError, match="MlpPlan.step: targets must have dtype float32"):
        plan.step(x, np.zeros(6, np.int64))
    with pytest.raises(ValueError, match=r"targets must have shape \(6, 3\)"):
        plan.step(x, np.zeros((6, 2), np.float32))


# -- bad input: clear errors naming the argument, and nothing half-done ---------------------------
def _snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_checks_every_array_before_copying_any(strict):
    model = nn.MLP([4, 8, 3], seed=0)
    before = _snapshot(model)
    good = {k: v + 1 for k, v in before.items()}
    nan = dict(good)
    nan["2.weight"] = good["2.weight"].copy()
    nan["2.weight"][0, 0] = np.nan  # the last layer is bad: layer 0 must not be loaded either
    with pytest.raises(ValueError, match=r"2.weight holds NaN or Inf \(as float32\); nothing "
                                         "was loaded"):
        model.load_state_dict(nan, strict=strict)
    _assert_unchanged(model, before)
    huge = dict(good, **{"2.bias": np.array([1.0, 1e300, 1.0])})  # inf once float32
    with pytest.raises(ValueError, match=r"2.bias holds NaN or Inf \(as float32\)"):
        model.load_state_dict(huge, strict=strict)
    _assert_unchanged(model, before)
    text = dict(good, **{"2.bias": np.array(["a"] * 3, object)})
    with pytest.raises(TypeError, match="2.bias must hold real numbers, got dtype object"):
        model.load_state_dict(text, strict=strict)
    _assert_unchanged(model, before)
    strings = dict(good, **{"0.bias": np.array(["1"] * 8)})  # not silently parsed as numbers
    with pytest.raises(TypeError, match=r"0.bias must hold real numbers, got dtype <U1"):
        model.load_state_dict(strings, strict=strict)
    with pytest.raises(TypeError, match="0.weight must be an array of numbers"):
        model.load_state_dict(dict(good, **{"0.weight": [[1.0] * 4] * 7 + [[1.0]]}),
                              strict=strict)
    _assert_unchanged(model, before)
    # lists and float64 arrays of the right shape are converted
    model.load_state_dict({k: v.astype(np.float64).tolist() if k == "0.bias" else
                           v.astype(np.float64) for k, v in good.items()}, strict=strict)
    for k, v in good.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
        assert model.state_dict()[k].dtype == np.float32


def test_load_state_dict_needs_a_mapping():
    model = nn.MLP([4, 8, 3])
    with pytest.raises(TypeError, match="state_dict must be a mapping of name -> array, got list"):
        model.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="got NoneType"):
        model.load_state_dict(None)


@pytest.mark.parametrize("dropout", [-0.5, float("nan"), 1.0, "0.5", None, True])
def test_mlp_rejects_bad_dropout(dropout):
    with pytest.raises(ValueError, match=r"MLP: dropout must be a number in \[0, 1\), got"):
        nn.MLP([4, 8, 3], dropout=dropout)


def test_dropout_accepts_numpy_numbers():
    d = nn.Dropout(np.float32(0.5), seed=np.int64(3))
    assert d.p == 0.5 and type(d.p) is float and d.seed == 3
    assert nn.Dropout(np.int64(0)).p == 0.0
    m = nn.MLP([4, 8, 3], dropout=np.float64(0.25))
    assert [type(layer).__name__ for layer in m.layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert m.layers[2].p == 0.25
    for p in (True, "0.5", float("nan"), -0.1, 1.0):
        with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\), got"):
            nn.Dropout(p)
    for seed in (-1, 2 ** 64, 1.5, "1"):
        with pytest.raises(ValueError, match=r"Dropout: seed must be an integer in \[0, 2\*\*64\)"):
            nn.Dropout(0.5, seed=seed)


def test_predict_checks_x_and_batch_size():
    rng = np.random.default_rng(0)
    x = rng.random((40, 4), dtype=np.float32)
    model = nn.MLP([4, 8, 3], dropout=0.5, seed=0)
    full = model.eval().forward(x)
    model.train()
    np.testing.assert_array_equal(model.predict(x, batch_size=7), full)  # batched = one pass
    np.testing.assert_array_equal(model.predict(x, batch_size=np.int64(40)), full)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match=r"predict: x is empty \(0 samples\)"):
        model.predict(x[:0])
    for bs in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="predict: batch_size must be a positive integer"):
            model.predict(x, batch_size=bs)
    with pytest.raises(TypeError, match="predict: x must be a NumPy or CuPy array, got list"):
        model.predict(x.tolist())


def test_layer_errors_name_the_layer_not_the_kernel():
    model = nn.MLP([4, 8, 3], seed=0)
    for m in (model, model.eval()):  # training mode (buffers) and eval mode
        with pytest.raises(ValueError, match=r"^Linear \(layer 0\): x has 5 features, "
                                             r"expected 4$"):
            m.forward(np.ones((5, 5), np.float32))
        with pytest.raises(TypeError, match=r"^Linear \(layer 0\): x must be float32, got "
                                            r"float64$"):
            m.forward(np.ones((5, 4)))
        with pytest.raises(ValueError, match=r"Linear \(layer 0\): x must be 2-D \(batch, 4\)"):
            m.forward(np.ones(4, np.float32))
    # predict converts host data, as Trainer.predict does; forward takes float32 only
    np.testing.assert_array_equal(model.predict(np.ones((5, 4))),
                                  model.predict(np.ones((5, 4), np.float32)))
    with pytest.raises(ValueError, match=r"^Linear: x has 3 features, expected 4$"):
        nn.Linear(4, 2).forward(np.ones((2, 3), np.float32))
    # backward: grad_out must match the layer's output
    model.train()
    model.forward(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear \(layer 2\): grad_out has 4 columns, "
                                         r"expected 3"):
        model.backward(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear \(layer 2\): grad_out has 6 rows but the "
                                         r"forward pass had 5"):
        model.backward(np.ones((6, 3), np.float32))
    with pytest.raises(TypeError, match=r"Linear \(layer 2\): grad_out must be float32"):
        model.backward(np.ones((5, 3)))
    model.backward(np.ones((5, 3), np.float32))  # still usable


def test_sequential_checks_that_linear_widths_fit():
    with pytest.raises(ValueError, match=r"Sequential: layer 2 \(Linear\) expects 5 inputs but "
                                         r"layer 0 gives 3"):
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"layer 3 \(Linear\) expects 5 inputs but layer 0 "
                                         r"gives 3"):
        nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Dropout(0.1), nn.Linear(5, 2))

    class Widen(nn.Module):  # a user's module may change the width: not checked past it
        def forward(self, x):
            return np.concatenate([x, x], axis=1)

    model = nn.Sequential(nn.Linear(4, 3), Widen(), nn.Linear(6, 2))
    assert model.forward(np.ones((2, 4), np.float32)).shape == (2, 2)
    # replace may leave the widths apart for a moment (to change a hidden width in two steps);
    # training then names the layers, not MlpPlan's internals
    from ember import Trainer
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4), dtype=np.float32), rng.integers(0, 3, 40)
    mlp = nn.MLP([4, 8, 3], seed=0).replace(0, nn.Linear(4, 16))
    with pytest.raises(ValueError, match=r"Sequential: layer 2 \(Linear\) expects 8 inputs but "
                                         r"layer 0 gives 16"):
        Trainer(mlp, device="cpu").fit(x, y, epochs=1, batch_size=8, verbose=0)
    mlp.replace(2, nn.Linear(16, 3))
    Trainer(mlp, device="cpu").fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_linear_and_mlp_check_seed_gain_and_rng():
    for seed in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match="Linear: seed must be an integer >= 0"):
            nn.Linear(4, 3, seed=seed)
        with pytest.raises(ValueError, match="MLP: seed must be an integer >= 0"):
            nn.MLP([4, 8, 3], seed=seed)
    for gain in (-1, 0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="Linear: gain must be a finite number > 0"):
            nn.Linear(4, 3, gain=gain)
    with pytest.raises(TypeError, match="Linear: rng must be a numpy.random.Generator"):
        nn.Linear(4, 3, rng=0)
    np.testing.assert_array_equal(nn.Linear(4, 3, seed=np.int64(5), gain=np.float32(2)).weight.data,
                                  nn.Linear(4, 3, seed=5, gain=2.0).weight.data)
    # a huge MLP seed still gives valid dropout seeds
    big = nn.MLP([4, 8, 8, 3], dropout=0.5, seed=2 ** 70)
    assert all(0 <= d.seed < 2 ** 64 for d in big.layers if isinstance(d, nn.Dropout))
    with pytest.raises(ValueError, match="MLP: sizes must be positive integers"):
        nn.MLP([4, 0, 3])
    with pytest.raises(TypeError, match="MLP: sizes must be a list of layer sizes, got int"):
        nn.MLP(4)


def test_leaky_relu_checks_negative_slope():
    for slope in ("x", None, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="LeakyReLU: negative_slope must be a finite number"):
            nn.LeakyReLU(slope)
    assert nn.LeakyReLU(np.float32(0.25)).negative_slope == 0.25


@pytest.mark.parametrize("config, message", [
    ({"type": "Linear"}, "a Linear config needs the key 'in_features'"),
    ({"type": "Linear", "in_features": 4}, "a Linear config needs the key 'out_features'"),
    ({"type": "Dropout"}, "a Dropout config needs the key 'p'"),
    ({"type": "Sequential", "layers": 3}, "a Sequential config's 'layers' must be a list"),
    ({"type": ["Linear"]}, "'type' must be a layer name"),
    ([1, 2], "expected a dict with a 'type' key"),
])
def test_from_config_names_what_is_missing(config, message):
    with pytest.raises(ValueError, match=f"from_config: {message}"):
        nn.from_config(config)


def test_replace_checks_the_index():
    model = nn.MLP([4, 8, 3], seed=0)
    before = list(model.layers)
    with pytest.raises(IndexError, match=r"replace: index 10 is out of range for a Sequential of "
                                         r"3 layers \(valid: -3 to 2\)"):
        model.replace(10, nn.Linear(8, 3))
    with pytest.raises(IndexError, match="index -4 is out of range"):
        model.replace(-4, nn.Linear(8, 3))
    with pytest.raises(TypeError, match="replace: index must be an integer, got str"):
        model.replace("2", nn.Linear(8, 3))
    assert model.layers == before
    new = nn.Linear(8, 5)
    assert model.replace(-1, new).layers[2] is new
    assert model.forward(np.ones((2, 4), np.float32)).shape == (2, 5)


# -- results stay valid: forward (and backward's input gradient) return new arrays ----------

class _PassThrough(nn.Module):  # a user's module that hands its input on unchanged
    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


@pytest.mark.parametrize("make", [
    lambda: nn.MLP([5, 8, 3], seed=0),                                       # fused step path
    lambda: nn.MLP([5, 8, 8, 3], dropout=0.3, seed=0),
    lambda: nn.Sequential(nn.Linear(5, 8, seed=1), nn.ReLU()),               # ends in ReLU
    lambda: nn.Sequential(nn.Linear(5, 8, seed=1), nn.Tanh(), nn.Dropout(0.0)),
    lambda: nn.Sequential(nn.Linear(5, 8, seed=1), nn.Identity()),
    lambda: nn.Sequential(nn.Linear(5, 8, seed=1), nn.ReLU(), _PassThrough()),
    lambda: nn.Sequential(nn.Dropout(0.0), nn.Linear(5, 8, seed=1), nn.ReLU(),
                          nn.Linear(8, 3, seed=2)),
    lambda: nn.Sequential(_PassThrough(), nn.Linear(5, 3, seed=1)),
])
def test_forward_results_are_not_overwritten_by_the_next_forward(make):
    # y1 = model.forward(a); y2 = model.forward(b) used to leave y1 holding b's outputs.
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((6, 5)).astype(np.float32) for _ in range(2))
    model = make()
    y1 = model.forward(a)
    ref1 = y1.copy()
    g = rng.standard_normal(y1.shape).astype(np.float32)
    gx1 = model.backward(g, need_input_grad=True)
    ref_gx1 = gx1.copy()
    y2 = model.forward(b)
    gx2 = model.backward(g * 2, need_input_grad=True)
    np.testing.assert_array_equal(y1, ref1)
    np.testing.assert_array_equal(gx1, ref_gx1)
    assert not np.array_equal(y1, y2) and not np.array_equal(gx1, gx2)
    # and y2 is right: the same bits as eval mode (for the models without active dropout)
    if not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.layers):
        np.testing.assert_array_equal(model.eval().forward(b), y2)


def test_trainer_buffers_give_the_same_bits_as_new_arrays():
    # Trainer.fit lets a Sequential reuse its output buffers (one forward a step); the values
    # are the same bits either way.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    g = rng.standard_normal((7, 3)).astype(np.float32)
    outs = []
    for reuse in (False, True):
        model = nn.Sequential(nn.Linear(5, 6, seed=1), nn.Tanh(), nn.Linear(6, 3, seed=2))
        model._reuse_buffers = reuse
        y = model.forward(x)
        gx = model.backward(g, need_input_grad=True)
        outs.append((y.copy(), gx.copy(), model[0].weight.grad.copy()))
        y_again = model.forward(x)
        assert (y_again is y) == reuse
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # float64 reference for the forward
    w1, b1 = model[0].weight.data.astype(np.float64), model[0].bias.data.astype(np.float64)
    w2, b2 = model[2].weight.data.astype(np.float64), model[2].bias.data.astype(np.float64)
    check_op(outs[0][0], np.tanh(x @ w1.T + b1) @ w2.T + b2, 1e-5, "forward")


def test_pickled_sequential_keeps_working(tmp_path):
    import pickle
    model = nn.MLP([4, 5, 2], seed=0)
    state = model.__getstate__()
    state.pop("_escapes")  # as pickled by an ember before this one
    clone = nn.MLP.__new__(nn.MLP)
    clone.__setstate__(pickle.loads(pickle.dumps(state)))
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(clone.forward(x), model.forward(x))


def test_relu_output_ending_the_model_through_an_identity_is_kept_apart():
    # Linear, ReLU, Identity: the output comes out through the Identity, and the caller may
    # change it; the ReLU's derivative must not be read off it (it was: wrong weight gradients)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    g = rng.standard_normal((9, 4)).astype(np.float32)
    model = nn.Sequential(nn.Linear(5, 4, seed=1), nn.ReLU(), nn.Identity())
    lin = model.layers[0]
    z = x.astype(np.float64) @ lin.weight.data.T.astype(np.float64) + lin.bias.data
    y = model.forward(x)
    y -= 100.0
    model.backward(g)
    check_op(lin.weight.grad, (g * (z > 0)).T @ x, 1e-5, "weight grad")


def test_parameters_pickled_without_the_zero_mark_load():
    import pickle
    p = nn.Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 2.0, np.float32)
    state = p.__reduce_ex__(2)
    cls_args, st = state[1], state[2]
    st = (st[0], {k: v for k, v in st[1].items() if k != "_zero"})  # an older ember's pickle
    q = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(q.grad, 2.0)
    r = nn.Parameter.__new__(nn.Parameter)
    r.__setstate__(st)
    np.testing.assert_array_equal(r.grad, 2.0)
    assert r.data.shape == (3,)


def test_a_sequential_inside_a_custom_module_chains_its_backward():
    """Sequential.backward returned None by default (no input gradient), so a custom module
    holding a Sequential and chaining backward as layers do crashed in the next layer
    ("grad_out must be a numpy.ndarray ..., got NoneType")."""
    from ember import Trainer

    class Net(nn.Module):
        def __init__(self):
            self.drop = nn.Dropout(0.0)
            self.body = nn.Sequential(nn.Linear(5, 8, seed=1), nn.ReLU())
            self.head = nn.Linear(8, 3, seed=2)

        def forward(self, x):
            return self.head(self.body(self.drop(x)))

        def backward(self, g):
            return self.drop.backward(self.body.backward(self.head.backward(g)))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    net = Net()
    ref = nn.Sequential(nn.Linear(5, 8, seed=1), nn.ReLU(), nn.Linear(8, 3, seed=2))
    Trainer(net, optimizer="sgd", lr=0.1).fit(x, y, epochs=2, batch_size=8, verbose=0)
    Trainer(ref, optimizer="sgd", lr=0.1).fit(x, y, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_allclose(net.body.layers[0].weight.data, ref.layers[0].weight.data,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.head.weight.data, ref.layers[2].weight.data, rtol=1e-6,
                               atol=1e-7)
