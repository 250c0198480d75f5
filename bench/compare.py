"""hivebus against what a user would pick instead, on one embedded server in one run.

Workload: ``-n`` ``data.reading`` events from 20 nodes (four series each, a per-node
``nodeseq``, three meta keys), published into DATA with ``Bus.publish_many`` on a server with
``fsync=always``. The alternatives that handle one message at a time get the first ``-m`` of
them (their cost per message does not depend on how many there are; at a few hundred a
second, all of them would take minutes). On the same server, in the same process run:

1. Projection: the events made queryable with SQL in a DuckDB file.
   - hivebus: the projector (all twelve views; readings land in ``readings``) from an empty
     file until its DATA checkpoint is committed at the last event;
   - raw DuckDB: the very rows the projector wrote (read back as Arrow) inserted into a fresh
     file's ``readings`` table in batches of 10,000 (the projector's batch size), one
     transaction each: the ceiling of the write path, without NATS, decoding or checkpoints;
   - FastStream: what a user writes without hivebus -- a ``NatsBroker`` pull subscriber on
     DATA whose handler inserts each event into the same ``readings`` table as it arrives,
     one DuckDB transaction per message (FastStream acks each message after its handler);
     timed until ``-m`` rows are in.
2. The ``eventsourcing`` library (SQLite recorder: a file on the same disk, WAL mode, SQLite's
   default ``synchronous=FULL``), with the same readings as ``Node.Measured`` events of 20
   ``Node`` aggregates:
   - record: one ``app.save`` per reading (one transaction each: a command per reading; the
     first ``-m``) and one save per 100 readings (all ``-n``); the hivebus side is the
     ``publish_many`` above into a fresh DATA (every event acknowledged after the server's
     fsync). The three alternate twice and the best of each counts: all of them wait on the
     disk's fsyncs, whose rate moves with whatever else the machine is doing;
   - projection: a ``Follower`` (``eventsourcing.system``) pulls the log of the application
     that recorded ``-m`` readings (one per save), in sections of 500, and records one
     ``Row`` per reading (and nothing for the 20 ``Node`` created events); the library
     writes the new event and the tracking position in one transaction per processed event.
     The hivebus side is the projector of step 1.

Each rate is printed with the ratio hivebus / alternative (> 1: hivebus is faster), and a
``RESULT`` line for bench/run.py's summary. A small ``-n`` (``--quick``) mostly lowers the
projector's figure (its start-up is counted).

    python bench/compare.py [-n 20000] [-m 5000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from common import (
    READINGS_DDL,
    Timer,
    duckdb_arrow_insert,
    fresh_data_stream,
    fresh_server,
    node_readings,
    projected_rows,
    rate,
    result,
)
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import Follower
from faststream.nats import DeliverPolicy, JStream, NatsBroker, NatsMessage, PullSub
from project import project

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.projections.pump import PumpConfig
from hivebus.schemas.envelope import Event

# --- FastStream ---------------------------------------------------------------------------


async def faststream_subscriber(url: str, path: Path, n: int) -> float:
    """Seconds until a FastStream subscriber has inserted ``n`` readings, one transaction each."""
    con = duckdb.connect(str(path))
    con.execute(READINGS_DDL)
    inserted = 0
    done = asyncio.Event()
    broker = NatsBroker(url, logger=None)

    @broker.subscriber("data.>", stream=JStream(DATA, declare=False), durable="duckdb-writer",
                       deliver_policy=DeliverPolicy.ALL, pull_sub=PullSub(batch_size=100))
    async def on_reading(body: dict[str, Any], msg: NatsMessage) -> None:
        nonlocal inserted
        data, meta = body["data"], body["data"]["meta"]
        con.execute(
            "INSERT INTO readings (timestamp, name, value, node, meta, seq) "
            "VALUES (make_timestamp_ns(?), ?, ?, ?, MAP(?::VARCHAR[], ?::VARCHAR[]), ?)",
            [data["timestamp"], data["name"], data["value"], body["source"].removeprefix("node/"),
             list(meta), list(meta.values()), msg.raw_message.metadata.sequence.stream],
        )
        inserted += 1
        if inserted >= n:
            done.set()

    with Timer() as t:
        await broker.start()
        await asyncio.wait_for(done.wait(), timeout=max(120.0, n / 50))
    await broker.stop()
    stored = con.execute("SELECT count(*) FROM readings").fetchone()
    con.close()
    assert stored is not None and stored[0] >= n, f"FastStream stored {stored} of {n}"
    return t.seconds


# --- eventsourcing ------------------------------------------------------------------------


class Node(Aggregate):
    """An edge node whose readings are its events."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    @event("Measured")
    def measure(self, name: str, value: float, timestamp: int, meta: dict[str, str]) -> None:
        pass


class Row(Aggregate):
    """The follower's record of one reading (its row)."""

    def __init__(self, node_id: str, name: str, value: float, timestamp: int) -> None:
        self.node_id, self.name, self.value, self.timestamp = node_id, name, value, timestamp


class Network(Application[Any]):
    log_section_size = 500  # the follower pulls sections this big (the default is 10)


class Readings(Follower[Any]):
    pull_section_size = 500

    @singledispatchmethod
    def policy(self, domain_event: DomainEventProtocol[Any], processing_event: ProcessingEvent[Any]) -> None:
        """Events other than readings: nothing to record."""

    @policy.register
    def _(self, domain_event: Node.Measured, processing_event: ProcessingEvent[Any]) -> None:
        node_id = domain_event.meta["vsn"]
        processing_event.collect_events(Row(node_id, domain_event.name, domain_event.value, domain_event.timestamp))


def sqlite_env(path: Path) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}


