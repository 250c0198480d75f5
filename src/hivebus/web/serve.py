"""Serve the HTTP face with uvicorn until ``stop``: ``await serve(config, host, port, stop)``.

The socket is bound here, before uvicorn starts, so port 0 picks a free port and the caller
learns it (``on_listening(url)``) before the first request can arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn

from hivebus.errors import PortInUse
from hivebus.web.app import WebConfig, create_app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns the signals (and sets ``stop``)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: without it a response written in two segments (headers, then
    # body) waited ~40 ms for the client's delayed ACK (Nagle): 44 ms for GET /docs, 1 ms with it
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}",
                        hint="choose another --http-port (0 picks a free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve(config: WebConfig, host: str, port: int, stop: asyncio.Event,
                on_listening: Callable[[str], None] | None = None) -> None:
    sock = bind(host, port)
    server = _Server(uvicorn.Config(create_app(config), log_config=None, access_log=False,
                                    lifespan="on", timeout_graceful_shutdown=5))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="web")
    try:
        while not server.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.02)
        if on_listening is not None:
            on_listening(url_of(sock))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
