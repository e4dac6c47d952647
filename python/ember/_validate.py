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
nonnegative_real      "a finite number >= 0"                      ValueError
finite_real           "a finite number"                           ValueError
bound(low, high)      ">= low" / "> 0" / "in [low, high)"         ValueError
one_of(names)         "one of 'a', 'b'"                           ValueError
====================  ==========================================  ===========

``bound`` is the optimizers' form (``"lr must be >= 0.0"``, ``"eps must be > 0"``), kept as
their messages have always read.

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
           "real_in", "positive_real", "nonnegative_real", "finite_real", "bound", "one_of",
           "fail"]


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


def int_in(where: str, name: str, value, low: int, high: int, what: str = "") -> int:
    """An integer in [low, high] (both included); ``what`` adds a gloss to the rule."""
    if not is_int(value) or not low <= value <= high:
        fail(where, name, f"an integer in [{low}, {high}]{what}", value)
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
            closed_high: bool = False, open_low: bool = False) -> float:
    """A number in [low, high) ([low, high] with ``closed_high``, (low, ... with
    ``open_low``); NaN is refused."""
    ok = (is_real(value) and (low < value if open_low else low <= value) and
          (value <= high if closed_high else value < high))
    if not ok:
        fail(where, name, f"a number in {'(' if open_low else '['}{low:g}, "
                          f"{high:g}{']' if closed_high else ')'}", value)
    return float(value)


def positive_real(where: str, name: str, value) -> float:
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        fail(where, name, "a finite number > 0", value)
    return float(value)


def nonnegative_real(where: str, name: str, value) -> float:
    if not is_real(value) or not math.isfinite(value) or value < 0:
        fail(where, name, "a finite number >= 0", value)
    return float(value)


def bound(where: str, name: str, value, low: float = 0.0, high: Optional[float] = None,
          high_open: bool = False, positive: bool = False) -> float:
    """A finite number >= ``low`` (> 0 with ``positive``; <= ``high``, or < with
    ``high_open``), in the optimizers' words: "must be a number" when it is not one, else
    "must be >= 0.0", "must be > 0" or "must be in [0.0, 1.0)"."""
    if not is_real(value):
        fail(where, name, "a number", value)
    v = float(value)
    if not math.isfinite(v) or v < low or (positive and v <= 0) or (
            high is not None and (v >= high if high_open else v > high)):
        rule = ("> 0" if positive else f">= {low}") if high is None else \
            f"in [{low}, {high}{')' if high_open else ']'}"
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be {rule}, got {value!r}")
    return v


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
