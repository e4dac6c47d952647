"""Dropout: the Philox4x32-10 stream (known answers, a NumPy re-implementation), mask statistics,
reproducibility, offset continuity and thread-count independence."""
import numpy as np
import pytest

import ember
import ember.ops as ops
from ember import _cpu
from conftest import poisoned

M32 = np.uint64(0xFFFFFFFF)


def philox_np(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on arrays of uint64 holding 32-bit words (Salmon et al. 2011)."""
    c = [np.asarray(v, np.uint64) for v in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & M32
        k1 = (k1 + np.uint64(0xBB67AE85)) & M32
    return c


def dropout_ref(x, p, seed, offset):
    """The documented stream, element by element (see ops.dropout_forward)."""
    n = x.size
    g = (np.uint64(offset) + np.arange(n, dtype=np.uint64))  # wraps mod 2**64
    blk = g >> np.uint64(2)
    words = philox_np(blk & M32, blk >> np.uint64(32), np.zeros(n, np.uint64), np.zeros(n, np.uint64),
                      np.uint64(seed) & M32, np.uint64(seed) >> np.uint64(32))
    r = np.choose((g & np.uint64(3)).astype(np.int64), words)
    p32 = np.float32(p)
    keep = (r >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24) >= p32
    scale = np.float32(1) / (np.float32(1) - p32) if p32 < 1 else np.float32(0)
    return np.where(keep.reshape(x.shape), x * scale, np.float32(0)).astype(np.float32)


KAT = [  # Random123 kat_vectors, philox4x32_10
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert list(_cpu.philox4x32_10(counter, key)) == expected
    assert [int(v) for v in philox_np(*counter, *key)] == expected


@pytest.mark.parametrize("n, p, seed, offset", [
    (1, 0.5, 0, 0), (3, 0.5, 7, 1), (5, 0.3, 123, 2), (63, 0.1, 2**40 + 5, 3), (64, 0.5, 1, 0),
    (65, 0.9, 2**63 + 17, 6), (1023, 0.25, 42, 2**34 + 3), (4099, 0.5, 99, 2**64 - 9),
    (100_003, 0.2, 5, 11),
])
def test_matches_the_documented_stream(n, p, seed, offset, isa, rng):
    # Includes: seeds using the high key word, counters using the high word, offsets that wrap.
    x = rng.standard_normal(n).astype(np.float32)
    y = ops.dropout_forward(x, p, seed, offset, out=poisoned(n))
    np.testing.assert_array_equal(y, dropout_ref(x, p, seed, offset))


def test_reproducible_and_offset_dependent(rng):
    x = rng.standard_normal((37, 41)).astype(np.float32) + 3  # nonzero everywhere
    a = ops.dropout_forward(x, 0.5, 1234, 100)
    b = ops.dropout_forward(x, 0.5, 1234, 100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    for seed, offset in [(1234, 101), (1234, 104), (1235, 100), (1234 + 2**32, 100)]:
        c = ops.dropout_forward(x, 0.5, seed, offset)
        assert np.mean((a == 0) != (c == 0)) > 0.3, (seed, offset)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale(p, rng):
    n = 1_000_000
    x = np.ones(n, np.float32)
    y = ops.dropout_forward(x, p, 2024, 0)
    kept = y != 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 6 * sigma
    np.testing.assert_array_equal(y[kept], np.float32(1) / (np.float32(1) - np.float32(p)))
    # 4 lanes of one Philox call are independent: each lane keeps at the same rate
    for lane in range(4):
        assert abs(kept[lane::4].mean() - (1 - p)) < 6 * sigma * 2


def test_backward_uses_the_same_mask(rng):
    x = rng.standard_normal(10_007).astype(np.float32) + 5
    g = rng.standard_normal(10_007).astype(np.float32) + 5
    y = ops.dropout_forward(x, 0.4, 77, 13)
    gi = ops.dropout_backward(g, 0.4, 77, 13, out=poisoned(10_007))
    np.testing.assert_array_equal(y == 0, gi == 0)
    scale = np.float32(1) / np.float32(0.6)
    np.testing.assert_array_equal(gi[gi != 0], g[gi != 0] * scale)


@pytest.mark.parametrize("k", [4, 64, 1024, 1, 3, 5, 66, 1027])
def test_offset_continuity(k, rng):
    # One call over n elements at offset o == two calls over [o, o+k) and [o+k, o+n): k a multiple
    # of 4 and not (the 4-lane Philox blocks straddle the split), o itself not a multiple of 4.
    n, o = 5000, 4097 + 2
    x = rng.standard_normal(n).astype(np.float32)
    whole = ops.dropout_forward(x, 0.5, 9, o)
    parts = np.concatenate([ops.dropout_forward(x[:k], 0.5, 9, o),
                            ops.dropout_forward(x[k:], 0.5, 9, o + k)])
    np.testing.assert_array_equal(whole, parts)


def test_thread_count_independent_and_in_place(rng):
    x = rng.standard_normal(500_009).astype(np.float32)
    before = ember.get_num_threads()
    try:
        ember.set_num_threads(1)
        a = ops.dropout_forward(x, 0.3, 5, 3)
        ember.set_num_threads(2)
        b = ops.dropout_forward(x, 0.3, 5, 3)
    finally:
        ember.set_num_threads(before)
    np.testing.assert_array_equal(a, b)
    xi = x.copy()
    assert ops.dropout_forward(xi, 0.3, 5, 3, out=xi) is xi
    np.testing.assert_array_equal(xi, a)


def test_p_zero_and_one(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[0, 0] = np.nan
    np.testing.assert_array_equal(ops.dropout_forward(x, 0.0, 1, 0), x)
    z = ops.dropout_forward(x, 1.0, 1, 0)
    assert np.all(z == 0)  # the NaN too: dropped elements are 0
    assert np.all(ops.dropout_backward(x, 1, 1, 0) == 0)


X = np.ones((3, 4), np.float32)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: ops.dropout_forward(X, -0.1, 0), ValueError,
     r"dropout_forward: p must be in \[0, 1\], got -0.1"),
    (lambda: ops.dropout_forward(X, 1.5, 0), ValueError, r"dropout_forward: p must be in \[0, 1\]"),
    (lambda: ops.dropout_forward(X, float("nan"), 0), ValueError,
     r"dropout_forward: p must be in \[0, 1\], got nan"),
    (lambda: ops.dropout_forward(X, None, 0), TypeError,
     "dropout_forward: p must be a real number, got NoneType"),
    (lambda: ops.dropout_forward(X, 0.5, -1), ValueError, "dropout_forward: seed must be >= 0, got -1"),
    (lambda: ops.dropout_forward(X, 0.5, 2**64), ValueError,
     r"dropout_forward: seed must be < 2\*\*64, got 18446744073709551616"),
    (lambda: ops.dropout_forward(X, 0.5, 1.0), TypeError, "dropout_forward: seed must be an int, got float"),
    (lambda: ops.dropout_forward(X, 0.5, True), TypeError, "dropout_forward: seed must be an int, got bool"),
    (lambda: ops.dropout_forward(X, 0.5, 0, -5), ValueError, "dropout_forward: offset must be >= 0"),
    (lambda: ops.dropout_forward(X, 0.5, 0, "1"), TypeError, "dropout_forward: offset must be an int, got str"),
    (lambda: ops.dropout_forward(X.astype(np.float64), 0.5, 0), TypeError,
     "dropout_forward: x must have dtype float32, got float64"),
    (lambda: ops.dropout_forward(X, 0.5, 0, out=np.zeros((4, 3), np.float32)), ValueError,
     r"dropout_forward: out must have shape \(3, 4\), got \(4, 3\)"),
    (lambda: ops.dropout_backward(X.T, 0.5, 0), ValueError, "dropout_backward: grad_out must be C-contiguous"),
    (lambda: ops.dropout_backward(np.zeros((3, 0), np.float32), 0.5, 0), ValueError,
     "dropout_backward: grad_out must not be empty"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_numpy_integer_seed_and_offset_accepted():
    a = ops.dropout_forward(X, 0.5, np.uint64(2**63 + 1), np.int64(8))
    b = ops.dropout_forward(X, 0.5, 2**63 + 1, 8)
    np.testing.assert_array_equal(a, b)
