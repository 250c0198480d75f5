"""Live fuzz: junk on every ingress of a running hub, and the hub keeps its word (issue 8).

A real nats-server, a projector process (with the query service) and a handler process (ECR,
scheduler, node health), as a deployment runs them. First a realistic history of valid events;
then Hypothesis-made junk on every subject the hub takes in (``evt.*``, ``fromedge.<node>.*``,
``data.<node>.*``: random bytes, JSON that is no event, events of every type with a broken
field, events on the wrong stream), while fuzzed requests (attacks, random text, malformed
bodies) go to ``hivebus.query``. Then:

- every junk message is a dead letter of the projector with a reason, one each, no more;
  every junk message on a handler's subjects is a dead letter of that handler with a reason
  (or, for a broken push or job, answered with a rejection, which is what the handler is for);
- every query request got an answer, and no answer is an internal error;
- both processes are alive, the query service answers, the ECR still decides;
- every valid event published before the junk is in the views, and a valid event published
  after it is projected.

(To-edge messages are consumed on nodes: their intake is fuzzed in ``test_fuzz_decode.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, assume, given
from hypothesis import strategies as st

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA, DEADLETTERS, EVENTS
from hivebus.errors import DecodeError
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import app_spec
from hivebus.projections.client import query
from hivebus.projections.service import QUERY_SUBJECT
from hivebus.replay.build import stream_ends
from hivebus.replay.synthetic import history
from hivebus.schemas import Event, codec
from hivebus.schemas.data import Reading
from hivebus.schemas.ecr import BundlePushed
from hivebus.schemas.node import NodeRegistered
from hivebus.services.requests import processed, request
from tests.fuzz import fuzz
from tests.fuzz.test_fuzz_decode import TYPES, event_objects, junk, paths, replace
from tests.fuzz.test_fuzz_sql import ROOT, attacks, benign
from tests.integration.test_handlers import until
from tests.integration.test_projector_crash import served, start_projector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HIVEBUS = [sys.executable, "-c", "from hivebus.cli import main; main()"]
HANDLERS = {h.name: h.inputs for h in (EcrHandler, SesHandler, HealthHandler)}

INGRESS = [
    "evt.ecr.bundle.pushed.{k}", "evt.ecr.bundle.approved.{k}", "evt.ecr.permission.granted.{k}",
    "evt.ses.job.submitted.{k}", "evt.ses.job.removed.{k}", "evt.node.registered.{k}", "evt.junk.{k}",
    "fromedge.{n}.node.heartbeat", "fromedge.{n}.node.registered", "fromedge.{n}.plugin.status",
    "fromedge.{n}.node.sensor.lost", "fromedge.{n}.trigger.fired", "fromedge.{n}.data.reading",
    "data.{n}.env.temperature", "data.{n}.sys.load1",
]  # fmt: skip


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more at the end."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def stream_of(subject: str) -> str:
    return DATA if subject.startswith("data.") else EVENTS


@st.composite
def junk_message(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(kind, subject, body): a body no consumer can use, on one of the hub's ingress subjects."""
    subject = draw(st.sampled_from(INGRESS)).format(k=draw(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
                                                    n=draw(st.sampled_from(["W900", "W901", "W001"])))  # fmt: skip
    kind = draw(st.sampled_from(["bytes", "json", "broken", "broken", "broken", "misplaced"]))
    if kind == "misplaced":  # a valid event on the wrong stream: a reading off DATA, or an event on it
        data = stream_of(subject) == DATA
        event = Event.new(
            NodeRegistered(manifest=history(nodes=1, readings=0)[0].data.manifest) if data
            else Reading(name="env.misplaced", value=1.0, timestamp=1_740_000_000_000_000_000),
            source="node/W900", subject="W900",
        )  # fmt: skip
        if not data:
            subject = "evt.junk.misplaced"  # no handler takes it: only the projector judges it
        return kind, subject, codec.encode(event)
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "json":
        body = json.dumps(draw(junk)).encode()
    else:
        type_ = draw(st.sampled_from(TYPES))
        obj = draw(event_objects(type_))
        path = draw(st.sampled_from(paths(obj)[1:]))
        body = json.dumps(replace(obj, path, draw(junk))).encode()
    try:
        codec.decode(body)
    except DecodeError:
        return kind, subject, body
    return kind, subject, b"\x00" + body  # the mutation happened to stay valid: break it for sure


fuzzed_requests = st.one_of(
    attacks(ROOT).map(lambda sql: ("attack", json.dumps({"sql": sql}).encode())),
    benign.filter(lambda s: "canary" not in s and "nodes" not in s and "readings" not in s)
    .map(lambda sql: ("benign", json.dumps({"sql": sql}).encode())),
    st.text(max_size=60).map(lambda sql: ("any", json.dumps({"sql": sql}).encode())),
    st.binary(max_size=60).map(lambda b: ("any", b)),
    st.fixed_dictionaries({}, optional={
        "sql": junk | st.just("SELECT ?"), "params": junk, "limit": junk, "timeout": junk, "min_seq": junk,
        "format": junk | st.sampled_from(["json", "arrow"]), "chunked": junk,
    }).map(lambda d: ("any", json.dumps(d).encode())),
)  # fmt: skip


@dataclass
class Hub:
    """The running hub the rounds of junk go to, and what it was given so far."""

    url: str
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]]
    valid: list[Event] = field(default_factory=list)
    junk: dict[tuple[str, int], Outgoing] = field(default_factory=dict)
    rounds: int = 0

    def alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, (self.logs / f"{name}.log").read_text()[-3000:]


