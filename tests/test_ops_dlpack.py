"""ember.ops takes PyTorch tensors, JAX arrays and any ``__dlpack__`` object without a copy, gives
results back in the caller's library, writes outputs in place and refuses bad input by name."""
import numpy as np
import pytest

import ember.ops as ops
from ember import backend

# Names in ember.ops.__all__ that are not functions on arrays.
NOT_OPS = {"ACTIVATIONS", "cpu_kernels", "MlpPlan", "OptimPlan", "ForwardPlan"}

_rng = np.random.default_rng(22)
X = _rng.standard_normal((8, 5)).astype(np.float32)        # a batch
W = _rng.standard_normal((3, 5)).astype(np.float32)        # (out, in)
B = _rng.standard_normal(3).astype(np.float32)
G = _rng.standard_normal((8, 3)).astype(np.float32)        # d(loss)/d(y)
Z = _rng.standard_normal((8, 3)).astype(np.float32)        # a pre-activation
LABELS = np.array([0, 1, 2, 1, 0, 2, 2, 1])
INDEX = np.array([7, 0, 3, 3])


def _linear_backward(A):
    return ops.linear_backward(A(G), A(X), A(W), preact=A(Z), activation="gelu")


def _optim(step, A, **kw):
    p, g, m, v = A(W), A(W * 0.5), A(np.zeros_like(W)), A(np.zeros_like(W))
    result = step([p], [g], [m], [v], lr=0.1, max_grad_norm=1.0, **kw) if step is not ops.sgd_step \
        else step([p], [g], [m], lr=0.1, momentum=0.9, max_grad_norm=1.0)
    return result, p, m, v


# One call per public op; A turns a NumPy array into the library's array (a copy).
CASES = {
    "gemm": lambda A: ops.gemm(A(X), A(W), trans_b=True, bias=A(B), activation="relu",
                               save_preact=True),
    "matmul": lambda A: ops.matmul(A(X), A(W.T.copy())),
    "linear_forward": lambda A: ops.linear_forward(A(X), A(W), A(B), activation="tanh"),
    "linear_backward": _linear_backward,
    "activation_forward": lambda A: ops.activation_forward(A(X), "silu"),
    "activation_backward": lambda A: ops.activation_backward(A(G), A(Z), "leaky_relu"),
    "softmax_cross_entropy": lambda A: ops.softmax_cross_entropy(
        A(Z), A(LABELS), weight=A(np.abs(B)), label_smoothing=0.1),
    "mse": lambda A: ops.mse(A(G), A(Z)),
    "argmax": lambda A: ops.argmax(A(X)),
    "accuracy": lambda A: ops.accuracy(A(Z), A(LABELS)),
    "column_sum": lambda A: ops.column_sum(A(X)),
    "sum": lambda A: ops.sum(A(X)),
    "global_norm": lambda A: ops.global_norm([A(X), A(W)]),
    "gather_rows": lambda A: ops.gather_rows(A(X), A(INDEX)),
    "dropout_forward": lambda A: ops.dropout_forward(A(X), 0.5, seed=7, offset=3),
    "dropout_backward": lambda A: ops.dropout_backward(A(X), 0.25, seed=7),
    "sgd_step": lambda A: _optim(ops.sgd_step, A),
    "adam_step": lambda A: _optim(ops.adam_step, A, amsgrad=False),
    "adamw_step": lambda A: _optim(ops.adamw_step, A),
    "kernels": lambda A: ops.kernels(A(X), "test", "x").activation_forward(A(X), "gelu", 0.01,
                                                                           None),
}
MUTATING = {"sgd_step", "adam_step", "adamw_step"}  # their parameters are outputs


def test_every_public_op_is_covered():
    assert set(CASES) | NOT_OPS == set(ops.__all__)


def _as_numpy(v):
    if isinstance(v, (tuple, list)):
        return tuple(_as_numpy(item) for item in v)
    if v is None or isinstance(v, (float, bool, int, np.ndarray)):
        return v
    return np.asarray(v)


def _assert_same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # bit-identical (no NaN here)
    else:
        assert type(got) is type(want) and got == want


