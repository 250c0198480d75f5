"""A node's devices (EdgeRM resources): node.yaml parses them, old manifests still decode, the
``nodes`` view shows them as JSON that DuckDB reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from hivebus.errors import FormatError
from hivebus.formats import load_manifest
from hivebus.projections.views.base import Item, Replace
from hivebus.projections.views.nodes import NodesView
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import DeviceSpec, NodeRegistered

NODE_YAML = """\
node_id: W012
vsn: W012
hardware: {arch: linux/arm64, cpus: 4, memory: 8Gi, disk: 100Gi}
devices:
  - name: top_camera
    type: RGB_image_producer
    view: top
    resolution: 1920x1080
    fps: 30
    path: /dev/video0
  - name: mic
    type: microphone
    exclusive: false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_node_yaml_lists_devices_with_their_attributes(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, NODE_YAML))
    camera, mic = manifest.devices
    assert (camera.name, camera.type, camera.path, camera.exclusive) == (
        "top_camera",
        "RGB_image_producer",
        "/dev/video0",
        True,
    )
    assert camera.attributes == {"view": "top", "resolution": "1920x1080", "fps": "30"}
    assert (mic.exclusive, mic.attributes) == (False, {})
    # Written nested or flat, a device is the same device.
    assert DeviceSpec.model_validate(camera.model_dump()) == camera


def test_a_misspelt_device_field_is_refused_not_taken_for_an_attribute(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"devices\[1\].*'exlusive'.*did you mean 'exclusive'"):
        load_manifest(write(tmp_path, NODE_YAML.replace("exclusive", "exlusive")))


def test_two_devices_of_one_name_are_refused(tmp_path: Path) -> None:
    text = NODE_YAML.replace("name: mic", "name: top_camera")
    with pytest.raises(FormatError, match="device names are not unique"):
        load_manifest(write(tmp_path, text))


def test_an_attribute_must_be_text_or_a_number(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="attribute 'modes' must be a string or a number"):
        load_manifest(write(tmp_path, NODE_YAML + "    modes: [a, b]\n"))


def test_a_registration_written_before_devices_still_decodes() -> None:
    old = {
        "node_id": "W012",
        "vsn": "W012",
        "tags": [],
        "hardware": {"arch": "linux/arm64", "cpus": 4, "memory": 1, "disk": 1, "gpu": None},
        "executors": ["process"],
        "sensors": [],
        "node_class": None,
    }
    event = Event.new(
        NodeRegistered.model_validate({"manifest": old}), source="node/W012", subject="W012"
    )
    body = json.loads(codec.encode(event))
    del body["data"]["manifest"]["devices"]
    decoded = codec.decode(json.dumps(body).encode())
    assert decoded.data.manifest.devices == []


def test_the_nodes_view_shows_devices_as_json_duckdb_reads(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, NODE_YAML))
    view = NodesView()
    event = Event.new(
        NodeRegistered(manifest=manifest),
        source="node/W012",
        subject="W012",
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    items = [Item(1, "fromedge.W012.node.registered", event)]
    (change,) = view.apply(items, {}).changes
    assert isinstance(change, Replace)
    (row,) = change.rows
    con = duckdb.connect()
    con.execute(view.table.create_sql())
    columns = list(row)
    con.execute(
        f"INSERT INTO nodes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [row[c] for c in columns],
    )
    got = con.execute(
        "SELECT d->>'name', d->>'type', d->>'path', (d->>'exclusive')::BOOLEAN, "
        "d->'attributes'->>'resolution' "
        "FROM (SELECT unnest(devices::JSON[]) AS d FROM nodes) ORDER BY 1"
    ).fetchall()
    assert got == [
        ("mic", "microphone", None, False, None),
        ("top_camera", "RGB_image_producer", "/dev/video0", True, "1920x1080"),
    ]
