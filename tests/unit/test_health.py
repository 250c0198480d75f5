"""Node health with no server: presence from heartbeats, the offline timer, sensor reports."""

from __future__ import annotations

from datetime import timedelta

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.runtime import Driver
from hivebus.handlers.testing import Log, manifest
from hivebus.schemas.node import SensorLost, SensorRestored


def health_log(offline_after: float = 30.0) -> Log:
    log = Log([HealthHandler(HandlerConfig(node_offline_after=timedelta(seconds=offline_after)))])
    log.register_node(manifest("W012", sensors=["bme680", "raingauge"]))
    return log


def test_the_first_heartbeat_brings_a_node_online_once() -> None:
    log = health_log()
    out = log.heartbeat("W012")
    assert [(e.type, e.subject, e.source) for e in out] == [
        ("node.online", "W012", "handler/health")
    ]
    assert out[0].causationid == log.events[-2].id
    assert log.heartbeat("W012") == []
    assert log.state("health").nodes["W012"].online


def test_silence_past_the_timeout_takes_a_node_offline_with_a_deterministic_event() -> None:
    log = health_log(offline_after=30)
    log.heartbeat("W012")
    beat = log.events[-2]
    assert log.tick(20) == []
    out = log.tick(20)
    assert [e.type for e in out] == ["node.offline"]
    offline = out[0]
    assert offline.causationid == beat.id
    assert offline.time == beat.time + timedelta(seconds=30)
    assert offline.data.last_seen == beat.time and "no heartbeat for 30 s" in offline.data.reason
    assert log.tick(100) == []  # said once
    # whoever folds the same history, whenever its timer runs, emits the very same event
    fresh = Driver(HealthHandler(HandlerConfig(node_offline_after=timedelta(seconds=30))))
    for event in log.events[: log.events.index(offline)]:
        fresh.history(event)
    assert fresh.tick(log.now + timedelta(hours=5)) == [offline]
    # the next heartbeat brings it back
    assert [e.type for e in log.heartbeat("W012")] == ["node.online"]


def test_an_offline_timed_from_an_older_heartbeat_is_stale() -> None:
    log = health_log()
    log.heartbeat("W012")
    log.later(60)
    offline = log.drivers["health"].tick(log.now)[0]
    log.heartbeat("W012")  # a newer heartbeat is folded before the offline (a replay's order)
    replay = Driver(HealthHandler())
    for event in log.events:
        replay.history(event)
    assert replay.state.nodes["W012"].online
    replay.history(offline)
    assert replay.state.nodes["W012"].online  # stale: timed from a heartbeat that is not the last


def test_sensor_reports_become_confirmed_transitions() -> None:
    log = health_log()
    lost = log.by(
        "node/W012", SensorLost(node="W012", sensor="bme680", reason="silent for 300 s"), "W012"
    )
    assert [(e.type, e.source, e.data.sensor, e.data.reason) for e in lost] == [
        ("node.sensor.lost", "handler/health", "bme680", "silent for 300 s"),
    ]
    assert (
        log.by("node/W012", SensorLost(node="W012", sensor="bme680", reason="still"), "W012") == []
    )
    restored = log.by("node/W012", SensorRestored(node="W012", sensor="bme680"), "W012")
    assert [e.type for e in restored] == ["node.sensor.restored"]
    assert log.by("node/W012", SensorRestored(node="W012", sensor="bme680"), "W012") == []
    assert log.state("health").nodes["W012"].lost == set()


def test_sensor_reports_that_make_no_sense_are_refused() -> None:
    log = health_log()
    assert log.by("node/W012", SensorLost(node="W012", sensor="lidar", reason="gone"), "W012") == []
    assert (
        "sensor 'lidar' is not in W012's manifest (sensors: bme680, raingauge)"
        in log.refused[-1][1]
    )
    assert (
        log.by("node/W013", SensorLost(node="W012", sensor="bme680", reason="gone"), "W012") == []
    )
    assert "node W013 reported on a sensor of node W012" in log.refused[-1][1]
    assert (
        log.by("node/W099", SensorLost(node="W099", sensor="bme680", reason="gone"), "W099") == []
    )
    assert "node W099 is not registered" in log.refused[-1][1]
