"""Applying to-edge messages: stored with their report in one transaction, never twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hivebus.edge import state as node_state
from hivebus.edge.db import NodeDatabase
from hivebus.edge.goals import Goal
from hivebus.edge.outbox import Outbox
from hivebus.edge.toedge import ToEdge
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeConfigUpdated
from hivebus.schemas.ses import GoalAssigned, GoalPlugin, GoalRemoved

NODE = "W012"


class Acked:
    """What the consumer hands over: the event, and whether it was acked."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1


def assigned(job: str, rules: list[str] | None = None) -> Event:
    p = GoalPlugin(name="p", bundle_id="test/p:1.0", image="test/p:1.0")
    return Event.new(
        GoalAssigned(node=NODE, job_id=job, plugins=[p], science_rules=rules or []),
        source="handler/ses",
        subject=job,
    )


async def open_node(path: Path) -> tuple[NodeDatabase, Outbox, ToEdge, dict[str, Any]]:
    db = await NodeDatabase.open(path)
    outbox = await Outbox.open(db, NODE)
    loaded = await db.call(lambda: node_state.load(db.conn))
    seen: dict[str, Any] = {"goals": None, "config": None}
    toedge = ToEdge(
        node=NODE,
        outbox=outbox,
        goals={j: Goal.of(e) for j, e in loaded.goals.items()},
        config=loaded.config,
        applied=loaded.applied,
        on_goals=lambda g: seen.__setitem__("goals", sorted(g)),
        on_config=lambda c: seen.__setitem__("config", c),
    )
    return db, outbox, toedge, seen


async def reports(outbox: Outbox) -> list[Event]:
    return [
        codec.decode(e.body) for e in await outbox.next_batch(100) if "toedge.applied" in e.subject
    ]


async def test_goals_and_removals_are_stored_reported_and_acked(tmp_path: Path) -> None:
    db, outbox, toedge, seen = await open_node(tmp_path / "node.db")
    one, two = assigned("job-1"), assigned("job-2")
    for event in (one, two):
        delivery = Acked(event)
        await toedge.handle(delivery)  # type: ignore[arg-type]
        assert delivery.acked == 1
    removal = Event.new(
        GoalRemoved(node=NODE, job_id="job-1"), source="handler/ses", subject="job-1"
    )
    await toedge.handle(Acked(removal))  # type: ignore[arg-type]
    assert seen["goals"] == ["job-2"]
    done = await reports(outbox)
    assert [(r.data.applied_id, r.data.goals) for r in done] == [
        (one.id, ["job-1"]),
        (two.id, ["job-1", "job-2"]),
        (removal.id, ["job-2"]),
    ]
    assert all(r.causationid == r.data.applied_id for r in done)
    await outbox.close()
    await db.close()

    db, outbox, toedge, seen = await open_node(tmp_path / "node.db")  # after a restart
    assert set(toedge.goals) == {"job-2"}
    again = Acked(two)  # redelivered (the ack was lost): acked, not applied again
    await toedge.handle(again)  # type: ignore[arg-type]
    assert again.acked == 1 and seen["goals"] is None
    assert len(await reports(outbox)) == 3
    await outbox.close()
    await db.close()


async def test_refusals_keep_the_goals_and_say_why(tmp_path: Path) -> None:
    db, outbox, toedge, _seen = await open_node(tmp_path / "node.db")
    await toedge.handle(Acked(assigned("job-1")))  # type: ignore[arg-type]
    await toedge.handle(Acked(assigned("job-2", ["schedule(p): v('x' > 3"])))  # type: ignore[arg-type]
    other = Event.new(
        GoalRemoved(node="W999", job_id="job-1"), source="handler/ses", subject="job-1"
    )
    await toedge.handle(Acked(other))  # type: ignore[arg-type]
    done = await reports(outbox)
    assert [r.data.outcome for r in done] == ["applied", "refused", "refused"]
    assert "bad science rule" in done[1].data.reason and "W999" in done[2].data.reason
    assert done[2].data.goals == ["job-1"] and set(toedge.goals) == {"job-1"}
    await outbox.close()
    await db.close()


async def test_config_updates_merge_and_persist(tmp_path: Path) -> None:
    db, outbox, toedge, seen = await open_node(tmp_path / "node.db")
    for update in (
        NodeConfigUpdated(node=NODE, tags=["urban"], settings={"allow_users": "alice"}),
        NodeConfigUpdated(node=NODE, heartbeat_seconds=5.0, settings={"metrics_seconds": "10"}),
    ):
        await toedge.handle(Acked(Event.new(update, source="user/op", subject=NODE)))  # type: ignore[arg-type]
    expected = {
        "tags": ["urban"],
        "heartbeat_seconds": 5.0,
        "settings": {"allow_users": "alice", "metrics_seconds": "10"},
    }
    assert seen["config"] == expected
    await outbox.close()
    await db.close()
    db, outbox, toedge, seen = await open_node(tmp_path / "node.db")
    assert toedge.config == expected
    await outbox.close()
    await db.close()
