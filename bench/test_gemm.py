"""GEMM family against NumPy (OpenBLAS): plain products, the fused linear+bias+ReLU forward and
the linear backward. Run: ``python -m pytest bench/test_gemm.py --benchmark-only``."""
from __future__ import annotations

import pytest

import workloads as w

# (m, n, k) of (m, k) @ (k, n): square, the MLP's layer shapes, and an odd one (no block size
# divides it).
MATMUL = [(256, 256, 256), (1024, 1024, 1024), (128, 256, 784), (128, 10, 256), (333, 777, 129)]
# (batch, in, out) of x @ W.T.
LINEAR = [(128, 784, 256), (128, 256, 10), (37, 100, 65)]
CONTENDERS = ["ember", "numpy"]


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("mnk", MATMUL, ids=lambda s: "x".join(map(str, s)))
def test_matmul(measure, mnk, who):
    measure(w.matmul(*mnk), who)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("shape", LINEAR, ids=lambda s: "x".join(map(str, s)))
def test_linear_forward(measure, shape, who):
    measure(w.linear_forward(*shape), who)


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("shape", LINEAR[:1] + LINEAR[2:], ids=lambda s: "x".join(map(str, s)))
def test_linear_backward(measure, shape, who):
    measure(w.linear_backward(*shape), who)
