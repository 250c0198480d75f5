"""Query times as sage-data-client and the Sage data API read them.

sage-data-client 0.9.1 turns ``start``/``end`` into text before sending: a string starting with
``+``/``-`` is ``now + pd.to_timedelta(t)`` (``-3min``, ``-1h30m``); anything else is tried with
``pd.to_datetime`` (``pd.Timestamp``, ``datetime``, ISO text, a date alone) and, failing that, is
``now + pd.to_timedelta(t)`` (a ``timedelta``). The result is written as
``%Y-%m-%dT%H:%M:%S.%fZ``. hivebus resolves the same forms but keeps two things that text loses:
a zone other than UTC is converted (sage-data-client writes its wall-clock time as if it were
UTC) and nanoseconds are kept (it cuts them to microseconds). A time without a zone is UTC.
The window is ``start <= timestamp < end``; a missing ``end`` is now.
"""

from __future__ import annotations

import re
from typing import Any

from hivebus.errors import QueryError

# pandas 3 deprecates the unit "d" for days (pandas 4 drops it) while users write "-1d" for
# sage-data-client; read it as "D", which every pandas accepts, so "-1d" keeps working.
_LOWER_DAYS = re.compile(r"(?<=\d)\s*d(?![a-z])", re.IGNORECASE)

_HINT = 'write e.g. "-1h", "-30min", "-1h30m", "2025-05-01T10:30:00Z", "2025-05-01" or a pd.Timestamp'


def now_utc() -> Any:
    import pandas as pd

    return pd.Timestamp.now(tz="UTC")


def sage_time(value: Any, now: Any) -> Any:
    """sage-data-client's ``resolve_time``: a pandas Timestamp (or a TypeError/ValueError)."""
    import pandas as pd

    if isinstance(value, str) and value.startswith(("+", "-")):
        return now + pd.to_timedelta(_days_upper(value))
    try:
        return pd.to_datetime(value)
    except (TypeError, ValueError):
        pass
    return now + pd.to_timedelta(_days_upper(value) if isinstance(value, str) else value)


def _days_upper(text: str) -> str:
    return _LOWER_DAYS.sub("D", text)


def wire_text(moment: Any) -> str:
    """sage-data-client's ``timestr``: what the data API receives."""
    return str(moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def resolve_time(value: Any, now: Any = None, what: str = "time") -> int:
    """Nanoseconds since the epoch for a query time in any form sage-data-client accepts."""
    import pandas as pd

    now = pd.Timestamp(now_utc() if now is None else now)
    if now.tzinfo is None:
        now = now.tz_localize("UTC")
    if isinstance(value, str) and value.strip() in ("now", ""):
        return int(now.value)
    try:
        moment = pd.Timestamp(sage_time(value, now))
        if moment is pd.NaT:
            raise ValueError("not a time")
        moment = moment.tz_convert("UTC") if moment.tzinfo is not None else moment.tz_localize("UTC")
        return int(moment.as_unit("ns").value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        raise QueryError(f"{what}: {value!r} is not a time sage-data-client understands", hint=_HINT) from None
