"""pywaggle's ``Uploader``: stage a file as ``<root>/<timestamp>-<sha1>/{data,meta}``.

The layout pywaggle's upload agent ships: ``data`` is a copy of the file (a copy, not a move:
the root may be on another disk), ``meta`` is ``{"labels": {..., "filename"}, "shasum",
"timestamp"}`` as compact JSON with sorted keys. Without ``keep`` the source is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hivebus.plugin.clock import get_timestamp


class Uploader:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def upload_file(
        self, path: str | os.PathLike[str], meta: Mapping[str, str] = {}, timestamp: int | None = None,
        keep: bool = False,
    ) -> Path:
        """Stage ``path``; returns the staging directory (its name is the ``upload`` value)."""
        timestamp = timestamp or get_timestamp()
        source = Path(path)
        checksum = sha1_of(source)
        staged = self.root / f"{timestamp}-{checksum}"
        staged.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staged / "data")
        if not keep:
            source.unlink()
        labels: dict[str, Any] = dict(meta)
        labels["filename"] = source.name
        document = {"timestamp": timestamp, "shasum": checksum, "labels": labels}
        (staged / "meta").write_text(json.dumps(document, separators=(",", ":"), sort_keys=True))
        return staged


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 15):
            digest.update(chunk)
    return digest.hexdigest()
