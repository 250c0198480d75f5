"""The projector's bulk path for readings (issue 18, item 2) gives exactly the per-reading path's views.

Three levels: ``bulk.decode`` takes only bodies pydantic takes and gives their columns as the
readings view computes them; ``SeenSeqs.add_run`` records a run as ``add`` one by one does; and
whole batches (bad readings, duplicates, old dataversions, readings mixed with a node's
lifecycle events, single-reading messages) written by a ``Store`` with ``bulk=True`` and one
with ``bulk=False`` leave the same rows in every table of the DuckDB file, and the same dead
letters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivebus.bus import batch as wire
from hivebus.bus.consumer import RawMessage
from hivebus.edge.db import NodeDatabase
from hivebus.edge.outbox import Outbox
from hivebus.errors import DecodeError
from hivebus.projections import bulk
from hivebus.projections.dedup import SeenSeqs
from hivebus.projections.duck import to_arrow_table
from hivebus.projections.store import Slice, Store
from hivebus.projections.views import all_views
from hivebus.projections.views.base import Item
from hivebus.projections.views.readings import ReadingsView
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeOnline

T0 = 1_740_000_000_000_000_000


def reading(i: int, value: Any = 1.5, *, node: str = "W001", nodeseq: int | None = None,
            meta: dict[str, str] | None = None, name: str = "env.temperature") -> Event:
    return Event.new(Reading(name=name, value=value, timestamp=T0 + i, meta=meta if meta is not None else {"k": "v"}),
                     source=f"node/{node}", subject=node, nodeseq=i + 1 if nodeseq is None else nodeseq)


def body(event: Event) -> bytes:
    return codec.encode(event)


def outbox_body(event: Event) -> bytes:
    """``event`` as a node's outbox stores and sends it (``Outbox._row``): its nodeseq spliced in
    as the first attribute, not in the model's place (the form every reading from a node has)."""
    return b'{"nodeseq":%d,' % event.nodeseq + codec.encode(event.model_copy(update={"nodeseq": None}))[1:]


def edited(raw: bytes, edit: Any) -> bytes:
    obj = json.loads(raw)
    edit(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def reference_row(raw: bytes) -> dict[str, Any] | None:
    """What the per-reading path stores for ``raw`` (None: it refuses it)."""
    try:
        event = codec.decode(raw)
    except DecodeError:
        return None
    if event.type != "data.reading":
        return None
    applied = ReadingsView()._apply_each([Item(1, "data.W001.x", event)])
    if applied.failures:
        return None
    [change] = applied.changes
    row = {k: v[0] for k, v in change.columns.items()}  # type: ignore[union-attr]
    row["meta"] = [tuple(kv) for kv in row["meta"]]
    row["nodeseq"] = event.nodeseq
    del row["seq"]
    return row


def bulk_rows(bodies: list[bytes]) -> list[dict[str, Any] | None]:
    decoded = bulk.decode(bodies)
    rows = iter(decoded.table.to_pylist())
    out: list[dict[str, Any] | None] = []
    for ok in decoded.ok:
        if not ok:
            out.append(None)
            continue
        row = next(rows)
        row["timestamp"] = row["timestamp"].value
        row["meta"] = [tuple(kv) for kv in row["meta"]]
        out.append(row)
    return out


# --- bulk.decode ------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.integers(-(10**18), 10**18),
    text,
)
metas = st.dictionaries(text, text, max_size=4)
names = st.one_of(st.just("env.temperature"), st.from_regex(r"[a-z0-9_]{1,20}(\.[a-z0-9_]{1,20}){0,3}", fullmatch=True),
                  st.text(max_size=8))
