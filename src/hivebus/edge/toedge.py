"""To-edge: what the hub sends this node (goals, their removal, config), applied durably.

A durable consumer on ``toedge.<node>.>`` delivers, in order, whatever was sent, including
while the node was offline. For each message, in **one** transaction: the state change (goal
stored or deleted, config merged), the message id (so a redelivery after a lost ack is
recognised and only acked again), and a ``node.toedge.applied`` report in the outbox. Only
then is the message acked. A goal whose rules do not parse here is refused, with the reason,
in the same report; the node keeps its previous goals.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from hivebus.bus.client import Bus
from hivebus.bus.consumer import Delivery
from hivebus.bus.streams import toedge_consumer
from hivebus.edge import state as node_state
from hivebus.edge.goals import Goal
from hivebus.edge.outbox import Outbox, StateWrite
from hivebus.edge.uplink import Uplink
from hivebus.errors import RuleSyntaxError
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeConfigUpdated, ToEdgeApplied
from hivebus.schemas.offload import OffloadDecided
from hivebus.schemas.ses import GoalAssigned, GoalRemoved

log = structlog.get_logger()


class ToEdge:
    def __init__(
        self,
        *,
        node: str,
        outbox: Outbox,
        goals: dict[str, Goal],
        config: dict[str, Any],
        applied: set[str],
        on_goals: Callable[[dict[str, Goal]], None],
        on_config: Callable[[dict[str, Any]], None],
    ) -> None:
        self.node = node
        self.outbox = outbox
        self.goals = goals
        self.config = config
        self.applied = applied
        self.on_goals = on_goals
        self.on_config = on_config
        self.received = 0

    async def run(self, uplink: Uplink, stop: asyncio.Event) -> None:
        """Consume whenever the hub is reachable; on a failure, start again (backing off)."""
        delay = 1.0
        while not stop.is_set():
            bus = await uplink.wait_online(stop)
            if bus is None:
                return
            consuming = asyncio.create_task(self._consume(bus))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # the agent is going down (the hub perhaps already gone): end the consumer here,
                # or it dies at interpreter shutdown with a ConnectionClosedError traceback
                await _settle(consuming, stopping)
                raise
            stopping.cancel()
            if not consuming.done():
                consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await consuming
                except Exception as exc:
                    log.warning(
                        "toedge.consume_failed",
                        error=str(exc) or type(exc).__name__,
                        retry_in=delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
                    delay = min(delay * 2, 30.0)
                else:
                    delay = 1.0

    async def _consume(self, bus: Bus) -> None:
        async for delivery in bus.consume(toedge_consumer(self.node), batch=64, idle=1.0):
            await self.handle(delivery)

    async def handle(self, delivery: Delivery) -> None:
        event = delivery.event
        assert event is not None  # undecodable messages were dead-lettered by the bus
        self.received += 1
        if event.id not in self.applied:
            await self.apply(event)
        await delivery.ack()

    async def apply(self, event: Event) -> None:
        """Store ``event``'s effect and its report in one transaction, then act on it."""
        payload = event.data
        goals = dict(self.goals)
        config = dict(self.config)
        write: StateWrite | None = None
        outcome, reason, job_id = "applied", "", getattr(payload, "job_id", None)
        if getattr(payload, "node", self.node) != self.node:
            outcome, reason = "refused", f"addressed to node {payload.node!r}, not {self.node!r}"
        elif isinstance(payload, GoalAssigned):
            try:
                goal = Goal.of(event)
            except RuleSyntaxError as exc:
                outcome, reason = "refused", str(exc)
            else:
                goals[goal.job_id] = goal
                write = node_state.put_goal(event)
        elif isinstance(payload, GoalRemoved):
            goals.pop(payload.job_id, None)
            write = node_state.delete_goal(payload.job_id)
        elif isinstance(payload, NodeConfigUpdated):
            config = merge_config(config, payload)
            write = node_state.put_value(node_state.CONFIG, config)
        elif isinstance(payload, OffloadDecided):
            pass  # answered live to whoever asked (edge.offload); its goal comes on its own
        else:
            outcome, reason = "refused", f"{event.type} is not something a node applies"
        report = Event.new(
            ToEdgeApplied(
                node=self.node,
                applied_id=event.id,
                applied_type=event.type,
                job_id=job_id,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                goals=sorted(goals),
            ),
            source=f"node/{self.node}",
            subject=self.node,
            correlationid=event.correlationid,
            causationid=event.id,
        )
        writes = [node_state.mark_applied(event)] + ([write] if write is not None else [])
        await self.outbox.append_many([report], state=node_state.both(*writes))
        self.applied.add(event.id)
        log.info(
            "toedge.applied", type=event.type, id=event.id, outcome=outcome, reason=reason or None
        )
        if outcome != "applied":
            return
        if isinstance(payload, NodeConfigUpdated):
            self.config = config
            self.on_config(config)
        else:
            self.goals = goals
            self.on_goals(goals)


def merge_config(current: dict[str, Any], update: NodeConfigUpdated) -> dict[str, Any]:
    """``current`` with every field ``update`` sets (None = unchanged; settings merge by key)."""
    merged = dict(current)
    if update.heartbeat_seconds is not None:
        merged["heartbeat_seconds"] = update.heartbeat_seconds
    if update.tags is not None:
        merged["tags"] = list(update.tags)
    if update.sensors is not None:
        merged["sensors"] = [s.model_dump() for s in update.sensors]
    if update.settings:
        merged["settings"] = {**merged.get("settings", {}), **update.settings}
    return merged


async def _settle(*tasks: asyncio.Task[object]) -> None:
    """Cancel ``tasks`` and wait for them, whatever they end with."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
