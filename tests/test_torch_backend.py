"""ember.torch: ember's kernels behind torch.nn / torch.optim, checked against torch itself."""
import copy
import io
import subprocess
import sys

import pytest
from conftest import subprocess_env

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import ember.torch as et  # noqa: E402

ACTS = {"identity": lambda z: z, "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh,
        "sigmoid": torch.sigmoid, "silu": F.silu,
        "leaky_relu": lambda z: F.leaky_relu(z, 0.2),
        "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def mlp(seed=0, d=(20, 64, 64, 5)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d[0], d[1]), nn.ReLU(), nn.Linear(d[1], d[2]), nn.GELU(),
                         nn.Linear(d[2], d[3]))


def test_import_ember_does_not_import_torch():
    code = "import sys, ember; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env())


@pytest.mark.parametrize("act", sorted(ACTS))
def test_linear_matches_float64_autograd(act):
    torch.manual_seed(1)
    slope = 0.2 if act == "leaky_relu" else 0.01
    lin = et.Linear(13, 7, activation=act, negative_slope=slope)
    x = torch.randn(9, 13, requires_grad=True)
    y = lin(x)
    g = torch.randn_like(y)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_()
    y64 = ACTS[act](F.linear(x64, w64, b64))
    y64.backward(g.double())
    assert rel_err(y, y64) < 1e-5
    for mine, ref in ((x.grad, x64.grad), (lin.weight.grad, w64.grad), (lin.bias.grad, b64.grad)):
        assert rel_err(mine, ref) < 1e-5


def test_linear_no_bias_and_batch_dims():
    torch.manual_seed(2)
    lin = et.Linear(6, 4, bias=False, activation="tanh")
    assert lin.bias is None
    x = torch.randn(2, 3, 6)
    assert lin(x).shape == (2, 3, 4)
    assert rel_err(lin(x), torch.tanh(F.linear(x, lin.weight))) < 1e-6
    assert lin(torch.randn(0, 6)).shape == (0, 4)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing,weighted", [(0.0, False), (0.1, True)])
def test_cross_entropy_matches_float64_autograd(reduction, smoothing, weighted):
    torch.manual_seed(3)
    logits = torch.randn(17, 6, requires_grad=True)
    target = torch.randint(0, 6, (17,))
    weight = torch.rand(6) + 0.5 if weighted else None
    loss = et.cross_entropy(logits, target, weight, label_smoothing=smoothing,
                            reduction=reduction)
    l64 = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(l64, target, None if weight is None else weight.double(),
                          reduction=reduction, label_smoothing=smoothing)
    assert rel_err(loss, ref) < 1e-5
    g = torch.rand_like(ref) + 0.5  # an upstream gradient other than 1
    (loss * g.float()).sum().backward()
    (ref * g).sum().backward()
    assert rel_err(logits.grad, l64.grad) < 1e-5


def test_no_grad_and_frozen_parameters():
    lin = et.Linear(5, 3, activation="sigmoid")
    x = torch.randn(4, 5)
    with torch.no_grad():
        y = lin(x)
    assert not y.requires_grad
    assert rel_err(y, torch.sigmoid(F.linear(x, lin.weight, lin.bias))) < 1e-6
    lin.weight.requires_grad_(False)
    xr = x.clone().requires_grad_()
    lin(xr).sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is not None and xr.grad is not None
    lin.bias.requires_grad_(False)
    out = lin(x)  # nothing needs a gradient
    assert not out.requires_grad


def test_gradients_accumulate():
    lin = et.Linear(5, 3, activation="relu")
    x1, x2 = torch.randn(4, 5), torch.randn(6, 5)
    lin(x1).sum().backward()
    g1 = lin.weight.grad.clone()
    lin(x2).sum().backward()
    ref = copy.deepcopy(lin)
    ref.weight.grad = None
    F.relu(F.linear(x2, ref.weight, ref.bias)).sum().backward()
    assert rel_err(lin.weight.grad, g1 + ref.weight.grad) < 1e-6


