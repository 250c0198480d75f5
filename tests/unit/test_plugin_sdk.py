"""The plugin SDK without a bus: pywaggle's validation (held to the hub's Reading rules),
enrichment, topics, the offline run log, and a cheap import."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hivebus import plugin as sdk
from hivebus.plugin import (
    Message,
    Plugin,
    PluginConfig,
    message_of,
    reading_body,
    subject_covers,
    topic_matcher,
    topic_subjects,
)
from hivebus.schemas import data as reading_schema
from hivebus.schemas.data import Reading

NOW = 1_700_000_000_000_000_000
IDENTITY = {"node": "W012", "vsn": "W012", "host": "w012-nx", "job": "job-1", "task": "bme680", "plugin": "waggle/plugin-bme680:0.2.1"}


# --- the same rules as the hub ----------------------------------------------------------------


def test_sdk_rules_are_within_the_reading_rules() -> None:
    # pywaggle's minimum (06:00 UTC on 2000-01-01) is later than the hub's, so every
    # timestamp the SDK takes the hub takes.
    assert sdk.MIN_TIMESTAMP_NS == 946_706_400_000_000_000 >= reading_schema.MIN_TIMESTAMP_NS
    assert sdk.BYTES_ENCODING == reading_schema.BYTES_ENCODING
    assert sdk.MAX_NAME_LENGTH == 128
    assert set(sdk.SCOPES) == {"node", "beehive", "all"}


valid_names = st.from_regex(r"[a-z0-9_]{1,12}(\.[a-z0-9_]{1,12}){0,3}", fullmatch=True)
names = valid_names | valid_names | st.text(alphabet="abz09_.A- é", max_size=140) | st.sampled_from(
    ["a" * 128, "a" * 129, "env..t", ".env", "env.", "upload"]
)
valid_values = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
values = valid_values | valid_values | st.floats() | st.booleans() | st.none() | st.lists(st.integers(), max_size=2)
valid_timestamps = st.integers(min_value=sdk.MIN_TIMESTAMP_NS, max_value=2**63 - 1)
timestamps = (
    valid_timestamps
    | valid_timestamps
    | st.integers(min_value=sdk.MIN_TIMESTAMP_NS - 10, max_value=sdk.MIN_TIMESTAMP_NS + 10)
    | st.integers(min_value=0, max_value=2**64)
    | st.floats(min_value=0, max_value=2e18)
    | st.booleans()
)
valid_metas = st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
metas = valid_metas | valid_metas | st.dictionaries(st.text(max_size=5) | st.integers(), st.text(max_size=5) | st.integers() | st.none(), max_size=3)
scopes = st.sampled_from(["node", "beehive", "all", "all", "cloud", ""])
outcomes: set[bool] = set()


@settings(max_examples=400, deadline=None)
@given(name=names, value=values, timestamp=timestamps, meta=metas, scope=scopes)
def test_whatever_the_sdk_accepts_the_hub_takes_and_gives_back(name, value, timestamp, meta, scope) -> None:
    """The SDK accepts what pywaggle accepts (tests/differential); what the hub's own rules
    would refuse (a bool, NaN, a non-str meta key, an unknown scope) is sent in a form the hub
    takes, and a hub-valid reading is sent unchanged."""
    try:
        body = reading_body(name, value, meta, timestamp, scope, {}, allow_reserved=True)
    except (TypeError, ValueError):
        outcomes.add(False)
        return
    outcomes.add(True)
    Reading.model_validate(body)
    assert message_of(json.dumps(body).encode()) == Message(
        name, value, timestamp, {str(k): v for k, v in meta.items()}) or (
        isinstance(value, float) and math.isnan(value))
    try:
        Reading(name=name, value=value, timestamp=timestamp, meta=meta, scope=scope)
    except ValidationError:
        return
    assert body == {"name": name, "value": value, "timestamp": timestamp, "meta": meta, "scope": scope}


def test_the_property_above_saw_both_outcomes() -> None:
    """Guards the property test against strategies that only ever produce invalid readings."""
    if not outcomes:
        pytest.skip("runs after test_the_sdk_accepts_exactly_what_the_hub_accepts")
    assert outcomes == {True, False}


@pytest.mark.parametrize(
    ("name", "value", "timestamp", "meta", "error", "match"),
    [
        (42, 1, NOW, {}, TypeError, "name must be a string"),
        ("Env.Temp", 1, NOW, {}, ValueError, "part: 'Env'"),
        ("a" * 129, 1, NOW, {}, ValueError, "at most 128"),
        ("upload", 1, NOW, {}, ValueError, "reserved"),
        ("env.t", b"raw", NOW, {}, TypeError, "bytes are refused"),
        ("env.t", [1], NOW, {}, TypeError, "not list"),
        ("env.t", 1, 1_700_000_000, {}, ValueError, "before 2000"),
        ("env.t", 1, 946_706_399_999_999_999, {}, ValueError, "before 2000"),
        ("env.t", 1, 1.7e18, {}, TypeError, "nanoseconds"),
        ("env.t", 1, NOW, {"a": 1}, TypeError, "strings to strings"),
    ],
)
def test_errors_are_pywaggles_types_with_a_clear_message(name, value, timestamp, meta, error, match) -> None:
    with pytest.raises(error, match=match):
        reading_body(name, value, meta, timestamp, "all", {})


def test_node_identity_enriches_meta_and_wins_over_the_plugins_claims() -> None:
    body = reading_body("env.t", 21.5, {"sensor": "bme680", "node": "W999"}, NOW, "node", IDENTITY)
    assert body["meta"] == {**IDENTITY, "sensor": "bme680"}
    assert body["scope"] == "node" and body["timestamp"] == NOW


@pytest.mark.parametrize("value", [True, False, math.inf, -math.inf])
def test_bools_and_infinities_travel_encoded_and_come_back_as_published(value) -> None:
    body = reading_body("env.flag", value, {"sensor": "s"}, NOW, "all", {})
    assert isinstance(body["value"], str) and body["meta"]["enc"] in ("bool", "float")
    Reading.model_validate(body)
    assert message_of(json.dumps(body).encode()) == Message("env.flag", value, NOW, {"sensor": "s"})


def test_nan_travels_encoded_and_comes_back_nan() -> None:
    body = reading_body("env.t", math.nan, {}, NOW, "all", {})
    assert (body["value"], body["meta"]) == ("nan", {"enc": "float"})
    msg = message_of(json.dumps(body).encode())
    assert msg is not None and math.isnan(msg.value) and msg.meta == {}


def test_a_scope_pywaggle_does_not_check_is_published_as_all() -> None:
    assert reading_body("env.t", 1, {}, NOW, "cloud", {})["scope"] == "all"
    assert reading_body("env.t", 1, {}, NOW, None, {})["scope"] == "all"


def test_bytes_from_another_publisher_come_back_as_bytes() -> None:
    body = Reading.from_bytes("image.jpeg", b"\x00\xffraw", timestamp=NOW, meta={"camera": "top"}).model_dump()
    msg = message_of(json.dumps(body).encode())
    assert msg == Message("image.jpeg", b"\x00\xffraw", NOW, {"camera": "top"})


def test_received_messages_have_pywaggles_fields() -> None:
    msg = message_of(b'{"name":"env.t","value":21.5,"timestamp":1700000000000000000,"meta":{"node":"W012"},"scope":"all"}')
    assert msg is not None
    assert (msg.name, msg.value, msg.timestamp, msg.meta) == ("env.t", 21.5, NOW, {"node": "W012"})
    assert message_of(b"not json") is None and message_of(b'{"name": "x"}') is None


# --- topics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "matching", "not_matching"),
    [
        ("env.temperature", ["env.temperature"], ["env.temperature.x", "env", "env.humidity"]),
        ("env.*", ["env.temperature", "env.x"], ["env", "env.a.b", "sys.x"]),
        ("env.#", ["env", "env.t", "env.a.b.c"], ["environment", "sys.env"]),
        ("#", ["a", "a.b.c"], []),
        ("#.temperature", ["temperature", "env.temperature", "a.b.temperature"], ["env.temperature.x"]),
        ("env.#.raw", ["env.raw", "env.a.raw", "env.a.b.raw"], ["env.a.raw.x", "env"]),
        ("*.temperature", ["env.temperature"], ["temperature", "a.b.temperature"]),
    ],
)
def test_topic_wildcards_match_like_pywaggle(topic, matching, not_matching) -> None:
    match = topic_matcher(topic)
    assert all(match(name) for name in matching)
    assert not any(match(name) for name in not_matching)


@pytest.mark.parametrize(
    ("topics", "subjects"),
    [
        (("env.temperature",), ["readings.env.temperature"]),
        (("env.*",), ["readings.env.*"]),
        (("env.#",), ["readings.env", "readings.env.>"]),
        (("#",), ["readings.>"]),
        (("env.#.raw",), ["readings.env.>"]),
        (("#.raw",), ["readings.>"]),
        (("env.temperature", "env.relative_humidity"), ["readings.env.*"]),
        (("env.temperature", "env.temperature"), ["readings.env.temperature"]),
        (("env.temperature", "env"), ["readings.env", "readings.env.>"]),
        (("env.#", "sys.mem.avail"), ["readings.>"]),
    ],
)
def test_topics_share_one_subscription_on_the_local_bus(topics, subjects) -> None:
    """One subscription keeps readings in bus order (NATS orders only within one)."""
    assert topic_subjects(*topics) == subjects
    names = ["env", "env.temperature", "env.relative_humidity", "env.a.raw", "sys.mem.avail", "x.raw"]
    for name in names:  # the subscription carries everything the topics match
        if any(topic_matcher(t)(name) for t in topics):
            assert any(subject_covers(s, f"readings.{name}") for s in subjects), name


@pytest.mark.parametrize(
    ("pattern", "subject", "covers"),
    [
        ("readings.>", "readings.a", True),
        ("readings.>", "readings", False),
        ("readings.a.*", "readings.a.b", True),
        ("readings.a.*", "readings.a.b.c", False),
        ("readings.a", "readings.a", True),
        ("readings.a", "readings.a.b", False),
    ],
)
def test_nats_subject_matching(pattern, subject, covers) -> None:
    assert subject_covers(pattern, subject) is covers


def test_topics_no_name_can_match_deliver_nothing_like_pywaggle() -> None:
    assert topic_subjects("Env.t") == [] and not topic_matcher("Env.t")("env.t")
    assert topic_subjects("") == [] and topic_subjects("Env.t", "env.t") == ["readings.env.t"]
    with pytest.raises(TypeError):
        topic_matcher(42)  # type: ignore[arg-type]


# --- offline: the run log ---------------------------------------------------------------------


def offline(tmp_path: Path, **env: str) -> PluginConfig:
    return PluginConfig.from_env({"HIVEBUS_OFFLINE_LOG": str(tmp_path / "run.ndjson"), **env})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_plugin_logs_readings_as_ndjson(tmp_path: Path) -> None:
    with Plugin(offline(tmp_path, HIVEBUS_NODE="W012", HIVEBUS_TASK="bme680")) as plugin:
        plugin.publish("env.temperature", 21.5, meta={"sensor": "bme680"}, timestamp=NOW)
        plugin.publish("env.raw", "text", scope="node")
        with plugin.timeit("plugin.duration.step"):
            pass
    logged = lines(tmp_path / "run.ndjson")
    assert logged[0] == {
        "name": "env.temperature", "value": 21.5, "timestamp": NOW,
        "meta": {"sensor": "bme680", "node": "W012", "task": "bme680"}, "scope": "all",
    }
    assert logged[1]["value"] == "text" and logged[1]["scope"] == "node"
    assert logged[2]["name"] == "plugin.duration.step" and isinstance(logged[2]["value"], int) and logged[2]["value"] >= 0
    for entry in logged:
        Reading.model_validate(entry)


def test_offline_upload_follows_pywaggles_layout(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.jpg"
    snapshot.write_bytes(b"jpeg bytes")
    kept = tmp_path / "kept.txt"
    kept.write_text("keep me")
    with Plugin(offline(tmp_path)) as plugin:
        assert plugin.upload_file(snapshot, meta={"camera": "top"}, timestamp=NOW) is None
        plugin.upload_file(kept, keep=True)
    assert not snapshot.exists() and kept.exists()
    where = tmp_path / "run-uploads" / f"{NOW}-{hashlib.sha1(b'jpeg bytes').hexdigest()}"
    assert (where / "data").read_bytes() == b"jpeg bytes"
    meta = json.loads((where / "meta").read_text())
    assert meta["labels"] == {"camera": "top", "filename": "snap.jpg"} and meta["timestamp"] == NOW
    upload = lines(tmp_path / "run.ndjson")[0]
    assert upload["name"] == "upload" and upload["value"] == where.name
    assert upload["meta"] == {"camera": "top", "filename": "snap.jpg"}


def test_pywaggle_log_dir_is_honoured(tmp_path: Path) -> None:
    config = PluginConfig.from_env({"PYWAGGLE_LOG_DIR": str(tmp_path / "pw")})
    with Plugin(config) as plugin:
        plugin.publish("hello.world.counter", 1)
    assert lines(tmp_path / "pw" / "data.ndjson")[0]["name"] == "hello.world.counter"


def test_upload_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with Plugin(offline(tmp_path)) as plugin, pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        plugin.upload_file(tmp_path / "nope.jpg")


def test_offline_get_times_out_like_pywaggle(tmp_path: Path) -> None:
    with Plugin(offline(tmp_path)) as plugin:
        plugin.subscribe("env.#")
        with pytest.raises(TimeoutError, match="plugin get timed out"):
            plugin.get(timeout=0.01)


def test_using_the_plugin_outside_its_with_block_is_an_error(tmp_path: Path) -> None:
    plugin = Plugin(offline(tmp_path))
    with pytest.raises(RuntimeError, match="inside a with block"):
        plugin.publish("env.t", 1)


def test_module_level_api_like_older_pywaggle(tmp_path: Path) -> None:
    code = (
        "from hivebus import plugin\n"
        "plugin.init()\n"
        "plugin.publish('hello.world.counter', 7)\n"
    )
    env = {"HIVEBUS_OFFLINE_LOG": str(tmp_path / "m.ndjson"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert lines(tmp_path / "m.ndjson")[0]["value"] == 7


def test_both_import_paths_give_the_same_sdk() -> None:
    from hivebus.edge import plugin as edge_plugin

    assert edge_plugin.Plugin is Plugin and edge_plugin.Message is Message


def test_importing_the_sdk_is_cheap() -> None:
    """No nats, pydantic or asyncio until a bus is used: a plugin starts fast on a small node."""
    code = "import sys, hivebus.plugin; print(sorted(m for m in ('nats', 'pydantic', 'asyncio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
