"""Pure parts of node housekeeping: sensor watch, virtual BME680, manifests, sys readings."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

from hivebus.edge.housekeeping import resources, system_readings
from hivebus.edge.manifest import (
    VIRTUAL_TAG,
    host_manifest,
    manifest_digest,
    virtual_manifest,
    with_config,
)
from hivebus.edge.sensors import SensorWatch
from hivebus.edge.virtual import NAMES, VirtualBme680
from hivebus.formats import load_manifest
from hivebus.schemas.node import SensorSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node.yaml"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_silent_sensor_is_lost_after_max_silence_and_restored_when_it_reports() -> None:
    clock = Clock()
    sensor = SensorSpec(
        name="bme680", kind="env", expects=["env.temperature", "env.pressure"], max_silence=60
    )
    watch = SensorWatch([sensor], clock=clock)
    clock.t += 59
    assert watch.check() == []  # grace after start
    watch.saw("env.temperature")
    clock.t += 2
    [lost] = watch.check()
    assert (lost.sensor, lost.change) == ("bme680", "lost") and "env.pressure" in lost.reason
    assert watch.check() == []  # reported once
    clock.t += 60
    watch.saw("env.pressure")
    assert watch.check() == []  # env.temperature is silent by now
    watch.saw("env.temperature")
    [back] = watch.check()
    assert back.change == "restored" and watch.lost == {}


def test_a_sensor_whose_device_disappears_is_lost_at_once() -> None:
    present = {"/dev/i2c-1"}
    clock = Clock()
    watch = SensorWatch(
        [SensorSpec(name="bme680", kind="env", device="/dev/i2c-1", expects=[], max_silence=60)],
        clock=clock,
        device_exists=lambda p: p in present,
    )
    assert watch.check() == []
    present.clear()
    [lost] = watch.check()
    assert lost.change == "lost" and "/dev/i2c-1 is gone" in lost.reason
    present.add("/dev/i2c-1")
    assert [t.change for t in watch.check()] == ["restored"]


def test_a_sensor_lost_before_a_restart_is_not_reported_lost_again() -> None:
    clock = Clock()
    sensor = SensorSpec(name="rain", kind="env", expects=["env.rain"], max_silence=10)
    watch = SensorWatch([sensor], lost={"rain": "no env.rain"}, clock=clock)
    clock.t += 20
    assert watch.check() == []
    watch.saw("env.rain")
    assert [t.change for t in watch.check()] == ["restored"]


def test_the_virtual_bme680_looks_like_weather() -> None:
    bme = VirtualBme680(seed=7, utc_offset_hours=0)
    day = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    samples = {h: bme.sample(int((day + h * 3600) * 1e9)) for h in range(0, 48)}
    temps = {h: r[0].value for h, r in samples.items()}
    humidity = {h: r[1].value for h, r in samples.items()}
    pressure = [r[2].value for r in samples.values()]
    assert [r.name for r in samples[0]] == list(NAMES)
    assert all(r.meta["sensor"] == "bme680" for r in samples[0])
    afternoon = statistics.mean(temps[h] for h in (14, 15, 16, 38, 39, 40))
    dawn = statistics.mean(temps[h] for h in (3, 4, 5, 27, 28, 29))
    assert afternoon - dawn > 5  # a diurnal cycle
    assert statistics.mean(humidity[h] for h in (14, 15, 16)) < statistics.mean(
        humidity[h] for h in (3, 4, 5)
    )
    assert all(1 <= v <= 100 for v in humidity.values())
    assert all(97_000 < p < 105_000 for p in pressure)
    quick = [bme.sample(int((day + 30 + s) * 1e9))[0].value for s in range(0, 20)]
    assert len(set(quick)) > 5 and max(quick) - min(quick) < 1.5  # noisy, but not jumpy
    again = VirtualBme680(seed=7, utc_offset_hours=0).sample(int(day * 1e9))
    assert [r.value for r in again] == [r.value for r in samples[0]]  # reproducible with a seed


def test_manifests_virtual_overlay_and_digest(tmp_path: Path) -> None:
    base = load_manifest(EXAMPLE)
    virtual = virtual_manifest(base)
    assert VIRTUAL_TAG in virtual.tags and [s.name for s in virtual.sensors] == [
        "bme680",
        "raingauge",
    ]
    updated = with_config(
        base,
        {"tags": ["rural"], "sensors": [{"name": "rain", "kind": "env", "expects": ["env.rain"]}]},
    )
    assert updated.tags == ["rural"] and [s.name for s in updated.sensors] == ["rain"]
    assert updated.hardware == base.hardware
    assert manifest_digest(base) == manifest_digest(load_manifest(EXAMPLE))
    assert manifest_digest(updated) != manifest_digest(base)
    assert with_config(base, {"heartbeat_seconds": 5}) == base
    host = host_manifest("W099", tmp_path)
    assert host.node_id == "W099" and host.hardware.cpus >= 1 and host.sensors == []


def test_sys_readings_and_resources_describe_this_machine(tmp_path: Path) -> None:
    readings = system_readings(tmp_path)
    names = {r.name for r in readings}
    assert {"sys.load1", "sys.mem.avail", "sys.fs.avail", "sys.boot_time"} <= names
    assert all(r.meta.get("device") for r in readings if r.name == "sys.net.rx_bytes")
    offer = resources(tmp_path, host_manifest("W099", tmp_path))
    assert offer.mem_avail <= offer.mem_total and offer.disk_avail <= offer.disk_total