@pytest.mark.parametrize("make,width", [(lambda: et.Linear(5, 3, activation="gelu"), 5),
                                        (lambda: et.convert(mlp()), 20)],
                         ids=["Linear", "converted Sequential"])
def test_in_place_change_of_a_saved_input_is_caught(make, width):
    module = make()
    x = torch.randn(4, width, requires_grad=True)
    h = x * 2
    y = module(h)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_float64_and_other_devices_are_refused_clearly():
    lin = et.Linear(5, 3)
    with pytest.raises(TypeError, match="input must be float32, got torch.float64"):
        lin(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="input is on meta"):
        lin.to("meta")(torch.randn(2, 5, device="meta"))
    with pytest.raises(ValueError, match="target is on meta but input is on cpu"):
        et.cross_entropy(torch.randn(2, 3), torch.zeros(2, dtype=torch.int64, device="meta"))


def _train(model, opt, loss_fn, x, y, steps=50):
    for i in range(steps):
        sl = slice((i * 32) % 256, (i * 32) % 256 + 32)
        opt.zero_grad()
        loss_fn(model(x[sl]), y[sl]).backward()
        opt.step()
    return model


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "SGD"])
def test_training_equals_torch(opt_name):
    """20-64-64-5 MLP, 50 steps: ember's layers, loss and optimizer vs torch, vs float64."""
    torch.manual_seed(4)
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    kw = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=1e-4),
          "Adam": dict(lr=1e-3, weight_decay=1e-4), "AdamW": dict(lr=1e-3)}[opt_name]
    ref = mlp()
    ref64 = copy.deepcopy(ref).double()
    mine = et.convert(copy.deepcopy(ref))
    _train(ref, getattr(torch.optim, opt_name)(ref.parameters(), **kw), F.cross_entropy, x, y)
    _train(ref64, getattr(torch.optim, opt_name)(ref64.parameters(), **kw), F.cross_entropy,
           x.double(), y)
    _train(mine, getattr(et.optim, opt_name)(mine.parameters(), **kw), et.cross_entropy, x, y)
    for (name, p), q, q64 in zip(mine.named_parameters(), ref.parameters(), ref64.parameters()):
        assert rel_err(p, q) < 1e-5, name
        # as close to the float64 run as torch's own float32 run is (within a small margin)
        assert rel_err(p, q64) < 2 * rel_err(q, q64) + 1e-6, name


def test_convert_keeps_names_and_state_dicts_load_both_ways():
    ref = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.3), nn.Linear(8, 8), nn.Tanh(),
                        nn.Linear(8, 8), nn.GELU(approximate="tanh"), nn.Dropout(0.0),
                        nn.Linear(8, 2))
    keys = list(ref.state_dict())
    model = et.convert(copy.deepcopy(ref))
    assert list(model.state_dict()) == keys
    kinds = [(type(m).__name__, getattr(m, "activation", None)) for m in model]
    assert kinds == [("Linear", "leaky_relu"), ("Identity", None), ("Linear", "tanh"),
                     ("Identity", None), ("Linear", "gelu_tanh"), ("Identity", None),
                     ("Dropout", None), ("Linear", "identity")]
    assert all(isinstance(m, et.Linear) for m in model if isinstance(m, nn.Linear))
    assert model[0].negative_slope == 0.3
    x = torch.randn(3, 4)
    assert rel_err(model(x), ref(x)) < 1e-6
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = mlp_like = nn.Sequential(*[copy.deepcopy(m) for m in ref])
    for p in mlp_like.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(torch.load(buf))
    assert rel_err(fresh(x), ref(x)) < 1e-6
    other = et.convert(nn.Sequential(*[copy.deepcopy(m) for m in fresh]))
    for p in other.parameters():
        nn.init.zeros_(p)
    other.load_state_dict(ref.state_dict())
    assert rel_err(other(x), ref(x)) < 1e-6


