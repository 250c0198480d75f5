"""Where a plugin talks and who it is, read from the environment its executor sets.

``PluginConfig`` is hivebus's. pywaggle's ``PluginConfig`` (``username, password, host, port,
app_id``: a RabbitMQ broker) is ``BrokerConfig`` here, exported under pywaggle's name by the
``waggle`` shim; a plugin that builds one still runs, on the node's own bus (the broker fields
name a RabbitMQ a hivebus node does not have).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

IDENTITY_ENV: Final = {
    "node": "HIVEBUS_NODE",
    "vsn": "HIVEBUS_VSN",
    "host": "HIVEBUS_HOST",
    "job": "HIVEBUS_JOB",
    "task": "HIVEBUS_TASK",
    "plugin": "HIVEBUS_PLUGIN",
}


class BrokerConfig(NamedTuple):
    """pywaggle 0.56.3's ``PluginConfig``, field for field."""

    username: str
    password: str
    host: str
    port: int
    app_id: str


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    """The node-local bus, the run's identity, and the offline files."""

    local_bus: str | None = None
    identity: Mapping[str, str] = field(default_factory=dict)
    run_id: str = ""
    upload_dir: Path | None = None
    upload_token: str = ""  # names this run to the node's upload service (HIVEBUS_UPLOAD_TOKEN)
    # pywaggle's run log (PYWAGGLE_LOG_DIR): data.ndjson + uploads/, written besides the bus.
    run_log_dir: Path | None = None
    # hivebus's own log of what could not reach a bus (or of everything, with no bus).
    offline_log: Path = Path("hivebus-offline.ndjson")
    offline_uploads: Path = Path("hivebus-offline-uploads")
    flush_timeout: float = 10.0
    request_timeout: float = 30.0
    max_pending: int = 100_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginConfig:
        env = os.environ if env is None else env
        identity = {key: env[var] for key, var in IDENTITY_ENV.items() if env.get(var)}
        offline_log, offline_uploads = Path("hivebus-offline.ndjson"), Path("hivebus-offline-uploads")
        if env.get("HIVEBUS_OFFLINE_LOG"):
            offline_log = Path(env["HIVEBUS_OFFLINE_LOG"])
            offline_uploads = offline_log.with_name(offline_log.stem + "-uploads")
        upload_dir = env.get("HIVEBUS_UPLOAD_DIR") or env.get("WAGGLE_PLUGIN_UPLOAD_PATH")
        return cls(
            local_bus=env.get("HIVEBUS_LOCAL_BUS") or None,
            identity=identity,
            run_id=env.get("HIVEBUS_RUN_ID", ""),
            upload_dir=Path(upload_dir) if upload_dir else None,
            upload_token=env.get("HIVEBUS_UPLOAD_TOKEN", ""),
            run_log_dir=Path(env["PYWAGGLE_LOG_DIR"]) if env.get("PYWAGGLE_LOG_DIR") is not None else None,
            offline_log=offline_log,
            offline_uploads=offline_uploads,
            flush_timeout=float(env.get("HIVEBUS_FLUSH_TIMEOUT", "10")),
        )
