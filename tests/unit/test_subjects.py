"""Subject building and parsing: keys round-trip through one token; routes are right."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivebus.bus.subjects import decode_token, encode_token, parse_subject, subject_for
from hivebus.errors import SchemaError
from hivebus.schemas import Event, Payload, event


@event("test.subjects.thing")
class Thing(Payload):
    n: int = 0


@event("test.subjects.order", route="toedge")
class Order(Payload):
    node: str


@given(st.text(min_size=1))
def test_any_key_round_trips_through_one_token(key: str) -> None:
    token = encode_token(key)
    assert decode_token(token) == key
    assert "." not in token and " " not in token and token not in ("*", ">")
    assert not any(c.isspace() for c in token)


@pytest.mark.parametrize(
    ("key", "token"),
    [
        ("waggle/plugin-bme680:0.2.1", "waggle/plugin-bme680:0%2E2%2E1"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("*", "%2A"),
        (">", "%3E"),
        ("W012", "W012"),
    ],
)
def test_known_encodings(key: str, token: str) -> None:
    assert encode_token(key) == token


def test_empty_key_is_refused() -> None:
    with pytest.raises(SchemaError):
        encode_token("")


def test_hub_event_goes_on_evt_with_its_key() -> None:
    e = Event.new(Thing(), source="user/alice", subject="waggle/x:1.0.0")
    subject = subject_for(e)
    assert subject == "evt.test.subjects.thing.waggle/x:1%2E0%2E0"
    parts = parse_subject(subject)
    assert (parts.route, parts.type, parts.key) == ("evt", "test.subjects.thing", "waggle/x:1.0.0")


def test_node_event_goes_from_edge() -> None:
    e = Event.new(Thing(), source="node/W012", subject="W012")
    assert subject_for(e) == "fromedge.W012.test.subjects.thing"
    parts = parse_subject(subject_for(e))
    assert (parts.route, parts.node, parts.type) == ("fromedge", "W012", "test.subjects.thing")


def test_addressed_event_goes_to_edge() -> None:
    e = Event.new(Order(node="W.13"), source="handler/scheduler", subject="job-1")
    assert subject_for(e) == "toedge.W%2E13.test.subjects.order"
    assert parse_subject(subject_for(e)).node == "W.13"


@pytest.mark.parametrize("subject", ["evt", "evt.x", "toedge.W1", "data.W1", "other.a.b", ""])
def test_foreign_subjects_are_refused(subject: str) -> None:
    with pytest.raises(SchemaError):
        parse_subject(subject)
