"""The ``waggle`` package a plugin imports on a hivebus node (docs/waggle-shim.md).

``waggle_shim_dir()`` is a directory holding ``waggle/plugin``: executors put it first on the
plugin's import path (``PYTHONPATH``), so ``from waggle.plugin import Plugin, get_timestamp,
PluginConfig, Uploader`` gives hivebus's SDK with no edit to the plugin. The shim's ``waggle``
extends its package path with any other ``waggle`` on ``sys.path``, so the rest of a real
pywaggle installed in a plugin's image (``waggle.data.vision``...) still imports.

A container has no hivebus: ``container_mounts()`` lists what the docker executor bind-mounts
read-only (the shim, the SDK's few modules and nats-py, all pure Python) and
``CONTAINER_PYTHONPATH`` where they appear inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CONTAINER_ROOT: Final = "/run/hivebus"
CONTAINER_SHIM: Final = f"{CONTAINER_ROOT}/shim"
CONTAINER_SDK: Final = f"{CONTAINER_ROOT}/sdk"
CONTAINER_PYTHONPATH: Final = f"{CONTAINER_SHIM}:{CONTAINER_SDK}"


def waggle_shim_dir() -> Path:
    """The directory to put first on a plugin's ``PYTHONPATH`` (it holds ``waggle/``)."""
    return Path(__file__).resolve().parent


def plugin_pythonpath(existing: str | None = None) -> str:
    """``PYTHONPATH`` for a local plugin: the shim first, then whatever the job set."""
    return os.pathsep.join(p for p in (str(waggle_shim_dir()), existing) if p)


def container_mounts() -> dict[str, str]:
    """host path -> container path for the docker executor (bind them read-only)."""
    import nats

    package = Path(__file__).resolve().parents[2]  # src/hivebus (edge/ never imports the package root)
    return {
        str(waggle_shim_dir() / "waggle"): f"{CONTAINER_SHIM}/waggle",
        str(package / "__init__.py"): f"{CONTAINER_SDK}/hivebus/__init__.py",
        str(package / "errors.py"): f"{CONTAINER_SDK}/hivebus/errors.py",
        str(package / "version.py"): f"{CONTAINER_SDK}/hivebus/version.py",  # hivebus/__init__ imports it
        str(package / "plugin"): f"{CONTAINER_SDK}/hivebus/plugin",
        str(Path(nats.__file__).resolve().parent): f"{CONTAINER_SDK}/nats",
    }
