"""The views' pure apply: events in, row changes out (no DuckDB).

Each test folds a short story through one view, the way the store does (state of touched
scopes in, replaced scopes out), and checks what a user would read in the table.
"""

from __future__ import annotations

import ast
import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hivebus.errors import SetupError
from hivebus.projections import views as views_pkg
from hivebus.projections.views import all_views, select_views
from hivebus.projections.views.assignments import AssignmentsView
from hivebus.projections.views.base import Append, FoldView, Item, Replace, View, number_and_text
from hivebus.projections.views.bundle_permissions import BundlePermissionsView
from hivebus.projections.views.bundles import BundlesView
from hivebus.projections.views.dead_letters import DeadLettersView
from hivebus.projections.views.events import EventsView
from hivebus.projections.views.jobs import JobsView
from hivebus.projections.views.node_sensors import NodeSensorsView
from hivebus.projections.views.nodes import NodesView
from hivebus.projections.views.plugin_runs import PluginRunsView
from hivebus.projections.views.profiles import ProfilesView
from hivebus.projections.views.readings import ReadingsView
from hivebus.projections.views.rejections import RejectionsView
from hivebus.projections.views.triggers import TriggersView
from hivebus.schemas import Event
from hivebus.schemas.data import Reading
from hivebus.schemas.ecr import (
    AppSource,
    AppSpec,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    BundleRejected,
    EcrCommandRejected,
    HardwareProfile,
    PermissionGranted,
    PermissionRevoked,
    ProfileRecorded,
)
from hivebus.schemas.node import (
    Hardware,
    NodeHeartbeat,
    NodeManifest,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    NodeResources,
    Perf,
    PluginStatus,
    SensorLost,
    SensorRestored,
    SensorSpec,
    TriggerFired,
)
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalPlugin,
    GoalRemoved,
    JobPlugin,
    JobRejected,
    JobScheduled,
    JobSpec,
    JobSubmitted,
    JobSuspended,
    Placement,
    PluginSpec,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BUNDLE = "waggle/plugin-bme680:0.2.1"


class Story:
    """Events with increasing sequences and times, folded through a view like the store does."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.seq = 0
        self.tables: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {}
        self.appended: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[int, str] = {}

    def item(self, payload: Any, *, source: str = "user/ada", subject: str = "x", minutes: float | None = None,
             nodeseq: int | None = None, nats_subject: str = "evt.test.x") -> Item:
        self.seq += 1
        when = T0 + timedelta(minutes=self.seq if minutes is None else minutes)
        event = Event.new(payload, source=source, subject=subject, time=when, nodeseq=nodeseq)
        return Item(self.seq, nats_subject, event)

    def answer(self, to: Item, payload: Any) -> Item:
        """A handler's output caused by ``to`` (causation id = its event id)."""
        self.seq += 1
        event = to.event.caused(payload, source="handler/ses", subject="x", producer="handler/ses", index=self.seq)
        return Item(self.seq, "evt.test.x", event)

    def apply(self, *items: Item) -> None:
        wanted = self.view.wanted(list(items))
        state = {t: {s: self.tables.get(t, {}).get(s, []) for s in scopes} for t, scopes in wanted.items()}
        applied = self.view.apply(list(items), state)
        self.failures.update(applied.failures)
        for change in applied.changes:
            if isinstance(change, Append):
                columns = change.columns
                rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
                self.appended.setdefault(change.table, []).extend(rows)
            else:
                assert isinstance(change, Replace)
                table = self.tables.setdefault(change.table, {})
                for scope in change.scopes:
                    table[scope] = []
                for row in change.rows:
                    table.setdefault(tuple(row[c] for c in change.scope_columns), []).append(row)

    def rows(self, table: str | None = None) -> list[dict[str, Any]]:
        name = table or self.view.tables[0].name
        if name in self.appended:
            return self.appended[name]
        return [row for rows in self.tables.get(name, {}).values() for row in rows]


def app(version: str = "0.2.1") -> AppSpec:
    return AppSpec(namespace="waggle", name="plugin-bme680", version=version, description="reads a BME680",
                   source=AppSource(url="https://github.com/example/plugin-bme680",
                                    architectures=["linux/amd64", "linux/arm64"]))


