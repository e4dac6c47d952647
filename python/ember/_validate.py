"""Argument checks: every rule for a scalar argument, and its message, written once.

Each check takes ``where`` (the caller as the user wrote it: ``"fit"``, ``"DataLoader"``,
``"Linear"``) and ``name`` (the argument), and returns the value in its plain Python type or
raises with a message of one form, ``"<where>: <name> must be <rule>, got <value!r>"``:

====================  ==========================================  ===========
check                 rule                                        raises
====================  ==========================================  ===========
positive_int          "a positive integer"                        ValueError
int_at_least(low)     "an integer >= low" (``or None`` allowed)   ValueError
int_in(low, high)     "an integer in [low, high]"                 ValueError
seed                  "an integer >= 0" / "in [0, 2**64)"         ValueError
flag                  "True or False"                             ValueError
real_in(lo, hi)       "a number in [lo, hi)" (either end open)    ValueError
positive_real         "a finite number > 0"                       ValueError
finite_real           "a finite number"                           ValueError
one_of(names)         "one of 'a', 'b'"                           ValueError
====================  ==========================================  ===========

Booleans are refused where a number is asked (``True`` is not a batch size) and NumPy scalars
are accepted where a Python one is. Array checks (shape, dtype, device) live with the kernels
(:mod:`ember.ops` and the bindings); these are for the hyperparameters around them.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import numpy as np

__all__ = ["is_int", "is_real", "positive_int", "int_at_least", "int_in", "seed", "flag",
           "real_in", "positive_real", "finite_real", "one_of", "fail"]


def is_int(value) -> bool:
    """An integer that is not a bool (Python or NumPy)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A real number that is not a bool (Python or NumPy)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def fail(where: str, name: str, rule: str, value, error=ValueError):
    """Raise ``error("<where>: <name> must be <rule>, got <value!r>")``."""
    prefix = f"{where}: " if where else ""
    raise error(f"{prefix}{name} must be {rule}, got {value!r}")


def positive_int(where: str, name: str, value) -> int:
    if not is_int(value) or value < 1:
        fail(where, name, "a positive integer", value)
    return int(value)


def int_at_least(where: str, name: str, value, low: int, none_ok: bool = False,
                 what: str = "") -> Optional[int]:
    """An integer >= ``low`` (None too with ``none_ok``); ``what`` adds a gloss to the rule."""
    if value is None and none_ok:
        return None
    if not is_int(value) or value < low:
        fail(where, name, f"an integer >= {low}{' or None' if none_ok else ''}{what}", value)
    return int(value)


def int_in(where: str, name: str, value, low: int, high: int) -> int:
    """An integer in [low, high] (both included)."""
    if not is_int(value) or not low <= value <= high:
        fail(where, name, f"an integer in [{low}, {high}]", value)
    return int(value)


def seed(where: str, value, limit: Optional[int] = None) -> int:
    """A random seed: an integer >= 0 (and < ``limit`` when given: 2**64 for Philox keys)."""
    if not is_int(value) or value < 0 or (limit is not None and value >= limit):
        fail(where, "seed", "an integer >= 0" if limit is None else "an integer in [0, 2**64)",
             value)
    return int(value)


def flag(where: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        fail(where, name, "True or False", value)
    return bool(value)


def real_in(where: str, name: str, value, low: float, high: float,
            closed_high: bool = False) -> float:
    """A number in [low, high) ([low, high] with ``closed_high``); NaN is refused."""
    ok = is_real(value) and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        fail(where, name, f"a number in [{low:g}, {high:g}{']' if closed_high else ')'}", value)
    return float(value)


def positive_real(where: str, name: str, value) -> float:
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        fail(where, name, "a finite number > 0", value)
    return float(value)


def finite_real(where: str, name: str, value) -> float:
    if not is_real(value) or not math.isfinite(value):
        fail(where, name, "a finite number", value)
    return float(value)


def one_of(where: str, name: str, value, names: Iterable[str]) -> str:
    """``value`` when it is one of ``names`` (the table it is looked up in)."""
    names = list(names)
    if not isinstance(value, str) or value not in names:
        fail(where, name, "one of " + ", ".join(repr(n) for n in names), value)
    return value
