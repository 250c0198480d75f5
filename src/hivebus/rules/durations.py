"""Durations as people write them in rules and success criteria: ``5m``, ``-1h30m``, ``2d``.

A leading ``-`` is accepted and ignored by ``parse_duration`` (Sage writes windows as
``since='-5m'``, meaning "the last five minutes"); the value is always a positive number of
seconds. In a rule, ``since=`` must carry the ``-`` (it is a start relative to now, as the
node's InfluxDB reads it: ``since='5m'`` would start in the future and never hold data) and
``window=``/``unit=`` must not (they are lengths).
"""

from __future__ import annotations

import re
from typing import Final

UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_SECONDS: Final = 10 * 366 * 86400.0
"""Ten years: anything longer is a typo, not a window."""


def duration_problem(text: str) -> str | None:
    """Why ``text`` is not a duration, or None when it is."""
    try:
        parse_duration(text)
    except ValueError as exc:
        return str(exc)
    return None


def since_problem(text: str) -> str | None:
    """Why ``text`` is not a ``since=`` start (``'-1m'``, ``'-2h'``), or None."""
    problem = duration_problem(text)
    if problem is None and not text.strip().startswith("-"):
        return f"since={text!r} starts in the future: write since='-{text.strip()}' (back from now)"
    return problem


def length_problem(text: str) -> str | None:
    """Why ``text`` is not a length (``window=``/``unit=``: ``'1m'``, ``'5m'``), or None."""
    if text.strip().startswith("-"):
        return f"{text!r} is a length: write {text.strip()[1:]!r}, without '-'"
    return duration_problem(text)


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``90s``, ``5m``, ``1h30m``, ``-2d``); ValueError explains a bad one."""
    body = text.strip()
    if body.startswith("-"):
        body = body[1:]
    if not body:
        raise ValueError(f"{text!r} is not a duration (write e.g. '30s', '5m', '1h', '2d')")
    total = 0.0
    pos = 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise ValueError(
            f"{text!r} is not a duration (number and unit ms|s|m|h|d|w, e.g. '30s', '5m', '1h30m')"
        )
    if total <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    if total > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is longer than ten years")
    return total
