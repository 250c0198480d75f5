"""Failpoints: kill the process with SIGKILL at a named point, for crash tests.

``HIVEBUS_FAILPOINTS="ses.mid_publish=3,ecr.after_publish=1"`` makes the 3rd pass through
``ses.mid_publish`` (and the 1st through ``ecr.after_publish``) SIGKILL its own process, so a
test can crash a real handler process exactly between publishing a decision and
acknowledging its input, which an outside ``kill`` only hits by luck. Unset (always, outside
tests), a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

_passes: Counter[str] = Counter()


@cache
def _armed() -> dict[str, int]:
    spec = os.environ.get("HIVEBUS_FAILPOINTS", "")
    armed = {}
    for item in spec.split(","):
        name, _, count = item.strip().partition("=")
        if name:
            armed[name] = int(count or "1")
    return armed


def failpoint(name: str) -> bool:
    """True when ``name`` is armed and this pass is the one that must crash."""
    target = _armed().get(name)
    if target is None:
        return False
    _passes[name] += 1
    return _passes[name] == target


def crash() -> None:
    """Die now, as ``kill -9`` would: no cleanup, no flush, no ack."""
    os.kill(os.getpid(), signal.SIGKILL)
