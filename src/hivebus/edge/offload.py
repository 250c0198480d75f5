"""A node asks the hub where to run one execution (issue 20, item 3; Home Edge).

``ask_offload`` publishes ``ses.offload.requested`` from the node and waits for the
scheduler's ``ses.offload.decided`` on ``toedge.<node>.ses.offload.decided``. When the hub
cannot be reached (no connection, no stream, no answer within ``timeout``), the node runs
it itself: the outcome says so and carries an ``ses.offload.ran_locally`` event for the
caller to append to its outbox, which reports it to the hub once the link is back.

``OffloadService`` is the agent's side (``NodeAgent``): a plugin asks on the node-local bus
(``local.offload``, ``hivebus.plugin.Plugin.request_offload``), the agent asks the hub and
answers the plugin with where it runs and every score. The execution then starts through the
normal to-edge path: the scheduler sends the chosen node (the requester itself for "run
locally") a one-shot goal (``schemas.offload.offload_goal``). When the hub did not answer,
the agent starts that same goal here itself and appends the ``ran_locally`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from pydantic import ValidationError

from hivebus.bus.client import Bus
from hivebus.bus.subjects import encode_token
from hivebus.errors import HivebusError
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.offload import (
    OffloadDecided,
    OffloadRanLocally,
    OffloadRequested,
    offload_goal,
    offload_job_id,
)
from hivebus.schemas.ses import ResourceRequest

log = structlog.get_logger()

SUBJECT: Final = "local.offload"
"""Where a plugin asks its node for an execution (request/reply on the node-local bus)."""


@dataclass(frozen=True)
class OffloadOutcome:
    run_on: str | None
    """Where it runs: this node ("run locally"), another node, or None (nowhere)."""
    decision: OffloadDecided | None
    """The hub's decision with every score; None when the hub did not answer."""
    report: Event | None = None
    """``ses.offload.ran_locally`` to append to the outbox when the hub did not answer."""
    request: OffloadRequested | None = None
    """What was asked (set when the hub did not answer: the node runs it from this)."""

    @property
    def local(self) -> bool:
        return self.decision is None or self.decision.local


async def ask_offload(
    bus: Bus | None,
    node: str,
    bundle: str,
    resources: dict[str, str] | None = None,
    *,
    timeout: float = 5.0,
    request_id: str | None = None,
    entrypoint: str | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> OffloadOutcome:
    """Where to run one execution of ``bundle``; this node when the hub does not answer."""
    request = OffloadRequested(
        node=node,
        request_id=request_id or uuid.uuid4().hex,
        bundle=bundle,
        resources=dict(resources or {}),
        entrypoint=entrypoint,
        args=list(args or []),
        env=dict(env or {}),
    )
    asked = Event.new(request, source=f"node/{node}", subject=node)
    if bus is not None:
        with contextlib.suppress(TimeoutError, HivebusError, OSError):
            async with asyncio.timeout(timeout):
                decision = await _ask(bus, asked)
            return OffloadOutcome(decision.run_on, decision)
    reason = f"the hub did not answer within {timeout:g} s" if bus is not None else "no hub link"
    ran = OffloadRanLocally(node=node, request_id=request.request_id, bundle=bundle, reason=reason)
    report = Event.new(ran, source=f"node/{node}", subject=node)
    return OffloadOutcome(node, None, report, request)


async def _ask(bus: Bus, asked: Event) -> OffloadDecided:
    request = asked.data
    assert isinstance(request, OffloadRequested)
    subject = f"toedge.{encode_token(request.node)}.{OffloadDecided.event_type}"
    sub = await bus.nc.subscribe(subject)  # before asking: the answer may come at once
    try:
        await bus.nc.flush()
        await bus.publish(asked, timeout=2.0, retries=0)
        async for msg in sub.messages:
            with contextlib.suppress(HivebusError):
                event = codec.decode(msg.data)
                if (
                    isinstance(event.data, OffloadDecided)
                    and event.data.request_id == request.request_id
                ):
                    return event.data
        raise TimeoutError("the subscription ended")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class OffloadService:
    """Answers ``local.offload`` for the node's plugins (see the module docstring).

    A request is JSON ``{"bundle": "ns/name:1.0", "resources": {"cpu": "1"}, "entrypoint": ...,
    "args": [...], "env": {...}, "timeout": 5}``; the answer ``{"request_id", "job_id",
    "run_on", "local", "decided_by": "hub" | "node", "scores", "reasons"}`` or ``{"error"}``."""

    def __init__(
        self,
        nc: Any,
        node: str,
        *,
        hub: Callable[[], Bus | None],
        append: Callable[[Event], Awaitable[Any]],
        run_here: Callable[[Event], None],
        timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.node = node
        self.hub = hub
        self.append = append
        self.run_here = run_here
        self.timeout = timeout
        self.ready = asyncio.Event()
        self.asked = 0

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.nc.subscribe(SUBJECT, cb=self._on_request)
        self.ready.set()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_request(self, msg: Any) -> None:
        try:
            answer = await self.handle(json.loads(msg.data))
        except (ValueError, TypeError, ValidationError) as exc:
            answer = {"error": f"not an offload request: {exc}"}
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(answer).encode())

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        self.asked += 1
        timeout = float(body.get("timeout") or self.timeout)
        outcome = await ask_offload(
            self.hub(), self.node, str(body["bundle"]), dict(body.get("resources") or {}),
            timeout=timeout, entrypoint=body.get("entrypoint"), args=list(body.get("args") or []),
            env=dict(body.get("env") or {}),
        )
        if outcome.decision is not None:
            decided = outcome.decision
            log.info("offload.decided", node=self.node, request_id=decided.request_id, run_on=decided.run_on,
                     scores=decided.scores)
            return {"request_id": decided.request_id, "job_id": offload_job_id(decided.request_id),
                    "run_on": decided.run_on, "local": decided.local, "decided_by": "hub",
                    "scores": decided.scores, "reasons": decided.reasons}
        assert outcome.request is not None and outcome.report is not None
        request = outcome.request
        from hivebus.handlers.fit import parse_request  # the hub's own reading of the numbers

        wanted, problems = parse_request(request.resources)
        if problems:
            return {"error": f"resources: {'; '.join(problems)}"}
        goal = Event.new(offload_goal(self.node, request, wanted or ResourceRequest()),
                         source=f"node/{self.node}", subject=offload_job_id(request.request_id))
        self.run_here(goal)
        await self.append(outcome.report)  # the hub hears afterwards that it ran here
        reason = outcome.report.data.reason if isinstance(outcome.report.data, OffloadRanLocally) else ""
        log.warning("offload.ran_locally", node=self.node, request_id=request.request_id, reason=reason)
        return {"request_id": request.request_id, "job_id": offload_job_id(request.request_id),
                "run_on": self.node, "local": True, "decided_by": "node", "scores": {},
                "reasons": [reason]}