EDITS = [
    lambda o: o.update(dataversion=1),
    lambda o: o.pop("dataversion"),
    lambda o: o.update(dataversion=2),
    lambda o: o.update(dataversion=0),
    lambda o: o.update(specversion="0.3"),
    lambda o: o.update(type="node.online"),
    lambda o: o.update(extra=1),
    lambda o: o["data"].update(extra=1),
    lambda o: o["data"].update(value=True),
    lambda o: o["data"].update(value=None),
    lambda o: o["data"].update(timestamp=12),
    lambda o: o["data"].update(timestamp=float(T0)),
    lambda o: o["data"].update(timestamp=2**63),
    lambda o: o["data"].update(timestamp=946_684_799_999_999_999),
    lambda o: o["data"].update(timestamp=946_684_800_000_000_000),
    lambda o: o["data"].update(scope="site"),
    lambda o: o["data"].pop("scope"),
    lambda o: o["data"].pop("meta"),
    lambda o: o["data"].update(meta={"k": 1}),
    lambda o: o["data"].update(name="x" * 129),
    lambda o: o["data"].update(name="a" * 128),
    lambda o: o.update(time="2023-02-29T00:00:00Z"),
    lambda o: o.update(time="2024-02-29T00:00:00Z"),
    lambda o: o.update(time="2026-12-03T16:26:58.1234567Z"),
    lambda o: o.update(time="2026-12-03T16:26:58+23:59"),
    lambda o: o.update(time="2026-12-03T16:26:58"),
    lambda o: o.update(time="2026-12-03 16:26:58Z"),
    lambda o: o.update(time=1700000000),
    lambda o: o.update(nodeseq=0),
    lambda o: o.update(nodeseq=-3),
    lambda o: o.update(nodeseq=2**64),
    lambda o: o.update(nodeseq="5"),
    lambda o: o.update(nodeseq=None),
    lambda o: o.pop("nodeseq"),
    lambda o: o.update(source="site/x"),
    lambda o: o.update(correlationid=None),
    lambda o: o.update(causationid="c"),
    lambda o: o.update(id=5),
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    event = reading(draw(st.integers(0, 10**6)), draw(values), meta=draw(metas), name=draw(st.just("env.temperature")),
                    nodeseq=draw(st.integers(1, 10**18)))
    raw = draw(st.sampled_from([body, outbox_body]))(event)
    kind = draw(st.integers(0, 4))
    if kind == 1:
        raw = edited(raw, draw(st.sampled_from(EDITS)))
    elif kind == 2:  # another spelling of the same reading (key order, spaces, escapes)
        raw = draw(st.sampled_from([
            json.dumps(json.loads(raw)).encode(),
            json.dumps(json.loads(raw), ensure_ascii=True, separators=(",", ":")).encode(),
            b'{"nodeseq":1,' + raw[1:],
            raw[:-2] + b',"scope":"all"}}',
            raw.replace(b'"meta":{', b'"meta":{"k":"1","k":"2",'),
            raw.replace(b'"value":', b'"value": '),
            raw + b" ",
            raw[:-1] + b",}",
            raw.replace(b"data.reading", b"data.readinG"),
        ]))
    elif kind == 3:
        raw = raw.replace(b'"name":"env.temperature"', b'"name":' + json.dumps(draw(names)).encode())
    elif kind == 4:
        raw = body(reading(1, 1.5)).replace(b'"value":1.5,', b'"value":' + draw(st.sampled_from(
            [b"-0", b"-0.0", b"1e5", b"1E+05", b"0.1e-2", b"00", b"1.", b".5", b"1e400", b"123456789012345678",
             b"1234567890123456789", b"9007199254740993", b"NaN", b"Infinity", b'"\\u00e9"', b'"a\\"b"',
             b"1.7976931348623157e308", b"2.2250738585072014e-308", b"5e-324", b"0.30000000000000004",
             b"123456789012345678901234567890.5", b"-9223372036854775808"])) + b",")
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bodies(), min_size=1, max_size=20))
def test_bulk_takes_only_what_pydantic_takes_and_gives_the_same_columns(data: list[bytes]) -> None:
    for raw, got in zip(data, bulk_rows(data), strict=True):
        if got is None:
            continue
        assert reference_row(raw) == got, raw


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(values, metas), min_size=1, max_size=30))
def test_readings_as_codec_writes_them_are_taken_in_bulk(picks: list[tuple[Any, dict[str, str]]]) -> None:
    """The fast path is not a formality: every reading a node's outbox writes (strings without
    escapes, numbers of at most 18 digits) is proven in bulk, with the per-reading columns."""
    events = [reading(i, v, meta=m) for i, (v, m) in enumerate(picks)]
    data = [(body if i % 2 else outbox_body)(e) for i, e in enumerate(events)]
    got = bulk_rows(data)
    for raw, (value, meta), row in zip(data, picks, got, strict=True):
        simple = all('"' not in s and "\\" not in s and all(ord(c) >= 0x20 for c in s)
                     for s in [*meta, *meta.values(), *([value] if isinstance(value, str) else [])])
        if simple and not (isinstance(value, int) and abs(value) >= 10**18) and "e" not in repr(value).lower():
            assert row is not None, raw
        if row is not None:
            assert row == reference_row(raw)


