"""Publish path: hivebus ``Bus.publish_many`` vs raw nats-py ``publish_async``.

Both sides publish the same N ``data.reading`` events on the same server in the same run.
The raw side gets the bytes already encoded (the ceiling a Python client reaches); the
hivebus side starts from ``Event`` objects, so encoding, subject routing and ack tracking
are inside its time. Each side publishes into a freshly purged DATA stream.

    python bench/publish.py [-n 100000] [--fsync always|interval]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import Timer, fresh_server, rate, result

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.bus.subjects import subject_for
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event


def readings(n: int, node: str = "W012") -> list[Event]:
    t0 = time.time_ns()
    return [
        Event.new(
            Reading(name="env.temperature", value=20.0 + (i % 100) / 10, timestamp=t0 + i, meta={"sensor": "bme680"}),
            source=f"node/{node}",
            subject=node,
            nodeseq=i + 1,
        )
        for i in range(n)
    ]


async def raw_publish_async(bus: Bus, wire: list[tuple[str, bytes, str]]) -> float:
    js = bus.nc.jetstream(publish_async_max_pending=8192)
    with Timer() as t:
        for subject, payload, msg_id in wire:
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
        await js.publish_async_completed()
    return t.seconds


async def hivebus_publish_many(bus: Bus, events: list[Event]) -> float:
    with Timer() as t:
        seqs = await bus.publish_many(events)
    assert len(seqs) == len(events) and all(seqs)
    return t.seconds


async def run(n: int, fsync: str) -> dict[str, float]:
    events = readings(n)
    wire = [(subject_for(e), codec.encode(e), e.id) for e in events]
    with fresh_server(fsync) as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            results: dict[str, list[float]] = {"raw": [], "hivebus": []}
            for _ in range(2):  # alternate sides so neither always runs on a warmer server
                await bus.js.purge_stream(DATA)
                results["raw"].append(await raw_publish_async(bus, wire))
                await bus.js.purge_stream(DATA)
                results["hivebus"].append(await hivebus_publish_many(bus, events))
    raw, ours = min(results["raw"]), min(results["hivebus"])
    print(f"publish {n} data.reading (fsync={fsync})")
    print(f"  raw nats-py publish_async : {rate(n, raw)}")
    print(f"  hivebus publish_many      : {rate(n, ours)}")
    print(f"  ratio hivebus/raw         : {raw / ours:.2f}")
    result(f"publish, fsync={fsync} (events/s)", n / ours, "events/s", n / raw, "nats-py publish_async, pre-encoded")
    return {"raw_per_s": n / raw, "hivebus_per_s": n / ours, "ratio": raw / ours}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--fsync", default="always", choices=["always", "interval"])
    args = ap.parse_args()
    asyncio.run(run(args.n, args.fsync))


if __name__ == "__main__":
    main()
