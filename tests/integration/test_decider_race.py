"""Two decider processes racing on one aggregate: one decision, the loser decides again.

Two real ``hivebus handlers --only ecr --instance a|b`` processes serve one nats-server; each
holds its decision for a moment (``HIVEBUS_DECIDE_HOLD``) so both read the same state before
either appends. Appending with ``Nats-Expected-Last-Subject-Sequence`` over the catalog's
subjects lets only one of them through; the other sees the conflict, folds the winner's fact
and decides again on the new state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec
from hivebus.schemas.ecr import BundleDeleted, BundlePushed
from hivebus.services.requests import Answer, decide
from tests.integration.test_handlers import all_events, by

pytestmark = pytest.mark.integration
BUNDLE = "alice/plugin-x:1.0.0"


@pytest.fixture
async def replicas(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    env = {**os.environ, "HIVEBUS_DECIDE_HOLD": "0.5", "HIVEBUS_DATA_DIR": str(tmp_path / "data")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hivebus", "handlers", "--only", "ecr", "--instance", name, "--hub", nats_server.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    try:
        async with await Bus.connect(nats_server.url, settings=Settings(nats_url=nats_server.url)) as bus:
            await bus.ensure_streams()
            for name, proc in zip(("a", "b"), procs, strict=True):
                await serving(bus, f"hivebus.decide.ecr.{name}", proc)
            yield bus
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def serving(bus: Bus, subject: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"the decider exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            await bus.nc.request(subject, b"{}", timeout=1.0)  # any reply: it is serving
            return
        except (NoRespondersError, NatsTimeout):
            await asyncio.sleep(0.1)
    raise AssertionError(f"nobody answers on {subject}")


async def test_two_replicas_deleting_one_bundle_give_one_deletion_and_one_refusal(replicas: Bus) -> None:
    bus = replicas
    pushed = Answer.of_reply(await decide(bus, by("alice", BundlePushed(app=app_spec(BUNDLE), pusher="alice"), BUNDLE), instance="a"))
    assert [e.type for e in pushed.events] == ["ecr.bundle.registered"]

    deletes = [by("alice", BundleDeleted(bundle_id=BUNDLE, by="alice"), BUNDLE) for _ in range(2)]
    replies = await asyncio.gather(*(decide(bus, d, instance=name, timeout=30) for d, name in zip(deletes, ("a", "b"), strict=True)))
    answers = [Answer.of_reply(r) for r in replies]

    outcomes = sorted([e.type for e in a.events] for a in answers)
    assert outcomes == [["ecr.bundle.deleted"], ["ecr.command.rejected"]]
    loser = next(a for a in answers if a.rejection is not None)
    winner = next(a for a in answers if a.rejection is None)
    assert loser.reasons == [f"bundle {BUNDLE} is not registered"]  # decided again, on the new state
    assert loser.attempts == 2 and winner.attempts == 1

    stored = [e for _, _, e in await all_events(bus)]
    assert [e.type for e in stored if e.type == "ecr.bundle.deleted"] == ["ecr.bundle.deleted"]
    assert sum(e.type == "ecr.command.rejected" for e in stored) == 1
