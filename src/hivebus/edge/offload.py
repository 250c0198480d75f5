"""A node asks the hub where to run one execution (issue 20, item 3; Home Edge).

``ask_offload`` publishes ``ses.offload.requested`` from the node and waits for the
scheduler's ``ses.offload.decided`` on ``toedge.<node>.ses.offload.decided``. When the hub
cannot be reached (no connection, no stream, no answer within ``timeout``), the node runs
it itself: the outcome says so and carries an ``ses.offload.ran_locally`` event for the
caller to append to its outbox, which reports it to the hub once the link is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from hivebus.bus.client import Bus
from hivebus.bus.subjects import encode_token
from hivebus.errors import HivebusError
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.offload import OffloadDecided, OffloadRanLocally, OffloadRequested


@dataclass(frozen=True)
class OffloadOutcome:
    run_on: str | None
    """Where it runs: this node ("run locally"), another node, or None (nowhere)."""
    decision: OffloadDecided | None
    """The hub's decision with every score; None when the hub did not answer."""
    report: Event | None = None
    """``ses.offload.ran_locally`` to append to the outbox when the hub did not answer."""

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
) -> OffloadOutcome:
    """Where to run one execution of ``bundle``; this node when the hub does not answer."""
    request = OffloadRequested(
        node=node,
        request_id=request_id or uuid.uuid4().hex,
        bundle=bundle,
        resources=dict(resources or {}),
    )
    asked = Event.new(request, source=f"node/{node}", subject=node)
    if bus is not None:
        with contextlib.suppress(TimeoutError, HivebusError, OSError):
            decision = await asyncio.wait_for(_ask(bus, asked), timeout)
            return OffloadOutcome(decision.run_on, decision)
    reason = f"the hub did not answer within {timeout:g} s" if bus is not None else "no hub link"
    ran = OffloadRanLocally(node=node, request_id=request.request_id, bundle=bundle, reason=reason)
    report = Event.new(ran, source=f"node/{node}", subject=node)
    return OffloadOutcome(node, None, report)


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