def manifest(node: str = "W012", sensors: tuple[str, ...] = ("bme680", "raingauge")) -> NodeManifest:
    return NodeManifest(node_id=node, vsn=node, tags=["urban"],
                        hardware=Hardware(arch="linux/arm64", cpus=6, memory=8 << 30, disk=200 << 30),
                        sensors=[SensorSpec(name=s, kind="env") for s in sensors])


def beat(node: str = "W012", mem_avail: int = 4 << 30) -> NodeHeartbeat:
    return NodeHeartbeat(node=node, resources=NodeResources(cpus=6, mem_total=8 << 30, mem_avail=mem_avail,
                                                             disk_total=1, disk_avail=1, load1=0.5),
                         uptime_seconds=10.0)


# --- the catalogue ----------------------------------------------------------------------------


def test_every_view_has_a_unique_name_a_version_and_ddl_for_its_tables() -> None:
    views = all_views()
    assert len({v.name for v in views}) == len(views) == 16
    public = {name for v in views for name in v.public}
    assert public >= {"events", "bundles", "bundle_permissions", "profiles", "jobs", "assignments", "nodes",
                      "node_sensors", "plugin_runs", "readings", "triggers", "dead_letters", "rejections"}
    for view in views:
        assert view.version >= 1 and view.tables
        for table in view.tables:
            assert table.create_sql().startswith("CREATE TABLE " + table.name)


def test_select_views_accepts_public_names_and_refuses_unknown_ones() -> None:
    assert [v.name for v in select_views(["profile_runs"])] == ["profiles"]
    assert len(select_views(None)) == 16
    with pytest.raises(SetupError, match="unknown view 'nope'"):
        select_views(["nope"])


def test_views_import_no_io_libraries() -> None:
    """Pure decisions: no nats, duckdb or subprocess in any view module."""
    folder = Path(inspect.getfile(views_pkg)).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in ("nats", "duckdb", "subprocess", "hivebus.bus")}, path


def test_views_never_read_the_clock() -> None:
    """Rows come from event times only, so a replay gives the same rows (guarantee 6)."""
    folder = Path(inspect.getfile(views_pkg)).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "now(" not in text and "time.time" not in text and "monotonic" not in text, path


# --- appends --------------------------------------------------------------------------------


def test_events_records_every_event_with_its_envelope_and_payload_json() -> None:
    story = Story(EventsView())
    item = story.item(BundleApproved(bundle_id=BUNDLE, by="rev"), subject=BUNDLE)
    story.apply(item)
    (row,) = story.rows()
    assert (row["seq"], row["type"], row["subject"], row["source"]) == (1, "ecr.bundle.approved", BUNDLE, "user/ada")
    assert row["time"] == datetime(2025, 3, 1, 12, 1) and row["time"].tzinfo is None  # naive UTC
    assert '"bundle_id":"waggle/plugin-bme680:0.2.1"' in row["data"] and row["nats_subject"] == "evt.test.x"


def test_readings_keep_nanoseconds_every_meta_key_and_strings_apart() -> None:
    story = Story(ReadingsView())
    node = "node/W012"
    story.apply(
        story.item(Reading(name="env.temperature", value=21.5, timestamp=1_740_830_400_123_456_789,
                           meta={"vsn": "W012", "sensor": "bme680"}), source=node, nodeseq=1),
        story.item(Reading(name="cam.label", value="bird", timestamp=1_740_830_400_000_000_001), source=node),
        story.item(Reading(name="sys.counter", value=2**60 + 1, timestamp=1_740_830_400_000_000_002), source=node),
    )
    number, text, big = story.rows("readings")
    assert number["timestamp"] == 1_740_830_400_123_456_789 and number["value"] == 21.5
    assert number["meta"] == [("sensor", "bme680"), ("vsn", "W012")] and number["node"] == "W012"
    assert (text["value"], text["value_text"]) == (None, "bird")
    assert big["value"] == float(2**60) and big["value_text"] == str(2**60 + 1)  # every digit kept


def test_a_reading_no_double_can_hold_is_a_failure_not_a_crash() -> None:
    story = Story(ReadingsView())
    good = story.item(Reading(name="a.b", value=1, timestamp=1_740_830_400_000_000_000), source="node/W1")
    huge = story.item(Reading(name="a.b", value=10**400, timestamp=1_740_830_400_000_000_000), source="node/W1")
    story.apply(good, huge)
    assert len(story.rows("readings")) == 1
    assert "OverflowError" in story.failures[huge.seq] and story.failures[huge.seq].startswith("view readings")