async def test_readings_from_a_node_outbox_are_taken_in_bulk(tmp_path: Path) -> None:
    """The bodies a real outbox stores (nodeseq first) go the bulk way, with the per-reading
    columns: before, every reading from a node missed it (the pattern wanted the nodeseq in
    the model's place) and the sustained load's projector decoded them all with pydantic."""
    db = await NodeDatabase.open(tmp_path / "node.db")
    try:
        outbox = await Outbox.open(db, "W001")
        events = [Event.new(Reading(name="env.temperature", value=v, timestamp=T0 + i, meta={"sensor": "bme680"}),
                            source="node/W001", subject="W001") for i, v in enumerate([21.5, 3, "on", -0.0])]
        seqs = await outbox.append_many(events)
        entries = await outbox.next_batch(100)
        await outbox.close()
    finally:
        await db.close()
    data = [e.body for e in entries]
    assert data == [outbox_body(e.model_copy(update={"nodeseq": n})) for e, n in zip(events, seqs, strict=True)]
    got = bulk_rows(data)
    assert all(row is not None for row in got), data
    assert got == [reference_row(raw) for raw in data]
    assert [row["nodeseq"] for row in got if row] == seqs


def test_a_body_that_is_not_utf8_goes_the_per_body_way() -> None:
    good = body(reading(1))
    bad = body(reading(2, "x")).replace(b'"x"', b'"\xff"')
    decoded = bulk.decode([good, bad, good])
    assert decoded.ok.tolist() == [True, False, True]
    assert decoded.table.num_rows == 2


# --- SeenSeqs.add_run -------------------------------------------------------------------


def state(s: SeenSeqs) -> tuple[Any, ...]:
    return (s.watermark, s.los, s.his, s.highs, s.duplicates, s.compacted)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["DATA", "EVENTS"]), st.integers(1, 300)), max_size=60),
       st.lists(st.integers(1, 400), max_size=40), st.sampled_from(["DATA", "EVENTS"]),
       st.sampled_from([5, 40, 10**6]), st.sampled_from([1, 3, 10_000]))
def test_add_run_records_a_run_as_add_does_one_by_one(before: list[tuple[str, int]], run: list[int], stream: str,
                                                      horizon: int, max_ranges: int) -> None:
    one = SeenSeqs(horizon=horizon, max_ranges=max_ranges)
    for s, n in before:
        one.add(n, s)
    bulk_side = one.copy()
    taken = bulk_side.add_run(np.array(run, dtype=np.int64), stream)
    if not taken:
        assert state(bulk_side) == state(one)  # nothing recorded: the caller adds one by one
        return
    added = [one.add(n, stream) for n in run]
    assert all(added)
    assert state(bulk_side) == state(one)


def test_add_run_takes_an_outbox_run_with_gaps() -> None:
    seen = SeenSeqs()
    assert seen.add_run(np.array([1, 2, 3, 7, 8, 10], dtype=np.int64), "DATA")
    assert (seen.watermark, seen.los, seen.his) == (3, [7, 10], [8, 10])
    assert not seen.add_run(np.array([9, 11], dtype=np.int64), "DATA")  # 9 fills a gap: one by one


# --- whole batches through two stores ---------------------------------------------------