def test_convert_keeps_the_parameters_an_optimizer_holds():
    model = mlp()
    params = list(model.parameters())
    et.convert(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]


@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                     ("AdamW", dict(lr=1e-2)),
                                     ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))])
def test_optimizer_state_dicts_load_both_ways(name, kw):
    torch.manual_seed(5)
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    a, b = mlp(), mlp()
    opt_t = getattr(torch.optim, name)(a.parameters(), **kw)
    opt_e = getattr(et.optim, name)(b.parameters(), **kw)
    _train(a, opt_t, F.cross_entropy, x, y, steps=5)
    _train(b, opt_e, F.cross_entropy, x, y, steps=5)
    keys_t = {k for s in opt_t.state_dict()["state"].values() for k in s}
    keys_e = {k for s in opt_e.state_dict()["state"].values() for k in s}
    assert keys_t == keys_e
    # torch -> ember: continuing in ember equals continuing in torch
    a2 = copy.deepcopy(a)
    cont_e = getattr(et.optim, name)(a2.parameters(), **kw)
    cont_e.load_state_dict(copy.deepcopy(opt_t.state_dict()))  # (torch shares tensors)
    _train(a2, cont_e, F.cross_entropy, x, y, steps=5)
    _train(a, opt_t, F.cross_entropy, x, y, steps=5)
    for p, q in zip(a2.parameters(), a.parameters()):
        assert rel_err(p, q) < 1e-5
    # ember -> torch (through torch.save / torch.load)
    buf = io.BytesIO()
    torch.save(opt_e.state_dict(), buf)
    buf.seek(0)
    b2 = copy.deepcopy(b)
    cont_t = getattr(torch.optim, name)(b2.parameters(), **kw)
    cont_t.load_state_dict(torch.load(buf))
    _train(b2, cont_t, F.cross_entropy, x, y, steps=5)
    _train(b, opt_e, F.cross_entropy, x, y, steps=5)
    for p, q in zip(b2.parameters(), b.parameters()):
        assert rel_err(p, q) < 1e-5


def test_optimizer_skips_frozen_and_gradless_parameters():
    model = et.convert(mlp())
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    opt = et.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    et.cross_entropy(model(x), y).backward()
    opt.step()
    assert torch.equal(model[0].weight, before)
    assert model[0].weight not in opt.state and len(opt.state) == 5
    assert opt.last_grad_norm > 0 and not opt.last_skipped
    assert opt.step(lambda: 3.0) == 3.0


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("shape", [(7, 20), (1, 20), (2, 3, 20)])
def test_converted_sequential_is_one_autograd_node_with_the_layers_bits(shape):
    """convert() makes a Linear stack's forward one autograd node (MlpFunction): the same
    kernels as layer by layer (nn.Sequential.forward over the converted layers), so the same
    output and gradient bits, and torch's own to float32 rounding."""
    torch.manual_seed(5)
    ref = mlp()
    model = et.convert(copy.deepcopy(ref))
    assert type(model) is et.Sequential and isinstance(model, nn.Sequential)
    x = torch.randn(*shape)
    y = torch.randint(0, 5, shape[:-1])
    node = model(x).grad_fn
    if len(shape) == 3:  # (the output reshaped back to the input's batch dimensions)
        node = node.next_functions[0][0]
    assert type(node).__name__ == "MlpFunctionBackward"
    out, grads = _grads(model, x, y)
    layered = lambda inp: nn.Sequential.forward(model, inp)  # noqa: E731
    model.zero_grad(set_to_none=True)
    out2 = layered(x)
    F.cross_entropy(out2.reshape(-1, 5), y.reshape(-1)).backward()
    assert torch.equal(out, out2.detach().reshape(out.shape))
    for g, p in zip(grads, model.parameters()):
        assert torch.equal(g, p.grad)
    out_ref, grads_ref = _grads(ref, x, y)
    assert rel_err(out, out_ref) < 1e-6
    for g, q in zip(grads, grads_ref):
        assert rel_err(g, q) < 1e-5


