"""Why the hub refuses this node, kept where the operator looks: ``<data-dir>/hub-refusal.json``.

A node whose credential is missing, wrong or withdrawn keeps running its goals and buffering;
the one thing it cannot do is tell the hub. So the refusal is said once in the log and written
here, ``hivebus node outbox`` shows it with what to do, and it is removed as soon as the hub
accepts the node again. Pure file I/O: no bus, no CLI.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

FILE: Final = "hub-refusal.json"


@dataclass(frozen=True)
class Refusal:
    what: str  # "credential" (the connection itself) or "events" (publishes refused)
    error: str
    hint: str
    since: str  # ISO time of the first refusal


def what_to_do(node: str) -> str:
    return (f"on the hub run `hivebus node add {node} --out {node}.creds` (or `--rotate` for a new one), copy the "
            f"file here and pass `--credentials {node}.creds`; meanwhile the node runs its goals and buffers")


def record(data_dir: Path, what: str, error: str, hint: str) -> Refusal:
    """Write the refusal (keeping the time of the first one while it lasts)."""
    held = read(data_dir)
    refusal = Refusal(what, error, hint, held.since if held is not None else datetime.now(UTC).isoformat(timespec="seconds"))
    path = Path(data_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(refusal), indent=2) + "\n")
    os.replace(tmp, path)
    return refusal


def clear(data_dir: Path) -> None:
    (Path(data_dir) / FILE).unlink(missing_ok=True)


def read(data_dir: Path) -> Refusal | None:
    try:
        doc = json.loads((Path(data_dir) / FILE).read_text())
        return Refusal(str(doc["what"]), str(doc["error"]), str(doc["hint"]), str(doc["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
