"""The example plugins, unchanged, under the real pywaggle 0.56.3 and on a hivebus node (issue 14).

The same file runs twice with the same arguments (a seeded simulated device): once as a plain
``python main.py`` importing the real pywaggle from PyPI in run-log mode (``PYWAGGLE_LOG_DIR``:
``data.ndjson``), once through hivebus's process executor, whose ``waggle`` shim comes first on
the import path, publishing over a real node-local nats-server to a real hub. What pywaggle
logged and what the hub stored must be the same readings: names, values and their types,
counts, the plugin's own meta (the hub adds the node's), scope ``node`` readings kept on the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from tests.integration.test_plugin_sdk import (  # noqa: F401 - fixture
    EXAMPLES,
    NODE,
    NodeIntake,
    executor,
    finished,
    spec_for,
)

pytestmark = pytest.mark.integration

ARGS = {"plugin-bme680": ("--simulate", "--seed", "7", "--count", "3", "--interval", "0")}
NODE_META = {"node", "vsn", "host", "job", "task", "plugin"}


def under_pywaggle(plugin: str, args: tuple[str, ...], log_dir: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HIVEBUS_LOCAL_BUS")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / plugin / "main.py"), *args],
        env={**env, "PYWAGGLE_LOG_DIR": str(log_dir)}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (log_dir / "data.ndjson").read_text().splitlines()]


def comparable(name: str, value: Any, meta: dict[str, str]) -> tuple[str, str, Any, tuple[tuple[str, str], ...]]:
    own = tuple(sorted((k, v) for k, v in meta.items() if k not in NODE_META))
    return name, type(value).__name__, value, own


def test_the_examples_are_real_pywaggle_plugins() -> None:
    for main in EXAMPLES.glob("*/main.py"):
        text = main.read_text()
        assert "from waggle.plugin import" in text and "import hivebus" not in text and "from hivebus" not in text, main


@pytest.mark.parametrize("plugin", sorted(ARGS))
async def test_an_example_gives_the_same_readings_under_pywaggle_and_on_a_node(
    plugin: str, tmp_path: Path, nats_server_factory: Any, executor: Any  # noqa: F811
) -> None:
    args = ARGS[plugin]
    logged = under_pywaggle(plugin, args, tmp_path / "runlog")
    assert logged, "pywaggle logged nothing"

    local, hub_server = nats_server_factory("local"), nats_server_factory("hub")
    async with await Bus.connect(hub_server.url) as hub:
        await hub.ensure_streams()
        intake = await NodeIntake(local.url, hub).start()
        try:
            bundle = f"waggle/{plugin}:0.2.1"
            await finished(executor, spec_for(bundle, plugin.removeprefix("plugin-"), local.url, args=args))
        finally:
            await intake.close()
        stored = [e.data async for _, e in hub.events(DATA, stop_at_end=True)]
    node_only = [r for r in intake.readings if r.scope == "node"]

    at_hub = sorted(comparable(r.name, r.value, r.meta) for r in stored)
    on_node = sorted(comparable(r.name, r.value, r.meta) for r in node_only)
    in_log = sorted(comparable(r["name"], r["value"], r["meta"]) for r in logged)
    # timeit's duration differs run to run: its name, type and count must agree, not its value
    timed = [c for c in in_log if c[0].startswith("plugin.duration")]
    assert [c[:2] for c in at_hub if c[0].startswith("plugin.duration")] == [c[:2] for c in timed]
    untimed = [c for c in sorted(at_hub + on_node) if not c[0].startswith("plugin.duration")]
    assert untimed == [c for c in in_log if not c[0].startswith("plugin.duration")]
    assert {r.name for r in node_only} == {"env.raw.gas_resistance"}  # scope node stays on the node
    assert all({"node", "vsn", "job", "task", "plugin"} <= set(r.meta) for r in stored)
