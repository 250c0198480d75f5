"""Browser tests: the dashboard in headless Chromium against a real ``hivebus up``.

One ``hivebus up --virtual-nodes 2 --demo`` per test module (a subprocess on free ports in a
temp data dir), one Chromium (Debian's ``chromium``, driven by Playwright with
``executable_path``: no ``playwright install``). Without Chromium or Playwright the tests skip
with the reason, except under ``HIVEBUS_REQUIRE_BROWSER=1`` (CI), where they fail.

Screenshots go to the session's pytest tmp dir (``screenshots/``, printed at the end of the
run), the test artifacts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from hivebus.bus.ports import free_port

REPO: Final = Path(__file__).resolve().parents[2]
REQUIRE_ENV: Final = "HIVEBUS_REQUIRE_BROWSER"
CHROMIUM: Final = os.environ.get("HIVEBUS_CHROMIUM", "/usr/bin/chromium")
NODES: Final = ("V001", "V002")
DEMO_JOB: Final = "demo-bme680"
OFFLINE_AFTER: Final = 12.0  # seconds without a heartbeat before the hub says offline
_URL = re.compile(r"HTTP\s+(http://\S+)")
T = TypeVar("T")


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (Debian: apt-get install -y chromium; or set HIVEBUS_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def need_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def eventually(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.5) -> T:
    """``check()``'s first truthy answer within ``timeout`` s; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last}")
        time.sleep(every)


# --- the platform -----------------------------------------------------------------------------


@dataclass
class Up:
    """A running ``hivebus up``: its HTTP URL, its process, its output."""

    root: Path
    process: subprocess.Popen[bytes]
    log: Path
    nats_url: str
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"hivebus up exited with {code}:\n{self.output()[-4000:]}"

    def post(self, path: str, body: dict[str, Any], timeout: float = 30) -> bytes:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                data: bytes = answer.read()
                return data
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} {body}: {exc.code} {exc.read().decode(errors='replace')}") from None

    def sql(self, statement: str) -> list[dict[str, Any]]:
        """Rows of ``POST /api/v1/sql`` as dicts (what the dashboard is compared with)."""
        answer = json.loads(self.post("/api/v1/sql", {"sql": statement}))
        return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]

    def cli(self, *args: str, timeout: float = 60) -> str:
        """``hivebus ARGS`` on this platform as its operator (the data dir's admin credential)."""
        env = {**os.environ, "HIVEBUS_NATS_URL": self.nats_url, "HIVEBUS_DATA_DIR": str(self.root / ".hivebus"),
               "XDG_CONFIG_HOME": str(self.root / "config"), "COLUMNS": "200"}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "hivebus", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"hivebus {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def node_pids(self, node: str) -> list[int]:
        """Processes of virtual node ``node`` (``hivebus node run --node-id NODE``) under up."""
        marker = f"\0--node-id\0{node}\0".encode()
        found = []
        for pid in descendants(self.process.pid):
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes() + b"\0":
                    found.append(pid)
        return found

    def kill_node(self, node: str) -> None:
        """SIGKILL the node's agent, as a node losing power: its heartbeats stop."""
        pids = self.node_pids(node)
        assert pids, f"no process of node {node} under hivebus up"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def start_up(root: Path) -> Up:
    port = free_port()
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "warning", "COLUMNS": "200",
           "XDG_CONFIG_HOME": str(root / "config"),
           # a killed node is declared offline within seconds (its peers beat every 4 s)
           "HIVEBUS_NODE_OFFLINE_AFTER": f"{OFFLINE_AFTER:g}s"}  # fmt: skip
    env.pop("HIVEBUS_NATS_URL", None)
    log = root / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "hivebus", "up", "--virtual-nodes", str(len(NODES)), "--demo",
             "--nats-port", str(port), "--http-port", "0", "--data-dir", str(root / ".hivebus")],
            cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    up = Up(root, process, log, nats_url=f"nats://127.0.0.1:{port}")

    def listening() -> str | None:
        up.assert_alive()
        found = _URL.search(up.output())
        return found.group(1) if found else None

    up.url = eventually(listening, 90, "hivebus up to print its HTTP URL")

    def ready() -> bool:
        up.assert_alive()
        try:
            online = up.sql("select count(*) as n from nodes where status = 'online'")[0]["n"]
            running = up.sql(f"select count(*) as n from jobs where job_id = '{DEMO_JOB}' and state = 'Running'")
            runs = up.sql("select count(*) as n from plugin_runs")[0]["n"]
        except (AssertionError, urllib.error.URLError, OSError, KeyError):
            return False
        return online == len(NODES) and running[0]["n"] == 1 and runs > 0

    eventually(ready, 120, "both virtual nodes online, the demo job running with a plugin run")
    return up


def stop_up(up: Up) -> None:
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
        try:
            up.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.process.kill()
            up.process.wait()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """``hivebus up --virtual-nodes 2 --demo``, ready: both nodes online, the demo running."""
    need_browser()
    running = start_up(tmp_path_factory.mktemp("up"))
    try:
        yield running
    finally:
        stop_up(running)


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """Where screenshots go (the session's tmp dir; the path is printed at the end)."""
    path = tmp_path_factory.mktemp("screenshots", numbered=False)
    pytestconfig._hivebus_screenshots = path  # type: ignore[attr-defined]
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page (1280x800); JavaScript errors on it fail the test; a screenshot of how it
    ended is saved as ``screenshots/<test>-end.png``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        with contextlib.suppress(Exception):
            tab.screenshot(path=str(screenshots / f"{request.node.name}-end.png"), full_page=True)
        context.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    shots = getattr(terminalreporter.config, "_hivebus_screenshots", None)
    if shots:
        terminalreporter.write_line(f"browser screenshots: {shots}")
