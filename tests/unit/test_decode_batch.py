"""Decoding packed DATA messages in bulk (issue 18, item 2) gives exactly what decoding each
reading on its own gives: the same events, the same rejections, in the same order."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.bus import batch as wire
from hivebus.bus.consumer import RawMessage
from hivebus.errors import DecodeError
from hivebus.projections.decode import READING, decode_slice
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

T0 = 1_740_000_000_000_000_000


def good(i: int, value: Any) -> bytes:
    meta = {"sensor": "bme680"} if i % 2 else {}
    event = Event.new(Reading(name="env.temperature", value=value, timestamp=T0 + i, meta=meta),
                      source="node/W001", subject="W001", nodeseq=i + 1)
    return b'{"nodeseq":%d,' % (i + 1) + codec.encode(event)[1:]


def altered(i: int, **changes: Any) -> bytes:
    body = json.loads(good(i, 1.0))
    for key, value in changes.items():
        if key.startswith("data_"):
            body["data"][key[5:]] = value
        elif value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


BAD = [
    lambda i: b"not json",
    lambda i: altered(i, dataversion=9),
    lambda i: altered(i, specversion="0.3"),
    lambda i: altered(i, type="node.heartbeat"),
    lambda i: altered(i, extra="x"),
    lambda i: altered(i, data_value=True),
    lambda i: altered(i, data_timestamp=12),
    lambda i: altered(i, data_name="Bad Name"),
    lambda i: altered(i, data_meta={"k": 1}),
    lambda i: altered(i, time="yesterday"),
    lambda i: altered(i, source=None),
    lambda i: altered(i, dataversion=None),  # absent: version 1, the current one
]
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70),
                   st.text(max_size=10))
bodies = st.lists(st.one_of(values.map(lambda v: ("good", v)), st.integers(0, len(BAD) - 1).map(lambda k: ("bad", k))),
                  max_size=30)


def one_by_one(data: list[bytes]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    events, rejected = [], []
    for index, body in enumerate(data):
        try:
            event = codec.decode(body)
        except DecodeError as exc:
            rejected.append((index, exc.reason))
            continue
        if event.type != READING:
            rejected.append((index, "type"))
            continue
        events.append({**codec.to_dict(event), "index": index})
    return events, rejected


@settings(max_examples=150, deadline=None)
@given(bodies)
def test_a_batch_decodes_as_its_readings_do_one_by_one(picks: list[tuple[str, Any]]) -> None:
    data = [good(i, v) if kind == "good" else BAD[v](i) for i, (kind, v) in enumerate(picks)]
    message = RawMessage(7, "data.W001.BATCH", wire.pack(data), 1)
    out = decode_slice("DATA", [message], 0)
    events = [{**codec.to_dict(e), "index": i} for _, e, i, _ in out.items]
    rejected = [(r.index, "type" if r.field == "type" else r.reason) for r in out.rejected]
    assert (events, rejected) == one_by_one(data)
    assert [body for _, _, _, body in out.items] == [data[i] for _, _, i, _ in out.items]
    assert all(e.nodeseq == i + 1 and e.node == "W001" for _, e, i, _ in out.items)
    assert all(codec.encode(e) == codec.encode(codec.decode(data[i])) for _, e, i, _ in out.items)
