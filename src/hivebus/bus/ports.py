"""Free TCP ports, whether one is taken, and how to write ``host:port``."""

from __future__ import annotations

import contextlib
import socket
import threading

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
            sock = stack.enter_context(socket.socket(family(host), socket.SOCK_STREAM))
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in _recent_ports:
                ports.append(port)
        _recent_ports.extend(ports)
        del _recent_ports[:-512]
        return ports


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_is_taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` would fail the way nats-server's own bind would.

    SO_REUSEADDR mirrors Go's listener, so sockets in TIME_WAIT left by the previous
    run of a restarted server do not count as taken.
    """
    with socket.socket(family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def hostport(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_host(host: str) -> str:
    """Where to reach a server listening on ``host`` (wildcards mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
