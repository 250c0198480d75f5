"""The built-in functions a rule condition may call, and the shape of their arguments.

Every argument a function takes is a literal checked when the rule is parsed (a reading name
that is not one, a window like ``'5 minutes'``, an unknown time unit, a cron expression that
never fires), so a job with a bad rule is refused at submit time, not on the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from hivebus.rules.cron import cron_problem
from hivebus.rules.durations import duration_problem
from hivebus.schemas.data import NAME_PATTERN

ArgKind = Literal["reading", "window", "unit", "plugin", "cron"]

TIME_UNITS: Final = ("second", "minute", "hour", "day", "weekday", "month", "year", "dayofyear")
# fullmatch, not match: Python's ``$`` also matches before a final newline, and a name that
# ends in one is no reading or label anywhere else (pydantic's patterns refuse it).
_READING: Final = re.compile(NAME_PATTERN)
_PLUGIN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


def _reading_problem(text: str) -> str | None:
    if len(text) <= 128 and _READING.fullmatch(text):
        return None
    return (
        f"{text!r} is not a reading name (dot-separated lower-case parts, e.g. 'env.temperature')"
    )


def _unit_problem(text: str) -> str | None:
    if text in TIME_UNITS:
        return None
    return f"unknown time unit {text!r} (one of {', '.join(TIME_UNITS)})"


def _plugin_problem(text: str) -> str | None:
    if len(text) <= 128 and _PLUGIN.fullmatch(text):
        return None
    return f"{text!r} is not a plugin name"


CHECKS: Final[dict[ArgKind, Callable[[str], str | None]]] = {
    "reading": _reading_problem,
    "window": duration_problem,
    "unit": _unit_problem,
    "plugin": _plugin_problem,
    "cron": cron_problem,
}


@dataclass(frozen=True, slots=True)
class Signature:
    """Positional parameters (all string literals) and the keyword each may also be given as."""

    params: tuple[tuple[str, ArgKind], ...]
    doc: str

    def usage(self, name: str) -> str:
        return f"{name}({', '.join(repr(p) for p, _ in self.params)})"


_WINDOWED: tuple[tuple[str, ArgKind], ...] = (("name", "reading"), ("since", "window"))

FUNCTIONS: Final[dict[str, Signature]] = {
    "v": Signature((("name", "reading"),), "the latest value of a reading, or nothing yet"),
    "avg": Signature(_WINDOWED, "mean of a reading over the window"),
    "sum": Signature(_WINDOWED, "sum of a reading over the window"),
    "min": Signature(_WINDOWED, "smallest value over the window"),
    "max": Signature(_WINDOWED, "largest value over the window"),
    "count": Signature(_WINDOWED, "how many values arrived in the window"),
    "rate": Signature(_WINDOWED, "change per second over the window (last - first) / seconds"),
    "time": Signature((("unit", "unit"),), "a part of the current UTC time"),
    "cronjob": Signature(
        (("plugin", "plugin"), ("cron", "cron")), "true when the cron schedule is due"
    ),
}