def test_number_and_text() -> None:
    assert number_and_text(3) == (3.0, None)
    assert number_and_text(2.5) == (2.5, None)
    assert number_and_text("x") == (None, "x")
    assert number_and_text(2**53 + 1) == (float(2**53 + 1), str(2**53 + 1))


def test_triggers_record_what_fired_where_and_when() -> None:
    story = Story(TriggersView())
    fired_at = T0 - timedelta(hours=1)
    story.apply(
        story.item(TriggerFired(node="W012", job_id="j1", rule="publish(heat): v('t') > 35", name="heat.alert",
                                value=36.5, time=fired_at), source="node/W012"),
        story.item(BundleApproved(bundle_id=BUNDLE, by="rev")),
    )
    (row,) = story.rows("triggers")
    assert (row["node"], row["name"], row["value"]) == ("W012", "heat.alert", 36.5)
    assert row["fired_at"] == fired_at.replace(tzinfo=None) and row["received_at"] > row["fired_at"]


# --- folds ----------------------------------------------------------------------------------


def shown(story: Story) -> list[dict[str, Any]]:
    """The rows the SQL view ``bundles`` shows (it leaves out ``pending`` ones)."""
    return [r for r in story.rows("projector.bundles") if r["state"] != "pending"]


def test_bundle_lifecycle_from_the_ecr_facts_only() -> None:
    story = Story(BundlesView())
    registered = BundleRegistered(bundle_id=BUNDLE, owner="ada", pusher="ada", app=app())
    story.apply(story.item(registered, source="handler/ecr"),
                story.item(BundleApproved(bundle_id=BUNDLE, by="rev"), source="handler/ecr"),
                story.item(BundleFrozen(bundle_id=BUNDLE, by="ada"), source="handler/ecr"))
    (row,) = shown(story)
    assert (row["state"], row["owner"], row["approved"], row["frozen"]) == ("frozen", "ada", True, True)
    assert row["architectures"] == ["linux/amd64", "linux/arm64"] and row["namespace"] == "waggle"
    # users' requests (as old logs hold them) are not facts: the ECR decides them again
    story.apply(story.item(BundleDeleted(bundle_id=BUNDLE, by="eve")))
    assert shown(story)[0]["state"] == "frozen"
    story.apply(story.item(BundleDeleted(bundle_id=BUNDLE, by="ada"), source="handler/ecr"))
    assert shown(story)[0]["state"] == "deleted"


def test_an_old_logs_push_shows_once_registered_and_never_when_rejected() -> None:
    story = Story(BundlesView())
    push = story.item(BundlePushed(app=app(), pusher="ada"))
    story.apply(push)
    assert shown(story) == [] and story.rows("projector.bundles")[0]["state"] == "pending"
    story.apply(story.answer(push, BundleRegistered(bundle_id=BUNDLE, owner="ada")))
    (row,) = shown(story)
    assert (row["state"], row["description"], row["pusher"]) == ("registered", "reads a BME680", "ada")
    # a re-push by someone without WRITE, rejected: the bundle stays as it was
    again = story.item(BundlePushed(app=app().model_copy(update={"description": "changed"}), pusher="eve"))
    story.apply(again, story.answer(again, BundleRejected(bundle_id=BUNDLE, pusher="eve", reasons=["eve lacks WRITE"])))
    (row,) = shown(story)
    assert (row["state"], row["description"], row["pusher"], row["reasons"]) == ("registered", "reads a BME680", "ada", None)
    other = story.item(BundlePushed(app=app("1.0"), pusher="ada"))
    story.apply(other, story.answer(other, BundleRejected(bundle_id="waggle/plugin-bme680:1.0", pusher="ada",
                                                          reasons=["version '1.0' is not X.Y.Z", "no Dockerfile"])))
    assert [r["bundle_id"] for r in story.rows("projector.bundles")] == [BUNDLE]


