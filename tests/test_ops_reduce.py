"""column_sum, sum and global_norm (csrc/cpu/reduce.cpp) against float64, and their determinism."""
import numpy as np
import pytest

import ember
import ember.ops as ops
from conftest import ODD_SIZES, check_op, poisoned


def test_column_sum_matches_float64(rng):
    shapes = [(r, c) for r in (1, 2, 7, 129) for c in (1, 3, 63, 65, 257)] + [(3000, 17), (5, 4099)]
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        out = ops.column_sum(x, out=poisoned(shape[1]))
        check_op(out, x.astype(np.float64).sum(axis=0), 1e-6, f"column_sum {shape}")
        acc = rng.standard_normal(shape[1]).astype(np.float32)
        ref = acc.astype(np.float64) + x.astype(np.float64).sum(axis=0)
        ops.column_sum(x, out=acc, accumulate=True)
        check_op(acc, ref, 1e-6, f"column_sum accumulate {shape}")


def test_sum_and_global_norm_match_float64(rng):
    for n in ODD_SIZES + (32768, 100_003, 1_000_001):
        x = rng.standard_normal(n).astype(np.float32)
        s = ops.sum(x)
        assert isinstance(s, float)
        check_op(s, x.astype(np.float64).sum(), 1e-9 * max(1.0, float(np.sqrt(n))), f"sum {n}")
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(3, 5), (1,), (129, 33), (70_001,)]]
    ref = np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in arrays))
    check_op(ops.global_norm(arrays), ref, 1e-9)
    check_op(ops.global_norm(tuple(arrays)), ref, 1e-9)


def test_deterministic_across_thread_counts(rng):
    x = rng.standard_normal((20_011, 67)).astype(np.float32)
    flat = x.reshape(-1)
    before = ember.get_num_threads()
    try:
        res = {}
        for n in (1, 2):
            ember.set_num_threads(n)
            res[n] = (ops.column_sum(x), ops.sum(flat), ops.global_norm([x, flat[:999]]))
    finally:
        ember.set_num_threads(before)
    np.testing.assert_array_equal(res[1][0], res[2][0])
    assert res[1][1] == res[2][1]
    assert res[1][2] == res[2][2]


X = np.ones((3, 4), np.float32)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.column_sum(np.ones(3, np.float32)), ValueError, "column_sum: x must be 2-D"),
    (lambda: ops.column_sum(X.astype(np.float64)), TypeError, "column_sum: x must have dtype float32"),
    (lambda: ops.column_sum(X, accumulate=True), ValueError, "column_sum: accumulate=True needs out"),
    (lambda: ops.column_sum(X, out=np.zeros(3, np.float32)), ValueError,
     r"column_sum: out must have shape \(4,\), got \(3,\)"),
    (lambda: ops.column_sum(X.T), ValueError, "column_sum: x must be C-contiguous"),
    (lambda: ops.sum(np.zeros(0, np.float32)), ValueError, "sum: x must not be empty"),
    (lambda: ops.sum([1.0]), TypeError, "sum: x must be a numpy.ndarray"),
    (lambda: ops.global_norm([]), ValueError, "global_norm: arrays must hold at least one array"),
    (lambda: ops.global_norm([X, X.astype(np.float64)]), TypeError,
     r"global_norm: arrays\[1\] must have dtype float32"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_column_sum_out_must_not_alias_input():
    buf = np.ones(20, np.float32)
    with pytest.raises(ValueError, match="column_sum: out must not share memory with x"):
        ops.column_sum(buf[:16].reshape(4, 4), out=buf[:4])
