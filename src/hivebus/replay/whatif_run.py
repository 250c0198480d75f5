"""``hivebus replay what-if``: read the EVENTS log into a ``WhatIf`` and keep its decisions.

The log is read from sequence 1 (the state at ``since`` needs everything before it), with
no consumer acks and no publishing. Events before ``since`` are folded as recorded into both
worlds; from ``since`` to ``until`` (the events' own times, see ``Window``) the submissions
are decided again; reading stops at ``until``. The result goes to a
DuckDB file of three tables (replaced if it exists):

- ``whatif_decisions``: one row per submission: what happened and what the policy decided;
- ``whatif_node_load``: per node and world, placements in the window and load at its end;
- ``whatif_summary``: one row, the figures of the comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa

from hivebus.bus.client import Bus
from hivebus.handlers.config import HandlerConfig
from hivebus.replay.build import remove_db, stream_ends
from hivebus.replay.whatif import Compared, Outcome, WhatIf
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

STREAM: Final = "EVENTS"
Progress = Callable[[int, int], None]
"""``progress(read, total)`` after every batch."""


@dataclass(slots=True)
class Window:
    """The span of the log decided again: from the first hub event stamped at or after
    ``since`` to the last one stamped at or before ``until`` (envelope times; node clocks
    are not trusted to tell where a window starts or ends, as the scheduler does not)."""

    since: datetime | None = None
    until: datetime | None = None
    first_seq: int = 0
    """The first sequence decided again (0: none was)."""
    last_seq: int = 0
    """The last sequence read."""
    _open: bool = False
    _closed: bool = False

    @property
    def admits_nothing_more(self) -> bool:
        return self._closed

    def admits(self, seq: int, event: Event) -> bool | None:
        """Whether ``event`` is inside the window; None once the window has ended."""
        hub_time = None if event.source.startswith("node/") else event.time
        if hub_time is not None and self.until is not None and hub_time > self.until:
            self._closed = True
        if self._closed:
            return None
        if not self._open and (self.since is None or (hub_time is not None and hub_time >= self.since)):
            self._open = True
            self.first_seq = seq
        self.last_seq = seq
        return self._open


async def run_what_if(
    bus: Bus, policy: str, *, since: datetime | None = None, until: datetime | None = None,
    config: HandlerConfig | None = None, progress: Progress | None = None,
) -> tuple[WhatIf, Window]:
    engine = WhatIf(policy, config or HandlerConfig.from_env())
    span = Window(since=since, until=until)
    end = (await stream_ends(bus, [STREAM]))[STREAM]
    if end < 1:
        return engine, span
    read = 0
    async for batch in bus.read(STREAM, stop_at_end=True, batch=5000):
        for message in batch:
            if message.seq > end:
                break
            read = message.seq
            try:
                event = codec.decode(message.data)
            except Exception:
                continue  # dead-lettered when it arrived; no decider ever saw it
            inside = span.admits(message.seq, event)
            if inside is None:
                break
            engine.feed(message.seq, event, in_window=inside)
        if progress is not None:
            progress(read, end)
        if read >= end or span.admits_nothing_more:
            break
    if progress is not None:
        progress(end, end)
    return engine, span


def write_tables(engine: WhatIf, span: Window, out: Path) -> None:
    """The decisions, the loads and the summary into ``out`` (a new DuckDB file)."""
    remove_db(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(out))
    try:
        rows = [_decision_row(r) for r in engine.rows()]
        decisions = pa.Table.from_pylist(rows, schema=_DECISIONS)
        loads = pa.Table.from_pylist([asdict(x) for x in engine.loads()], schema=_LOADS)
        summary = {**asdict(engine.summary()), "first_seq": span.first_seq, "last_seq": span.last_seq}
        summary_table = pa.Table.from_pylist([summary])
        con.register("decisions_in", decisions)
        con.register("loads_in", loads)
        con.register("summary_in", summary_table)
        con.execute("CREATE TABLE whatif_decisions AS SELECT * FROM decisions_in ORDER BY seq")
        con.execute("CREATE TABLE whatif_node_load AS SELECT * FROM loads_in ORDER BY node, world")
        con.execute("CREATE TABLE whatif_summary AS SELECT * FROM summary_in")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _nodes(outcome: Outcome) -> list[str]:
    return sorted(outcome.nodes)


def _decision_row(row: Compared) -> dict[str, object]:
    return {
        "seq": row.seq, "time": row.time, "job_id": row.job_id, "user": row.user,
        "submission_id": row.submission_id, "differs": row.differs,
        "actual_policy": row.actual.policy, "actual_decision": row.actual.decision,
        "actual_nodes": _nodes(row.actual), "actual_reasons": row.actual.reasons,
        "actual_fit_refused": row.actual.fit_refused,
        "whatif_policy": row.whatif.policy, "whatif_decision": row.whatif.decision,
        "whatif_nodes": _nodes(row.whatif), "whatif_reasons": row.whatif.reasons,
        "whatif_fit_refused": row.whatif.fit_refused,
        "whatif_scores": json.dumps(row.whatif.scores, sort_keys=True),
        "actual_scores": json.dumps(row.actual.scores, sort_keys=True),
    }


_TEXTS = pa.list_(pa.string())
_DECISIONS: Final = pa.schema([
    ("seq", pa.int64()), ("time", pa.timestamp("us", tz="UTC")), ("job_id", pa.string()),
    ("user", pa.string()), ("submission_id", pa.string()), ("differs", pa.bool_()),
    ("actual_policy", pa.string()), ("actual_decision", pa.string()), ("actual_nodes", _TEXTS),
    ("actual_reasons", _TEXTS), ("actual_fit_refused", pa.bool_()),
    ("whatif_policy", pa.string()), ("whatif_decision", pa.string()), ("whatif_nodes", _TEXTS),
    ("whatif_reasons", _TEXTS), ("whatif_fit_refused", pa.bool_()),
    ("whatif_scores", pa.string()), ("actual_scores", pa.string()),
])
_LOADS: Final = pa.schema([
    ("node", pa.string()), ("world", pa.string()), ("placements", pa.int64()),
    ("goals", pa.int64()), ("cpu", pa.float64()), ("memory", pa.int64()),
    ("capacity_cpu", pa.float64()), ("capacity_memory", pa.int64()), ("over", _TEXTS),
])
