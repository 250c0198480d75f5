"""Success criteria: when a job is done. ``WallClock(<duration>)``: after that long running.

The deadline counts from the job's ``ses.job.scheduled`` time (the submission's time) and is
checked against the hub's clock (the scheduler's timer, and the time of hub events it folds);
node clocks are never trusted for it.
"""

from __future__ import annotations

import re
from typing import Final

from hivebus.rules.durations import parse_duration

_CRITERION: Final = re.compile(r"^\s*([A-Za-z]+)\s*\(\s*([^()]*?)\s*\)\s*$")
KNOWN: Final = ("WallClock(<duration>)",)


def criterion_problem(text: str) -> str | None:
    match = _CRITERION.match(text)
    if match is None:
        return f"{text!r} is not a criterion (known: {', '.join(KNOWN)})"
    name, argument = match.groups()
    if name != "WallClock":
        return f"unknown criterion {name!r} (known: {', '.join(KNOWN)})"
    try:
        parse_duration(argument)
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
                seconds.append(parse_duration(match.group(2)))
            except ValueError:
                continue
    return min(seconds) if seconds else None
