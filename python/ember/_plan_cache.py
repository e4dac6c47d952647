"""Checked optimizer lists kept between calls: what lets ``ops.sgd_step`` / ``ops.adam_step`` on
lists of CuPy arrays skip the per-array checks when a caller passes the same arrays again.

Checking a list of CUDA arrays means reading every array's ``__cuda_array_interface__`` (a dict
CuPy builds on each access), its pointer's device (``cudaPointerGetAttributes``) and the overlaps
of all of them: ~5 us an array, 2.6 ms a call for 128 tensors with Adam's 512 arrays (H200 run of
2026-11-27). A :class:`PlanCache` keeps an ``OptimPlan`` (the lists checked once, see
``csrc/bindings/cuda_optim.cpp``) keyed by the identity and shape of every array, for arrays
whose memory, size and dtype can never change while they live (``cupy.ndarray``: ``data``, ``size`` and
``dtype`` are read-only), so the identities stand for what the plan checked. The plan holds no
reference to the arrays (``hold=False``): an entry is dropped, by a weak-reference callback, as
soon as any of its arrays is freed, so a plan never outlives its memory and the cache keeps no
array alive.

A plan is made the second time the same lists come (lists made afresh every call, new gradient
arrays each step say, would pay for a plan they never reuse): the first call and every call with
lists not seen before go through the plain, checked binding, and its errors are the caller's.

No CUDA here (tests drive it with stand-in plans): ``ember._cuda_ops`` makes the plans.
"""
from __future__ import annotations

import operator
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence


_shape = operator.attrgetter("shape")


def list_key(*lists: Optional[Sequence[Any]]) -> tuple:
    """The identity and shape of every array of ``lists`` (None: an absent list), in order. (A
    CuPy array's shape can be set in place, to one of the same size: the checks compare shapes,
    so a reshaped array is checked again.)"""
    return tuple(None if lst is None else (tuple(map(id, lst)), tuple(map(_shape, lst)))
                 for lst in lists)


class PlanCache:
    """At most ``capacity`` plans (least recently used dropped first), each alive while all the
    arrays it was made for are; ``seen`` remembers the last ``seen_capacity`` keys met once."""

    def __init__(self, capacity: int = 4, seen_capacity: int = 16):
        self.capacity, self.seen_capacity = capacity, seen_capacity
        self._plans: "OrderedDict[Hashable, tuple]" = OrderedDict()  # key -> (plan, weakrefs)
        self._seen: "OrderedDict[Hashable, None]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.made = 0

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, key: Hashable):
        """The plan made for ``key``, or None."""
        with self._lock:
            entry = self._plans.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._plans.move_to_end(key)
            self.hits += 1
            return entry[0]

    def offer(self, key: Hashable, arrays: Sequence[Any], make: Callable[[], Any]) -> None:
        """After a checked call with the lists of ``key`` (their arrays ``arrays``, every one of
        a type that can be weakly referenced and never changes): the second time, make their
        plan (``make()``) and keep it while they all live."""
        with self._lock:
            if key in self._plans:
                return
            if key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > self.seen_capacity:
                    self._seen.popitem(last=False)
                return
            del self._seen[key]
        plan = make()  # (outside the lock: it checks every array)

        def drop(_ref, key=key):
            with self._lock:
                entry = self._plans.get(key)
                if entry is not None and entry[0] is plan:
                    del self._plans[key]

        refs = [weakref.ref(a, drop) for a in arrays]
        with self._lock:
            self._plans[key] = (plan, refs)
            self.made += 1
            while len(self._plans) > self.capacity:
                self._plans.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._seen.clear()