def test_rejections_keep_every_refused_command_once() -> None:
    story = Story(RejectionsView())
    command = story.item(PermissionGranted(resource=BUNDLE, grantee_type="user", grantee="eve", permission="READ",
                                           by="eve"))
    refused = EcrCommandRejected(command="ecr.grant", by="eve", target=BUNDLE,
                                 reasons=["eve lacks WRITE_ACP on it"], data={"grantee": "eve"})
    story.apply(story.answer(command, refused), story.answer(command, refused))
    push = story.item(BundlePushed(app=app("1.0"), pusher="ada"))
    story.apply(story.answer(push, BundleRejected(bundle_id="waggle/plugin-bme680:1.0", pusher="ada",
                                                  reasons=["not X.Y.Z"])))
    rows = story.rows()
    assert [(r["command"], r["requested_by"], r["target"], r["reasons"]) for r in rows] == [
        ("ecr.grant", "eve", BUNDLE, ["eve lacks WRITE_ACP on it"]),
        ("ecr.push", "ada", "waggle/plugin-bme680:1.0", ["not X.Y.Z"]),
    ]
    assert rows[0]["command_id"] == command.event.id and rows[0]["decider"] == "ecr"


def test_permissions_grant_once_and_revoke() -> None:
    story = Story(BundlePermissionsView())

    def grant(kind: type, grantee: str = "AllUsers", grantee_type: str = "group") -> Item:
        return story.item(kind(resource="waggle", grantee_type=grantee_type, grantee=grantee,
                               permission="READ", by="ada"), source="handler/ecr")

    story.apply(grant(PermissionGranted), grant(PermissionGranted, "bob", "user"), grant(PermissionGranted))
    rows = story.rows()
    assert sorted(r["grantee"] for r in rows) == ["AllUsers", "bob"] and rows[0]["resource_kind"] == "namespace"
    assert next(r for r in rows if r["grantee"] == "AllUsers")["seq"] == 1  # the first grant stays
    story.apply(grant(PermissionRevoked, "bob", "user"))
    assert [r["grantee"] for r in story.rows()] == ["AllUsers"]
    # a user's grant request (an old log) is not a fact: only the ECR's grants count
    story.apply(story.item(PermissionGranted(resource="waggle", grantee_type="user", grantee="eve",
                                             permission="READ", by="eve")))
    assert [r["grantee"] for r in story.rows()] == ["AllUsers"]


def test_profile_runs_count_a_run_once() -> None:
    story = Story(ProfilesView())
    recorded = ProfileRecorded(bundle_id=BUNDLE, hardware=HardwareProfile(arch="linux/arm64"), node="W012",
                               run_id="r1", exit_state="completed", cpu_seconds=1.5, max_rss_bytes=10,
                               wall_seconds=3.0)
    story.apply(story.item(recorded), story.item(recorded))
    story.apply(story.item(recorded))
    assert [r["run_id"] for r in story.rows("profile_runs")] == ["r1"]


def job_spec() -> JobSpec:
    return JobSpec(name="bme", plugins=[JobPlugin(name="bme680", plugin_spec=PluginSpec(
        image=f"registry.sagecontinuum.org/{BUNDLE}"))], nodes=["W012", "W013"])


def test_job_states_follow_the_scheduler() -> None:
    story = Story(JobsView())
    j1 = story.item(JobSubmitted(job_id="j1", user="ada", spec=job_spec()))
    story.apply(j1)
    (row,) = story.rows()
    assert (row["state"], row["user"], row["nodes"], row["bundles"]) == ("Submitted", "ada", ["W012", "W013"], [BUNDLE])
    story.apply(story.answer(j1, JobScheduled(job_id="j1", policy="fit", placements=[
        Placement(node="W012", plugin="bme680", bundle_id=BUNDLE)])))
    assert story.rows()[0]["state"] == "Running" and story.rows()[0]["placed_nodes"] == ["W012"]
    story.apply(story.item(JobSuspended(job_id="j1", by="eve")))  # a request, not a fact
    assert story.rows()[0]["state"] == "Running"
    story.apply(story.item(JobSuspended(job_id="j1", by="ada", reason="maintenance"), source="handler/ses"))
    assert (story.rows()[0]["state"], story.rows()[0]["reasons"]) == ("Suspended", ["maintenance"])
    j2 = story.item(JobSubmitted(job_id="j2", user="bob", spec=job_spec()))
    story.apply(j2, story.answer(j2, JobRejected(job_id="j2", reasons=["no node fits"])))
    assert {r["job_id"]: r["state"] for r in story.rows()} == {"j1": "Suspended"}  # refused: no job
    # the scheduler's facts for a command: the scheduling carries the submission
    command = story.item(JobSubmitted(job_id="j3", user="cy", spec=job_spec()), source="user/cy")
    story.apply(story.answer(command, JobScheduled(job_id="j3", policy="fit", user="cy", spec=job_spec(),
                                                   placements=[Placement(node="W013", plugin="bme680",
                                                                         bundle_id=BUNDLE)])))
    row = next(r for r in story.rows() if r["job_id"] == "j3")
    assert (row["state"], row["user"], row["placed_nodes"], row["submission_id"]) == ("Running", "cy", ["W013"], command.event.id)


