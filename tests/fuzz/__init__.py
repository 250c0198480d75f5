"""Fuzzing every way input gets into hivebus (issue 8, "bad input").

Every file here uses ``fuzz(...)``: derandomized Hypothesis settings, so CI sees the same
examples on every run (a red build is never a dice roll, and a failure reproduces with the
same command) and no example database is read or written. The price is that a run explores
nothing new; set ``HIVEBUS_FUZZ_EXPLORE=1`` to run ten times the examples from a random seed
(with Hypothesis' example database in ``.hypothesis/``) when hunting for new bugs, then pin
what it finds as an ``@example`` or a plain test.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

EXPLORE = os.environ.get("HIVEBUS_FUZZ_EXPLORE", "") not in ("", "0")

_SLOW_OK = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,
]


def fuzz(max_examples: int = 200, **overrides: Any) -> settings:
    """Hypothesis settings for a fuzz test: stable in CI, wider with HIVEBUS_FUZZ_EXPLORE."""
    if EXPLORE:
        base: dict[str, Any] = {"max_examples": max_examples * 10, "derandomize": False}
    else:
        base = {"max_examples": max_examples, "derandomize": True, "database": None}
    return settings(deadline=None, suppress_health_check=_SLOW_OK, **{**base, **overrides})
