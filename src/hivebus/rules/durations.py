"""Durations as people write them in rules and success criteria: ``5m``, ``-1h30m``, ``2d``.

A leading ``-`` is accepted and ignored (Sage writes windows as ``since='-5m'``, meaning "the
last five minutes"); the value is always a positive number of seconds.
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
