"""Success criteria: when a job is done. ``WallClock(<duration>)``: after that long running.

The deadline counts from the job's ``ses.job.scheduled`` time (the submission's time) and is
checked against the hub's clock (the scheduler's timer, and the time of hub events it folds);
node clocks are never trusted for it.
"""

from __future__ import annotations

import difflib
import re
from typing import Final

from hivebus.rules.durations import parse_duration

_CRITERION: Final = re.compile(r"^\s*([A-Za-z]+)\s*\(\s*([^()]*?)\s*\)\s*$")
KNOWN: Final = ("WallClock(<duration>)",)
_LONG_UNITS: Final = re.compile(
    r"(\d)\s*(weeks?|days?|hours?|hrs?|minutes?|mins?|seconds?|secs?)\b", re.IGNORECASE
)


def _duration_text(argument: str) -> str:
    """``'1day'`` -> ``1d`` (Sage's docs quote the argument and spell units out)."""
    text = argument.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return _LONG_UNITS.sub(lambda m: m.group(1) + m.group(2)[0].lower(), text)


def criterion_problem(text: str) -> str | None:
    match = _CRITERION.match(text)
    if match is None:
        return f"{text!r} is not a criterion (known: {', '.join(KNOWN)})"
    name, argument = match.groups()
    if name != "WallClock":
        close = difflib.get_close_matches(name.lower(), ["wallclock"], n=1, cutoff=0.4)
        hint = f"did you mean WallClock({argument})? " if close else ""
        return f"unknown criterion {name!r} ({hint}known: {', '.join(KNOWN)})"
    try:
        parse_duration(_duration_text(argument))
    except ValueError as exc:
        return f"WallClock: {exc}"
    return None


def wall_clock(criteria: list[str]) -> float | None:
    """Seconds of the shortest ``WallClock`` among ``criteria`` (any met criterion ends the job)."""
    seconds = []
    for text in criteria:
        match = _CRITERION.match(text)
        if match and match.group(1) == "WallClock":
            try:
                seconds.append(parse_duration(_duration_text(match.group(2))))
            except ValueError:
                continue
    return min(seconds) if seconds else None
