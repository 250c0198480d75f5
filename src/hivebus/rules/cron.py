"""Cron expressions for ``cronjob('<program>', '<cron>')``: validation, due checks, periods.

Five fields (minute hour day-of-month month day-of-week), six with seconds last (as the node
checker's croniter reads ``*/2 * * * * *``), or an ``@hourly``-style alias, all in UTC. An
expression that never fires (``0 0 31 2 *``) is refused when the rule is parsed, not
discovered on a node months later.

``cronjob`` holds as on Sage's node checker: from a fire of the expression until a minute
after it, unless the program already ran in the last minute (``slot_open`` gives the first
half). A plugin scheduled by a cron therefore runs at most about once a minute, whatever the
seconds field says, and ``cron_period_seconds`` never reports less than that minute.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final

from croniter import croniter

ALIASES: Final = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
SLOT: Final = timedelta(minutes=1)
"""How long after a fire ``cronjob`` holds, and how recent a run must be to count for it."""
_EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
_PERIOD_SAMPLES: Final = 64
_JUST_AFTER: Final = timedelta(microseconds=1)


@lru_cache(maxsize=1024)
def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a usable cron expression, or None when it is."""
    text = expr.strip()
    if text.lower() in ALIASES:
        return None
    fields = text.split()
    if len(fields) not in (5, 6):
        return (
            f"cron expression {expr!r} has {len(fields)} fields; write 5 (minute hour "
            "day-of-month month day-of-week, e.g. '*/5 * * * *') or 6 with seconds last"
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


def last_fire(expr: str, now: datetime) -> datetime:
    """The latest instant at or before ``now`` at which ``expr`` fires (UTC)."""
    return croniter(expr.strip(), now.astimezone(UTC) + _JUST_AFTER).get_prev(datetime)


def slot_open(expr: str, now: datetime) -> bool:
    """Whether ``expr`` fired less than a minute before ``now`` (or at ``now``)."""
    return now - last_fire(expr, now) < SLOT


def cron_due(expr: str, last: datetime | None, now: datetime) -> bool:
    """Whether ``expr`` fires in ``(last, now]`` (with no ``last``: in the last minute)."""
    since = last if last is not None else now - SLOT
    if now <= since:
        return False
    return next_fire(expr, since) <= now


@lru_cache(maxsize=1024)
def cron_period_seconds(expr: str) -> float:
    """How often ``expr`` can run a plugin, in seconds: the shortest gap between two fires,
    and never under a minute (``cronjob`` skips a program that ran in the last minute).

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
    return max(shortest, SLOT.total_seconds())
