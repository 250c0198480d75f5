"""Settings, read once from ``HIVEBUS_*`` environment variables and frozen.

Every setting has an embedded default that works on one machine; ``Settings.from_env``
validates them when the component is built, never on first use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Literal

from hivebus.errors import SetupError

FsyncPolicy = Literal["always", "interval"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, *, name: str = "duration") -> timedelta:
    """``"30d"``, ``"2m"``, ``"500ms"``, ``"90"`` (seconds) -> timedelta."""
    m = _DURATION.match(text)
    if not m:
        raise SetupError(f"{name}: {text!r} is not a duration", hint="write e.g. 30s, 5m, 2h, 30d")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Platform settings. Environment variable = ``HIVEBUS_`` + field name upper-cased."""

    nats_url: str = "nats://127.0.0.1:4222"
    # A credentials file (``hivebus node add --out``, or ``<data_dir>/auth/*.creds``).
    # Unset: the hub's admin credential if this machine has one (the operator on the hub
    # machine), else none (the public identity: queries, commands with a user token).
    nats_credentials: Path | None = None
    # The hub's CA (PEM file) for a connection over TLS without a credential that embeds it.
    # Unset: the CA in the credential, else <data_dir>/tls/ca.pem if this machine is a hub with TLS.
    tls_ca: Path | None = None
    data_dir: Path = Path(".hivebus")
    nats_port: int = 4222
    # JetStream
    events_max_age: timedelta = timedelta(0)  # 0 = forever
    data_max_age: timedelta = timedelta(days=30)
    duplicate_window: timedelta = timedelta(minutes=2)
    replicas: int = 1
    # fsync: "always" syncs every write before the ack (no acknowledged write lost on power
    # loss); "interval" is nats-server's default lazy 2-minute sync. See bus/server.py.
    fsync: FsyncPolicy = "always"
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    node_offline_after: timedelta = timedelta(seconds=30)
    # Most bytes a node's upload bucket holds on the hub (0: no limit); past it the node keeps
    # its files and retries (services.uploads).
    upload_bucket_max_bytes: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise SetupError(f"HIVEBUS_NATS_URL: {self.nats_url!r} is not a NATS URL", hint="e.g. nats://127.0.0.1:4222")
        if not (0 <= self.nats_port <= 65535):
            raise SetupError(f"HIVEBUS_NATS_PORT: {self.nats_port} is not a port number")
        if self.replicas not in (1, 3, 5):
            raise SetupError(f"HIVEBUS_REPLICAS: {self.replicas} must be 1, 3 or 5")
        if self.upload_bucket_max_bytes < 0:
            raise SetupError(f"HIVEBUS_UPLOAD_BUCKET_MAX_BYTES: {self.upload_bucket_max_bytes} must be 0 (no limit) or more")
        if self.fsync not in ("always", "interval"):
            raise SetupError(f"HIVEBUS_FSYNC: {self.fsync!r} must be 'always' or 'interval'")

    def credentials_file(self) -> Path | None:
        if self.nats_credentials is not None:
            return self.nats_credentials
        admin = self.data_dir / "auth" / "admin.creds"
        return admin if admin.exists() else None

    def tls_ca_file(self) -> Path | None:
        if self.tls_ca is not None:
            return self.tls_ca
        own = self.data_dir / "tls" / "ca.pem"  # auth.tls: while the hub of this data dir runs with TLS
        return own if own.exists() and (own.parent / "active").exists() else None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"HIVEBUS_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _convert(name: str, type_name: str, raw: str) -> object:
    var = f"HIVEBUS_{name.upper()}"
    if "timedelta" in type_name:
        return parse_duration(raw, name=var)
    if "Path" in type_name:
        return Path(raw)
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise SetupError(f"{var}: {raw!r} is not an integer") from None
    return raw
