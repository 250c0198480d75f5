"""The outbox's drop counters: every reading it did not keep, counted by reason.

Reasons: ``readings.outbox_full`` and ``readings.expired`` (``outbox_space``),
``readings.disk_full`` (a full disk), ``refused_by_hub`` (a message the hub refuses for what
it is, parked by the forwarder), and whatever a producer counts before the outbox
(``readings.invalid``). A counter is committed with the drop itself, or with the next commit
for a reading refused on arrival; until then it is *unsaved* (kept in memory; a crash loses
such counts, never an event that was stored). The counters are cumulative and go into every
heartbeat.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Final

DROPPED_FULL: Final = "readings.outbox_full"
DROPPED_EXPIRED: Final = "readings.expired"
DISK_FULL: Final = "readings.disk_full"
REFUSED: Final = "refused_by_hub"


class DropCounters:
    """Saved counts (on disk), unsaved ones, and those of the commit running now."""

    def __init__(self, saved: Mapping[str, int] | None = None) -> None:
        self.saved: dict[str, int] = dict(saved or {})
        self.unsaved: dict[str, int] = {}
        self._committing: dict[str, int] = {}  # taken from unsaved, not yet on disk

    def count(self, reason: str, n: int = 1, *, saved: bool) -> None:
        target = self.saved if saved else self.unsaved
        target[reason] = target.get(reason, 0) + n

    def take_unsaved(self) -> dict[str, int]:
        """The unsaved counts, for the commit about to run (``committed`` or ``failed`` next)."""
        taken, self.unsaved = self.unsaved, {}
        self._committing = taken
        return taken

    def committed(self, drops: Mapping[str, int]) -> None:
        """The commit stored ``drops`` (what it took plus its own drops)."""
        self._committing = {}
        for reason, n in drops.items():
            self.count(reason, n, saved=True)

    def failed(self, taken: Mapping[str, int]) -> None:
        """The commit that took ``taken`` failed: they are unsaved again."""
        self._committing = {}
        for reason, n in taken.items():
            self.count(reason, n, saved=False)

    def totals(self) -> dict[str, int]:
        """Cumulative counts by reason, including those not on disk yet."""
        out = dict(self.saved)
        for pending in (self._committing, self.unsaved):
            for reason, n in pending.items():
                out[reason] = out.get(reason, 0) + n
        return out


def add(conn: sqlite3.Connection, drops: Mapping[str, int]) -> None:
    """Add ``drops`` to the stored counters (inside the caller's transaction)."""
    for reason, n in drops.items():
        conn.execute(
            "INSERT INTO drop_counters VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET n = n + excluded.n",
            (reason, n),
        )
