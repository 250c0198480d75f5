"""hivebus.plugin against the real pywaggle 0.56.3: the same calls, the same outcomes.

Both run in pywaggle's run-log mode (``PYWAGGLE_LOG_DIR``), so what each accepted is in its own
``data.ndjson`` and the lines are compared byte for byte; what each refused is compared by
exception type. The real pywaggle also starts its RabbitMQ publisher: it is pointed at a port
nothing listens on, where it retries quietly (pywaggle's own behaviour without a broker).
"""

from __future__ import annotations

import inspect
import json
import math
import socket
import subprocess
import sys
import time
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wagglemsg
from waggle import plugin as real

from hivebus import plugin as ours
from hivebus.edge.shim import waggle_shim_dir

TS = 1_800_000_000_123_456_789


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HIVEBUS_LOCAL_BUS", "WAGGLE_PLUGIN_UPLOAD_PATH", "HIVEBUS_OFFLINE_LOG", "HIVEBUS_NODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WAGGLE_PLUGIN_HOST", "127.0.0.1")
    monkeypatch.setenv("WAGGLE_PLUGIN_PORT", str(closed_port()))


class Pair:
    """One real and one hivebus plugin, each entered, each with its own run log."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dirs = {"real": root / "real", "ours": root / "ours"}
        monkeypatch.setenv("PYWAGGLE_LOG_DIR", str(self.dirs["real"]))
        self.real = real.Plugin().__enter__()
        monkeypatch.setenv("PYWAGGLE_LOG_DIR", str(self.dirs["ours"]))
        self.ours = ours.Plugin().__enter__()

    def lines(self, which: str) -> list[str]:
        path = self.dirs[which] / "data.ndjson"
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        self.real.__exit__(None, None, None)
        self.ours.__exit__(None, None, None)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WAGGLE_PLUGIN_HOST", "127.0.0.1")
        mp.setenv("WAGGLE_PLUGIN_PORT", str(closed_port()))
        mp.delenv("HIVEBUS_LOCAL_BUS", raising=False)
        both = Pair(tmp_path_factory.mktemp("pair"), mp)
        yield both
        both.close()


def outcome(call: Any) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


PUBLISHES: list[tuple[Any, Any, Any, Any, Any]] = [
    # (name, value, meta, timestamp, scope)
    ("env.t", 1, {}, TS, "all"),
    ("env.t", 21.5, {"sensor": "bme680"}, TS, "node"),
    ("env.t", "text", {}, TS, "beehive"),
    ("env.t", True, {}, TS, "all"),
    ("env.t", False, {}, TS, "all"),
    ("env.t", math.nan, {}, TS, "all"),
    ("env.t", math.inf, {}, TS, "all"),
    ("env.t", -math.inf, {}, TS, "all"),
    ("env.t", 2**70, {}, TS, "all"),
    ("env.t", b"raw", {}, TS, "all"),
    ("env.t", bytearray(b"raw"), {}, TS, "all"),
    ("env.t", None, {}, TS, "all"),
    ("env.t", [1], {}, TS, "all"),
    ("env.t", {"a": 1}, {}, TS, "all"),
    ("Env.T", 1, {}, TS, "all"),
    ("upload", 1, {}, TS, "all"),
    ("a" * 128, 1, {}, TS, "all"),
    ("a" * 129, 1, {}, TS, "all"),
    ("env..t", 1, {}, TS, "all"),
    (".env", 1, {}, TS, "all"),
    ("env.t-1", 1, {}, TS, "all"),
    (42, 1, {}, TS, "all"),
    (None, 1, {}, TS, "all"),
    ("env.t", 1, {}, real.plugin.MIN_TIMESTAMP_NS - 1, "all"),
    ("env.t", 1, {}, real.plugin.MIN_TIMESTAMP_NS, "all"),
    ("env.t", 1, {}, 946_684_800_000_000_000, "all"),  # 2000-01-01T00:00Z: below pywaggle's constant
    ("env.t", 1, {}, 1_700_000_000, "all"),  # seconds
    ("env.t", 1, {}, 1.8e18, "all"),
    ("env.t", 1, {}, "1800000000000000000", "all"),
    ("env.t", 1, {}, True, "all"),
    ("env.t", 1, {"a": 1}, TS, "all"),
    ("env.t", 1, {1: "a"}, TS, "all"),  # pywaggle checks meta values, not keys
    ("env.t", 1, OrderedDict(a="b"), TS, "all"),
    ("env.t", 1, types.MappingProxyType({"a": "b"}), TS, "all"),
    ("env.t", 1, None, TS, "all"),
    ("env.t", 1, "a=b", TS, "all"),
    ("env.t", 1, {}, TS, "cloud"),  # scopes pywaggle does not check
    ("env.t", 1, {}, TS, ""),
    ("env.t", 1, {}, TS, None),
    ("env.t", 1, {}, TS, 5),
    ("env.t", 1, {}, "bad", 5),  # several problems: the first pywaggle meets decides
    (42, b"x", None, None, None),
    ("env.t", b"x", None, 1, None),
]


@pytest.mark.parametrize(("name", "value", "meta", "timestamp", "scope"), PUBLISHES,
                         ids=[repr(c)[:60] for c in PUBLISHES])
def test_publish_accepts_and_refuses_as_pywaggle_and_logs_the_same_line(
    pair: Pair, name: Any, value: Any, meta: Any, timestamp: Any, scope: Any
) -> None:
    before = {w: len(pair.lines(w)) for w in ("real", "ours")}
    theirs = outcome(lambda: pair.real.publish(name, value, meta=meta, timestamp=timestamp, scope=scope))
    mine = outcome(lambda: pair.ours.publish(name, value, meta=meta, timestamp=timestamp, scope=scope))
    assert mine == theirs
    assert pair.lines("ours")[before["ours"]:] == pair.lines("real")[before["real"]:]


@pytest.mark.parametrize("timestamp", [None, 0])
def test_no_timestamp_means_now_in_nanoseconds(pair: Pair, timestamp: Any) -> None:
    pair.real.publish("env.now", 1, timestamp=timestamp)
    pair.ours.publish("env.now", 1, timestamp=timestamp)
    theirs, mine = json.loads(pair.lines("real")[-1]), json.loads(pair.lines("ours")[-1])
    assert theirs.pop("timestamp")[:16] == mine.pop("timestamp")[:16]  # the same minute
    assert theirs == mine


def test_timeit_runs_the_block_first_then_checks_the_name(pair: Pair) -> None:
    for plugin in (pair.real, pair.ours):
        ran: list[bool] = []
        with pytest.raises(ValueError), plugin.timeit("Not A Name"):
            ran.append(True)
        assert ran == [True]
        with pytest.raises(KeyError), plugin.timeit("plugin.duration.failing"):
            raise KeyError("the block failed: nothing is published")
        with plugin.timeit("plugin.duration.ok"):
            time.sleep(0.001)
    theirs, mine = json.loads(pair.lines("real")[-1]), json.loads(pair.lines("ours")[-1])
    assert theirs["name"] == mine["name"] == "plugin.duration.ok"
    assert type(theirs["value"]) is type(mine["value"]) is int and mine["value"] >= 1_000_000


def test_get_times_out_and_outside_with_is_refused_alike() -> None:
    for module in (real, ours):
        plugin = module.Plugin()
        with pytest.raises(TimeoutError, match="plugin get timed out"):
            plugin.get(timeout=0.01)
        with pytest.raises(RuntimeError, match="inside a with block"):
            plugin.publish("env.t", 1)


def test_run_log_uploads_work_outside_with_and_keep_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines, results = {}, {}
    for which, module in (("real", real), ("ours", ours)):
        root = tmp_path / which
        monkeypatch.setenv("PYWAGGLE_LOG_DIR", str(root / "log"))
        source = root / "snapshot.jpg"
        source.parent.mkdir(parents=True)
        source.write_bytes(b"jpeg bytes")
        plugin = module.Plugin()
        results[which] = plugin.upload_file(source, meta={"camera": "top"}, timestamp=TS)
        assert source.exists()  # the run log copies; keep=False does not remove it
        assert (root / "log" / "uploads" / f"{TS}-snapshot.jpg").read_bytes() == b"jpeg bytes"
        lines[which] = (root / "log" / "data.ndjson").read_text().replace(str(root), "ROOT")
    assert results == {"real": None, "ours": None}
    assert lines["ours"] == lines["real"]
    upload = json.loads(lines["ours"])
    assert upload["name"] == "upload" and upload["value"] == f"ROOT/log/uploads/{TS}-snapshot.jpg"
    assert upload["meta"] == {"camera": "top", "filename": "snapshot.jpg"}


@pytest.mark.parametrize("keep", [False, True])
def test_staged_uploads_have_pywaggles_layout_and_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    monkeypatch.delenv("PYWAGGLE_LOG_DIR", raising=False)
    staged, sent = {}, {}
    for which, module in (("real", real), ("ours", ours)):
        source = tmp_path / which / "result.csv"
        source.parent.mkdir()
        source.write_text("a,b\n1,2\n")
        root = tmp_path / which / "staging"
        monkeypatch.setenv("HIVEBUS_OFFLINE_LOG", str(tmp_path / which / "offline.ndjson"))
        plugin = module.Plugin(uploader=module.Uploader(root))
        assert plugin.upload_file(source, meta={"kind": "table"}, timestamp=TS, keep=keep) is None
        assert source.exists() is keep
        (directory,) = root.iterdir()
        staged[which] = (directory.name, (directory / "data").read_bytes(), (directory / "meta").read_bytes())
        if which == "real":
            item = plugin.send.get_nowait()  # what pywaggle queued for its broker
            msg = wagglemsg.load(item.body)
        else:
            with plugin:  # what hivebus queued is sent once the plugin runs, as pywaggle's queue is
                pass
            msg = ours.message_of((tmp_path / which / "offline.ndjson").read_bytes().splitlines()[0])
        sent[which] = (msg.name, msg.value, msg.timestamp, msg.meta)
    assert staged["ours"] == staged["real"]
    assert sent["ours"] == sent["real"] == ("upload", staged["real"][0], TS, {"kind": "table", "filename": "result.csv"})


def signature(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("method", ["__init__", "publish", "upload_file", "timeit", "subscribe", "get"])
def test_plugin_signatures_are_pywaggles(method: str) -> None:
    assert signature(getattr(ours.Plugin, method)) == signature(getattr(real.Plugin, method))


def test_uploader_config_and_timestamp_are_pywaggles() -> None:
    assert signature(ours.Uploader.__init__) == signature(real.Uploader.__init__)
    assert signature(ours.Uploader.upload_file) == signature(real.Uploader.upload_file)
    assert ours.BrokerConfig._fields == real.PluginConfig._fields
    assert ours.MIN_TIMESTAMP_NS == real.plugin.MIN_TIMESTAMP_NS
    before = time.time_ns()
    assert isinstance(ours.get_timestamp(), int) and before <= ours.get_timestamp() <= time.time_ns()


def test_the_shim_serves_pywaggles_names_and_leaves_the_rest_of_a_real_pywaggle_importable() -> None:
    """What a plugin sees with the executor's PYTHONPATH, in an environment that also has pywaggle."""
    code = (
        "import json, waggle.plugin, waggle.data, hivebus.plugin\n"
        "from waggle.plugin import Plugin, PluginConfig, Uploader, get_timestamp\n"
        "print(json.dumps({'same': Plugin is hivebus.plugin.Plugin and Uploader is hivebus.plugin.Uploader,\n"
        "  'config': PluginConfig._fields, 'names': sorted(waggle.plugin.__all__),\n"
        "  'plugin_from': waggle.plugin.__file__, 'data_from': waggle.data.__file__}))\n"
    )
    env = {"PYTHONPATH": str(waggle_shim_dir()), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["same"] and seen["config"] == list(real.PluginConfig._fields)
    assert set(seen["names"]) == {"Plugin", "PluginConfig", "Uploader", "get_timestamp"} <= set(dir(real))
    assert seen["plugin_from"].startswith(str(waggle_shim_dir()))
    assert seen["data_from"] == str(Path(sys.modules["waggle"].__path__[0]) / "data" / "__init__.py")