def test_a_second_submission_of_a_job_id_leaves_the_job_alone() -> None:
    """The scheduler rejects a reused id; that rejection answers the second submission only."""
    story = Story(JobsView())
    first = story.item(JobSubmitted(job_id="j1", user="ada", spec=job_spec()))
    story.apply(first, story.answer(first, JobScheduled(job_id="j1", policy="fit", placements=[
        Placement(node="W012", plugin="bme680", bundle_id=BUNDLE)])))
    again = story.item(JobSubmitted(job_id="j1", user="eve", spec=job_spec()))
    story.apply(again, story.answer(again, JobRejected(job_id="j1", reasons=["job id 'j1' is already used"])))
    (row,) = story.rows()
    assert (row["state"], row["user"], row["reasons"]) == ("Running", "ada", None)
    assert row["submission_id"] == first.event.id


def test_assignments_from_placement_to_goal_to_run_and_removal() -> None:
    story = Story(AssignmentsView())
    goal = GoalPlugin(name="bme680", bundle_id=BUNDLE, image=f"registry.sagecontinuum.org/{BUNDLE}")
    story.apply(
        story.item(JobScheduled(job_id="j1", policy="fit", placements=[
            Placement(node=n, plugin="bme680", bundle_id=BUNDLE, score=1.0) for n in ("W012", "W013")])),
        story.item(GoalAssigned(node="W012", job_id="j1", plugins=[goal])),
        story.item(PluginStatus(node="W012", job_id="j1", plugin="bme680", bundle_id=BUNDLE, run_id="r1",
                                state="running"), source="node/W012"),
    )
    by_node = {r["node"]: r for r in story.rows()}
    assert by_node["W012"]["state"] == "assigned" and by_node["W012"]["plugin_state"] == "running"
    assert by_node["W013"]["state"] == "placed" and by_node["W013"]["plugin_state"] is None
    story.apply(story.item(GoalRemoved(node="W012", job_id="j1", reason="job removed")))
    by_node = {r["node"]: r for r in story.rows()}
    assert by_node["W012"]["state"] == "removed" and by_node["W013"]["state"] == "placed"


def test_node_online_offline_by_event_time_and_latest_resources() -> None:
    story = Story(NodesView())
    node = "node/W012"
    story.apply(story.item(NodeRegistered(manifest=manifest()), source=node, minutes=0),
                story.item(beat(mem_avail=5), source=node, minutes=1))
    (row,) = story.rows()
    assert (row["status"], row["vsn"], row["arch"], row["mem_avail"]) == ("online", "W012", "linux/arm64", 5)
    story.apply(story.item(NodeOffline(node="W012", reason="no heartbeat"), source="handler/presence", minutes=10))
    assert story.rows()[0]["status"] == "offline"
    # A heartbeat the node buffered while cut off (older than the verdict) does not revive it...
    story.apply(story.item(beat(mem_avail=7), source=node, minutes=5))
    row = story.rows()[0]
    assert row["status"] == "offline" and row["mem_avail"] == 7 and row["last_heartbeat"] == datetime(2025, 3, 1, 12, 5)
    # ...a fresh one does, and an older buffered one does not roll the resources back.
    story.apply(story.item(beat(mem_avail=9), source=node, minutes=12),
                story.item(beat(mem_avail=1), source=node, minutes=11))
    row = story.rows()[0]
    assert (row["status"], row["mem_avail"]) == ("online", 9)
    story.apply(story.item(NodeOnline(node="W012"), source="handler/presence", minutes=13))
    assert story.rows()[0]["status_since"] == datetime(2025, 3, 1, 12, 12)