@pytest.fixture
def hub(nats_server: Any, tmp_path: Path) -> Iterator[Hub]:
    """A projector and the handlers, as processes, fed a realistic history of valid events."""
    url = nats_server.url
    processes = {"handlers": start_handlers(url, tmp_path / "handlers.log"),
                 "projector": start_projector(tmp_path / "views.duckdb", url, tmp_path / "projector.log")}  # fmt: skip
    running = Hub(url, tmp_path, processes)
    try:
        asyncio.run(_ready(running))
        yield running
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


async def _ready(hub: Hub) -> None:
    async with await Bus.connect(hub.url) as bus:
        await bus.ensure_streams()
        await served(bus)
        await until(lambda: consumers_exist(bus), 30, "the handlers' consumers")
        hub.valid = history(nodes=3, readings=300, jobs=1, seed=11)
        await bus.publish_many(hub.valid)


# Rounds against one running hub (the processes live across examples), never shrunk: a shrink
# would replay junk into a hub that already holds it.
@fuzz(5, phases=[Phase.generate])
@given(junk_messages=st.lists(junk_message(), min_size=40, max_size=40),
       requests=st.lists(fuzzed_requests, min_size=40, max_size=40))  # fmt: skip
def test_junk_on_every_ingress_is_dead_lettered_and_the_hub_keeps_serving(
    hub: Hub, junk_messages: list[tuple[str, str, bytes]], requests: list[tuple[str, bytes]]
) -> None:
    # Hypothesis tries the simplest example first (all junk alike): skip it for varied ones.
    assume(len({kind for kind, _, _ in junk_messages}) == 4 and len({kind for kind, _ in requests}) == 3)
    assume(len({subject.split(".")[0] for _, subject, _ in junk_messages}) == 3)
    asyncio.run(junk_round(hub, [(s, b) for _, s, b in junk_messages], requests))


async def junk_round(hub: Hub, junk_messages: list[tuple[str, bytes]], requests: list[tuple[str, bytes]]) -> None:
    hub.rounds += 1
    async with await Bus.connect(hub.url) as bus:
        wire = [Outgoing(s, b, f"junk-{hub.rounds}-{i}") for i, (s, b) in enumerate(junk_messages)]
        published, answers = await asyncio.gather(publish_in_chunks(bus, wire), ask_all(bus, requests))
        round_junk = {(stream_of(o.subject), seq): o for o, seq in zip(wire, published, strict=True)}
        hub.junk.update(round_junk)

        fence = Event.new(NodeRegistered(manifest=hub.valid[0].data.manifest), source="user/ops", subject="W001")
        fence_seq = await bus.publish(fence)  # every handler takes it: past it, all junk was judged
        for name in HANDLERS:
            await processed(bus, f"handler-{name}", fence_seq, timeout=60)

        check_answers(requests, answers)
        letters = await dead_letters(bus, projector_letters=len(hub.junk))
        check_projector_letters(letters, hub.junk)
        judged, salvaged = await check_handler_letters(bus, letters, round_junk)
        await check_valid_events_kept(bus, hub.valid)
        await check_still_serving(bus, hub.rounds)
        hub.alive()
        refused = sum("error" in a for a in answers)
        print(f"\nlive fuzz round {hub.rounds}: {len(round_junk)} junk messages ({len(hub.junk)} so far), "
              f"{len(letters)} dead letters in all, {judged} junk deliveries to handlers ({salvaged} answered "
              f"with a rejection); {len(answers)} query requests, {refused} refused")


