"""ember._plan_cache and its use by ops.sgd_step / ops.adam_step on lists of CuPy arrays: the
lists' checks are kept from the second call with the same arrays, dropped when one is freed.

Runs without a GPU: the cache is driven with stand-in arrays and plans, and the ops routing with
a stand-in CuPy module and binding (when ember is built with CUDA: CI's forced-CUDA stage). The
kernels themselves behind a kept plan are ember.optim's, tested on a GPU in test_cuda_ops.py."""
from __future__ import annotations

import gc
import sys
import types
import weakref

import numpy as np
import pytest

from ember import _plan_cache, ops
from ember._plan_cache import PlanCache, list_key


class Arr:
    """Stands in for a cupy.ndarray: weakly referenceable, with a CUDA array interface."""

    def __init__(self, n=4, ptr=None):
        self.n, self.ptr = n, ptr or (0x10000 + 0x1000 * id(self) % 2 ** 30)
        self.shape = (n,)

    @property
    def __cuda_array_interface__(self):
        return {"shape": (self.n,), "typestr": "<f4", "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": 1}


class Plan:
    pass


def test_a_plan_is_made_the_second_time_and_dies_with_its_arrays():
    cache = PlanCache()
    arrays = [Arr() for _ in range(4)]
    key = list_key(arrays[:2], arrays[2:], None)
    made = []

    def make():
        made.append(Plan())
        return made[-1]

    assert cache.get(key) is None
    cache.offer(key, arrays, make)  # first time: remembered, no plan
    assert made == [] and cache.get(key) is None
    cache.offer(key, arrays, make)
    assert len(made) == 1 and cache.get(key) is made[0] and len(cache) == 1
    cache.offer(key, arrays, make)  # kept: not made again
    assert len(made) == 1
    plan_ref = weakref.ref(made.pop())
    del arrays[3]  # one array freed: the entry and its plan go with it
    gc.collect()
    assert len(cache) == 0 and cache.get(key) is None and plan_ref() is None
    assert (cache.hits, cache.made) == (1, 1)


def test_keys_are_identities_in_order_and_the_cache_is_bounded():
    a, b = Arr(), Arr()
    assert list_key([a, b]) != list_key([b, a])
    assert list_key([a], None) != list_key([a], [])
    assert list_key([a], [b]) != list_key([a, b])
    cache = PlanCache(capacity=2, seen_capacity=3)
    sets = [[Arr()] for _ in range(4)]
    for s in sets:
        for _ in range(2):
            cache.offer(list_key(s), s, Plan)
    assert len(cache) == 2  # least recently used dropped
    assert cache.get(list_key(sets[0])) is None and cache.get(list_key(sets[3])) is not None
    many = [[Arr()] for _ in range(5)]
    for s in many:
        cache.offer(list_key(s), s, Plan)
    cache.offer(list_key(many[0]), many[0], Plan)  # forgotten among the seen: seen once more
    assert cache.get(list_key(many[0])) is None
    cache.offer(list_key(many[-1]), many[-1], Plan)
    assert cache.get(list_key(many[-1])) is not None


# ----------------------------------------------------------------------------------------------
# ops routing, with a stand-in CuPy and binding


@pytest.fixture
def fake_cuda(monkeypatch):
    """ember._cuda_ops with a stand-in ``cupy`` (its ``ndarray`` is :class:`Arr`) and binding
    that record what is called."""
    try:
        from ember import _cuda_ops
    except ImportError:
        pytest.skip("ember was built without CUDA (ember._cuda_ops does not import)")
    calls = []
    device = [0]

    class Binding:
        class OptimPlan:
            def __init__(self, params, grads, states, stream, hold=True):
                calls.append(("plan", len(params), len(states), hold))
                # (hold=False: no reference to the arrays, as the real plan)

            def adam(self, *args):
                calls.append(("plan.adam",) + args[:1])
                return 1.0, False

            def sgd(self, *args):
                calls.append(("plan.sgd",) + args[:1])
                return 2.0, False

        @staticmethod
        def adam_step(params, grads, m, v, vmax, lr, *rest):
            if any(g is p for g, p in zip(grads, params)):
                raise ValueError("adam_step: grads[0] overlaps params[0]")
            calls.append(("adam_step", lr))
            return 1.0, False

        @staticmethod
        def sgd_step(params, grads, bufs, lr, *rest):
            calls.append(("sgd_step", lr))
            return 2.0, False

    cupy = types.ModuleType("cupy")
    cupy.ndarray = Arr
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: device[0]),
        get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(_cuda_ops, "_cupy", cupy)
    monkeypatch.setattr(_cuda_ops, "_cuda", Binding)
    monkeypatch.setattr(_cuda_ops, "_plans", PlanCache())
    monkeypatch.setattr(ops, "_cuda_ops", _cuda_ops)
    return types.SimpleNamespace(calls=calls, device=device, cache=lambda: _cuda_ops._plans)


