"""Bad input never stops the projector (guarantee 5): junk ends in ``dead_letters`` with a
reason, and the good events around it are all projected.

Hypothesis makes the junk: random bytes, JSON that is no event, events of unknown types,
known types with wrong field types, readings on the wrong stream, node sequences out of
range, values no view can store, and payloads near NATS' size limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA, EVENTS
from hivebus.bus.subjects import subject_for
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.replay.build import stream_ends
from hivebus.schemas import Event, codec
from hivebus.schemas.data import Reading
from hivebus.schemas.ecr import BundleApproved

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENT_SUBJECTS = [
    "evt.junk.key",
    "fromedge.W900.node.heartbeat",
    "toedge.W900.ses.goal.assigned",
    "evt.ecr.bundle.approved.x",
]
DATA_SUBJECTS = ["data.W900.env.temperature", "data.W900.sys.load1"]
_nodes = itertools.count(1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def envelope(**fields: Any) -> dict[str, Any]:
    body = {
        "specversion": "1.0",
        "id": "01J00000000000000000000000",
        "type": "data.reading",
        "source": "node/W900",
        "subject": "W900",
        "time": "2025-01-01T00:00:00Z",
        "dataversion": 1,
        "data": {"name": "env.temperature", "value": 1.0, "timestamp": 1_740_000_000_000_000_000},
    }
    body.update(fields)
    return body


def reading_with(**data: Any) -> dict[str, Any]:
    base = envelope()
    return {**base, "data": {**base["data"], **data}}


junk_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){1,3}", fullmatch=True).map(
        lambda t: json.dumps(envelope(type=f"zz.{t}")).encode()
    ),  # unknown type
    st.sampled_from(
        [
            reading_with(value=True),
            reading_with(value=[1]),
            reading_with(value={"a": 1}),
            reading_with(timestamp=1.5),
            reading_with(timestamp=12),
            reading_with(name="Bad Name!"),
            reading_with(meta={"k": 1}),
            envelope(dataversion=9),
            envelope(time="yesterday"),
            envelope(specversion="0.3"),
            envelope(data=None),
            envelope(nodeseq=2**70),
            envelope(type="ecr.bundle.approved"),
            reading_with(value=10**400),  # decodes, but no DOUBLE holds it
        ]
    ).map(lambda body: json.dumps(body).encode()),
    st.integers(600_000, 1_000_000).map(
        lambda n: json.dumps({"blob": "x" * n}).encode()
    ),  # oversized
)
junk = st.tuples(st.sampled_from([EVENTS, DATA]), junk_bodies, st.integers(0, 5))


async def scenario(url: str, db: Path, bad: list[tuple[str, bytes, int]]) -> None:
    node = f"W{next(_nodes):03d}"
    good: list[Event] = []
    outgoing: list[tuple[Outgoing, Event | None]] = []
    for i, (stream, body, pick) in enumerate(bad):
        before = Event.new(
            Reading(
                name="env.temperature", value=float(i), timestamp=1_740_000_000_000_000_000 + i
            ),
            source=f"node/{node}",
            subject=node,
            nodeseq=2 * i + 1,
        )
        after = Event.new(
            BundleApproved(bundle_id=f"waggle/plugin-x:{i}.0.0", by="rev"),
            source="user/rev",
            subject=f"waggle/plugin-x:{i}.0.0",
        )
        subjects = EVENT_SUBJECTS if stream == EVENTS else DATA_SUBJECTS
        outgoing.append((Outgoing(subject_for(before), codec.encode(before), before.id), before))
        outgoing.append((Outgoing(subjects[pick % len(subjects)], body, f"junk-{node}-{i}"), None))
        outgoing.append((Outgoing(subject_for(after), codec.encode(after), after.id), after))
        good += [before, after]
    async with await Bus.connect(url) as bus:
        seqs = [(await bus.publish_raw_many([o]))[0] for o, _ in outgoing]
        junk_at = {
            (EVENTS if o.subject.split(".")[0] != "data" else DATA, seq): o.payload
            for (o, event), seq in zip(outgoing, seqs, strict=True)
            if event is None
        }
        async with running(bus, db) as projector:
            assert await projector.wait_for(await stream_ends(bus), 30)
            deadline = time.monotonic() + 10
            while True:
                rows = (
                    await query(
                        bus, "SELECT stream, seq, reason, octet_length(payload) FROM dead_letters"
                    )
                ).rows
                letters = {(r[0], r[1]): (r[2], r[3]) for r in rows}
                if all(j in letters for j in junk_at) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            for where, body in junk_at.items():
                reason, size = letters[where]
                assert reason, where
                if "payload cut" in reason:  # too big to carry whole: the stream still holds it
                    assert len(body) > 500_000 and 0 < size < len(body)
                else:
                    assert size == len(body), (where, reason)
            ids = {e.id for e in good}
            found = await query(
                bus,
                "SELECT id FROM events WHERE type = 'ecr.bundle.approved' UNION ALL "
                "SELECT CAST(value AS VARCHAR) FROM readings WHERE node = ?",
                [node],
                limit=None,
            )
            assert {r[0] for r in found.rows} >= {e.id for e in good if e.type != "data.reading"}
            values = {r[0] for r in found.rows if "." in r[0]}
            assert values == {str(float(i)) for i in range(len(bad))}
            assert len(ids) == len(good)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(bad=st.lists(junk, min_size=1, max_size=8))
def test_junk_is_dead_lettered_and_the_good_events_around_it_are_projected(
    nats_server: Any, tmp_path: Path, bad: list[tuple[str, bytes, int]]
) -> None:
    asyncio.run(_with_streams(nats_server.url, tmp_path / "views.duckdb", bad))


async def _with_streams(url: str, db: Path, bad: list[tuple[str, bytes, int]]) -> None:
    async with await Bus.connect(url) as bus:
        await bus.ensure_streams()
    await scenario(url, db, bad)
