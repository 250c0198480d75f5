"""Evaluating a parsed condition against a ``RuleContext``, as Sage's node checker does.

The checker evaluates the condition as Python over numpy arrays and fires the rule only when
the value is ``True`` (a ``bool``); an exception, or a value that is not a truth value (an
array, a number), is an evaluation failure and the rule does not fire. hivebus does the same
without ``eval`` and without raising: ``outcome`` says whether the rule fires, the value, and
the reason when it failed. ``and``/``or`` return an operand, as in Python, and short-circuit.

The functions (see ``functions.py`` for their arguments):

- ``v(name, since='-1m', last=False, <meta>=<value>...)``: the window's values whose meta
  match every filter, oldest first (only the newest with ``last=True``); no value in the
  window is a failure ("no data"), as on Sage;
- ``rate(name, since='-1m', window='1s', unit='1s', <meta>...)``: as the node's InfluxDB
  ``aggregate.rate`` computes it: the rate of increase per ``unit`` between consecutive
  values (decreases dropped), averaged in each ``window`` (windows aligned to the epoch, by
  the later value's time), one value per window that has one;
- ``time(unit)``: that part of the current UTC time;
- ``cronjob(program, expr)``: a minute after each fire of ``expr``, unless ``program`` ran
  in the last minute ('' = no program: just the minute);
- ``after(plugin, since=...)``: ``plugin`` has run; with ``since='<other>'``, after
  ``<other>``'s last run (an ``<other>`` that never ran bounds nothing); with
  ``since=<seconds>``, before that many seconds ago (Sage's meaning, kept as it is).
A run is the context's ``last_run`` (the node scheduler's last execution of the plugin).
Errors raised by the context itself propagate: they are the context's, not the rule's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, timedelta
from itertools import pairwise

from hivebus.rules.context import Point, RuleContext
from hivebus.rules.cron import SLOT, slot_open
from hivebus.rules.durations import parse_duration
from hivebus.rules.syntax import DEFAULT_SINCE, Binary, BoolOp, Call, Compare, Const, Node, Unary
from hivebus.rules.values import Failed, Value, Window, elementwise, negate, reduce, truth


@dataclass(frozen=True, slots=True)
class Outcome:
    fired: bool
    value: Value | None
    """The condition's value (None when it failed)."""
    problem: str | None = None
    """Why it did not fire when it could not be evaluated or gave no truth value."""


def outcome(condition: Node, ctx: RuleContext) -> Outcome:
    try:
        value = evaluate(condition, ctx)
    except Failed as failure:
        return Outcome(False, None, str(failure))
    if isinstance(value, bool):
        return Outcome(value, value, None)
    return Outcome(False, value, f"the condition gave {value}, not True or False")


def evaluate(node: Node, ctx: RuleContext) -> Value:
    """The value of a condition node; ``Failed`` when it has none now."""
    match node:
        case Const(value=constant):
            return constant
        case Call():
            return _call(node, ctx)
        case Unary(op="not", operand=operand):
            return not truth(evaluate(operand, ctx))
        case Unary(op="-", operand=operand):
            return negate(evaluate(operand, ctx))
        case Binary(op=op, left=left, right=right):
            return elementwise(op, evaluate(left, ctx), evaluate(right, ctx))
        case Compare(operands=operands, ops=ops):
            left_value = evaluate(operands[0], ctx)
            result: Value = True
            for i, (relation, right_node) in enumerate(zip(ops, operands[1:], strict=True)):
                right_value = evaluate(right_node, ctx)
                result = elementwise(relation, left_value, right_value)
                if i < len(ops) - 1 and not truth(result):
                    return result  # Python: a < b < c is (a < b) and (b < c)
                left_value = right_value
            return result
        case BoolOp(op=op, operands=operands):
            current = evaluate(operands[0], ctx)
            for operand in operands[1:]:
                if truth(current) == (op == "or"):
                    return current
                current = evaluate(operand, ctx)
            return current
    raise TypeError(f"not a rule node: {node!r}")  # pragma: no cover - parser builds only these


def _call(call: Call, ctx: RuleContext) -> Value:
    name = call.name
    if call.args:
        return reduce(name, [evaluate(arg, ctx) for arg in call.args])
    if name == "v":
        return _measurements(call, ctx)
    if name == "rate":
        return _rate(call, ctx)
    if name == "time":
        return _time_part(str(call.option("unit")), ctx)
    if name == "cronjob":
        return _cronjob(str(call.option("name")), str(call.option("expr")), ctx)
    if name == "after":
        return _after(call, ctx)
    raise TypeError(f"not a rule function: {name!r}")  # pragma: no cover


def _points(call: Call, ctx: RuleContext) -> list[Point]:
    since = parse_duration(str(call.option("since", DEFAULT_SINCE)))
    wanted = dict(call.meta)
    points = [
        point
        for point in ctx.readings(str(call.option("name")), since)
        if all(point.meta.get(key) == value for key, value in wanted.items())
    ]
    points.sort(key=lambda point: point.timestamp_ns)
    if not points:
        shown = "".join(f", {k}={v!r}" for k, v in call.meta)
        raise Failed(
            f"no data for {call.option('name')!r}{shown} since {call.option('since', DEFAULT_SINCE)}"
        )
    return points


def _measurements(call: Call, ctx: RuleContext) -> Window:
    points = _points(call, ctx)
    if call.option("last", False):
        points = points[-1:]
    return Window(tuple(point.value for point in points))


def _rate(call: Call, ctx: RuleContext) -> Window:
    points = _points(call, ctx)
    window_ns = int(parse_duration(str(call.option("window", "1s"))) * 1e9)
    unit_s = parse_duration(str(call.option("unit", "1s")))
    per_window: dict[int, list[float]] = defaultdict(list)
    for earlier, later in pairwise(points):
        if isinstance(earlier.value, str) or isinstance(later.value, str):
            raise Failed(f"rate() needs numbers, not {earlier.value!r}/{later.value!r}")
        elapsed_s = (later.timestamp_ns - earlier.timestamp_ns) / 1e9
        if elapsed_s <= 0:
            continue
        try:
            change = float(later.value) - float(earlier.value)
        except OverflowError:
            raise Failed("a number is too large") from None
        rate = change / elapsed_s * unit_s
        if rate >= 0:  # as InfluxDB's nonNegative derivative: a decrease counts for nothing
            per_window[later.timestamp_ns // window_ns].append(rate)
    if not per_window:
        raise Failed(f"no rate for {call.option('name')!r}: fewer than two values in the range")
    return Window(tuple(sum(rates) / len(rates) for _, rates in sorted(per_window.items())))


def _time_part(unit: str, ctx: RuleContext) -> int:
    now = ctx.now().astimezone(UTC)
    if unit == "weekday":
        return now.weekday()
    if unit == "dayofyear":
        return now.timetuple().tm_yday
    return int(getattr(now, unit))


def _cronjob(program: str, expr: str, ctx: RuleContext) -> bool:
    now = ctx.now()
    if not slot_open(expr, now):
        return False
    if not program:
        return True
    last = ctx.last_run(program)
    return last is None or now - last > SLOT


def _after(call: Call, ctx: RuleContext) -> bool:
    now = ctx.now()
    last = ctx.last_run(str(call.option("name")))
    if last is None:
        return False
    since = call.option("since", "")
    if since == "":
        return now > last
    if isinstance(since, str):
        other = ctx.last_run(since)
        return other is None or last > other
    return now - timedelta(seconds=float(since or 0)) > last
