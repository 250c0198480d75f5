"""Values a condition computes with: scalars and windows, with Python's and numpy's meaning.

A ``Window`` is what ``v()`` and ``rate()`` give: the values of a time window, oldest first
(a numpy array on Sage's node checker). Arithmetic and comparisons apply to every value (a
window and a scalar, or two windows of the same length); reducers make one value of it.

Where Python would raise, ``Failed`` is raised with the reason instead, and the rule does not
fire (Sage's checker returns the exception's text as an evaluation failure):

- the truth of a window of several values (``v('x') > 3 and ...``): ambiguous, as in numpy --
  a window of one value is that value's truth;
- ordering a string against a number, arithmetic on a string, division by zero, a number
  too large for a float.
Equality across kinds is False (``'wet' == 3``), as in Python.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hivebus.rules.syntax import Scalar


class Failed(Exception):
    """The condition cannot be evaluated now (the message says why); the rule does not fire."""


@dataclass(frozen=True, slots=True)
class Window:
    values: tuple[Scalar, ...]

    def __str__(self) -> str:
        shown = ", ".join(repr(v) for v in self.values[:5])
        return f"[{shown}{', ...' if len(self.values) > 5 else ''}] ({len(self.values)} values)"


Value = Scalar | Window

_ARITHMETIC: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}
_COMPARE: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def truth(value: Value) -> bool:
    """Python's truth, numpy's for a window."""
    if isinstance(value, Window):
        if len(value.values) > 1:
            raise Failed(
                f"the truth of {len(value.values)} values is ambiguous: use any(...) or all(...)"
            )
        return bool(value.values) and bool(value.values[0])
    return bool(value)


def _numeric(value: Scalar) -> int | float:
    if isinstance(value, str):
        raise Failed(f"arithmetic needs numbers, not the string {value!r}")
    return value


def _arithmetic(op: str, a: Scalar, b: Scalar) -> Scalar:
    left, right = _numeric(a), _numeric(b)
    if op in "/%" and right == 0:
        raise Failed("division by zero")
    try:
        result: Scalar = _ARITHMETIC[op](left, right)
    except OverflowError:
        raise Failed("a number is too large") from None
    return result


def _compare(op: str, a: Scalar, b: Scalar) -> bool:
    if op in ("==", "!="):
        return bool(_COMPARE[op](a, b))
    if isinstance(a, str) != isinstance(b, str):
        raise Failed(f"cannot order {a!r} and {b!r} (a string and a number)")
    try:
        return bool(_COMPARE[op](a, b))
    except OverflowError:
        raise Failed("a number is too large") from None


def elementwise(op: str, a: Value, b: Value) -> Value:
    """``a <op> b`` for an arithmetic or comparison operator, applied to every value."""
    apply = _compare if op in _COMPARE else _arithmetic
    if isinstance(a, Window) and isinstance(b, Window):
        if len(a.values) != len(b.values):
            raise Failed(
                f"windows of {len(a.values)} and {len(b.values)} values cannot be combined"
            )
        return Window(tuple(apply(op, x, y) for x, y in zip(a.values, b.values, strict=True)))
    if isinstance(a, Window):
        return Window(tuple(apply(op, x, b) for x in a.values))  # type: ignore[arg-type]
    if isinstance(b, Window):
        return Window(tuple(apply(op, a, y) for y in b.values))
    return apply(op, a, b)


def negate(value: Value) -> Value:
    if isinstance(value, Window):
        return Window(tuple(-_numeric(x) for x in value.values))
    return -_numeric(value)


def _numbers(name: str, window: Window) -> list[int | float]:
    return [_numeric(x) for x in window.values]


def _window(name: str, value: Value) -> Window:
    if not isinstance(value, Window):
        raise Failed(f"{name}() takes the values of a window, not {value!r}")
    return value


def reduce(name: str, args: Sequence[Value]) -> Value:
    """A reducer (``any``, ``sum``, ``avg``, ``min``...) over its evaluated arguments."""
    if name in ("min", "max") and len(args) > 1:
        if any(isinstance(a, Window) for a in args):
            raise Failed(f"{name}() of several arguments takes numbers")
        return _order(name, list(args))  # type: ignore[arg-type]
    if name == "abs":
        value = args[0]
        if isinstance(value, Window):
            return Window(tuple(abs(_numeric(x)) for x in value.values))
        return abs(_numeric(value))
    window = _window(name, args[0])
    if name == "any":
        return any(bool(x) for x in window.values)
    if name == "all":
        return all(bool(x) for x in window.values)
    if name in ("len", "count"):
        return len(window.values)
    if name in ("min", "max"):
        return _order(name, list(window.values))
    numbers = _numbers(name, window)
    try:
        if name == "sum":
            return sum(numbers)
        if not numbers:
            raise Failed("avg() of no values")
        return math.fsum(numbers) / len(numbers)  # avg
    except OverflowError:
        raise Failed("a number is too large") from None
    except ValueError:  # fsum of inf and -inf: numpy's mean is nan
        return math.nan


def _order(name: str, values: list[Scalar]) -> Scalar:
    if not values:
        raise Failed(f"{name}() of no values")
    if len({isinstance(v, str) for v in values}) > 1:
        raise Failed(f"{name}() cannot order strings and numbers together")
    return min(values) if name == "min" else max(values)
