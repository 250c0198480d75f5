"""ULIDs made by hivebus are standard ULIDs, strictly increasing, and derived ids are pure."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from hivebus.schemas.envelope import derived_id
from hivebus.schemas.ids import new_ulid, ulid_from_parts, ulid_millis


@given(st.integers(0, (1 << 48) - 1), st.integers(0, (1 << 80) - 1))
def test_spelling_matches_python_ulid(millis: int, rand: int) -> None:
    expected = ULID.from_bytes(millis.to_bytes(6, "big") + rand.to_bytes(10, "big"))
    assert ulid_from_parts(millis, rand) == str(expected)
    assert ulid_millis(str(expected)) == millis


def test_new_ids_strictly_increase() -> None:
    ids = [new_ulid() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_derived_ids_are_a_function_of_their_inputs() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    a = derived_id("handler/ecr", "01ABC", 0, when)
    assert a == derived_id("handler/ecr", "01ABC", 0, when)
    assert a != derived_id("handler/ecr", "01ABC", 1, when)
    assert a != derived_id("handler/ses", "01ABC", 0, when)
    assert ulid_millis(a) == int(when.timestamp() * 1000)
