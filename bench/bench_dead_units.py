"""The optimizer step on a model whose units get no gradient (dead ReLUs): Adam's first moment
(SGD's momentum buffer) shrinks by beta1 (momentum) every step and, left alone, becomes float32
subnormal after ~800 steps, which x86 cores compute ~100x slower. ember stores such moments as
0 (csrc/cpu/optim.cpp, ``flushed``). Worst case: every unit dead, 784-1024-1024-10, 1 thread.

    python bench/bench_dead_units.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import ember  # noqa: E402
from ember.nn import MLP  # noqa: E402
from ember.optim import SGD, Adam  # noqa: E402


def median_step_ms(opt, calls: int = 15) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    ember.set_num_threads(1)
    for opt_class, kw in ((Adam, {}), (SGD, {"momentum": 0.9})):
        model = MLP([784, 1024, 1024, 10], seed=0)
        opt = opt_class(model, lr=1e-3, **kw)
        rng = np.random.default_rng(0)
        for p in model.parameters():
            p.grad = rng.standard_normal(p.data.shape).astype(np.float32) * 1e-3
        opt.step()
        for p in model.parameters():
            p.grad[...] = 0
        start = median_step_ms(opt)
        for _ in range(1000):
            opt.step()
        print(f"{opt_class.__name__}: step {start:.2f} ms at the start, {median_step_ms(opt):.2f} "
              "ms after 1000 steps without gradient (median of 15)")


if __name__ == "__main__":
    main()
