"""The functions a rule condition may call, as Sage's node checker offers them.

Two families:

- data and clock functions (``v``, ``rate``, ``time``, ``cronjob``, ``after``) take literal
  arguments, checked when the rule is parsed (a reading name that is not one, a window like
  ``'5 minutes'``, an unknown time unit, a cron expression that never fires), so a job with
  a bad rule is refused at submit time, not on the node;
- reducers (``any``, ``all``, ``sum``, ``avg``, ``min``, ``max``, ``len``, ``abs``; Python's
  builtins and the checker's ``avg``) take the expressions they work on.

``count`` (hivebus's name for ``len``) and the ``weekday``/``dayofyear`` time units are
hivebus's own; a rule using them parses with a warning that says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from hivebus.rules.cron import cron_problem
from hivebus.rules.durations import length_problem, since_problem
from hivebus.rules.syntax import DEFAULT_SINCE, Scalar
from hivebus.schemas.data import NAME_PATTERN

ArgKind = Literal[
    "reading", "since", "length", "unit", "plugin", "program", "cron", "after", "flag"
]
Kind = Literal["window", "number", "bool", "string"]

SAGE_TIME_UNITS: Final = ("year", "month", "day", "hour", "minute", "second", "microsecond")
TIME_UNITS: Final = (*SAGE_TIME_UNITS, "weekday", "dayofyear")
# fullmatch, not match: Python's ``$`` also matches before a final newline, and a name that
# ends in one is no reading or label anywhere else (pydantic's patterns refuse it).
_READING: Final = re.compile(NAME_PATTERN)
_PLUGIN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


def _text(value: Scalar, what: str) -> str | None:
    return None if isinstance(value, str) else f"{what} is a quoted string, not {value!r}"


def _reading_problem(value: Scalar) -> str | None:
    if isinstance(value, str) and len(value) <= 128 and _READING.fullmatch(value):
        return None
    return (
        f"{value!r} is not a reading name (dot-separated lower-case parts, e.g. 'env.temperature')"
    )


def _unit_problem(value: Scalar) -> str | None:
    if value in TIME_UNITS:
        return None
    return f"unknown time unit {value!r} (one of {', '.join(TIME_UNITS)})"


def _plugin_problem(value: Scalar) -> str | None:
    if isinstance(value, str) and len(value) <= 128 and _PLUGIN.fullmatch(value):
        return None
    return f"{value!r} is not a plugin name"


def _program_problem(value: Scalar) -> str | None:
    return None if value == "" else _plugin_problem(value)


def _after_problem(value: Scalar) -> str | None:
    if isinstance(value, str):
        return _plugin_problem(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return f"since={value!r}: give a plugin name or a whole number of seconds (e.g. since=120)"


def _flag_problem(value: Scalar) -> str | None:
    return None if isinstance(value, bool) else f"{value!r} is not True or False"


def _string_then(check: Callable[[str], str | None], what: str) -> Callable[[Scalar], str | None]:
    return lambda value: _text(value, what) or check(str(value))


CHECKS: Final[dict[ArgKind, Callable[[Scalar], str | None]]] = {
    "reading": _reading_problem,
    "since": _string_then(since_problem, "since="),
    "length": _string_then(length_problem, "a length"),
    "unit": _unit_problem,
    "plugin": _plugin_problem,
    "program": _program_problem,
    "cron": _string_then(lambda text: cron_problem(text), "a cron expression"),
    "after": _after_problem,
    "flag": _flag_problem,
}


@dataclass(frozen=True, slots=True)
class Option:
    """A literal argument: positional (in order) or by keyword; ``default`` None = required."""

    name: str
    kind: ArgKind
    default: Scalar | None = None
    positional: bool = True


@dataclass(frozen=True, slots=True)
class Signature:
    returns: Kind
    doc: str
    usage: str
    options: tuple[Option, ...] = ()
    values: int = 0
    """How many expressions a reducer takes: 1, or -1 for one or more (``min``/``max``)."""
    meta: bool = False
    """Other keyword arguments are meta filters (``sensor='bme680'``)."""


def _reducer(returns: Kind, name: str, doc: str, values: int = 1) -> Signature:
    return Signature(returns, doc, f"{name}(v('env.temperature'))", values=values)


_SINCE = Option("since", "since", DEFAULT_SINCE, positional=False)

FUNCTIONS: Final[dict[str, Signature]] = {
    "v": Signature(
        "window",
        "the values of a reading in the window (default: the last minute), oldest first",
        "v('env.temperature', since='-1m', sensor='bme680')",
        (Option("name", "reading"), _SINCE, Option("last", "flag", False, positional=False)),
        meta=True,
    ),
    "rate": Signature(
        "window",
        "the mean rate of increase per unit, for each window of time in the range",
        "rate('env.raingauge.total_acc', since='-5m', window='1m', unit='1m')",
        (
            Option("name", "reading"),
            _SINCE,
            Option("window", "length", "1s", positional=False),
            Option("unit", "length", "1s", positional=False),
        ),
        meta=True,
    ),
    "time": Signature(
        "number", "a part of the current UTC time", "time('hour')", (Option("unit", "unit"),)
    ),
    "cronjob": Signature(
        "bool",
        "true for a minute after the cron fires, unless the program ran in that minute",
        "cronjob('my-plugin', '*/5 * * * *')",
        (Option("name", "program"), Option("expr", "cron")),
    ),
    "after": Signature(
        "bool",
        "whether a plugin has run (since another plugin's last run, or before N seconds ago)",
        "after('plugin-a', since='plugin-b')",
        (Option("name", "plugin"), Option("since", "after", "")),
    ),
    "any": _reducer("bool", "any", "whether any value is true"),
    "all": _reducer("bool", "all", "whether every value is true"),
    "sum": _reducer("number", "sum", "the sum of the values"),
    "avg": _reducer("number", "avg", "the mean of the values"),
    "min": _reducer("number", "min", "the smallest value (or of several numbers)", values=-1),
    "max": _reducer("number", "max", "the largest value (or of several numbers)", values=-1),
    "len": _reducer("number", "len", "how many values"),
    "count": _reducer("number", "count", "how many values (hivebus's name for len)"),
    "abs": Signature("number", "the absolute value(s)", "abs(avg(v('env.x')))", values=1),
}
WINDOW_REDUCERS: Final = frozenset({"any", "all", "sum", "avg", "len", "count"})
