"""Shared test helpers: `check_op` compares any ember op with a float64 NumPy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember

def subprocess_env(**extra) -> dict:
    """Environment for a child Python that must import the same ember as this test process
    (the installed package in CI, python/ in a developer's tree)."""
    import os
    from pathlib import Path
    root = str(Path(ember.__file__).resolve().parents[1])
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                  else []))
    return env


# Sizes that include 1, primes and sizes that are not multiples of any block size.
ODD_SIZES = (1, 2, 3, 5, 7, 13, 17, 31, 33, 63, 65, 97, 127, 129, 257)


def rel_error(got, ref) -> float:
    """``||got - ref|| / ||ref||`` in float64 (absolute error when ``ref`` is all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(got) == np.isfinite(ref)), "non-finite values differ"
    denom = np.linalg.norm(ref)
    err = np.linalg.norm(got - ref)
    return float(err / denom) if denom > 0 else float(err)


def check_op(got, ref, rtol: float = 1e-5, what: str = "") -> float:
    """Assert ``rel_error(got, ref) <= rtol``; returns the error so tests can report it."""
    err = rel_error(got, ref)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"
    return err


# float64 references for the activations (the formulas of csrc/cpu/activation_math.h), shared by
# the CPU and CUDA GEMM tests.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def act_ref(z, name, slope=0.01):
    """act(z) in float64."""
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if name == "gelu":
        return 0.5 * z * (1 + _erf(z / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "silu":
        return z / (1 + np.exp(-z))
    raise AssertionError(name)


def act_grad_ref(z, name, slope=0.01):
    """act'(z) in float64."""
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, slope)
    if name == "gelu":
        return 0.5 * (1 + _erf(z / math.sqrt(2))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        k = math.sqrt(2 / math.pi)
        t = np.tanh(k * (z + 0.044715 * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s)
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return s * (1 + z * (1 - s))
    raise AssertionError(name)


def poisoned(shape, dtype=np.float32):
    """An output buffer full of NaN, so an element the kernel forgot to write shows up."""
    return np.full(shape, np.nan, dtype=dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_collection_modifyitems(config, items):
    if ember.cuda_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (ember.info()['backends']['cuda'])")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["base", "v3", "v4"])
def isa(request):
    """Run under each CPU build (baseline x86-64, AVX2, AVX-512) this processor supports; restore
    the default afterwards. CI's machine supports all three, so every build is tested there."""
    from ember import _cpu
    before = {"base": "base", "x86-64-v3": "v3", "x86-64-v4": "v4"}[_cpu.isa()]
    try:
        _cpu.set_isa(request.param)
    except ValueError:
        pytest.skip(f"{request.param} not supported by this CPU")
    yield request.param
    _cpu.set_isa(before)
