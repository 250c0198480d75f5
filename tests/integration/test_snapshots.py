"""Deciders start from a snapshot and fold only the tail (issue 13, snapshots).

A real nats-server holds a synthetic history (bundles, nodes, jobs, runs: decided facts);
the handlers process it live, then each start is timed by what it folds: the first start
after the history folds all of it and saves a snapshot, the next folds nothing but the tail,
and the state it starts with decides exactly as a full fold's does. A snapshot of other code
or configuration is ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS, ensure_consumer
from hivebus.config import Settings
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import job_spec
from hivebus.replay.synthetic import history
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobSubmitted
from hivebus.services.handler_service import HandlerService
from tests.integration.test_handlers import handlers, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_server.url, settings=Settings(nats_url=nats_server.url)) as b:
        await b.ensure_streams()
        yield b


async def processed_history(bus: Bus) -> None:
    await bus.publish_many([e for e in history(nodes=3, readings=50, seed=7) if e.type != "data.reading"])
    async with handlers(bus.settings, bus):
        async def floors_at_end() -> bool:
            end = await bus.last_seq(EVENTS)
            try:
                infos = [await bus.js.consumer_info(EVENTS, f"handler-{n}") for n in ("ecr", "ses")]
            except NotFoundError:  # a handler has not created its durable yet
                return False
            return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos) and end > 0

        await until(floors_at_end, 60, "the handlers through the history")


async def svc_floor(bus: Bus, name: str) -> int:
    info = await bus.js.consumer_info(EVENTS, f"handler-{name}")
    return int(info.ack_floor.stream_seq)


def service(bus: Bus, handler: Any, **kw: Any) -> HandlerService:
    return HandlerService(handler, bus.settings, bus, **kw)


async def resumed(svc: HandlerService) -> HandlerService:
    """Resume as a start does, and put its consumer back where the start leaves it (resume
    deletes it for the consumer loop to create again from the floor)."""
    await ensure_consumer(svc.bus.js, await svc.resume())
    return svc


def decision_on(svc: HandlerService, command: Event) -> list[tuple[str, str]]:
    return [(e.type, e.subject) for e in svc.driver.decide_command(command).events]


async def test_a_start_folds_only_what_came_after_its_snapshot(bus: Bus) -> None:
    await processed_history(bus)
    full = service(bus, SesHandler(), snapshots=False)
    await resumed(full)
    assert full.history_read > 20

    first = service(bus, SesHandler())
    await resumed(first)  # no snapshot yet: the whole log, then one is saved at the floor
    assert first.history_read == full.history_read and first.snapshot_seq == await svc_floor(bus, "ses") > 0

    again = service(bus, SesHandler())
    await resumed(again)
    assert again.history_read == 0  # the snapshot is at the floor: nothing to fold

    # The restored state decides as the full fold does.
    job = next(iter(full.driver.state.jobs.values()))
    plugin = job.spec.plugins[0].plugin_spec.bundle_id
    submitted = JobSubmitted(job_id="fresh", user=job.user, spec=job_spec([("p", plugin)], nodes=sorted(full.driver.state.nodes)[:1]))
    command = Event.new(submitted, source=f"user/{job.user}", subject="fresh")
    assert decision_on(again, command) == decision_on(full, command) != []
    assert sorted(again.driver.state.jobs) == sorted(full.driver.state.jobs)
    assert sorted(again.driver.state.catalog.bundles) == sorted(full.driver.state.catalog.bundles)


async def test_a_snapshot_of_other_code_or_configuration_is_ignored(bus: Bus) -> None:
    await processed_history(bus)
    saved = service(bus, EcrHandler())
    await resumed(saved)
    folded = saved.history_read
    other_config = service(bus, EcrHandler(HandlerConfig(profile_window=5)))
    await resumed(other_config)
    assert other_config.history_read == folded  # rebuilt from the log
    other_code = service(bus, EcrHandler())
    other_code.version = "a later release"
    await resumed(other_code)
    assert other_code.history_read == folded


async def test_a_snapshot_is_refreshed_in_the_background_without_touching_the_live_state(bus: Bus) -> None:
    await processed_history(bus)
    svc = service(bus, EcrHandler())
    await resumed(svc)
    live = svc.driver
    await (await svc.snapshots._bucket()).delete(svc.durable)  # the refresh must fold the log itself
    assert await svc.refresh_snapshot() == svc.snapshot_seq > 0
    assert svc.driver is live
    restored = service(bus, EcrHandler())
    await resumed(restored)
    assert restored.history_read == 0 and sorted(restored.driver.state.bundles) == sorted(live.state.bundles)
