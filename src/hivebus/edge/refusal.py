"""Why the hub refuses this node, kept where the operator looks: ``<data-dir>/hub-refusal.json``.

A node whose credential is missing, wrong or withdrawn keeps running its goals and buffering;
the one thing it cannot do is tell the hub. So the refusal is said once in the log and written
here, ``hivebus node outbox`` shows it with what to do, and every heartbeat carries it
(``NodeHeartbeat.refusal``). When the hub accepts the node again the record is not removed
but **ended** (``until``): it stays until a heartbeat reporting the end is known to be stored
by the hub (the agent notes that heartbeat's ``nodeseq`` in ``reported``, and removes the
record once the outbox no longer holds it), so a refusal that ended before the node could say
anything still reaches the hub once. File I/O only: no bus, no CLI.

Every change is one synchronous read-check-write (no ``await`` inside), so the uplink, the
forwarder and the heartbeat, all on one event loop, never overwrite each other's record.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from hivebus.schemas.node import HubRefusal

FILE: Final = "hub-refusal.json"
_REASON_MAX: Final = 1000
_USERINFO: Final = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    what: str  # "credential" (the connection itself) or "events" (publishes refused)
    error: str
    hint: str
    since: str  # ISO time of the first refusal
    until: str | None = None  # ISO time the hub accepted the node again; None while it refuses
    reported: int | None = None  # nodeseq of a heartbeat carrying the ended refusal, not yet acked

    @property
    def ongoing(self) -> bool:
        return self.until is None

    def same(self, other: Refusal | None) -> bool:
        """The same refusal (and, once ended, the same end)."""
        return other is not None and (self.what, self.since, self.until) == (other.what, other.since, other.until)


def what_to_do(node: str) -> str:
    return (f"on the hub run `hivebus node add {node} --out {node}.creds` (or `--rotate` for a new one), copy the "
            f"file here and pass `--credentials {node}.creds`; meanwhile the node runs its goals and buffers")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(data_dir: Path, refusal: Refusal) -> Refusal:
    path = Path(data_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(refusal), indent=2) + "\n")
    os.replace(tmp, path)
    return refusal


def record(data_dir: Path, what: str, error: str, hint: str) -> Refusal:
    """Write the refusal (keeping the time of the first one while it lasts). A refusal that
    ended and was not reported yet gives way to the new one: the heartbeat carries the latest."""
    held = read(data_dir)
    since = held.since if held is not None and held.ongoing else _now()
    return _write(data_dir, Refusal(what, error, hint, since))


def end(data_dir: Path, what: str | None = None) -> Refusal | None:
    """The hub accepts the node again: the ongoing refusal (of kind ``what``, if given) ends
    now, and stays recorded until a heartbeat reporting it is stored. The ended record, if any."""
    held = read(data_dir)
    if held is None or not held.ongoing or (what is not None and held.what != what):
        return None
    return _write(data_dir, replace(held, until=_now(), reported=None))


def reported_in(data_dir: Path, refusal: Refusal, nodeseq: int) -> None:
    """A heartbeat (``nodeseq`` in the outbox) carries the ended ``refusal``: note it, unless
    the record changed meanwhile or an earlier heartbeat already carries it."""
    held = read(data_dir)
    if held is not None and refusal.same(held) and not held.ongoing and held.reported is None:
        _write(data_dir, replace(held, reported=nodeseq))


def unreported(data_dir: Path, refusal: Refusal) -> None:
    """The heartbeat noted never reached the hub (parked): the next one carries it again."""
    held = read(data_dir)
    if held is not None and refusal.same(held) and held.reported is not None:
        _write(data_dir, replace(held, reported=None))


def done(data_dir: Path, refusal: Refusal) -> None:
    """The hub stored a heartbeat reporting the ended ``refusal``: remove the record (unless
    a new refusal replaced it meanwhile)."""
    held = read(data_dir)
    if held is not None and refusal.same(held) and not held.ongoing:
        clear(data_dir)


def clear(data_dir: Path) -> None:
    (Path(data_dir) / FILE).unlink(missing_ok=True)


def read(data_dir: Path) -> Refusal | None:
    try:
        doc = json.loads((Path(data_dir) / FILE).read_text())
        until, reported = doc.get("until"), doc.get("reported")
        return Refusal(str(doc["what"]), str(doc["error"]), str(doc["hint"]), str(doc["since"]),
                       None if until is None else str(until), None if reported is None else int(reported))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def reason(refusal: Refusal) -> str:
    """The hub's reason as a heartbeat may carry it: no user:password@ in a URL, bounded."""
    text = _USERINFO.sub(r"\1", refusal.error).strip() or "refused"
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


def for_heartbeat(refusal: Refusal) -> HubRefusal | None:
    """The refusal as a heartbeat carries it (None for a record this version cannot read)."""
    try:
        return HubRefusal(kind=refusal.what, reason=reason(refusal), since=refusal.since,  # type: ignore[arg-type]
                          until=refusal.until)  # type: ignore[arg-type]
    except ValidationError:
        return None
