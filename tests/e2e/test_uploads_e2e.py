"""A user's scheduled plugin uploads a file; the user reads it from the node's bucket (issue 16).

`hivebus up --virtual-nodes 2 --demo` (hub auth on, real agents, the process executor, the
web API) driven only through the CLI: push and approve examples/plugins/plugin-snapshot,
alice submits a job that runs it on one node, the frame lands in `upload-<node>` through the
node's credential and the hub's upload service, and `hivebus storage` lets alice (the
submitter) list and fetch it and refuses bob.
"""

from __future__ import annotations

import re
import textwrap
import time

import pytest

from tests.e2e.conftest import RunningPlatform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # the cron rule fires within a minute

BUNDLE = "waggle/plugin-snapshot:0.1.0"


def http_url(platform: RunningPlatform) -> str:
    found = re.search(r"HTTP\s+(http://\S+)", platform.log.read_text())
    assert found, platform.log.read_text()[-3000:]
    return found.group(1)


def test_a_submitters_plugin_upload_is_theirs_to_read_in_the_nodes_bucket(platform: RunningPlatform) -> None:
    for user in ("waggle", "admin", "alice", "bob"):
        platform.cli("user", "add", user, "--save")
    platform.cli("ecr", "push", "examples/plugins/plugin-snapshot/sage.yaml", "--user", "waggle")
    platform.cli("ecr", "approve", BUNDLE, "--user", "admin")
    platform.cli("ecr", "grant", BUNDLE, "READ", "--public", "--user", "waggle")
    job = platform.workdir / "job-snap.yaml"
    job.write_text(textwrap.dedent(f"""\
        name: snapshots
        plugins:
          - name: snapshot
            pluginSpec:
              image: registry.sagecontinuum.org/{BUNDLE}
        nodes:
          V001:
        scienceRules:
          - "schedule(snapshot): cronjob('snapshot', '* * * * *')"
        successcriteria:
          - WallClock(1d)
    """))
    deadline = time.monotonic() + 60
    while True:  # the scheduler may learn of V001 a moment after the nodes view shows it online
        submitted = platform.cli("job", "submit", str(job), "--user", "alice", "--id", "snap-1", check=False)
        if submitted.returncode == 0 or "not registered" not in submitted.stdout + submitted.stderr:
            break
        assert time.monotonic() < deadline, submitted.stdout + submitted.stderr
        time.sleep(1)
    assert "scheduled snap-1" in submitted.stdout, submitted.stdout + submitted.stderr
    [row, *_] = platform.wait_until(
        "select bucket_id, key, size, put_by from objects where bucket_id = 'upload-V001' and key like 'snap-1/%'", bool, timeout=150)
    assert row["key"].startswith("snap-1/snapshot/") and row["key"].endswith(".pgm") and row["put_by"] == "node-V001"
    [bucket] = platform.sql("select owner, type from buckets where bucket_id = 'upload-V001'")
    assert bucket == {"owner": "node-V001", "type": "upload"}
    assert platform.sql("select grantee, permission from bucket_permissions "
                        "where bucket_id = 'upload-V001' and not owner") == [{"grantee": "alice", "permission": "READ"}]

    api = http_url(platform)
    listed = platform.cli("storage", "ls", "upload-V001", "snap-1/snapshot/", "--api", api, "--user", "alice")
    assert row["key"].rsplit("/", 1)[1] in listed.stdout.split()
    frame = platform.workdir / "frame.pgm"
    platform.cli("storage", "get", "upload-V001", row["key"], "-o", str(frame), "--api", api, "--user", "alice")
    assert frame.read_bytes().startswith(b"P5\n64 48\n255\n") and frame.stat().st_size == row["size"]
    refused = platform.cli("storage", "ls", "upload-V001", "--api", api, "--user", "bob", check=False)
    assert refused.returncode != 0 and "bob has no READ on bucket upload-V001" in refused.stdout + refused.stderr
    readings = platform.sql("select value_text from readings where name = 'upload' and meta['job'] = 'snap-1'")
    assert f"upload-V001/{row['key']}" in {r["value_text"] for r in readings}  # the reading users see
