"""``hivebus query (SQL through the projector's query service)``."""

from __future__ import annotations

from hivebus.cli.app import app  # noqa: F401  (commands register on it)
