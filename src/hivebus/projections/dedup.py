"""Per-node exactly-once: which ``nodeseq`` values of a node the views have already counted.

An edge node numbers everything it sends (``nodeseq``, strictly increasing per node, shared by
its readings and its lifecycle events). A message re-sent after a long outage outlives
JetStream's duplicate window and lands in the stream twice; the projector must count it once.
A high-water mark is not enough: a message that failed and is retried later arrives *after*
higher numbers, and must still be counted. So the exact set is kept, compactly: every number
up to ``watermark`` is seen, plus disjoint ranges above it.

Gaps are normal (a crash may burn numbers, a full outbox drops readings, a fresh outbox starts
at the current time in microseconds), so a gap cannot be waited for forever. The numbers are
shared by the node's messages on DATA and EVENTS, which the projector reads side by side (in
stored-time order, see ``merge``): a gap is taken as permanent, and folded into the
watermark, only once *every* stream the node uses has gone ``horizon`` numbers past it (the
outbox sends in nodeseq order and a retry never lags a million numbers behind). A lagging
stream therefore never loses its late numbers. As a last resort a node holding more than
``max_ranges`` ranges gives up its oldest gap (logged and counted in ``compacted``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

HORIZON = 1_000_000
MAX_RANGES = 10_000


@dataclass(slots=True)
class SeenSeqs:
    """The numbers seen from one node: all ``<= watermark``, plus ``[los[i], his[i]]``."""

    watermark: int = 0
    los: list[int] = field(default_factory=list)
    his: list[int] = field(default_factory=list)
    highs: dict[str, int] = field(default_factory=dict)  # highest number seen, per stream
    duplicates: int = 0
    compacted: int = 0
    horizon: int = HORIZON
    max_ranges: int = MAX_RANGES

    def copy(self) -> SeenSeqs:
        return SeenSeqs(
            self.watermark, list(self.los), list(self.his), dict(self.highs), self.duplicates,
            self.compacted, self.horizon, self.max_ranges,
        )  # fmt: skip

    def __contains__(self, seq: int) -> bool:
        if seq <= self.watermark:
            return True
        i = bisect_right(self.los, seq) - 1
        return i >= 0 and self.his[i] >= seq

    def add(self, seq: int, stream: str = "EVENTS") -> bool:
        """Record ``seq`` (read from ``stream``); False (and counted) if it was already seen."""
        highs = self.highs
        if seq > highs.get(stream, 0):
            highs[stream] = seq
        los, his = self.los, self.his
        if not los and seq == self.watermark + 1:  # the common case: in order, no gaps
            self.watermark = seq
            return True
        if los and seq == his[-1] + 1:  # in order after a gap
            his[-1] = seq
        elif seq > (his[-1] if los else self.watermark) + 1:  # a new gap opens
            los.append(seq)
            his.append(seq)
        elif seq in self:
            self.duplicates += 1
            return False
        else:  # a late number filling a gap
            self._insert(seq)
        if los and (los[0] <= highs[stream] - self.horizon or len(los) > self.max_ranges):
            self._compact()  # (the min over streams is at most this stream's high: a cheap test first)
        return True

    def add_run(self, seqs: np.ndarray, stream: str = "EVENTS") -> bool:
        """Record ``seqs`` (int64, in delivery order) all at once, exactly as ``add`` one by
        one would, when that is simple: the numbers strictly increase from above every number
        seen (all new, as an outbox sends them) and open no more ranges than ``max_ranges``.
        False (nothing recorded) otherwise: then call ``add`` for each."""
        n = len(seqs)
        if not n:
            return True
        los, his = self.los, self.his
        top = his[-1] if los else self.watermark
        first, last = int(seqs[0]), int(seqs[-1])
        if first <= top or (n > 1 and not bool((np.diff(seqs) > 0).all())):
            return False
        breaks = np.flatnonzero(np.diff(seqs) != 1) if n > 1 else np.zeros(0, dtype=np.int64)
        run_los = [first, *seqs[breaks + 1].tolist()]
        run_his = [*seqs[breaks].tolist(), last]
        joins_watermark = not los and first == self.watermark + 1
        joins_last = bool(los) and first == his[-1] + 1
        if len(los) + len(run_los) - (joins_watermark or joins_last) > self.max_ranges:
            return False
        highs = self.highs
        if last > highs.get(stream, 0):
            highs[stream] = last
        if joins_watermark:
            self.watermark = run_his[0]
            del run_los[0], run_his[0]
        elif joins_last:
            his[-1] = run_his[0]
            del run_los[0], run_his[0]
        los.extend(run_los)
        his.extend(run_his)
        if los and (los[0] <= highs[stream] - self.horizon or len(los) > self.max_ranges):
            self._compact()
        return True

    def _insert(self, seq: int) -> None:
        los, his = self.los, self.his
        i = bisect_right(los, seq)  # ranges[:i] start at or below seq (and end below it)
        joins_left = i > 0 and his[i - 1] == seq - 1
        joins_right = i < len(los) and los[i] == seq + 1
        if joins_left and joins_right:
            his[i - 1] = his[i]
            del los[i], his[i]
        elif joins_left:
            his[i - 1] = seq
        elif joins_right:
            los[i] = seq
        else:
            los.insert(i, seq)
            his.insert(i, seq)
        if los and los[0] == self.watermark + 1:  # the first gap closed
            self.watermark = his[0]
            del los[0], his[0]

    def _compact(self) -> None:
        los, his = self.los, self.his
        floor = min(self.highs.values()) - self.horizon if self.highs else 0
        while los and los[0] <= floor:  # every stream is far past this gap: it stays a gap
            self.watermark = his[0]
            del los[0], his[0]
        while len(los) > self.max_ranges:
            self.watermark = his[0]
            del los[0], his[0]
            self.compacted += 1


class NodeSeqs:
    """``SeenSeqs`` for every node, with copy-on-write for one batch.

    ``begin`` starts a batch; ``add`` records into private copies; ``commit`` makes them the
    state once the batch's transaction committed, ``touched`` lists what to persist.
    """

    def __init__(self, state: dict[str, SeenSeqs] | None = None, *, horizon: int = HORIZON,
                 max_ranges: int = MAX_RANGES) -> None:
        self.state: dict[str, SeenSeqs] = state or {}
        self.horizon = horizon
        self.max_ranges = max_ranges
        self._working: dict[str, SeenSeqs] = {}

    def begin(self) -> None:
        self._working = {}

    def add(self, node: str, seq: int, stream: str = "EVENTS") -> bool:
        seen = self._working.get(node)
        if seen is None:
            base = self.state.get(node)
            seen = base.copy() if base is not None else SeenSeqs(horizon=self.horizon, max_ranges=self.max_ranges)
            self._working[node] = seen
        return seen.add(seq, stream)

    def add_run(self, node: str, seqs: np.ndarray, stream: str = "EVENTS") -> bool:
        """``SeenSeqs.add_run`` for ``node``: True if ``seqs`` were all new and recorded."""
        return self._seen(node).add_run(seqs, stream)

    def _seen(self, node: str) -> SeenSeqs:
        seen = self._working.get(node)
        if seen is None:
            base = self.state.get(node)
            seen = base.copy() if base is not None else SeenSeqs(horizon=self.horizon, max_ranges=self.max_ranges)
            self._working[node] = seen
        return seen

    def touched(self) -> dict[str, SeenSeqs]:
        return self._working

    def commit(self) -> None:
        self.state.update(self._working)
        self._working = {}

    def rollback(self) -> None:
        self._working = {}
