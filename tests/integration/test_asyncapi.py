"""The AsyncAPI document of the platform's subjects: ``hivebus docs asyncapi`` and ``/asyncapi``.

The CLI runs as a user runs it (a subprocess, no server); real events, encoded by the codec
as they go on the wire, must validate against the schemas the document gives their subject,
and a broken one must not. The web app serves the same channels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from hivebus.bus.server import NatsServer
from hivebus.bus.subjects import subject_for
from hivebus.handlers.testing import job_spec, resources
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeHeartbeat
from hivebus.schemas.registry import registry
from hivebus.schemas.ses import JobSubmitted
from tests.integration.test_web import web_process

pytestmark = pytest.mark.integration


def payload_schema(doc: dict[str, Any], event_type: str) -> dict[str, Any]:
    channel = doc["channels"][event_type]
    message = next(iter(channel["messages"].values()))["$ref"].rsplit("/", 1)[1]
    ref = doc["components"]["messages"][message.replace("~1", "/")]["payload"]["$ref"]
    return {**doc, "$ref": ref}  # refs resolve inside the whole document


def wire(event: Event) -> dict[str, Any]:
    return json.loads(codec.encode(event))


def matches(address: str, subject: str) -> bool:
    """``subject`` is an instance of ``address`` (each ``{param}`` one token or more)."""
    import re

    pattern = "^" + re.sub(r"\\\{[a-z]+\\\}", r"[^ ]+", re.escape(address)) + "$"
    return re.match(pattern, subject) is not None


def test_the_cli_documents_every_subject_with_its_schema(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    done = subprocess.run([sys.executable, "-m", "hivebus", "docs", "asyncapi", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    doc = json.loads(out.read_text())
    assert doc["asyncapi"].startswith("3.") and doc["info"]["title"] == "hivebus"
    assert set(doc["channels"]) == platform_types()

    beat = Event.new(NodeHeartbeat(node="W012", resources=resources(), uptime_seconds=5.0),
                     source="node/W012", subject="W012")
    submitted = Event.new(JobSubmitted(job_id="heat-1", user="alice", spec=job_spec(nodes=["W012"])),
                          source="user/alice", subject="heat-1")
    for event in (beat, submitted):
        channel = doc["channels"][event.type]
        assert matches(channel["address"], subject_for(event)), (channel["address"], subject_for(event))
        jsonschema.validate(wire(event), payload_schema(doc, event.type))
    assert doc["channels"]["node.heartbeat"]["address"] == "fromedge.{node}.node.heartbeat"
    assert doc["channels"]["ses.job.submitted"]["address"] == "evt.ses.job.submitted.{key}"

    broken = wire(beat)
    del broken["data"]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        jsonschema.validate(broken, payload_schema(doc, "node.heartbeat"))
    wrong_type = {**wire(submitted), "type": "ses.job.removed"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, payload_schema(doc, "ses.job.submitted"))

    printed = subprocess.run([sys.executable, "-m", "hivebus", "docs", "asyncapi"], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert json.loads(printed.stdout) == doc
    unwritable = subprocess.run([sys.executable, "-m", "hivebus", "docs", "asyncapi", "--out",
                                 str(tmp_path / "no" / "such" / "dir.json")], capture_output=True, text=True, timeout=60)
    assert unwritable.returncode != 0 and "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_the_web_app_serves_the_same_channels(nats_server: NatsServer, tmp_path: Path) -> None:
    with web_process(nats_server.url, tmp_path) as web:
        served = httpx.get(f"{web.url}/asyncapi.json", timeout=30)
        assert served.status_code == 200
        doc = served.json()
        assert set(doc["channels"]) == platform_types()
        assert doc["channels"]["node.heartbeat"]["address"] == "fromedge.{node}.node.heartbeat"
        assert "NodeHeartbeatEvent" in doc["components"]["schemas"]
        assert httpx.get(f"{web.url}/asyncapi", timeout=30).status_code == 200


def platform_types() -> set[str]:
    """The platform's event types: other tests register their own in this process's registry."""
    return {t for t in registry.types() if registry.spec(t).model.__module__.startswith("hivebus.")}