def _adam_lists(n=3):
    return [[Arr() for _ in range(n)] for _ in range(4)]


def test_adam_step_on_the_same_cupy_lists_keeps_their_checks(fake_cuda):
    params, grads, m, v = _adam_lists()
    for i in range(4):
        assert ops.adam_step(params, grads, m, v, lr=0.1 * (i + 1)) == (1.0, False)
    assert fake_cuda.calls == [("adam_step", 0.1), ("adam_step", 0.2), ("plan", 3, 2, False),
                               ("plan.adam", pytest.approx(0.3)), ("plan.adam", 0.4)]
    del fake_cuda.calls[:]
    # new list objects holding the same arrays: the same key
    ops.adam_step(list(params), tuple(grads), list(m), list(v), lr=0.5)
    # another gradient array, amsgrad, or another current device: checked again
    ops.adam_step(params, [Arr(), *grads[1:]], m, v, lr=0.6)
    vmax = [Arr() for _ in params]
    ops.adam_step(params, grads, m, v, vmax, lr=0.7, amsgrad=True)
    fake_cuda.device[0] = 1
    ops.adam_step(params, grads, m, v, lr=0.8)
    fake_cuda.device[0] = 0
    m[2].shape = (2, 2)  # reshaped in place (CuPy allows it): checked again
    ops.adam_step(params, grads, m, v, lr=0.9)
    assert fake_cuda.calls == [("plan.adam", 0.5), ("adam_step", 0.6), ("adam_step", 0.7),
                               ("adam_step", 0.8), ("adam_step", 0.9)]


def test_a_freed_array_drops_the_plan_and_errors_are_the_checked_calls(fake_cuda):
    params, grads, m, v = _adam_lists()
    for _ in range(3):
        ops.adam_step(params, grads, m, v, lr=0.1)
    assert len(fake_cuda.cache()) == 1
    m[1] = Arr()  # the old moment is freed
    gc.collect()
    assert len(fake_cuda.cache()) == 0
    # a call the binding refuses is refused every time, and never kept
    bad = [params[0], *grads[1:]]
    for _ in range(3):
        with pytest.raises(ValueError, match="grads\\[0\\] overlaps params\\[0\\]"):
            ops.adam_step(params, bad, m, v, lr=0.1)
    assert len(fake_cuda.cache()) == 0


def test_only_exact_cupy_arrays_are_kept(fake_cuda):
    class Sub(Arr):  # a subclass may change what its interface says
        pass

    params = [Sub() for _ in range(2)]
    grads, bufs = [Arr(), Arr()], [Arr(), Arr()]
    for _ in range(3):
        ops.sgd_step(params, grads, bufs, lr=0.1, momentum=0.9)  # (routed by params[0]: no)
    mixed = [Arr(), Sub()]
    for _ in range(3):
        ops.sgd_step(mixed, grads, bufs, lr=0.2, momentum=0.9)
    assert [c[0] for c in fake_cuda.calls] == ["sgd_step"] * 6
    plain = [Arr(), Arr()]
    for _ in range(3):
        ops.sgd_step(plain, grads, None, lr=0.3)  # no momentum: no buffers in the key
    assert fake_cuda.calls[6:] == [("sgd_step", 0.3), ("sgd_step", 0.3), ("plan", 2, 0, False),
                                   ("plan.sgd", 0.3)]


def test_numpy_lists_do_not_use_the_cache():
    rng = np.random.default_rng(0)
    p = [rng.standard_normal(5).astype(np.float32)]
    g = [rng.standard_normal(5).astype(np.float32)]
    m, v = [np.zeros(5, np.float32)], [np.zeros(5, np.float32)]
    before = _plan_cache.PlanCache.offer
    try:
        _plan_cache.PlanCache.offer = lambda *a: pytest.fail("a NumPy call was offered")
        for _ in range(3):
            ops.adam_step(p, g, m, v, lr=0.1)
    finally:
        _plan_cache.PlanCache.offer = before
