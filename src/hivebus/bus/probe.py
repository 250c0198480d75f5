"""Asking a nats-server whether it is up: its monitoring port and its client ``INFO`` line."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:  # 503 from /healthz still carries a JSON body
        return err.code, err.read()


def read_info(host: str, port: int, timeout: float) -> dict[str, Any]:
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
