"""ember.ops.sgd_step / adam_step / adamw_step: the fused multi-tensor optimizer steps.

Each optimizer is stepped side by side with a plain float64 NumPy implementation of the published
update rule (torch.optim.SGD / Adam / AdamW documentation) for many steps with fresh gradients,
and with torch.optim itself when PyTorch is installed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.ops as ops
from conftest import check_op

# Apex's odd sizes (278011 elements, and 1) plus mixed shapes; the first set is large enough for the
# parallel path, the second runs on the calling thread.
LARGE_SHAPES = [(278011,), (1,), (33, 17), (7, 5, 3), (256, 129), (129,)]
SMALL_SHAPES = [(1,), (13, 7), (5,)]
SHAPE_SETS = {"large": LARGE_SHAPES, "small": SMALL_SHAPES}

SGD_CONFIGS = {
    "plain": dict(lr=0.05),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
    "weight_decay": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "maximize": dict(lr=0.05, momentum=0.5, maximize=True),
    "clip": dict(lr=0.05, momentum=0.9, max_grad_norm=1.0),
    "everything": dict(lr=0.02, momentum=0.7, weight_decay=0.05, nesterov=True, maximize=True,
                       max_grad_norm=2.0),
}

ADAM_CONFIGS = {
    "adam": dict(lr=1e-2),
    "adam_l2": dict(lr=1e-2, weight_decay=0.1),
    "adamw": dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "amsgrad": dict(lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
    "maximize": dict(lr=1e-2, maximize=True, eps=1e-6),
    "clip": dict(lr=1e-2, max_grad_norm=1.0),
    "everything": dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.05,
                       decoupled_weight_decay=True, amsgrad=True, maximize=True,
                       max_grad_norm=0.5),
}


# ---------------------------------------------------------------------------------------------
# float64 references: the update rules as torch.optim documents them


def clip_scale(grads, max_grad_norm):
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    if not max_grad_norm:
        return norm, 1.0
    return norm, min(1.0, max_grad_norm / (norm + 1e-6))


def sgd_reference(params, grads, bufs, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False, maximize=False, step=1, max_grad_norm=None):
    _, scale = clip_scale(grads, max_grad_norm)
    for i, p in enumerate(params):
        g = grads[i].astype(np.float64) * scale
        if maximize:
            g = -g
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if step == 1:
                bufs[i] = g.copy()
            else:
                bufs[i] = momentum * bufs[i] + (1 - dampening) * g
            g = g + momentum * bufs[i] if nesterov else bufs[i]
        p -= lr * g


def adam_reference(params, grads, ms, vs, vmaxs, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False, maximize=False,
                   step=1, max_grad_norm=None):
    beta1, beta2 = betas
    _, scale = clip_scale(grads, max_grad_norm)
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    for i, p in enumerate(params):
        g = grads[i].astype(np.float64) * scale
        if maximize:
            g = -g
        if weight_decay and decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * p
        ms[i] = beta1 * ms[i] + (1 - beta1) * g
        vs[i] = beta2 * vs[i] + (1 - beta2) * g * g
        v = vs[i]
        if amsgrad:
            vmaxs[i] = np.maximum(vmaxs[i], vs[i])
            v = vmaxs[i]
        p -= (lr / bc1) * ms[i] / (np.sqrt(v) / math.sqrt(bc2) + eps)


# ---------------------------------------------------------------------------------------------
# helpers


def f32_arrays(rng, shapes, scale=1.0):
    return [(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def fresh_grads(rng, shapes):
    # Per-tensor magnitudes spread over three decades, as real layers have.
    return [np.float32(10.0 ** rng.uniform(-2, 1)) * rng.standard_normal(s, dtype=np.float32)
            for s in shapes]


class Run:
    """ember's float32 arrays and the float64 reference's, stepped side by side."""

    def __init__(self, kind, cfg, shapes, rng):
        self.kind, self.cfg, self.rng, self.shapes = kind, cfg, rng, shapes
        self.params = f32_arrays(rng, shapes)
        self.ref_params = [p.astype(np.float64) for p in self.params]
        if kind == "sgd":
            # Step 1 must overwrite the momentum buffers, whatever they held.
            self.state = {"momentum_buffers": [np.full(s, np.nan, np.float32) for s in shapes]}
        else:
            self.state = {"exp_avgs": [np.zeros(s, np.float32) for s in shapes],
                          "exp_avg_sqs": [np.zeros(s, np.float32) for s in shapes]}
            if cfg.get("amsgrad"):
                self.state["max_exp_avg_sqs"] = [np.zeros(s, np.float32) for s in shapes]
        self.ref_state = {k: [np.zeros(s) for s in shapes] for k in self.state}

    def step(self, step):
        grads = fresh_grads(self.rng, self.shapes)
        if self.kind == "sgd":
            bufs = self.state["momentum_buffers"] if self.cfg.get("momentum") else None
            norm, skipped = ops.sgd_step(self.params, grads, bufs, step=step, **self.cfg)
            sgd_reference(self.ref_params, grads, self.ref_state["momentum_buffers"], step=step,
                          **self.cfg)
        else:
            s = self.state
            norm, skipped = ops.adam_step(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"],
                                          s.get("max_exp_avg_sqs"), step=step, **self.cfg)
            r = self.ref_state
            adam_reference(self.ref_params, grads, r["exp_avgs"], r["exp_avg_sqs"],
                           r.get("max_exp_avg_sqs"), step=step, **self.cfg)
        assert skipped is False
        ref_norm, _ = clip_scale(grads, None)
        assert norm == pytest.approx(ref_norm, rel=1e-12)
        return grads

    def errors(self):
        """Largest relative error of the params and of each state list (per tensor)."""
        out = {"params": max(check_op(p, r, 1e-5, f"params[{i}]")
                             for i, (p, r) in enumerate(zip(self.params, self.ref_params)))}
        used = self.state.keys() if self.kind != "sgd" or self.cfg.get("momentum") else ()
        for k in used:
            out[k] = max(check_op(a, r, 1e-5, f"{k}[{i}]")
                         for i, (a, r) in enumerate(zip(self.state[k], self.ref_state[k])))
        return out


def run_steps(kind, cfg, shapes, checkpoints=(20, 50), seed=0):
    """Steps ember and the reference together; compares them after each of ``checkpoints`` steps.

    Returns ``{steps: {array list: largest relative error}}``.
    """
    run = Run(kind, cfg, shapes, np.random.default_rng(seed))
    errors = {}
    for t in range(1, max(checkpoints) + 1):
        run.step(t)
        if t in checkpoints:
            errors[t] = run.errors()
    return errors


@pytest.fixture
def threads():
    before = ember.get_num_threads()
    yield
    ember.set_num_threads(before)


def snapshot(arrays):
    return [a.copy() for a in arrays]


def assert_bits_equal(got, want, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.tobytes() == w.tobytes(), f"{what}[{i}] changed"


# ---------------------------------------------------------------------------------------------
# against the float64 reference


# Each run is compared after 20 and after 50 consecutive steps.
@pytest.mark.parametrize("shapes", SHAPE_SETS)
@pytest.mark.parametrize("name", SGD_CONFIGS)
def test_sgd_matches_reference(name, shapes, isa):
    run_steps("sgd", SGD_CONFIGS[name], SHAPE_SETS[shapes])


@pytest.mark.parametrize("shapes", SHAPE_SETS)
@pytest.mark.parametrize("name", ADAM_CONFIGS)
def test_adam_matches_reference(name, shapes, isa):
    run_steps("adam", ADAM_CONFIGS[name], SHAPE_SETS[shapes])


def test_adamw_step_is_adam_with_decoupled_weight_decay(rng):
    shapes = [(17, 3), (4,)]
    params = f32_arrays(rng, shapes)
    grads = f32_arrays(rng, shapes)
    a = [snapshot(params), [np.zeros(s, np.float32) for s in shapes],
         [np.zeros(s, np.float32) for s in shapes]]
    b = [snapshot(x) for x in a]
    ops.adamw_step(a[0], grads, a[1], a[2], lr=0.1, weight_decay=0.3, step=3)
    ops.adam_step(b[0], grads, b[1], b[2], lr=0.1, weight_decay=0.3, step=3,
                  decoupled_weight_decay=True)
    for x, y in zip(a, b):
        assert_bits_equal(x, y, "adamw")


def test_clipping_leaves_grads_alone_and_only_scales_down(rng):
    shapes = [(300,), (7, 7)]
    grads = f32_arrays(rng, shapes)
    before = snapshot(grads)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    # A max_grad_norm above the norm leaves the step exactly as without clipping.
    p1 = f32_arrays(rng, shapes)
    p2 = snapshot(p1)
    ops.sgd_step(p1, grads, lr=0.1)
    ops.sgd_step(p2, grads, lr=0.1, max_grad_norm=2 * norm)
    assert_bits_equal(p1, p2, "params")
    assert_bits_equal(grads, before, "grads")
    # Below it, the update equals one with gradients scaled by max_norm / (norm + 1e-6).
    p3 = f32_arrays(rng, shapes)
    ref = [p.astype(np.float64) for p in p3]
    got_norm, skipped = ops.sgd_step(p3, grads, lr=0.1, max_grad_norm=0.25 * norm)
    sgd_reference(ref, grads, None, lr=0.1, max_grad_norm=0.25 * norm)
    assert not skipped and got_norm == pytest.approx(norm, rel=1e-12)
    for p, r in zip(p3, ref):
        check_op(p, r, 1e-6, "clipped params")
    assert_bits_equal(grads, before, "grads")


def test_grad_norm_is_the_float64_global_norm(rng):
    shapes = LARGE_SHAPES
    grads = fresh_grads(rng, shapes)
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    params = f32_arrays(rng, shapes)
    norm, skipped = ops.adam_step(params, grads, [np.zeros(s, np.float32) for s in shapes],
                                  [np.zeros(s, np.float32) for s in shapes])
    assert skipped is False and isinstance(norm, float)
    assert norm == pytest.approx(want, rel=1e-12)
    assert norm == pytest.approx(ops.global_norm(grads), rel=0, abs=0)


# ---------------------------------------------------------------------------------------------
# against torch.optim itself


def torch_steps(torch, kind, cfg, shapes, steps, seed):
    cfg = dict(cfg)
    max_grad_norm = cfg.pop("max_grad_norm", None)
    rng = np.random.default_rng(seed)
    params = f32_arrays(rng, shapes)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    if kind == "sgd":
        opt = torch.optim.SGD(tparams, foreach=False, **cfg)
    else:
        decoupled = cfg.pop("decoupled_weight_decay", False)
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        cfg.setdefault("weight_decay", 0.0)  # AdamW's default is 1e-2
        opt = cls(tparams, foreach=False, **cfg)
    grads_per_step = []
    for _ in range(steps):
        grads = fresh_grads(rng, shapes)
        grads_per_step.append(grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(tparams, max_grad_norm, foreach=False)
        opt.step()
    return params, grads_per_step, tparams, opt


@pytest.mark.parametrize("kind,name", [("sgd", n) for n in SGD_CONFIGS]
                         + [("adam", n) for n in ADAM_CONFIGS])
def test_matches_torch_optim(kind, name):
    torch = pytest.importorskip("torch")
    # One torch thread: its OpenMP pool and ember's would otherwise spin against each other.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_vs_ember(torch, kind, name)
    finally:
        torch.set_num_threads(torch_threads)


def torch_vs_ember(torch, kind, name):
    cfg = (SGD_CONFIGS if kind == "sgd" else ADAM_CONFIGS)[name]
    shapes, steps = LARGE_SHAPES, 20
    params, grads_per_step, tparams, opt = torch_steps(torch, kind, cfg, shapes, steps, seed=7)
    state = {}
    if kind == "sgd":
        if cfg.get("momentum"):
            state["momentum_buffer"] = [np.zeros(s, np.float32) for s in shapes]
    else:
        state["exp_avg"] = [np.zeros(s, np.float32) for s in shapes]
        state["exp_avg_sq"] = [np.zeros(s, np.float32) for s in shapes]
        if cfg.get("amsgrad"):
            state["max_exp_avg_sq"] = [np.zeros(s, np.float32) for s in shapes]
    for t, grads in enumerate(grads_per_step, start=1):
        if kind == "sgd":
            ops.sgd_step(params, grads, state.get("momentum_buffer"), step=t, **cfg)
        else:
            ops.adam_step(params, grads, state["exp_avg"], state["exp_avg_sq"],
                          state.get("max_exp_avg_sq"), step=t, **cfg)
    for i, (p, tp) in enumerate(zip(params, tparams)):
        check_op(p, tp.detach().numpy(), 1e-5, f"params[{i}] vs torch")
        for k, arrays in state.items():
            check_op(arrays[i], opt.state[tp][k].numpy(), 1e-5, f"{k}[{i}] vs torch")


# ---------------------------------------------------------------------------------------------
# non-finite gradients skip the step


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 1, 5])  # the 278011-element tensor, the 1-element, the last
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_non_finite_grad_skips_the_step(kind, where, bad, rng):
    shapes = LARGE_SHAPES
    cfg = dict(SGD_CONFIGS["everything"] if kind == "sgd" else ADAM_CONFIGS["everything"])
    run = Run(kind, cfg, shapes, rng)
    run.step(1)  # a real step first, so that the state holds values
    grads = fresh_grads(rng, shapes)
    grads[where].flat[grads[where].size // 2] = bad
    params, state = snapshot(run.params), {k: snapshot(v) for k, v in run.state.items()}
    if kind == "sgd":
        norm, skipped = ops.sgd_step(run.params, grads, run.state["momentum_buffers"], step=2,
                                     **cfg)
    else:
        s = run.state
        norm, skipped = ops.adam_step(run.params, grads, s["exp_avgs"], s["exp_avg_sqs"],
                                      s["max_exp_avg_sqs"], step=2, **cfg)
    assert skipped is True
    assert math.isnan(norm) if np.isnan(bad) else norm == math.inf
    assert_bits_equal(run.params, params, "params")
    for k in state:
        assert_bits_equal(run.state[k], state[k], k)


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_same_bits_for_any_thread_count(kind, threads):
    results = []
    for n in (1, 2):
        ember.set_num_threads(n)
        cfg = SGD_CONFIGS["everything"] if kind == "sgd" else ADAM_CONFIGS["everything"]
        run = Run(kind, cfg, LARGE_SHAPES, np.random.default_rng(3))
        for t in range(1, 6):
            run.step(t)
        results.append((run.params, run.state))
    (p1, s1), (p2, s2) = results
    assert_bits_equal(p1, p2, "params")
    for k in s1:
        assert_bits_equal(s1[k], s2[k], k)


# ---------------------------------------------------------------------------------------------
# bad input: checked before anything is written


def adam_lists(shapes=((3, 4), (5,))):
    rng = np.random.default_rng(0)
    return (f32_arrays(rng, shapes), f32_arrays(rng, shapes),
            [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes])


def test_bad_shapes_and_lengths():
    p, g, m, v = adam_lists()
    g[0] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"adam_step: grads\[0\] must have shape \(3, 4\) like "
                                         r"params\[0\], got \(4, 3\)"):
        ops.adam_step(p, g, m, v)
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"adam_step: grads has 1 arrays but params has 2"):
        ops.adam_step(p, g[:1], m, v)
    with pytest.raises(ValueError, match=r"adam_step: exp_avg_sqs has 3 arrays but params has 2"):
        ops.adam_step(p, g, m, v + [v[0].copy()])
    v[1] = np.zeros((6,), np.float32)
    before = snapshot(p)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[1\] must have shape \(5,\) like "
                                         r"params\[1\], got \(6,\)"):
        ops.adam_step(p, g, m, v)
    assert_bits_equal(p, before, "params")  # nothing was touched


def test_bad_arrays():
    p, g, m, v = adam_lists()
    with pytest.raises(TypeError, match=r"adam_step: grads\[1\] must have dtype float32, got "
                                        r"float64"):
        ops.adam_step(p, [g[0], g[1].astype(np.float64)], m, v)
    with pytest.raises(TypeError, match=r"adam_step: exp_avgs\[0\] must be a numpy.ndarray, got "
                                        r"list"):
        ops.adam_step(p, g, [m[0].tolist(), m[1]], v)
    wide = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"adam_step: exp_avgs\[0\] must be C-contiguous"):
        ops.adam_step(p, g, [wide[:, ::2], m[1]], v)
    p[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"adam_step: params\[1\] is an output and must be "
                                         r"writable"):
        ops.adam_step(p, g, m, v)
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"sgd_step: params\[0\] must not be empty"):
        ops.sgd_step([np.zeros(0, np.float32)], [np.zeros(0, np.float32)], lr=0.1)
    g[0].flags.writeable = False  # gradients are only read
    ops.adam_step(p, g, m, v)


def test_missing_lists():
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"sgd_step: momentum_buffers is required when "
                                         r"momentum != 0"):
        ops.sgd_step(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"adam_step: max_exp_avg_sqs is required when "
                                         r"amsgrad=True"):
        ops.adam_step(p, g, m, v, amsgrad=True)
    with pytest.raises(ValueError, match=r"adam_step: exp_avgs is required \(got None\)"):
        ember._cpu.adam_step(p, g, None, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False,
                             False, 1, 0.0)
    with pytest.raises(ValueError, match=r"sgd_step: params must hold at least one array"):
        ops.sgd_step([], [], lr=0.1)
    with pytest.raises(ValueError, match=r"adam_step: params must hold at least one array"):
        ops.adam_step([], [], [], [])
    with pytest.raises(TypeError, match=r"adam_step: grads must be a list of arrays, got "
                                        r"ndarray"):
        ember._cpu.adam_step(p, g[0], m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False,
                             False, 1, 0.0)


def test_shared_memory_is_refused():
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"adam_step: exp_avgs\[0\] must not share memory with "
                                         r"params\[0\]"):
        ops.adam_step(p, g, [p[0], m[1]], v)
    with pytest.raises(ValueError, match=r"adam_step: params\[1\] must not share memory with "
                                         r"grads\[1\]"):
        ops.adam_step(p, [g[0], p[1]], m, v)
    # A state array of one tensor inside another tensor's state (threads would race on it).
    big = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match=r"must not share memory"):
        ops.adam_step(p, g, [big[:12].reshape(3, 4), big[10:15]], v)
    with pytest.raises(ValueError, match=r"sgd_step: momentum_buffers\[1\] must not share memory "
                                         r"with params\[0\]"):
        ops.sgd_step(p, g, [m[0], p[0].reshape(-1)[:5]], lr=0.1, momentum=0.9)
    # Gradients are only read: they may overlap each other.
    shared = np.ones(5, np.float32)
    ops.sgd_step([np.zeros(5, np.float32), np.zeros(5, np.float32)], [shared, shared], lr=0.1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), r"adam_step: lr must be a finite number >= 0, got -1.0"),
    (dict(lr=float("nan")), r"adam_step: lr must be a finite number >= 0, got nan"),
    (dict(betas=(1.0, 0.999)), r"adam_step: beta1 must be in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), r"adam_step: beta2 must be in \[0, 1\), got -0.1"),
    (dict(eps=-1e-8), r"adam_step: eps must be a finite number > 0, got -1e-08"),
    (dict(eps=0.0), r"adam_step: eps must be a finite number > 0, got 0.0"),
    (dict(max_grad_norm=0.0), r"adam_step: max_grad_norm must be a number > 0 or None"),
    (dict(max_grad_norm=float("nan")), r"adam_step: max_grad_norm must be a number > 0 or None"),
    (dict(betas=(0.9, 0.99, 0.9)), r"adam_step: betas must be a pair \(beta1, beta2\), got"),
    (dict(weight_decay=-0.1), r"adam_step: weight_decay must be a finite number >= 0"),
    (dict(step=0), r"adam_step: step must be >= 1 \(the 1-based number of this step\), got 0"),
    (dict(max_grad_norm=-1.0), r"adam_step: max_grad_norm must be a number > 0 or None"),
    (dict(max_grad_norm=float("inf")), r"adam_step: max_grad_norm must be a finite number >= 0"),
])
def test_bad_adam_hyperparameters(kwargs, message):
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=message):
        ops.adam_step(p, g, m, v, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=float("inf")), r"sgd_step: lr must be a finite number >= 0, got inf"),
    (dict(momentum=-0.5), r"sgd_step: momentum must be a finite number >= 0, got -0.5"),
    (dict(dampening=float("nan")), r"sgd_step: dampening must be finite"),
    (dict(nesterov=True), r"sgd_step: nesterov requires momentum > 0 and dampening == 0, got "
                          r"momentum=0.0, dampening=0.0"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1),
     r"sgd_step: nesterov requires momentum > 0 and dampening == 0"),
    (dict(step=-3), r"sgd_step: step must be >= 1"),
])
def test_bad_sgd_hyperparameters(kwargs, message):
    p, g, m, _ = adam_lists()
    kwargs.setdefault("lr", 0.1)
    with pytest.raises(ValueError, match=message):
        ops.sgd_step(p, g, m, **kwargs)


def test_step_must_be_an_integer():
    p, g, m, v = adam_lists()
    with pytest.raises(TypeError, match=r"adam_step: step must be an int, got float"):
        ops.adam_step(p, g, m, v, step=1.0)
    with pytest.raises(TypeError, match=r"sgd_step: step must be an int, got bool"):
        ops.sgd_step(p, g, lr=0.1, step=True)
    ops.adam_step(p, g, m, v, step=np.int64(2))  # NumPy integers are integers


# ---------------------------------------------------------------------------------------------
# ember.optim on the CPU steps through ember._cpu.OptimPlan (the lists checked once)

PLAN_CASES = [("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, amsgrad=True, max_grad_norm=0.5)),
              ("AdamW", dict(lr=1e-2, weight_decay=0.1)), ("SGD", dict(lr=0.1)),
              ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3))]


@pytest.mark.parametrize("name, kw", PLAN_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("shapes", ["small", "large"])
def test_optimizer_plan_matches_the_checked_call(rng, name, kw, shapes):
    """The same bits as the functional call that checks every array, over 20 steps, before and
    after a parameter is reassigned (which must make a new plan: the old one would step the
    old array)."""
    from ember import optim
    from ember.nn import Parameter

    shapes = SHAPE_SETS[shapes]
    ps = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    ref = [p.data.copy() for p in ps]
    opt = getattr(optim, name)(ps, **kw)
    ref_state = {k: [np.zeros_like(a) for a in ref] for k in opt._state_keys}
    plans = []
    for t in range(1, 21):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if t == 11:
            ps[1].data = ps[1].data.copy()
        for p, g in zip(ps, grads):
            if p.grad is None:
                p.grad = np.empty_like(g)
            p.grad[...] = g  # in place, as backward writes them
        norm, skipped = opt.step()
        plans.append(opt._lists[4])
        if name == "SGD":
            rnorm, _ = ops.sgd_step(ref, grads, ref_state.get("momentum_buffer"), step=t, **kw)
        else:
            rnorm, _ = ops.adam_step(ref, grads, ref_state["exp_avg"], ref_state["exp_avg_sq"],
                                     ref_state.get("max_exp_avg_sq"), step=t,
                                     decoupled_weight_decay=name == "AdamW", **kw)
        assert not skipped and norm == rnorm
    assert type(plans[0]) is ember.ops._cpu.OptimPlan
    assert plans[9] is plans[0] and plans[10] is not plans[9] and plans[19] is plans[10]
    for p, r in zip(ps, ref):
        np.testing.assert_array_equal(p.data, r)
    for k, arrays in ref_state.items():
        for a, b in zip(opt._active()[2][k], arrays):
            np.testing.assert_array_equal(a, b)
    assert opt.__getstate__()["_lists"] is None  # picklable: the plan is a cache


def test_optimizer_plan_skips_a_non_finite_step(rng):
    from ember import optim
    from ember.nn import Parameter

    p = Parameter(np.ones(5, np.float32))
    p.grad = np.full(5, 0.5, np.float32)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    before = p.data.copy()
    p.grad[2] = np.nan
    norm, skipped = opt.step()
    assert skipped and math.isnan(norm) and opt.skipped_steps == 1 and opt.step_count == 1
    np.testing.assert_array_equal(p.data, before)


def test_optimizer_plan_validation():
    from ember import _cpu

    p = [np.zeros(3, np.float32)]
    with pytest.raises(TypeError, match="OptimPlan: states must be a list of lists"):
        _cpu.OptimPlan(p, p, None)
    with pytest.raises(ValueError, match="at most 3 state lists"):
        _cpu.OptimPlan(p, [np.ones(3, np.float32)], [p, p, p, p])
    with pytest.raises(ValueError, match="share memory"):
        _cpu.OptimPlan(p, p, [])
    with pytest.raises(ValueError,
                       match=r"OptimPlan: grads\[0\] must have shape \(3,\) like params\[0\], "
                             r"got \(4,\)"):
        _cpu.OptimPlan(p, [np.ones(4, np.float32)], [])
    with pytest.raises(ValueError, match=r"states\[0\] has 2 arrays but params has 1"):
        _cpu.OptimPlan(p, [np.ones(3, np.float32)], [[np.zeros(3, np.float32)] * 2])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        _cpu.OptimPlan([np.zeros(3, np.float64)], [np.ones(3, np.float32)], [])
    plan = _cpu.OptimPlan(p, [np.ones(3, np.float32)], [[np.zeros(3, np.float32)]])
    assert plan.state_lists == 1
    with pytest.raises(ValueError, match="holds 1 state list"):
        plan.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 0.0)
    with pytest.raises(ValueError, match="holds 1 state list"):
        plan.sgd(0.1, 0.0, 0.0, 0.0, False, False, 1, 0.0)  # no momentum: no buffers
    with pytest.raises(ValueError, match="sgd_step: lr must be a finite number >= 0"):
        plan.sgd(-1.0, 0.9, 0.0, 0.0, False, False, 1, 0.0)
    with pytest.raises(TypeError, match="step must be an int"):
        plan.sgd(0.1, 0.9, 0.0, 0.0, False, False, 1.5, 0.0)
    norm, skipped = plan.sgd(0.1, 0.9, 0.0, 0.0, False, False, 1, 0.0)
    assert norm == pytest.approx(3 ** 0.5) and not skipped
    np.testing.assert_allclose(p[0], -0.1)


@pytest.mark.parametrize("call, message", [
    (lambda p, g, m, v: ops.sgd_step(p[0], g[0], lr=0.1),
     r"sgd_step: params must be a list of arrays \(one per parameter\), got a single ndarray"),
    (lambda p, g, m, v: ops.adam_step(p, g[0], m, v),
     r"adam_step: grads must be a list of arrays \(one per parameter\), got a single ndarray"),
    (lambda p, g, m, v: ops.adamw_step(None, g, m, v),
     r"adam_step: params is required \(got None\)"),
    (lambda p, g, m, v: ops.adam_step(p, g, m, 3),
     r"adam_step: exp_avg_sqs must be a list of arrays, got int"),
    (lambda p, g, m, v: ops.sgd_step(p, g, lr="0.1"), r"sgd_step: lr must be a real number, got str"),
    (lambda p, g, m, v: ops.sgd_step(p, g, lr=0.1, momentum=0.9, momentum_buffers=m,
                                     nesterov="yes"),
     r"sgd_step: nesterov must be a bool, got str"),
    (lambda p, g, m, v: ops.adam_step(p, g, m, v, betas=("a", 0.9)),
     r"adam_step: betas\[0\] must be a real number, got str"),
    (lambda p, g, m, v: ops.adam_step(p, g, m, v, amsgrad="yes"),
     r"adam_step: amsgrad must be a bool, got str"),
    (lambda p, g, m, v: ops.adam_step(p, g, m, v, max_grad_norm="1"),
     r"adam_step: max_grad_norm must be a real number, got str"),
])
def test_optimizer_argument_types_are_named(call, message):
    p, g, m, v = adam_lists()
    with pytest.raises((TypeError, ValueError), match=message):
        call(p, g, m, v)


def test_global_norm_takes_any_iterable_of_arrays(rng):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,))]
    want = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))
    assert ops.global_norm(a for a in arrays) == pytest.approx(want, rel=1e-12)
    with pytest.raises(TypeError, match=r"global_norm: arrays must be a list of arrays .* single"):
        ops.global_norm(arrays[0])


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_moments_of_units_without_gradient_never_become_subnormal(kind):
    """A unit whose gradient stays 0 (a dead ReLU) has its Adam first moment (SGD momentum
    buffer) shrink by beta1 (momentum) a step: from 1e-3 it would cross FLT_MIN (1.2e-38) after
    ~800 steps, and float32 subnormals cost an x86 core ~100x per operation (a long fit slowed
    2.5x). They are stored as 0 instead; the weights are what the reference gives."""
    from ember.nn import Linear
    from ember.optim import SGD, Adam
    layer = Linear(300, 40, seed=0)
    opt = Adam(layer, lr=1e-3) if kind == "adam" else SGD(layer, lr=1e-3, momentum=0.9)
    params = layer.parameters()
    for p in params:
        p.grad = np.full_like(p.data, 1e-3)
    opt.step()
    for p in params:
        p.grad[...] = 0
    before = [p.data.copy() for p in params]
    for _ in range(1000):  # 0.9 ** 1000 * 1e-3 ~ 1.7e-49: subnormal, then 0, without the flush
        opt.step()
    tiny = np.finfo(np.float32).tiny
    for name, st in opt.state.items():
        for key, a in st.items():
            if isinstance(a, np.ndarray) and a.dtype == np.float32:
                sub = int(((a != 0) & (np.abs(a) < tiny)).sum())
                assert sub == 0, f"{name}.{key}: {sub} subnormal values"
    # the weights moved as the float64 formula says (the last steps' moves are below float32's
    # resolution of these weights either way)
    move, m, v = 0.0, 0.1 * 1e-3, 0.001 * 1e-6  # float64: the moments after the first step
    for t in range(2, 1002):
        if kind == "sgd":
            m *= 0.9
            move -= 1e-3 * m
        else:
            m, v = 0.9 * m, 0.999 * v
            move -= 1e-3 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    # (1000 float32 additions of nearly the same step to weights ~0.1 round alike: ~2e-6 each
    # way per 1e-3 of move, against a total move of ~5e-3 for Adam)
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.data, b.astype(np.float64) + move, rtol=0, atol=2e-5)