def tables(path: Path) -> dict[str, list[dict[str, Any]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [f"{s}.{t}" for s, t in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY 1, 2").fetchall()]
        # As Arrow: a MAP keeps its order (a Python dict would not show it).
        return {name: to_arrow_table(con.sql(f"SELECT * FROM {name} ORDER BY rowid")).to_pylist() for name in names}
    finally:
        con.close()


def project(path: Path, batches: list[list[Slice]], *, use_bulk: bool) -> list[Any]:
    store = Store(path, all_views(), bulk=use_bulk)
    seen = []
    try:
        for slices in batches:
            prepared = store.prepare(slices)
            seen.append(([(r.stream, r.seq, r.index, r.reason, r.field, r.data) for r in prepared.rejected],
                         prepared.duplicates, prepared.applied, prepared.messages, prepared.positions))
            store.commit(prepared)
    finally:
        store.close()
    return seen


def history(seed: int) -> list[list[Slice]]:
    """Batches of packed readings of three nodes, with everything the bulk path must hand back
    or get right: bad readings, old dataversions, escapes, re-sent (duplicate) readings and
    whole messages, a node's lifecycle events between its readings, single-reading messages."""
    rng = random.Random(seed)
    data_seq, events_seq, clock = 0, 0, 1_000
    nodeseq = {"W001": 0, "W002": 10**12, "W003": 0}
    sent: list[bytes] = []
    batches = []
    for _ in range(rng.randint(2, 6)):
        data_msgs, event_msgs = [], []
        for _ in range(rng.randint(1, 5)):
            clock += rng.randint(0, 3)
            node = rng.choice(list(nodeseq))
            if rng.random() < 0.3 and (data_msgs or event_msgs):
                nodeseq[node] += 1
                e = Event.new(NodeOnline(node=node), source=f"node/{node}", subject=node, nodeseq=nodeseq[node])
                events_seq += 1
                event_msgs.append(RawMessage(events_seq, f"evt.node.{node}", codec.encode(e), clock))
                continue
            bodies_ = []
            for _ in range(rng.randint(1, 30)):
                kind = rng.random()
                if kind < 0.08 and sent:
                    bodies_.append(rng.choice(sent))  # a re-sent reading
                    continue
                nodeseq[node] += rng.choice([1, 1, 1, 2, 5])  # gaps: lifecycle events, drops
                value = rng.choice([20.5, -0.0, 3, 2**60, 2**70, "text", 'q"uote', "é", 1e300, 12345678901234567])
                raw = rng.choice([body, outbox_body])(reading(nodeseq[node], value, node=node, nodeseq=nodeseq[node],
                                   meta=rng.choice([{}, {"k": "v"}, {"b": "2", "a": "1", "c": ""}])))
                if kind < 0.13:
                    raw = edited(raw, rng.choice(EDITS))
                elif kind < 0.16:
                    obj = json.loads(raw)
                    obj["dataversion"] = 1
                    raw = json.dumps(obj).encode()
                bodies_.append(raw)
                sent.append(raw)
            data_seq += 1
            if len(bodies_) == 1 and rng.random() < 0.5:
                data_msgs.append(RawMessage(data_seq, f"data.{node}.env", bodies_[0], clock))
            else:
                data_msgs.append(RawMessage(data_seq, wire.batch_subject(node), wire.pack(bodies_), clock))
            if rng.random() < 0.1:  # a whole message stored twice (after the duplicate window)
                data_seq += 1
                again = data_msgs[-1]
                data_msgs.append(RawMessage(data_seq, again.subject, again.data, clock))
        if rng.random() < 0.1:
            data_seq += 1
            data_msgs.append(RawMessage(data_seq, "data.W001.BATCH", wire.pack([b"x"])[:-1], clock))  # truncated
        slices = [Slice("DATA", data_msgs)] + ([Slice("EVENTS", event_msgs)] if event_msgs else [])
        batches.append(slices)
    return batches


@pytest.mark.parametrize("seed", range(16))
def test_the_bulk_path_leaves_every_table_as_the_per_reading_path_does(tmp_path: Path, seed: int) -> None:
    batches = history(seed)
    reference = project(tmp_path / "each.duckdb", batches, use_bulk=False)
    fast = project(tmp_path / "bulk.duckdb", batches, use_bulk=True)
    assert fast == reference  # dead letters (reasons, bytes, places), duplicates, positions
    each, together = tables(tmp_path / "each.duckdb"), tables(tmp_path / "bulk.duckdb")
    assert each == together
    assert each["main.readings"], "the history wrote no readings"


def test_the_bulk_path_is_taken_for_packed_readings(tmp_path: Path) -> None:
    """Not only equal: the packed readings really went the bulk way (no event per reading)."""
    events = [reading(i, float(i)) for i in range(50)]
    message = RawMessage(1, "data.W001.BATCH", wire.pack([(body if i % 2 else outbox_body)(e)
                                                          for i, e in enumerate(events)]), 1)
    store = Store(tmp_path / "v.duckdb", all_views())
    try:
        from hivebus.projections.decode import decode_slice

        part = decode_slice("DATA", [message], 0)
        assert [type(event) for _, event, _, _ in part.items] == [bulk.ReadingRows]
        prepared = store.prepare([Slice("DATA", [message])])
        assert prepared.applied == 50 and not prepared.rejected
        store.commit(prepared)
        count = store.reader().execute("SELECT count(*), sum(value) FROM readings").fetchone()
        assert count == (50, float(sum(range(50))))
    finally:
        store.close()


def project_decoded_ahead(path: Path, batches: list[list[Slice]]) -> list[Any]:
    """``project``, each batch decoded (``Store.decode``) before the previous one commits, after
    the checkpoints that batch will leave: as the pump decodes ahead while the writer commits."""
    store = Store(path, all_views())
    seen = []
    try:
        decoding = store.decode(batches[0], store.positions)
        for i, slices in enumerate(batches):
            prepared = store.prepare(slices, decoding)
            seen.append(([(r.stream, r.seq, r.index, r.reason, r.field, r.data) for r in prepared.rejected],
                         prepared.duplicates, prepared.applied, prepared.messages, prepared.positions))
            if i + 1 < len(batches):
                decoding = store.decode(batches[i + 1], prepared.positions)
            store.commit(prepared)
    finally:
        store.close()
    return seen


@pytest.mark.parametrize("seed", range(8))
def test_batches_decoded_ahead_leave_every_table_as_in_turn(tmp_path: Path, seed: int) -> None:
    batches = history(seed)
    reference = project(tmp_path / "each.duckdb", batches, use_bulk=False)
    ahead = project_decoded_ahead(tmp_path / "ahead.duckdb", batches)
    assert ahead == reference
    assert tables(tmp_path / "each.duckdb") == tables(tmp_path / "ahead.duckdb")


def test_a_batch_decoded_after_another_checkpoint_is_decoded_again(tmp_path: Path) -> None:
    """Decoded ahead after checkpoint 0 but prepared once the store stands at 2: the messages it
    holds up to 2 are already in the views and are not applied again."""
    messages = [RawMessage(s, "data.W001.BATCH", wire.pack([body(reading(10 * s + k)) for k in range(10)]), s)
                for s in range(1, 6)]
    store = Store(tmp_path / "v.duckdb", all_views())
    try:
        first = [Slice("DATA", messages[:2])]
        store.commit(store.prepare(first))
        later = [Slice("DATA", messages[1:4])]  # message 2 again (a reader restarted), then 3 and 4
        stale = store.decode(later, {"DATA": 0})
        assert len(stale.parts[0].items) == 3
        prepared = store.prepare(later, stale)
        assert (prepared.applied, prepared.duplicates, prepared.positions["DATA"]) == (20, 0, 4)
        store.commit(prepared)
        rows = store.reader().execute("SELECT count(*), count(DISTINCT timestamp), min(seq) FROM readings").fetchone()
        assert rows == (40, 40, 1)
        other = [Slice("DATA", messages[4:])]
        assert store.prepare(other, store.decode(later, store.positions)).applied == 10  # another batch's: not used
    finally:
        store.close()