def test_converted_sequential_frozen_no_grad_accumulation_and_hooks():
    torch.manual_seed(6)
    model = et.convert(mlp())
    x, y = torch.randn(9, 20), torch.randint(0, 5, (9,))
    with torch.no_grad():
        assert not model(x).requires_grad
    model[0].weight.requires_grad_(False)  # frozen: no gradient, the rest as before
    _, g1 = _grads(et.convert(mlp()), x, y)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad is None
    for p, g in zip(list(model.parameters())[1:], g1[1:]):
        assert torch.equal(p.grad, g)
    F.cross_entropy(model(x), y).backward()  # gradients add up, as torch's do
    for p, g in zip(list(model.parameters())[1:], g1[1:]):
        assert rel_err(p.grad, 2 * g) < 1e-6
    seen = []
    handle = model[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = model(x)  # a hook on a layer: layer by layer, so the hook runs
    handle.remove()
    assert seen == [(9, 64)] and type(out.grad_fn).__name__ != "MlpFunctionBackward"


def test_adam_follows_its_state_when_a_user_changes_it_between_steps():
    """The optimizer keeps its lists between steps; a step count set by hand, moments replaced
    or a state dict loaded are still what the next step uses (as torch's Adam does)."""
    torch.manual_seed(7)
    ref = mlp()
    mine = copy.deepcopy(ref)
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    o_ref, o_mine = torch.optim.Adam(ref.parameters(), lr=1e-2), et.optim.Adam(mine.parameters(),
                                                                                 lr=1e-2)

    def steps(n):
        _train(ref, o_ref, F.cross_entropy, x, y, steps=n)
        _train(mine, o_mine, F.cross_entropy, x, y, steps=n)
        for p, q in zip(mine.parameters(), ref.parameters()):
            assert rel_err(p, q) < 1e-5

    steps(3)
    for o in (o_ref, o_mine):
        for st in o.state.values():
            st["step"].fill_(0)  # bias correction starts over
    steps(2)
    for o in (o_ref, o_mine):
        first = next(iter(o.state.values()))
        first["exp_avg"] = torch.zeros_like(first["exp_avg"])  # a moment replaced
    steps(2)
    # (a copy, as from a file: a live state dict shares its tensors with the optimizer)
    o_mine.load_state_dict(copy.deepcopy(o_ref.state_dict()))
    for p, q in zip(mine.parameters(), ref.parameters()):
        p.data.copy_(q.data)
    steps(2)
    assert [float(s["step"]) for s in o_mine.state.values()] == \
        [float(s["step"]) for s in o_ref.state.values()]


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_step_hooks_profiler_and_zero_grad_behave_as_torch(name):
    """ember's optimizers replace torch's step wrapper and zero_grad with cheaper ones: the
    step pre/post hooks (local and global, a pre-hook's new arguments included), the profiler's
    step and zero_grad records and both zero_grad modes still behave as torch's do."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.manual_seed(3)
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    results = {}
    for impl in (torch.optim, et.optim):
        model = mlp()
        opt = getattr(impl, name)(model.parameters(), lr=1e-2)
        calls = []

        def closure():
            calls.append("closure")
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.register_step_pre_hook(
            lambda o, args, kwargs: calls.append(("pre", len(args), sorted(kwargs))))
        # a pre-hook may replace the arguments: here it adds the closure
        opt.register_step_pre_hook(lambda o, args, kwargs: (args, {"closure": closure}))
        opt.register_step_post_hook(
            lambda o, args, kwargs: calls.append(("post", sorted(kwargs))))
        handle = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))
        try:
            loss = opt.step()
        finally:
            handle.remove()
        with torch.profiler.profile() as prof:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        names = {e.name for e in prof.events()}
        assert f"Optimizer.step#{type(opt).__name__}.step" in names
        assert f"Optimizer.zero_grad#{type(opt).__name__}.zero_grad" in names
        opt.zero_grad(set_to_none=False)
        zeroed = [p.grad is not None and not p.grad.any() for p in model.parameters()]
        opt.zero_grad()
        dropped = [p.grad is None for p in model.parameters()]
        results[impl.__name__] = (calls, float(loss.detach()), zeroed, dropped,
                                  [p.detach().clone() for p in model.parameters()])
    (c1, l1, z1, d1, p1), (c2, l2, z2, d2, p2) = results.values()
    assert c2 == c1 == [("pre", 1, []), "closure", ("post", ["closure"]), "global post",
                        ("pre", 1, []), "closure", ("post", ["closure"])]
    assert l2 == pytest.approx(l1, rel=1e-6) and z1 == z2 == [True] * 6 and d1 == d2
    for a, b in zip(p2, p1):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("kind", ["full_backward", "backward_pre", "global_backward"])
def test_converted_sequential_runs_backward_hooks(kind):
    """A backward hook on a layer of a converted stack (or a global one) is called, with the
    gradients torch's layers give it: the stack then runs layer by layer. (The last layer: the
    others' outputs are after the activation fused into them.)"""
    torch.manual_seed(8)
    # (an input that needs a gradient: a global hook sees the first layer too)
    x, y = torch.randn(7, 20, requires_grad=True), torch.randint(0, 5, (7,))
    seen = {}
    for name, model in (("torch", mlp()), ("ember", et.convert(mlp()))):
        got = seen.setdefault(name, [])

        def record(module, *grads):
            got.append([g.detach().clone() for g in grads[-1] if g is not None])

        if kind == "full_backward":
            handle = model[4].register_full_backward_hook(record)
        elif kind == "backward_pre":
            handle = model[4].register_full_backward_pre_hook(record)
        else:
            handle = torch.nn.modules.module.register_module_full_backward_hook(
                lambda m, gi, go: record(m, gi, go) if m is model[4] else None)
        try:
            F.cross_entropy(model(x), y).backward()
        finally:
            handle.remove()
    assert len(seen["ember"]) == len(seen["torch"]) == 1
    for a, b in zip(seen["ember"][0], seen["torch"][0]):
        assert rel_err(a, b) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("layer_by_layer", [False, True])
def test_training_on_the_gpu_equals_torch(opt_name, layer_by_layer):
    """The GPU path: a converted CUDA model (one node, or layer by layer under a hook), ember's
    loss and optimizer, 50 steps, against the same run in torch on the same GPU; the CPU
    kernels' run agrees too."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    pytest.importorskip("cupy")
    torch.manual_seed(4)
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    kw = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=1e-4),
          "Adam": dict(lr=1e-3, weight_decay=1e-4), "AdamW": dict(lr=1e-3)}[opt_name]
    ref = mlp().cuda()
    mine = et.convert(copy.deepcopy(ref))
    if layer_by_layer:
        mine[0].register_forward_hook(lambda *a: None)
    _train(ref, getattr(torch.optim, opt_name)(ref.parameters(), **kw), F.cross_entropy,
           x.cuda(), y.cuda())
    _train(mine, getattr(et.optim, opt_name)(mine.parameters(), **kw), et.cross_entropy,
           x.cuda(), y.cuda())
    cpu = et.convert(mlp())
    _train(cpu, getattr(et.optim, opt_name)(cpu.parameters(), **kw), et.cross_entropy, x, y)
    for (name, p), q, c in zip(mine.named_parameters(), ref.parameters(), cpu.parameters()):
        assert p.is_cuda and rel_err(p, q) < 1e-5, name
        assert rel_err(p.cpu(), c) < 1e-5, name
