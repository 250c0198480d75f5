"""The virtual BME680 as a load generator: a steady, exact rate however its loop is timed."""

from __future__ import annotations

import random

import pytest

from hivebus.edge.virtual import MAX_CATCH_UP_S, NAMES, VirtualBme680
from hivebus.errors import SetupError

T0 = 1_750_000_000 * 10**9


def test_without_a_rate_each_call_is_one_sample() -> None:
    bme = VirtualBme680(seed=1)
    assert [r.name for r in bme.due(T0)] == list(NAMES)
    assert [r.name for r in bme.due(T0 + 10**6)] == list(NAMES)


def test_a_rate_spreads_readings_evenly_whatever_the_call_times() -> None:
    bme = VirtualBme680(seed=1, readings_per_second=3000)
    rng = random.Random(7)
    t, out = T0, []
    while t < T0 + 10 * 10**9:
        out += bme.due(t, meta={"task": "load"})
        t += rng.randrange(1, 120) * 10**6  # a loop ticking every 1-120 ms
    stamps = sorted({r.timestamp for r in out})
    assert abs(len(out) - 30_000) <= 3 * 120  # the rate, to within the last tick
    assert {stamps[i + 1] - stamps[i] for i in range(len(stamps) - 1)} == {10**6}  # 1 ms apart
    assert all(r.meta == {"sensor": "bme680", "task": "load"} for r in out[:3])
    assert bme.skipped == 0


def test_a_loop_that_falls_far_behind_catches_up_a_bounded_amount_and_counts_the_rest() -> None:
    bme = VirtualBme680(seed=1, readings_per_second=300)
    bme.due(T0)
    late = bme.due(T0 + 60 * 10**9)
    assert len(late) == pytest.approx(300 * MAX_CATCH_UP_S, abs=3)
    assert bme.skipped + len(late) == pytest.approx(300 * 60, abs=3)


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(SetupError, match="readings_per_second"):
        VirtualBme680(readings_per_second=0)
