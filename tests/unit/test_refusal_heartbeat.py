"""A node's refusal by the hub in its heartbeat (issue 15, item 2): the record on the node, the
schema (old heartbeats still decode), the nodes view's fold, and the SES and health folds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hivebus.edge import refusal
from hivebus.errors import DecodeError
from hivebus.handlers import health, ses_state
from hivebus.projections.views.base import Item
from hivebus.projections.views.nodes import NodesView
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import HubRefusal, NodeHeartbeat, NodeResources
from tests.unit.test_views import Story

SINCE = datetime(2026, 12, 3, 13, 4, 31, tzinfo=UTC)
UNTIL = SINCE + timedelta(hours=3)
REASON = "NATS at nats://127.0.0.1:4222 refused the credentials in W012.creds"


def beat(refused: HubRefusal | None = None, mem_avail: int = 4 << 30) -> NodeHeartbeat:
    return NodeHeartbeat(node="W012", resources=NodeResources(cpus=2, mem_total=8 << 30, mem_avail=mem_avail,
                                                               disk_total=1, disk_avail=1, load1=0.1),
                         uptime_seconds=5.0, refusal=refused)


def lasting(since: datetime = SINCE) -> HubRefusal:
    return HubRefusal(kind="credential", reason=REASON, since=since)


def ended(since: datetime = SINCE, until: datetime = UNTIL) -> HubRefusal:
    return HubRefusal(kind="credential", reason=REASON, since=since, until=until)


# --- the schema -------------------------------------------------------------------------------


OLD_HEARTBEAT = (  # as an agent before the field wrote it (a log holds these)
    '{"specversion":"1.0","id":"01M8YN5XVQC48E493PYFE4Y7CW","type":"node.heartbeat","dataversion":1,'
    '"source":"node/W012","subject":"W012","time":"2026-12-03T19:12:57.207334Z",'
    '"correlationid":"01M8YN5XVQC48E493PYFE4Y7CW","data":{"node":"W012","resources":{"cpus":2,'
    '"mem_total":8589934592,"mem_avail":4294967296,"disk_total":1,"disk_avail":1,"load1":0.1,"gpu":false},'
    '"backlog":{"messages":0,"bytes":0},"dropped":{},"uptime_seconds":5.0}}'
)


def test_a_heartbeat_written_before_the_field_still_decodes_and_folds() -> None:
    old = codec.decode(OLD_HEARTBEAT)
    assert isinstance(old.data, NodeHeartbeat) and old.data.refusal is None
    assert old.data.resources.mem_avail == 4 << 30
    story = Story(NodesView())
    story.apply(Item(1, "evt.node.W012.heartbeat", old))
    (row,) = story.rows()
    assert (row["status"], row["mem_avail"], row["refusal"], row["refused_since"]) == ("online", 4 << 30, None, None)
    # and a heartbeat without a refusal is written as before it (the wire does not change)
    assert "refusal" not in codec.encode(Event.new(beat(), source="node/W012", subject="W012")).decode()


def test_a_refusal_travels_in_the_heartbeat_and_a_bad_kind_is_refused_by_name() -> None:
    event = Event.new(beat(ended()), source="node/W012", subject="W012")
    back = codec.decode(codec.encode(event))
    assert back.data.refusal == ended()
    doc = codec.to_dict(event)
    doc["data"]["refusal"]["kind"] = "password"
    with pytest.raises(DecodeError, match="refusal"):
        codec.decode(json.dumps(doc))


# --- the record on the node ---------------------------------------------------------------------


def test_the_record_ends_instead_of_vanishing_and_goes_once_its_report_is_stored(tmp_path: Path) -> None:
    first = refusal.record(tmp_path, "credential", REASON, "do this")
    again = refusal.record(tmp_path, "credential", REASON + " (again)", "do this")
    assert first.ongoing and again.since == first.since  # the time of the first refusal stays
    assert refusal.end(tmp_path, "events") is None  # not of that kind: still lasting
    assert refusal.read(tmp_path) == again
    over = refusal.end(tmp_path, "credential")
    assert over is not None and not over.ongoing and over.until is not None and over.since == first.since
    assert refusal.end(tmp_path) is None and refusal.read(tmp_path) == over  # ends once

    refusal.reported_in(tmp_path, over, nodeseq=41)
    refusal.reported_in(tmp_path, over, nodeseq=42)  # a later heartbeat: the first one is awaited
    noted = refusal.read(tmp_path)
    assert noted is not None and noted.reported == 41
    refusal.unreported(tmp_path, noted)  # that heartbeat was parked: report it again
    assert refusal.read(tmp_path) == over
    refusal.done(tmp_path, over)
    assert refusal.read(tmp_path) is None and not (tmp_path / refusal.FILE).exists()


def test_a_new_refusal_replaces_an_ended_one_and_is_not_removed_by_its_report(tmp_path: Path) -> None:
    refusal.record(tmp_path, "events", "permission violation", "do this")
    over = refusal.end(tmp_path)
    assert over is not None
    (tmp_path / refusal.FILE).write_text(json.dumps({**json.loads((tmp_path / refusal.FILE).read_text()),
                                                     "since": "2026-12-03T10:00:00+00:00"}))
    over = refusal.read(tmp_path)
    assert over is not None
    new = refusal.record(tmp_path, "credential", REASON, "do this")
    assert new.ongoing and new.since != over.since
    refusal.reported_in(tmp_path, over, nodeseq=7)  # a heartbeat built before the new refusal
    refusal.done(tmp_path, over)
    assert refusal.read(tmp_path) == new


def test_a_record_of_an_earlier_version_is_read_as_lasting(tmp_path: Path) -> None:
    (tmp_path / refusal.FILE).write_text(json.dumps({"what": "events", "error": "e", "hint": "h",
                                                     "since": "2026-12-03T13:04:31+00:00"}))
    held = refusal.read(tmp_path)
    assert held is not None and held.ongoing and held.reported is None


def test_the_heartbeat_carries_the_hubs_reason_without_a_password(tmp_path: Path) -> None:
    held = refusal.record(tmp_path, "credential", "NATS at nats://W012:s3cret@hub.example:4222 refused", "h")
    shown = refusal.for_heartbeat(held)
    assert shown is not None and shown.kind == "credential" and shown.until is None
    assert "s3cret" not in shown.reason and "nats://hub.example:4222" in shown.reason
    assert shown.since == datetime.fromisoformat(held.since)
    long = refusal.for_heartbeat(refusal.record(tmp_path, "events", "x" * 5000, "h"))
    assert long is not None and len(long.reason) == 1000
    assert refusal.for_heartbeat(refusal.Refusal("other", "e", "h", "not a time")) is None


# --- the nodes view ------------------------------------------------------------------------------


def test_the_nodes_view_keeps_the_latest_refusal_and_its_end() -> None:
    story = Story(NodesView())
    node = "node/W012"
    story.apply(story.item(beat(), source=node, minutes=0))
    row = story.rows()[0]
    assert (row["refusal"], row["refused_since"], row["refused_until"]) == (None, None, None)
    # Heartbeats buffered during the refusal, then the one reporting its end:
    story.apply(story.item(beat(lasting()), source=node, minutes=1),
                story.item(beat(lasting()), source=node, minutes=2),
                story.item(beat(ended()), source=node, minutes=3))
    row = story.rows()[0]
    assert (row["refusal"], row["refusal_reason"]) == ("credential", REASON)
    assert (row["refused_since"], row["refused_until"]) == (SINCE.replace(tzinfo=None), UNTIL.replace(tzinfo=None))
    # An older report of it does not reopen it; heartbeats without one keep it shown.
    story.apply(story.item(beat(lasting()), source=node, minutes=4),
                story.item(beat(mem_avail=3), source=node, minutes=5))
    row = story.rows()[0]
    assert row["refused_until"] == UNTIL.replace(tzinfo=None) and row["mem_avail"] == 3
    # A later refusal replaces it; an older one reported late does not.
    later = SINCE + timedelta(days=1)
    story.apply(story.item(beat(HubRefusal(kind="events", reason="permission violation", since=later)),
                           source=node, minutes=6),
                story.item(beat(ended(SINCE - timedelta(days=1), SINCE - timedelta(hours=20))), source=node, minutes=7))
    row = story.rows()[0]
    assert (row["refusal"], row["refused_since"], row["refused_until"]) == ("events", later.replace(tzinfo=None), None)
    assert row["status"] == "online"


def test_the_nodes_view_has_a_new_version_for_its_new_columns() -> None:
    view = NodesView()
    assert view.version >= 3
    ddl = view.tables[0].ddl
    for column in ("refusal", "refusal_reason", "refused_since", "refused_until"):
        assert f"{column} " in ddl


# --- the scheduler's and the health handler's folds ----------------------------------------------


def test_the_ses_and_health_folds_take_a_heartbeat_with_a_refusal() -> None:
    event = Event.new(beat(ended(), mem_avail=7), source="node/W012", subject="W012")
    state = ses_state.SesState.empty()
    ses_state.evolve(state, codec.decode(codec.encode(event)))
    assert state.node("W012").resources is not None and state.node("W012").resources.mem_avail == 7
    kept = health.HealthState(offline_after=timedelta(seconds=90))
    decided = health.decide(kept, event)
    assert [e.type for e in decided.events] == ["node.online"]
    health.evolve(kept, event)
    assert kept.node("W012").last_heartbeat == event