def start_handlers(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "warning", "HIVEBUS_NATS_URL": url}
    with log.open("ab") as out:
        return subprocess.Popen([*HIVEBUS, "handlers", "--hub", url], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip


async def consumers_exist(bus: Bus) -> bool:
    try:
        for name in HANDLERS:
            await bus.js.consumer_info(EVENTS, f"handler-{name}")
    except Exception:
        return False
    return True


async def publish_in_chunks(bus: Bus, wire: list[Outgoing]) -> list[int]:
    seqs: list[int] = []
    for i in range(0, len(wire), 10):
        seqs += await bus.publish_raw_many(wire[i : i + 10])
        await asyncio.sleep(0.05)  # interleaved with the queries
    return seqs


async def ask_all(bus: Bus, requests: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    out = []
    for _, body in requests:
        raw = await bus.request(QUERY_SUBJECT, body, timeout=15)  # no answer is a failure
        out.append(json.loads(raw))
    return out


def check_answers(requests: list[tuple[str, bytes]], answers: list[dict[str, Any]]) -> None:
    for (kind, body), answer in zip(requests, answers, strict=True):
        if "error" in answer:
            assert answer["kind"] in ("QueryError", "QueryRefused", "QueryTimeout"), (body, answer)
            assert not answer["error"].startswith("internal error"), (body, answer)
        else:
            assert "rows" in answer and "columns" in answer, (body, answer)
        if kind == "attack":
            assert "error" in answer, f"an attack was answered with rows: {body!r} -> {answer}"
        elif kind == "benign":
            assert "rows" in answer, (body, answer)


async def dead_letters(bus: Bus, projector_letters: int) -> list[list[Any]]:
    """Every dead letter, once the views hold the handlers' letters (all published before
    they acknowledged the fence) and ``projector_letters`` of the projector's own."""
    sql = "SELECT stream, seq, consumer, reason, octet_length(payload) FROM dead_letters"
    handlers_done = (await stream_ends(bus))[DEADLETTERS]
    rows: list[list[Any]] = []

    async def enough() -> bool:
        nonlocal rows
        rows = (await query(bus, sql, limit=None, min_seq={DEADLETTERS: handlers_done}, timeout=30)).rows
        return sum(r[2] == "projector" for r in rows) >= projector_letters

    await until(enough, 60, "the dead letters to be projected", max_delay=1.0)
    return rows


def check_projector_letters(letters: list[list[Any]], junk_at: dict[tuple[str, int], Outgoing]) -> None:
    mine = {(r[0], r[1]): r for r in letters if r[2] == "projector"}
    assert set(mine) == set(junk_at), (
        f"projector dead letters {len(mine)} for {len(junk_at)} junk messages; "
        f"missing {sorted(set(junk_at) - set(mine))[:5]}, unexpected {sorted(set(mine) - set(junk_at))[:5]}"
    )
    for where, (_, _, _, reason, size) in mine.items():
        assert reason and reason.strip(), where
        assert size == len(junk_at[where].payload), (where, reason)


async def check_handler_letters(
    bus: Bus, letters: list[list[Any]], junk_at: dict[tuple[str, int], Outgoing]
) -> tuple[int, int]:
    """(junk deliveries to handlers, of which answered with a rejection)."""
    answered = await salvaged_ids(bus)
    by_handler = {(r[0], r[1], r[2]): r[3] for r in letters}
    judged = salvaged = 0
    for (stream, seq), message in junk_at.items():
        for name, inputs in HANDLERS.items():
            if stream != EVENTS or not any(matches(p, message.subject) for p in inputs):
                continue
            judged += 1
            reason = by_handler.get((EVENTS, seq, f"handler-{name}"))
            if reason is None:  # a broken push or job is answered with a rejection instead
                doc = _json(message.payload)
                assert isinstance(doc, dict) and doc.get("id") in answered, (name, message.subject, message.payload[:200])
                salvaged += 1
            else:
                assert reason.strip(), (name, seq)
    assert judged > 0, "no junk went to a handler's subjects"
    return judged, salvaged


async def salvaged_ids(bus: Bus) -> set[str]:
    rows = (await query(bus, "SELECT causationid FROM events WHERE type IN ('ecr.bundle.rejected', 'ses.job.rejected')",
                        limit=None)).rows  # fmt: skip
    return {r[0] for r in rows}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def check_valid_events_kept(bus: Bus, valid: list[Event]) -> None:
    ends = await stream_ends(bus)
    ids = {r[0] for r in (await query(bus, "SELECT id FROM events", limit=None, min_seq=ends, timeout=30)).rows}
    missing = [e.type for e in valid if e.type != "data.reading" and e.id not in ids]
    assert not missing, f"{len(missing)} valid events are not in the events view: {missing[:10]}"
    readings = {(e.node, e.data.name, e.data.timestamp) for e in valid if e.type == "data.reading"}
    found = (await query(bus, "SELECT node, name, epoch_ns(timestamp) FROM readings", limit=None)).rows
    assert readings <= {tuple(r) for r in found}, "valid readings are missing from the readings view"


async def check_still_serving(bus: Bus, round_: int) -> None:
    after = Event.new(Reading(name=f"env.after_junk_{round_}", value=42.0, timestamp=1_760_000_000_000_000_000),
                      source="node/W002", subject="W002", nodeseq=10**6 + round_)  # fmt: skip
    seq = await bus.publish(after)
    result = await query(bus, f"SELECT value FROM readings WHERE name = 'env.after_junk_{round_}'", min_seq={DATA: seq})
    assert result.rows == [[42.0]]
    bundle = f"fuzz/after-junk:{round_}.0.0"
    push = Event.new(BundlePushed(app=app_spec(bundle), pusher="alice"), source="user/alice", subject=bundle)
    answer = await request(bus, push, handler="ecr", answers=["evt.ecr.bundle.>"], timeout=30)
    assert [e.type for e in answer.events] == ["ecr.bundle.registered"], answer
    registered = await query(bus, "SELECT count(*) FROM events WHERE causationid = ?", [push.id],
                             min_seq={EVENTS: answer.seq + 1}, timeout=30)  # the views hold the answer too
    assert registered.rows == [[1]]
