"""gather_rows: against numpy.take, thread independence, bad input."""
import numpy as np
import pytest

import ember
import ember.ops as ops
from conftest import ODD_SIZES, poisoned


def test_gather_rows_matches_numpy_take(isa, rng):
    for n in ODD_SIZES[:9]:
        for cols in (1, 3, 64, 129):
            x = rng.standard_normal((n, cols)).astype(np.float32)
            for rows in (1, n, 2 * n + 1):
                idx = rng.integers(0, n, rows)  # repeats included
                out = poisoned((rows, cols))
                got = ops.gather_rows(x, idx, out=out)
                assert got is out
                np.testing.assert_array_equal(got, np.take(x, idx, axis=0))
    # a new array when out is not given; narrower integer indices are widened
    x = rng.standard_normal((10, 4)).astype(np.float32)
    idx = np.array([9, 0, 3], np.int32)
    np.testing.assert_array_equal(ops.gather_rows(x, idx), x[[9, 0, 3]])


def test_gather_rows_same_for_any_thread_count(rng):
    # Above the parallel threshold: 1001 rows of 300 floats, a row count not a multiple of 8.
    x = rng.standard_normal((5000, 300)).astype(np.float32)
    idx = rng.permutation(5000)[:1001]
    before = ember.get_num_threads()
    try:
        got = {}
        for n in (1, 2):
            ember.set_num_threads(n)
            got[n] = ops.gather_rows(x, idx)
    finally:
        ember.set_num_threads(before)
    np.testing.assert_array_equal(got[1], x[idx])
    np.testing.assert_array_equal(got[2], x[idx])


X = np.arange(12, dtype=np.float32).reshape(4, 3)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.gather_rows(X, np.array([4])), ValueError,
     r"gather_rows: index\[0\] = 4 is out of range \[0, 4\)"),
    (lambda: ops.gather_rows(X, np.array([0, -1])), ValueError,
     r"gather_rows: index\[1\] = -1 is out of range"),
    (lambda: ops.gather_rows(X, np.array([0.0])), TypeError, "gather_rows: index must be an integer"),
    (lambda: ops.gather_rows(X, [0, 1]), TypeError, "gather_rows: index must be a numpy.ndarray"),
    (lambda: ops.gather_rows(X, np.zeros((1, 1), np.int64)), ValueError,
     "gather_rows: index must be 1-D"),
    (lambda: ops.gather_rows(X, np.zeros(0, np.int64)), ValueError,
     "gather_rows: index must not be empty"),
    (lambda: ops.gather_rows(X.astype(np.float64), np.array([0])), TypeError,
     "gather_rows: x must have dtype float32"),
    (lambda: ops.gather_rows(X.T, np.array([0])), ValueError, "gather_rows: x must be C-contiguous"),
    (lambda: ops.gather_rows(X, np.array([0, 1]), out=np.zeros((3, 3), np.float32)), ValueError,
     r"gather_rows: out must have shape \(2, 3\), got \(3, 3\)"),
    (lambda: ops.gather_rows(X, np.array([0]), out=X[:1]), ValueError,
     "gather_rows: out must not share memory with x"),
])
def test_gather_rows_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_gather_rows_read_only_out():
    out = np.zeros((1, 3), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="gather_rows: out is an output and must be writable"):
        ops.gather_rows(X, np.array([1]), out=out)
