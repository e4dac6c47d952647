"""One Adam step over a 1.01M-parameter MLP (6 tensors): ember's fused call vs vectorised NumPy
vs torch.optim.Adam (foreach; fused where this PyTorch has it on the CPU), the figure of
bench_optim.py. Run: ``python -m pytest bench/test_optim.py --benchmark-only``."""
from __future__ import annotations

import pytest

import workloads as w


@pytest.mark.parametrize("who", ["ember", "numpy", "torch foreach", "torch fused"])
def test_adam_step(measure, who):
    measure(w.adam_step(), who)
