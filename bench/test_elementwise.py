"""Elementwise kernels, the losses and the deterministic reductions against NumPy (and
PyTorch where installed). Run: ``python -m pytest bench/test_elementwise.py --benchmark-only``."""
from __future__ import annotations

import pytest

import workloads as w

WITH_TORCH = ["ember", "numpy", "torch"]
NUMPY_ONLY = ["ember", "numpy"]


@pytest.mark.parametrize("who", WITH_TORCH)
@pytest.mark.parametrize("shape", [(128, 10), (4096, 1000), (1000, 37)],
                         ids=lambda s: "x".join(map(str, s)))
def test_softmax_cross_entropy(measure, shape, who):
    measure(w.softmax_cross_entropy(*shape), who)


@pytest.mark.parametrize("who", WITH_TORCH)
def test_mse(measure, who):
    measure(w.mse(4096, 64), who)


@pytest.mark.parametrize("who", WITH_TORCH)
def test_gelu_tanh(measure, who):
    measure(w.activation_gelu_tanh(4096, 256), who)


@pytest.mark.parametrize("who", NUMPY_ONLY)
def test_column_sum(measure, who):
    measure(w.column_sum(4096, 257), who)


@pytest.mark.parametrize("who", NUMPY_ONLY)
def test_sum(measure, who):
    measure(w.total_sum(1 << 20), who)


@pytest.mark.parametrize("who", NUMPY_ONLY)
def test_global_norm(measure, who):
    measure(w.global_norm(w.ADAM_SHAPES), who)
