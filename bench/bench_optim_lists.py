"""The host side of ``ops.adam_step`` on lists of CUDA arrays, measured without a GPU.

    PYTHONPATH=python python bench/bench_optim_lists.py [--tensors 128] [--repeats 200]

A caller's own loop (the drop-in use of the kernels) passes the same lists every step. Before
ember._plan_cache every call read and checked every array; now the second and later calls with
the same CuPy arrays find their checked plan by identity. Both host paths are timed here on
stand-in arrays whose ``__cuda_array_interface__`` is built on each access, as CuPy's is:

- ``checked``: the binding's checks of all 4 x tensors arrays (``ember._cuda.adam_step``), timed
  until it stops where a GPU is needed (``cudaGetDevice``). On a GPU it also asks the driver
  for each pointer's device, which this leaves out: a lower bound of the real cost.
- ``kept``: ``ops.adam_step`` through the cache with a stand-in plan whose step returns at once:
  the identity key and lookup this adds in front of the plan's own step (``OptimPlan.adam``: its
  hyperparameter checks and the launch, the same as ``ember.optim.Adam.step`` pays, which this
  cannot time here).

Needs ember built with CUDA (the ``_cuda`` module); no GPU, no CuPy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types


class FakeArray:
    """A CuPy-like array: its interface dict is made on every access (CuPy's property does)."""

    __slots__ = ("n", "ptr", "__weakref__")

    def __init__(self, n, ptr):
        self.n, self.ptr = n, ptr

    @property
    def shape(self):  # (a new tuple each time, as CuPy's)
        return (self.n,)

    @property
    def __cuda_array_interface__(self):
        return {"shape": (self.n,), "typestr": "<f4", "descr": [("", "<f4")],
                "data": (self.ptr, False), "version": 3, "strides": None, "stream": 1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    from ember import _cuda_ops, ops
    from ember._plan_cache import PlanCache

    per = 10_500_000 // args.tensors  # the H200 run's 10.5M parameters
    ptr = [1 << 32]

    def fresh():
        ptr[0] += per * 4 + 256
        return FakeArray(per, ptr[0])

    lists = [[fresh() for _ in range(args.tensors)] for _ in range(4)]
    hyper = (1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 0.0)

    def checked():
        try:
            _cuda_ops._cuda.adam_step(*lists, None, *hyper, None, None, False, 0, None)
        except Exception as exc:  # the first CUDA runtime call, after every check
            if "cudaGetDevice" not in str(exc) and "CUDA" not in str(exc):
                raise

    class Plan:
        def __init__(self, *a, **k):
            pass

        def adam(self, *a):
            return 0.0, False

    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                      get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    sys.modules["cupy"] = cupy
    _cuda_ops._cupy = cupy
    real = _cuda_ops._cuda
    _cuda_ops._cuda = types.SimpleNamespace(OptimPlan=Plan, adam_step=lambda *a: (0.0, False))
    _cuda_ops._plans = PlanCache()

    def kept():
        ops.adam_step(*lists, lr=1e-3)

    kept()
    kept()  # (the second call makes the plan)
    assert _cuda_ops._plans.made == 1
    times = {"checked": [], "kept": []}
    for _ in range(args.repeats):
        for name, fn in (("kept", kept), ("checked", None)):
            if fn is None:
                _cuda_ops._cuda, saved = real, _cuda_ops._cuda
                t0 = time.perf_counter()
                checked()
                times[name].append(time.perf_counter() - t0)
                _cuda_ops._cuda = saved
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    assert _cuda_ops._plans.hits >= args.repeats
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(f"{args.tensors} tensors ({4 * args.tensors} arrays), median of {args.repeats} calls, "
          f"host microseconds")
    print(f"  checked binding, up to the first CUDA call : {med['checked']:9.1f}")
    print(f"  kept plan: key + lookup (+ plan step, not timed here): {med['kept']:9.1f}")
    print(f"  ratio: {med['checked'] / med['kept']:.1f}x")


if __name__ == "__main__":
    main()
