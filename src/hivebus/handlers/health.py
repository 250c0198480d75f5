"""Node health: presence from heartbeats, sensor failures confirmed against the manifest.

- ``node.heartbeat`` from a node that is not online -> ``node.online``;
- no heartbeat for ``node_offline_after`` -> ``node.offline`` (the timer; its id derives from
  the last heartbeat's id and its time is that heartbeat's time plus the timeout, so however
  often or late the timer runs, and across restarts, it is the same event);
- a node's own report ``node.sensor.lost``/``restored`` (from-edge) for a sensor its manifest
  names -> the hub's ``node.sensor.lost``/``restored`` (``evt.node.sensor.*``, source
  ``handler/health``) when it changes the sensor's state: repeated reports say nothing new, a
  report about a sensor the manifest does not name is refused (dead letter) with the reason.
  Views of sensor state should read the hub's events: they are the confirmed transitions.

Presence runs on the hub's clock: the wiring gives this handler a node's events with the time
the hub's stream stored them (``on_hub_clock``; ``services.handler_service.hub_timed``), not
the node's own, so a node whose clock is off, or one catching up a long outbox of old
heartbeats, does not flap between online and offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from hivebus.errors import DecodeError
from hivebus.handlers.base import NOTHING, Decision, Outputs, timed_event
from hivebus.handlers.config import HandlerConfig
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import (
    NodeHeartbeat,
    NodeManifest,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    SensorLost,
    SensorRestored,
)

SOURCE: Final = "handler/health"
OFFLINE: Final = "handler/health/offline"


@dataclass(slots=True)
class NodeHealth:
    id: str
    manifest: NodeManifest | None = None
    last_heartbeat: Event | None = None
    online: bool = False
    lost: set[str] = field(default_factory=set)


@dataclass(slots=True)
class HealthState:
    offline_after: timedelta
    nodes: dict[str, NodeHealth] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeHealth:
        health = self.nodes.get(node_id)
        if health is None:
            health = self.nodes[node_id] = NodeHealth(node_id)
        return health


def evolve(state: HealthState, event: Event) -> None:
    data = event.data
    match data:
        case NodeRegistered():
            state.node(data.manifest.node_id).manifest = data.manifest
        case NodeHeartbeat():
            state.node(data.node).last_heartbeat = event
        case NodeOnline():
            state.node(data.node).online = True
        case NodeOffline():
            node = state.node(data.node)
            # Stale if a heartbeat arrived after the one it was timed from.
            if node.last_heartbeat is None or node.last_heartbeat.id == event.causationid:
                node.online = False
        case SensorLost() if event.source == SOURCE:
            state.node(data.node).lost.add(data.sensor)
        case SensorRestored() if event.source == SOURCE:
            state.node(data.node).lost.discard(data.sensor)
        case _:
            pass


def decide(state: HealthState, event: Event) -> Decision:
    data = event.data
    if event.source == SOURCE:
        return NOTHING
    match data:
        case NodeHeartbeat():
            node = state.nodes.get(data.node)
            if node is not None and node.online:
                return NOTHING
            out = Outputs(event, SOURCE)
            out.emit(NodeOnline(node=data.node), data.node)
            return out.decision()
        case SensorLost() | SensorRestored() if event.node is not None:
            return _sensor_report(state, event)
    return NOTHING


def _sensor_report(state: HealthState, event: Event) -> Decision:
    data: SensorLost | SensorRestored = event.data
    node = state.nodes.get(data.node)
    if data.node != event.node:
        return Decision.refuse(f"node {event.node} reported on a sensor of node {data.node}")
    if node is None or node.manifest is None:
        return Decision.refuse(
            f"node {data.node} is not registered; sensor {data.sensor!r} report ignored"
        )
    names = [s.name for s in node.manifest.sensors]
    if data.sensor not in names:
        return Decision.refuse(
            f"sensor {data.sensor!r} is not in {data.node}'s manifest (sensors: {', '.join(names) or 'none'})"
        )
    lost = isinstance(data, SensorLost)
    if lost == (data.sensor in node.lost):
        return NOTHING  # no change
    out = Outputs(event, SOURCE)
    if isinstance(data, SensorLost):
        out.emit(SensorLost(node=data.node, sensor=data.sensor, reason=data.reason), data.node)
    else:
        out.emit(SensorRestored(node=data.node, sensor=data.sensor, reason=data.reason), data.node)
    return out.decision()


def silent_nodes(state: HealthState, now: datetime) -> list[Event]:
    """``node.offline`` for every online node whose last heartbeat is older than the timeout."""
    events = []
    for node_id in sorted(state.nodes):
        node = state.nodes[node_id]
        beat = node.last_heartbeat
        if not node.online or beat is None:
            continue
        deadline = beat.time + state.offline_after
        if deadline >= now:
            continue
        seconds = state.offline_after.total_seconds()
        offline = NodeOffline(
            node=node_id, last_seen=beat.time, reason=f"no heartbeat for {seconds:g} s"
        )
        events.append(
            timed_event(
                beat, offline, source=SOURCE, producer=OFFLINE, subject=node_id, when=deadline
            )
        )
    return events


class HealthHandler:
    name = "health"
    source = SOURCE
    inputs = (
        "evt.node.registered.>",
        "fromedge.*.node.registered",
        "fromedge.*.node.heartbeat",
        "fromedge.*.node.sensor.>",
    )
    outputs = ("evt.node.online.>", "evt.node.offline.>", "evt.node.sensor.>")

    def __init__(self, config: HandlerConfig | None = None) -> None:
        self.config = config or HandlerConfig()

    def initial(self) -> HealthState:
        return HealthState(offline_after=self.config.node_offline_after)

    def evolve(self, state: HealthState, event: Event) -> None:
        evolve(state, event)

    def decide(self, state: HealthState, event: Event) -> Decision:
        return decide(state, event)

    on_hub_clock = True
    """Node events arrive stamped with the time the hub stored them."""

    def clock(self, event: Event) -> datetime | None:
        return None  # only the hub's wall clock decides that a node is silent

    def tick(self, state: HealthState, now: datetime) -> list[Event]:
        return silent_nodes(state, now)

    def salvage(self, raw: bytes, error: DecodeError) -> Decision | None:
        return None
