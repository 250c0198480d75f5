"""Envelope rules the codec enforces beyond the payload models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from hivebus.errors import DecodeError
from hivebus.schemas import Event, codec
from hivebus.schemas.ecr import BundleApproved


def approved() -> Event:
    return Event.new(
        BundleApproved.model_validate({"bundle_id": "waggle/plugin-bme680:0.2.1", "by": "rev"}),
        source="user/rev",
        subject="waggle/plugin-bme680:0.2.1",
    )


def wire(event: Event, **changes: object) -> dict:
    body = json.loads(codec.encode(event))
    body.update(changes)
    return body


def test_caused_events_have_deterministic_ids_and_carry_the_chain() -> None:
    cause = approved()
    a = cause.caused(cause.data, source="handler/x", subject="s", producer="handler/x", index=0)
    b = cause.caused(cause.data, source="handler/x", subject="s", producer="handler/x", index=0)
    assert a.id == b.id != cause.id
    assert (a.causationid, a.correlationid) == (cause.id, cause.correlationid)


def test_unknown_envelope_attribute_is_refused_not_dropped() -> None:
    with pytest.raises(DecodeError) as info:
        codec.from_dict(wire(approved(), colour="blue"))
    assert info.value.field == "colour"


def test_time_without_zone_is_refused() -> None:
    with pytest.raises(DecodeError) as info:
        codec.from_dict(wire(approved(), time="2026-01-01T00:00:00"))
    assert info.value.field == "time"


def test_from_dict_leaves_the_callers_dict_alone() -> None:
    body = wire(approved())
    before = dict(body)
    codec.from_dict(body)
    assert body == before


def test_oversized_text_is_measured_in_bytes() -> None:
    text = '"' + "é" * (codec.MAX_EVENT_BYTES // 2 + 1) + '"'  # fewer chars than the limit, more bytes
    with pytest.raises(DecodeError, match="bytes"):
        codec.decode(text)


def test_round_trip_keeps_utc_time() -> None:
    e = approved()
    back = codec.decode(codec.encode(e))
    assert back == e and back.time.utcoffset() == datetime.now(UTC).utcoffset()