def _arrays(v):
    if isinstance(v, (tuple, list)):
        return [a for item in v for a in _arrays(item)]
    return [] if v is None or isinstance(v, (float, bool, int)) else [v]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def jnp():
    return pytest.importorskip("jax.numpy")


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_tensors_give_numpy_bits_and_tensors(torch, name):
    want = _as_numpy(CASES[name](np.copy))
    got = CASES[name](lambda a: torch.from_numpy(a.copy()))
    for a in _arrays(got):
        assert isinstance(a, torch.Tensor), type(a)
    _assert_same(_as_numpy(got), want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jax_arrays_give_numpy_bits_and_jax_arrays(jnp, name):
    import jax
    if name in MUTATING:  # JAX arrays are immutable: they cannot be the parameters
        with pytest.raises(ValueError, match=r"params\[0\] is an output and must be writable"):
            CASES[name](jnp.asarray)
        return
    # JAX without x64 holds int32: labels are widened as NumPy's are, int64 results narrowed
    want = _as_numpy(_jax_dtypes(CASES[name](np.copy), jax))
    got = CASES[name](jnp.asarray)
    for a in _arrays(got):
        assert isinstance(a, jax.Array), type(a)
    _assert_same(_as_numpy(got), want)


def _jax_dtypes(v, jax):
    if isinstance(v, tuple):
        return tuple(_jax_dtypes(item, jax) for item in v)
    if isinstance(v, np.ndarray):
        return v.astype(jax.dtypes.canonicalize_dtype(v.dtype))
    return v


class _Capsule:
    """Only the DLPack protocol over a NumPy array (any other library's host array)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_any_dlpack_object_runs_and_gives_numpy():
    x = X.copy()
    y = ops.activation_forward(_Capsule(x), "relu")
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, ops.activation_forward(X, "relu"))
    ops.activation_forward(_Capsule(x), "relu", out=_Capsule(x))  # zero-copy: in place
    np.testing.assert_array_equal(x, y)


def _outputs(torch):
    """(call, the output tensors it was given) for every op with an output argument."""
    T = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    E = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype)  # noqa: E731
    o = [E(8, 3) for _ in range(6)] + [E(8, 5), E(3, 5), E(3), E(8, dtype=torch.int64),
                                     E(8)]
    return [
        (lambda: ops.gemm(T(X), T(W), trans_b=True, out=o[0], preact_out=o[1]), o[:2]),
        (lambda: ops.matmul(T(X), T(W.T.copy()), out=o[0]), o[:1]),
        (lambda: ops.linear_forward(T(X), T(W), T(B), out=o[2]), o[2:3]),
        (lambda: ops.linear_backward(T(G), T(X), T(W), grad_input=o[6], grad_weight=o[7],
                                     grad_bias=o[8], workspace=o[3]), [o[6], o[7], o[8]]),
        (lambda: ops.activation_forward(T(Z), "relu", out=o[4]), o[4:5]),
        (lambda: ops.activation_backward(T(G), T(Z), "tanh", out=o[5]), o[5:6]),
        (lambda: ops.softmax_cross_entropy(T(Z), T(LABELS), grad=o[0], row_loss=o[10]),
         [o[0]]),
        (lambda: ops.mse(T(G), T(Z), grad=o[1]), o[1:2]),
        (lambda: ops.argmax(T(Z), out=o[9]), o[9:10]),
        (lambda: ops.column_sum(T(Z), out=o[8]), o[8:9]),
        (lambda: ops.gather_rows(T(X), T(LABELS), out=o[6]), o[6:7]),
        (lambda: ops.dropout_forward(T(Z), 0.5, 1, out=o[2]), o[2:3]),
        (lambda: ops.dropout_backward(T(Z), 0.5, 1, out=o[3]), o[3:4]),
    ]


def test_torch_outputs_are_written_in_place(torch):
    for call, outs in _outputs(torch):
        pointers = [t.data_ptr() for t in outs]
        result = call()
        returned = [r for r in (result if isinstance(result, tuple) else (result,))
                    if isinstance(r, torch.Tensor)]
        for t, ptr in zip(outs, pointers):
            assert any(r is t for r in returned)  # the caller's own tensor comes back
            assert t.data_ptr() == ptr
        assert all(isinstance(r, torch.Tensor) for r in returned)


def test_torch_in_place_and_zero_copy(torch):
    x = torch.from_numpy(X.copy())
    ptr = x.data_ptr()
    y = ops.activation_forward(x, "relu", out=x)  # out is x: the same view, so in place
    assert y is x and x.data_ptr() == ptr
    np.testing.assert_array_equal(x.numpy(), np.maximum(X, 0))
    row_loss = torch.full((8,), -1.0)
    loss, grad = ops.softmax_cross_entropy(x, torch.from_numpy(LABELS), grad=x, row_loss=row_loss)
    assert grad is x and isinstance(loss, float)
    want = np.empty(8, np.float32)
    ops.softmax_cross_entropy(np.maximum(X, 0), LABELS, row_loss=want)
    np.testing.assert_array_equal(row_loss.numpy(), want)


def test_torch_requires_grad_is_used_detached(torch):
    w = torch.nn.Parameter(torch.from_numpy(W.copy()))
    ptr = w.data_ptr()
    y = ops.linear_forward(torch.from_numpy(X), w)
    assert not y.requires_grad and y.grad_fn is None
    ops.sgd_step([w], [torch.ones_like(w)], lr=0.5)  # in place, like torch.no_grad()
    assert w.data_ptr() == ptr and w.requires_grad
    np.testing.assert_array_equal(w.detach().numpy(), W - np.float32(0.5))


def test_mixed_numpy_and_torch(torch):
    want = ops.linear_forward(X, W, B)
    got = ops.linear_forward(torch.from_numpy(X), W, torch.from_numpy(B))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    # labels of another library with a NumPy first array; int32 labels are widened
    labels32 = torch.from_numpy(LABELS.astype(np.int32))
    assert ops.accuracy(Z, labels32) == ops.accuracy(Z, LABELS)


@pytest.mark.parametrize("call, message", [
    (lambda t: ops.activation_forward(t(X).double(), "relu"),
     "activation_forward: x must have dtype float32, got float64"),
    (lambda t: ops.linear_forward(t(X), t(W).double()),
     "linear_forward: weight must have dtype float32, got float64"),
    (lambda t: ops.softmax_cross_entropy(t(Z), t(LABELS).double()),
     "softmax_cross_entropy: labels must be an integer array"),
    (lambda t: ops.activation_forward(t(X).T, "relu"),
     r"activation_forward: x must be C-contiguous \(use tensor.contiguous\(\)\)"),
    (lambda t: ops.matmul(t(X), t(X).T[:, :3]),
     r"matmul: b must be C-contiguous \(use tensor.contiguous\(\)\)"),
    (lambda t: ops.sgd_step(t(W), [t(W)], lr=0.1),
     "sgd_step: params must be a list of arrays .* got a single Tensor"),
    (lambda t: ops.mse(t(G), t(Z), grad=t(Z)[:, :2].contiguous()),
     r"mse: grad must have shape \(8, 3\)"),
], ids=["float64", "float64-second", "float-labels", "transposed", "transposed-second",
        "single-array-list", "bad-out-shape"])
def test_torch_bad_input_is_refused_by_name(torch, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(lambda a: torch.from_numpy(a.copy()))


def test_jax_array_as_output_is_refused(jnp):
    x = jnp.asarray(X)
    with pytest.raises(ValueError, match="activation_forward: out is an output and must be "
                                         "writable"):
        ops.activation_forward(x, "relu", out=x)
    with pytest.raises(ValueError, match="grad is an output and must be writable"):
        ops.mse(x, x, grad=jnp.zeros_like(x))


class _FakeCudaArray(_Capsule):
    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA


@pytest.mark.skipif(backend.cuda_available(), reason="CUDA is usable here")
def test_cuda_dlpack_array_without_usable_cuda_is_refused():
    with pytest.raises(ValueError, match="activation_forward: x is a CUDA array but "
                                         "(ember was built without CUDA|CUDA is not usable)"):
        ops.activation_forward(_FakeCudaArray(X), "relu")


def test_as_kernel_array_is_one_zero_copy_step(torch):
    a = np.ones(3, np.float32)
    assert backend.as_kernel_array(a) == (a, None)
    t = torch.ones(3, requires_grad=True)
    view, back = backend.as_kernel_array(t)
    assert type(view) is np.ndarray and view.ctypes.data == t.data_ptr() and view.flags.writeable
    r = back(np.arange(3, dtype=np.float32))
    assert isinstance(r, torch.Tensor) and r.tolist() == [0.0, 1.0, 2.0]
    assert backend.as_kernel_array([1, 2]) == ([1, 2], None)  # not an array: the kernels refuse it
