"""ECR provenance names object-store objects, and ``hivebus ecr show`` resolves them (issue 16).

A bundle pushed with ``--training-data storage://<bucket>/<key>`` and ``--model ...`` (the
real CLI, as a subprocess) against a real bus with the ECR handler and a projector; the
objects are real storage facts decided by the storage decider (``web.storage.Storage``).
``hivebus ecr show`` prints each reference with the object's size and digest from the
``objects`` view, or marks it missing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS
from hivebus.config import Settings
from hivebus.handlers import storage as rules
from hivebus.projections.runner import running as projecting
from hivebus.web.storage import Storage
from tests.integration.test_handlers import handlers
from tests.integration.test_services import EXAMPLES, hivebus

pytestmark = pytest.mark.integration

BME = "waggle/plugin-bme680:0.2.1"
PICTURE = b"\xff\xd8 camera 7, frame 1" * 100
WEIGHTS = b"not really a torch model" * 50


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_ecr_show_resolves_provenance_objects_and_marks_missing_ones(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    settings = Settings(nats_url=url)
    async with await Bus.connect(url, settings=settings) as bus:
        await bus.ensure_streams()
        storage = Storage(bus)
        await storage.act(rules.CreateBucket(user="alice", bucket_id="b-1", name="camera7", type="training-data"))
        await storage.act(rules.CreateBucket(user="alice", bucket_id="b-2", name="models", type="model"))
        await storage.act(rules.PutObject(user="alice", bucket_id="b-1", key="imgs/a.jpg", size=len(PICTURE),
                                          digest=sha(PICTURE), content_type="image/jpeg"))
        await storage.act(rules.PutObject(user="alice", bucket_id="b-2", key="yolo/v8.pt", size=len(WEIGHTS),
                                          digest=sha(WEIGHTS)))
        await storage.act(rules.CreateBucket(user="bob", bucket_id="b-3", name="shared", type="training-data"))
        await storage.act(rules.CreateBucket(user="carol", bucket_id="b-4", name="shared", type="training-data"))
        async with handlers(settings, bus), projecting(bus, tmp_path / "views.duckdb") as projector:
            rc, out = await hivebus(
                url, "ecr", "push", str(EXAMPLES / "sage.yaml"), "--user", "alice",
                "--training-data", "storage://camera7/imgs/a.jpg",
                "--training-data", "storage://camera7/imgs/gone.jpg",
                "--training-data", "storage://shared/x.jpg",
                "--training-data", "https://doi.org/10.5281/zenodo.123",
                "--model", "storage://b-2/yolo/v8.pt",
            )
            assert rc == 0 and f"registered {BME}" in out, out
            bad_rc, bad = await hivebus(url, "ecr", "push", str(EXAMPLES / "sage.yaml"), "--user", "alice",
                                        "--model", "storage://models/../secret")
            assert bad_rc == 1 and "'.' or '..' part" in bad and "storage://<bucket>/<key>" in bad, bad
            assert "Traceback" not in bad
            assert await projector.wait_for({EVENTS: await bus.last_seq(EVENTS)}, 30)
            rc, shown = await hivebus(url, "ecr", "show", BME)
            assert rc == 0, shown
            json_rc, as_json = await hivebus(url, "ecr", "show", BME, "--json")
            assert json_rc == 0, as_json
            await storage.act(rules.PutObject(user="alice", bucket_id="b-1", key="imgs/gone.jpg", size=3,
                                              digest=sha(b"new")))
            assert await projector.wait_for({EVENTS: await bus.last_seq(EVENTS)}, 30)
            _, later = await hivebus(url, "ecr", "show", BME)

    lines: dict[str, str] = {}
    for line in shown.splitlines():
        match = re.match(r"\s+(?:training data|model): (\S+)\s+(.*)", line)
        if match:
            lines[match.group(1)] = match.group(2)
    assert lines["storage://camera7/imgs/a.jpg"] == f"{len(PICTURE):,} bytes, {sha(PICTURE)} (bucket b-1)"
    assert lines["storage://camera7/imgs/gone.jpg"] == "MISSING: no object imgs/gone.jpg in bucket b-1"
    assert lines["storage://shared/x.jpg"].startswith("AMBIGUOUS: 2 buckets are called shared (b-3, b-4)")
    assert lines["https://doi.org/10.5281/zenodo.123"] == "not in the object store"
    assert lines["storage://b-2/yolo/v8.pt"] == f"{len(WEIGHTS):,} bytes, {sha(WEIGHTS)} (bucket b-2)"
    assert "storage://camera7/imgs/gone.jpg  3 bytes" in later  # resolved once the object exists

    doc = json.loads(as_json)
    entries = {e["ref"]: e for e in doc["bundle"]["provenance_objects"]}
    assert entries["storage://camera7/imgs/a.jpg"] | {"put_at": None} == {
        "field": "training_data", "ref": "storage://camera7/imgs/a.jpg", "bucket": "camera7", "key": "imgs/a.jpg",
        "status": "present", "bucket_id": "b-1", "size": len(PICTURE), "digest": sha(PICTURE), "put_at": None}
    assert entries["storage://camera7/imgs/gone.jpg"]["status"] == "missing"
    assert entries["storage://b-2/yolo/v8.pt"]["field"] == "model"
