"""The batch wire format (issue 18): bodies round-trip, a damaged batch is refused, ids hash."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivebus.bus import batch as wire
from hivebus.bus.subjects import parse_subject
from hivebus.errors import DecodeError
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event


def reading(i: int, node: str = "W012") -> bytes:
    event = Event.new(Reading(name="env.temperature", value=20.0 + i, timestamp=1_700_000_000_000_000_000 + i),
                      source=f"node/{node}", subject=node)
    return b'{"nodeseq":%d,' % (100 + i) + codec.encode(event)[1:]


def test_events_round_trip_and_decode_with_their_nodeseqs() -> None:
    bodies = [reading(i) for i in range(5)]
    data = wire.pack(bodies)
    assert wire.is_batch(data) and not wire.is_batch(bodies[0])
    assert wire.unpack(data) == bodies
    assert [codec.decode(b).nodeseq for b in wire.unpack(data)] == [100, 101, 102, 103, 104]
    assert wire.unpack(bodies[0]) == [bodies[0]]  # the old wire: one event per message
    assert wire.bodies_of(data) == bodies


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_any_bodies_round_trip(bodies: list[bytes]) -> None:
    data = wire.pack(bodies)
    assert wire.unpack(data) == bodies
    assert wire.unpack(memoryview(data)) == bodies
    assert len(data) == wire.OVERHEAD + sum(wire.PER_BODY + len(b) for b in bodies)


@given(st.lists(st.binary(max_size=100), min_size=1, max_size=20), st.data())
def test_a_truncated_batch_is_refused_whole(bodies: list[bytes], data: st.DataObject) -> None:
    packed = wire.pack(bodies)
    cut = data.draw(st.integers(min_value=4, max_value=len(packed) - 1))  # (shorter: no magic, not a batch)
    with pytest.raises(DecodeError) as err:
        wire.unpack(packed[:cut])
    assert err.value.field == "<batch>"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"HBB1\x00", "at least 8 bytes"),
        (struct.pack(">4sI", b"HBB1", 3) + struct.pack(">I", 2) + b"ab", "cannot hold the 3 readings"),
        (struct.pack(">4sI", b"HBB1", 1) + struct.pack(">I", 9) + b"abc", "needs 9 bytes, 3 are left"),
        (wire.pack([b"ab"]) + b"junk", "4 bytes after the last of the 1 readings"),
        (struct.pack(">4sI", b"HBB1", 2) + struct.pack(">I", 4) + b"abcd\x00\x00\x00", "reading 1 of 2 has no length"),
    ],
)
def test_a_corrupt_batch_says_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(DecodeError, match=says):
        wire.unpack(data)


def test_the_batch_subject_stays_under_the_nodes_own_subjects() -> None:
    subject = wire.batch_subject("W012")
    assert subject == "data.W012.BATCH"
    assert parse_subject(subject).node == "W012"
    assert wire.batch_subject("a.b") == "data.a%2Eb.BATCH"  # one token, like every node id


def test_batch_ids_are_the_same_for_a_retry_and_differ_for_any_other_batch() -> None:
    ids = ["01A", "01B", "01C"]
    assert wire.batch_id("W012", ids) == wire.batch_id("W012", list(ids))
    others = [
        wire.batch_id("W013", ids),  # another node
        wire.batch_id("W012", ids[:2]),  # fewer
        wire.batch_id("W012", [*ids, "01D"]),  # more
        wire.batch_id("W012", ["01B", "01A", "01C"]),  # another order
        wire.batch_id("W012", ["01A01B", "01C"]),  # the same characters, cut elsewhere
    ]
    assert wire.batch_id("W012", ids) not in others and len(set(others)) == len(others)
