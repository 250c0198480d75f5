"""Cron expressions for ``cronjob('<plugin>', '<cron>')``: validation, due checks, periods.

Five fields (minute hour day-of-month month day-of-week) or an ``@hourly``-style alias,
evaluated in UTC with ``croniter``. An expression that never fires (``0 0 31 2 *``) is
refused when the rule is parsed, not discovered on a node months later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final

from croniter import croniter

ALIASES: Final = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
_PERIOD_SAMPLES: Final = 64


@lru_cache(maxsize=1024)
def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a usable cron expression, or None when it is."""
    text = expr.strip()
    if text.lower() in ALIASES:
        return None
    fields = text.split()
    if len(fields) != 5:
        return (
            f"cron expression {expr!r} has {len(fields)} fields; "
            "write 5 (minute hour day-of-month month day-of-week), e.g. '*/5 * * * *'"
        )
    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises assorted errors on odd input
        valid = False
    if not valid:
        return f"cron expression {expr!r} is not valid"
    try:
        croniter(text, _EPOCH).get_next(datetime)
    except Exception:
        return f"cron expression {expr!r} never fires"
    return None


def next_fire(expr: str, after: datetime) -> datetime:
    """The first instant strictly after ``after`` at which ``expr`` fires (UTC)."""
    return croniter(expr.strip(), after.astimezone(UTC)).get_next(datetime)


def cron_due(expr: str, last: datetime | None, now: datetime) -> bool:
    """Whether ``expr`` fires in ``(last, now]``.

    With no ``last`` (never ran), it is due when it fires in the last minute: a node that
    starts at 12:03 does not run a ``*/5`` job until 12:05.
    """
    since = last if last is not None else now - timedelta(minutes=1)
    if now <= since:
        return False
    return next_fire(expr, since) <= now


@lru_cache(maxsize=1024)
def cron_period_seconds(expr: str) -> float:
    """The shortest gap between two consecutive fires of ``expr``, in seconds.

    The scheduler compares it with a plugin's profiled wall time: a run that takes longer than
    its period would pile up on the node.
    """
    it = croniter(expr.strip(), _EPOCH)
    previous = it.get_next(datetime)
    shortest = float("inf")
    for _ in range(_PERIOD_SAMPLES):
        current = it.get_next(datetime)
        shortest = min(shortest, (current - previous).total_seconds())
        previous = current
    return shortest