def test_sensors_from_the_manifest_lost_and_restored() -> None:
    story = Story(NodeSensorsView())
    node = "node/W012"
    story.apply(story.item(NodeRegistered(manifest=manifest()), source=node),
                story.item(SensorLost(node="W012", sensor="raingauge", reason="silent 300s"), source=node),
                story.item(SensorLost(node="W012", sensor="raingauge", reason="still silent"), source=node))
    by_name = {r["sensor"]: r for r in story.rows()}
    assert by_name["bme680"]["status"] == "ok"
    assert (by_name["raingauge"]["status"], by_name["raingauge"]["lost_count"]) == ("lost", 1)
    story.apply(story.item(SensorRestored(node="W012", sensor="raingauge"), source=node),
                story.item(SensorLost(node="W012", sensor="camera", reason="device gone"), source=node))
    by_name = {r["sensor"]: r for r in story.rows()}
    assert by_name["raingauge"]["status"] == "ok" and by_name["camera"]["status"] == "lost"
    story.apply(story.item(NodeRegistered(manifest=manifest(sensors=("bme680",))), source=node))
    assert [r["sensor"] for r in story.rows()] == ["bme680"]


def test_plugin_runs_terminal_state_sticks_and_carries_perf() -> None:
    story = Story(PluginRunsView())
    common = {"node": "W012", "job_id": "j1", "plugin": "bme680", "bundle_id": BUNDLE, "run_id": "r1"}
    story.apply(
        story.item(PluginStatus(**common, state="queued"), source="node/W012"),
        story.item(PluginStatus(**common, state="running"), source="node/W012"),
        story.item(PluginStatus(**common, state="failed", exit_code=137, reason="out of memory", log_tail=["killed"],
                                perf=Perf(cpu_seconds=2.0, max_rss_bytes=512, wall_seconds=9.0)), source="node/W012"),
        story.item(PluginStatus(**common, state="running"), source="node/W012"),
    )
    (row,) = story.rows()
    assert (row["state"], row["exit_code"], row["reason"], row["max_rss_bytes"]) == ("failed", 137, "out of memory", 512)
    assert row["queued_at"] < row["started_at"] < row["ended_at"] and row["transitions"] == 4


def test_an_exit_code_beyond_64_bits_is_a_failure_of_that_event_only() -> None:
    story = Story(PluginRunsView())
    common = {"node": "W012", "job_id": "j1", "plugin": "p", "bundle_id": BUNDLE, "run_id": "r1"}
    bad = story.item(PluginStatus(**common, state="completed", exit_code=2**70), source="node/W012")
    story.apply(story.item(PluginStatus(**common, state="queued"), source="node/W012"), bad)
    assert story.rows()[0]["state"] == "queued" and "64 bits" in story.failures[bad.seq]


class _Letter:
    def __init__(self, seq: int, index: int | None = None) -> None:
        self.stream, self.seq, self.subject, self.consumer = "EVENTS", seq, "evt.x.y", "projector"
        self.reason, self.field, self.time, self.payload_b64 = "bad JSON", "<body>", T0, "eyJ4Ijo="
        self.index = index


def test_dead_letters_keep_one_row_per_bad_reading_of_a_packed_message() -> None:
    story = Story(DeadLettersView())
    story.apply(Item(1, "dlq.DATA.projector", _Letter(9, 0)), Item(2, "dlq.DATA.projector", _Letter(9, 3)))
    story.apply(Item(3, "dlq.DATA.projector", _Letter(9, 3)))  # published again: recorded once
    rows = sorted(story.rows(), key=lambda r: r["batch_index"])
    assert [(r["seq"], r["batch_index"], r["dlq_seq"]) for r in rows] == [(9, 0, 1), (9, 3, 2)]


def test_dead_letters_keep_the_first_letter_per_message_and_record_malformed_ones() -> None:
    story = Story(DeadLettersView())
    story.apply(Item(1, "dlq.EVENTS.projector", _Letter(7)), Item(2, "dlq.EVENTS.projector", _Letter(7)),
                Item(3, "dlq.DATA.handler", None, b"not json"))
    rows = story.rows()
    assert len(rows) == 2
    first = next(r for r in rows if r["seq"] == 7)
    assert (first["dlq_seq"], first["payload"], first["reason"]) == (1, b'{"x":', "bad JSON")
    malformed = next(r for r in rows if r["stream"] == "?")
    assert malformed["consumer"] == "handler" and malformed["payload"] == b"not json"


def test_fold_views_ignore_events_they_do_not_handle() -> None:
    item = Item(1, "evt.x", Event.new(BundleApproved(bundle_id=BUNDLE, by="r"), source="user/a", subject="x"))
    for view in all_views():
        if isinstance(view, FoldView) and view.name not in ("bundles", "dead_letters"):
            assert view.apply([item], {}).changes == [], view.name