def es_record(events: list[Event], path: Path, per_save: int) -> tuple[float, Network]:
    """Seconds to record ``events`` as ``Node.Measured``, ``per_save`` readings per ``save``."""
    app = Network(env=sqlite_env(path))
    nodes = {e.subject: Node(e.subject) for e in events}
    app.save(*nodes.values())
    with Timer() as t:
        for lo in range(0, len(events), per_save):
            touched = {}
            for e in events[lo : lo + per_save]:
                node = nodes[e.subject]
                node.measure(name=e.data.name, value=e.data.value, timestamp=e.data.timestamp, meta=e.data.meta)
                touched[e.subject] = node
            app.save(*touched.values())
    return t.seconds, app


def es_follow(app: Network, path: Path) -> tuple[float, int]:
    """Seconds for a ``Readings`` follower to process ``app``'s whole log, and how many it did."""
    follower = Readings(env=sqlite_env(path))
    follower.follow(app.name, app.notification_log)
    with Timer() as t:
        follower.pull_and_process(app.name)
    processed = follower.recorder.max_tracking_id(app.name) or 0
    follower.close()
    return t.seconds, processed


# --- the run ------------------------------------------------------------------------------


async def run(n: int, m: int, work: Path) -> None:
    events = node_readings(n)
    each, batched, published = [], [], []
    with fresh_server("always") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            # Recording, back to back and twice, keeping the best of each: every side waits on
            # the disk's fsyncs, whose rate moves with whatever else the machine is doing.
            for i in range(2):
                seconds, app = es_record(events[:m], work / f"es-each-{i}.sqlite", per_save=1)
                each.append(seconds)
                if i == 0:
                    app.close()
                seconds, other = es_record(events, work / f"es-batched-{i}.sqlite", per_save=100)
                batched.append(seconds)
                other.close()
                await fresh_data_stream(bus)
                with Timer() as t:
                    seqs = await bus.publish_many(events)
                published.append(t.seconds)
            assert len(seqs) == n and seqs[-1] == n, "DATA must hold exactly the workload"
            ends = {DATA: n}
            ours, raw = [], []
            for i in range(2):  # alternate, keep the best of each: the machine is shared
                ours.append(await project(bus, work / f"views-{i}.duckdb", ends))
                rows = projected_rows(work / f"views-{i}.duckdb")
                assert rows.num_rows == n, f"the projector wrote {rows.num_rows} readings of {n}"
                raw.append(duckdb_arrow_insert(rows, work / f"arrow-{i}.duckdb", PumpConfig().batch_size))
            fast = await faststream_subscriber(server.url, work / "faststream.duckdb", m)
    projector, arrow, publish = min(ours), min(raw), min(published)
    followed, processed = es_follow(app, work / "es-follower.sqlite")
    app.close()
    assert processed == m + len({e.subject for e in events[:m]}), f"the follower processed {processed}"
    each_rate, batched_rate, hivebus_record = m / min(each), n / min(batched), n / publish
    ours_rate, follower_rate = n / projector, processed / followed

    print(f"projection of {n:,} data.reading events (20 nodes) into DuckDB, on one server")
    print(f"  hivebus projector (12 views, checkpoints)     : {ours_rate:,.0f}/s")
    print(f"  raw DuckDB Arrow insert, 10k rows/transaction : {rate(n, arrow)}  (same rows; the write-path ceiling)")
    print(f"  FastStream subscriber, 1 transaction/message  : {rate(m, fast)}  (the first {m:,})")
    print(f"  ratio hivebus / raw DuckDB Arrow insert       : {ours_rate / (n / arrow):.3f}")
    print(f"  ratio hivebus / FastStream per-message insert : {ours_rate / (m / fast):.1f}")
    print("eventsourcing 9 (SQLite recorder) on the same readings")
    print(f"  hivebus publish_many (fsync=always)           : {hivebus_record:,.0f}/s")
    print(f"  eventsourcing record, 1 reading per save      : {each_rate:,.0f}/s  (the first {m:,})")
    print(f"  eventsourcing record, 100 readings per save   : {batched_rate:,.0f}/s")
    print(f"  ratio hivebus / eventsourcing per-reading save: {hivebus_record / each_rate:.2f}")
    print(f"  ratio hivebus / eventsourcing 100 per save    : {hivebus_record / batched_rate:.2f}")
    print(f"  eventsourcing Follower projection             : {follower_rate:,.0f}/s  ({processed:,} events)")
    print(f"  ratio hivebus projector / Follower            : {ours_rate / follower_rate:.1f}")
    result("projection vs raw DuckDB Arrow insert (events/s)", ours_rate, "events/s", n / arrow,
           "raw DuckDB Arrow insert, 10k rows/txn")
    result("projection vs FastStream + DuckDB per message (events/s)", ours_rate, "events/s", m / fast,
           "FastStream subscriber, 1 DuckDB txn/message")
    result("record vs eventsourcing SQLite (events/s)", hivebus_record, "events/s", each_rate,
           "eventsourcing, 1 reading per save")
    result("record vs eventsourcing SQLite, batched (events/s)", hivebus_record, "events/s", batched_rate,
           "eventsourcing, 100 readings per save")
    result("projection vs eventsourcing Follower (events/s)", ours_rate, "events/s", follower_rate,
           "eventsourcing Follower, SQLite")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("-m", type=int, default=5_000, help="events for the per-message alternatives")
    ap.add_argument("--quick", action="store_true", help="n=2,000, m=1,000")
    args = ap.parse_args()
    if args.quick:
        args.n, args.m = 2_000, 1_000
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-compare-") as d:
        asyncio.run(run(args.n, min(args.m, args.n), Path(d)))
    print(f"(total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
