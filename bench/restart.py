"""How long a decider takes to start: from a snapshot against folding the whole log.

For each size N a fresh embedded server gets a log of N events of the kind the scheduler
folds (node registrations, bundles, jobs and their goals from ``replay.synthetic``, then
heartbeats and plugin runs from 20 nodes; the scheduler folds the heartbeats, about 40%). The scheduler's durable consumer is put at the
end of the log, as a scheduler that processed it all and stopped leaves it. Then:

- baseline: a start with no snapshot (what every start cost before snapshots): it reads and
  folds the whole log, and saves a snapshot at the floor;
- hivebus: a start with that snapshot (median of 3): it loads it and folds the tail (here:
  nothing).

Both are ``HandlerService.resume()`` up to the point where the consumer would start, timed
in the same process on the same server. It also prints the snapshot's size.

    .venv/bin/python bench/restart.py [--sizes 10000,1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Iterator

from common import Timer, fresh_server, result
from nats.js.api import DeliverPolicy

from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS, ConsumerSpec, ensure_consumer
from hivebus.config import Settings
from hivebus.handlers.ses import SesHandler
from hivebus.replay import synthetic
from hivebus.schemas.envelope import Event
from hivebus.services.handler_service import HandlerService


def scheduler_log(n: int, *, nodes: int = 20, seed: int = 1) -> Iterator[Event]:
    rng = random.Random(seed)
    prefix = [e for e in synthetic.stream(nodes=nodes, readings=0, jobs=4, seed=seed) if e.type != "data.reading"]
    yield from prefix
    clock = synthetic._Clock(prefix[-1].time)
    fleet = [synthetic._Node(f"W{i + 1:03d}") for i in range(nodes)]
    bundles = ["waggle/plugin-bme680:0.2.1", "waggle/plugin-raingauge:1.0.0"]
    made, i = len(prefix), 0
    while made < n:
        node = fleet[i % nodes]
        if i % 3:
            yield node.emit(synthetic._heartbeat(node.node_id, rng, i), clock.tick())
            made += 1
        else:
            for event in synthetic._run(node, f"run-{i:07d}", f"job-{i % 4 + 1}", bundles[i % 2], rng, clock):
                yield event
                made += 1
        i += 1


async def publish(bus: Bus, n: int) -> int:
    batch: list[Event] = []
    for event in scheduler_log(n):
        batch.append(event)
        if len(batch) == 5000:
            await bus.publish_many(batch)
            batch = []
    if batch:
        await bus.publish_many(batch)
    return await bus.last_seq(EVENTS)


async def start(bus: Bus, *, snapshots: bool = True) -> tuple[float, HandlerService]:
    service = HandlerService(SesHandler(), bus.settings, bus, snapshots=snapshots)
    with Timer() as t:
        spec = await service.resume()
    await ensure_consumer(bus.js, spec)  # where the start leaves it, for the next one
    return t.seconds, service


async def measure(n: int) -> None:
    with fresh_server("interval") as server:  # fsync only slows building the log, not reading it
        async with await Bus.connect(server.url, settings=Settings(nats_url=server.url)) as bus:
            await bus.ensure_streams()
            with Timer() as t:
                last = await publish(bus, n)
            print(f"N={n:,}: {last:,} events published in {t.seconds:.1f} s")
            handler = SesHandler()
            await ensure_consumer(bus.js, ConsumerSpec(
                stream=EVENTS, durable="handler-ses", filter_subjects=tuple(handler.inputs), opt_start_seq=last + 1,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            ))
            info = await bus.js.consumer_info(EVENTS, "handler-ses")
            assert info.ack_floor.stream_seq == last, info.ack_floor  # as a scheduler that read it all leaves it
            cold, service = await start(bus)
            assert service.history_read > 0.3 * n and service.snapshot_seq == last
            folded = service.history_read
            warm_runs = []
            for _ in range(3):
                seconds, again = await start(bus)
                assert again.history_read == 0 and len(again.driver.state.nodes) == len(service.driver.state.nodes)
                warm_runs.append(seconds)
            warm = statistics.median(warm_runs)
            size = len((await (await again.snapshots._bucket()).get(again.durable)).data)
            print(f"  start without a snapshot: {cold:.2f} s (folded the {folded:,} events of its subjects, {folded / cold:,.0f}/s, saved the snapshot)")
            print(f"  start from the snapshot:  {warm:.3f} s (median of {', '.join(f'{w:.3f}' for w in warm_runs)}); snapshot {size / 2**20:.2f} MiB")
            result(f"scheduler start at {n:,} events, from a snapshot", warm, "s", cold, "folding the whole log (no snapshot)", lower_is_better=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    args = parser.parse_args()
    started = time.perf_counter()
    for n in (int(s) for s in args.sizes.split(",")):
        asyncio.run(measure(n))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
