"""Evaluating a parsed condition against a ``RuleContext``.

The semantics are chosen so that a parsed rule never raises while it is evaluated:

- a reading with no value yet (``v('x')`` is None) makes any comparison with it false and any
  arithmetic on it None; ``not`` of a false comparison is true, as in Python;
- division or modulo by zero, and an overflow to infinity, give None;
- numbers and strings compare only with their own kind: ``==`` across kinds is false,
  ``!=`` true, ordering false;
- truthiness: None is false, a number is true when not zero, a string when not empty.
Errors raised by the context itself propagate: they are the context's, not the rule's.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from datetime import UTC
from typing import Any, Final

from hivebus.rules.context import RuleContext
from hivebus.rules.durations import parse_duration
from hivebus.rules.syntax import Binary, BoolOp, Call, Compare, Const, Node, Unary

Value = float | str | bool | None

_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def truthy(node: Node, ctx: RuleContext) -> bool:
    """The condition's truth value."""
    return _truth(evaluate(node, ctx))


def _truth(value: Value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value != ""
    return bool(value)


def _number(value: Value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate(node: Node, ctx: RuleContext) -> Value:
    """The value of a condition node (see the module docstring for the rules)."""
    match node:
        case Const(value=value):
            return value
        case Call():
            return _call(node, ctx)
        case Unary(op="not", operand=operand):
            return not truthy(operand, ctx)
        case Unary(op="-", operand=operand):
            number = _number(evaluate(operand, ctx))
            return None if number is None else -number
        case Binary(op=op, left=left, right=right):
            return _arithmetic(op, evaluate(left, ctx), evaluate(right, ctx))
        case Compare(operands=operands, ops=ops):
            left_value = evaluate(operands[0], ctx)
            for relation, right_node in zip(ops, operands[1:], strict=True):
                right_value = evaluate(right_node, ctx)
                if not _compare(relation, left_value, right_value):
                    return False
                left_value = right_value
            return True
        case BoolOp(op="and", operands=operands):
            return all(truthy(operand, ctx) for operand in operands)
        case BoolOp(op="or", operands=operands):
            return any(truthy(operand, ctx) for operand in operands)
    raise TypeError(f"not a rule node: {node!r}")  # pragma: no cover - parser builds only these


def _arithmetic(op: str, left: Value, right: Value) -> float | None:
    a, b = _number(left), _number(right)
    if a is None or b is None:
        return None
    if op == "+":
        return _finite(a + b)
    if op == "-":
        return _finite(a - b)
    if op == "*":
        return _finite(a * b)
    if b == 0:
        return None
    if op == "/":
        return _finite(a / b)
    return _finite(math.fmod(a, b) if a * b >= 0 else a % b)


def _compare(op: str, left: Value, right: Value) -> bool:
    if left is None or right is None:
        return False
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        left, right = a, b
    elif not (isinstance(left, str) and isinstance(right, str)):
        return op == "!="  # different kinds: never equal, never ordered
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    return _ORDER[op](left, right)


def _call(call: Call, ctx: RuleContext) -> Value:
    args = [str(arg.value) for arg in call.args]  # type: ignore[union-attr]
    name = call.name
    if name == "v":
        return _reading(ctx.value(args[0]))
    if name == "time":
        return _time_part(args[0], ctx)
    if name == "cronjob":
        return bool(ctx.cron_due(args[0], args[1]))
    window = parse_duration(args[1])
    points = [
        (ts, number)
        for ts, value in ctx.values(args[0], window)
        if (number := _number(value)) is not None
    ]
    return _aggregate(name, points)


def _reading(value: object) -> Value:
    if isinstance(value, str):
        return value
    return _number(value)  # type: ignore[arg-type]


def _aggregate(name: str, points: list[tuple[int, float]]) -> float | None:
    values = [value for _, value in points]
    if name == "count":
        return float(len(values))
    if name == "sum":
        return _finite(math.fsum(values))
    if not values:
        return None
    if name == "avg":
        return _finite(math.fsum(values) / len(values))
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    # rate: change per second between the oldest and newest points
    ordered = sorted(points)
    (t0, first), (t1, last) = ordered[0], ordered[-1]
    if t1 <= t0:
        return None
    return _finite((last - first) / ((t1 - t0) / 1e9))


def _time_part(unit: str, ctx: RuleContext) -> float:
    now = ctx.now().astimezone(UTC)
    parts = {
        "second": now.second,
        "minute": now.minute,
        "hour": now.hour,
        "day": now.day,
        "weekday": now.weekday(),
        "month": now.month,
        "year": now.year,
        "dayofyear": now.timetuple().tm_yday,
    }
    return float(parts[unit])
