"""A node without its credential against an authenticating hub (issue 15, item 2).

``hivebus node run`` without ``--credentials`` connects as the public identity, which may not
publish a node's events: the node says so once, loudly, with what to run on the hub, instead
of a warning every few seconds; it keeps producing into its outbox; started again with the
credential, everything it buffered reaches the hub.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hivebus.auth.credentials import Credential
from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.edge import refusal
from tests.integration.test_auth import (
    Hub,
    hub,  # noqa: F401  (the fixture)
    stored,
)
from tests.integration.test_handlers import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NODE = "W001"


def run_node(at: Hub, data_dir: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HIVEBUS_LOG_FORMAT": "json", "HIVEBUS_LOG_LEVEL": "info"}
    env.pop("HIVEBUS_NATS_CREDENTIALS", None)
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "hivebus", "node", "run", "--node-id", NODE, "--hub", at.url,
             "--data-dir", str(data_dir), "--virtual", "--virtual-interval", "0.2",
             "--heartbeat", "0.5", *options],
            env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def held_readings(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'node.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def outbox(data_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hivebus", "node", "outbox", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    return done.stdout + done.stderr


async def test_a_node_without_its_credential_says_once_what_to_run_then_delivers_with_it(
    hub: Hub,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "node", tmp_path / "node-1.log"
    node = run_node(hub, data_dir, log)
    try:

        async def told() -> bool:
            assert node.poll() is None, log.read_text()[-3000:]
            return '"forwarder.unauthorized"' in log.read_text()

        await until(told, 10, "the one actionable error")
        await asyncio.sleep(6)  # long enough for several retries at the forwarder's backoff
        text = log.read_text()
        assert node.poll() is None, "the node must keep running"
        assert text.count('"forwarder.unauthorized"') == 1
        assert f"hivebus node add {NODE} --out {NODE}.creds" in text
        assert f"--credentials {NODE}.creds" in text
        warnings = [
            line
            for line in text.splitlines()
            if '"level": "warning"' in line
            and ('"forwarder.batch_failed"' in line or '"nats.permission_denied"' in line)
        ]
        assert len(warnings) <= 2, "repeated warnings:\n" + "\n".join(warnings)
    finally:
        stop(node)
    buffered = held_readings(data_dir)
    assert buffered >= 10, f"the node buffered only {buffered} readings"
    shown = outbox(data_dir)
    assert f"{buffered:,} events" in shown
    assert "the hub refuses its events" in shown and f"hivebus node add {NODE} --out {NODE}.creds" in shown

    creds = hub.data_dir / f"{NODE}.creds"
    hub.nodes[NODE].save(creds)
    node = run_node(hub, data_dir, tmp_path / "node-2.log", "--credentials", str(creds))
    try:
        async with await Bus.connect(hub.url, settings=hub.service) as bus:

            async def delivered() -> bool:
                return len(await stored(bus, DATA, f"data.{NODE}.>")) >= buffered

            await until(delivered, 30, "the buffered readings at the hub")
            await until(lambda: asyncio.sleep(0, not (data_dir / refusal.FILE).exists()), 10, "the refusal cleared")
    finally:
        stop(node)
    assert "refuses" not in outbox(data_dir)


async def test_a_withdrawn_credential_is_said_once_and_a_new_file_is_taken_without_a_restart(
    hub: Hub,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "node", tmp_path / "node.log"
    creds = tmp_path / f"{NODE}.creds"
    Credential(user=f"node-{NODE}", password="withdrawn", inbox_prefix=hub.nodes[NODE].inbox_prefix).save(creds)
    node = run_node(hub, data_dir, log, "--credentials", str(creds))
    try:

        async def told() -> bool:
            assert node.poll() is None, log.read_text()[-3000:]
            return '"uplink.credential_refused"' in log.read_text()

        await until(told, 10, "the one actionable error")
        await asyncio.sleep(6)  # several connection attempts at the uplink's backoff
        text = log.read_text()
        assert node.poll() is None, "the node must keep running"
        errors = [line for line in text.splitlines() if '"uplink.credential_refused"' in line and '"level": "error"' in line]
        assert len(errors) == 1, text[-3000:]
        assert '"uplink.unreachable"' not in text  # it is reachable: it refuses
        shown = outbox(data_dir)
        assert "the hub refuses its credential" in shown and f"hivebus node add {NODE}" in shown, shown
        assert held_readings(data_dir) >= 10

        hub.nodes[NODE].save(creds)  # the operator copies the right file over the old one
        async with await Bus.connect(hub.url, settings=hub.service) as bus:

            async def delivered() -> bool:
                return len(await stored(bus, DATA, f"data.{NODE}.>")) >= 10

            await until(delivered, 30, "the buffered readings at the hub")
        await until(lambda: asyncio.sleep(0, not (data_dir / refusal.FILE).exists()), 10, "the refusal cleared")
    finally:
        stop(node)


async def test_node_remove_cuts_the_nodes_open_connection_at_once(
    hub: Hub,  # noqa: F811  (the fixture imported above)
) -> None:
    async with await hub.connect(hub.nodes["W002"]) as w2:
        assert w2.nc.is_connected
        done = subprocess.run(
            [sys.executable, "-m", "hivebus", "node", "remove", "W002",
             "--data-dir", str(hub.data_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        async def cut() -> bool:
            # The server closes it; nats-py then retries and is refused the withdrawn credential.
            return not w2.nc.is_connected

        await until(cut, 5, "the removed node's connection to be closed")
        await asyncio.sleep(1.0)
        assert not w2.nc.is_connected, "the removed node got back in"
