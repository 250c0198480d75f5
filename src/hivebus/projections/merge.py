"""Interleave EVENTS and DATA in the order the server stored them.

A node numbers its readings (DATA) and its lifecycle events (EVENTS) from one sequence, and
sends them in that order. Applying the two streams side by side, in stored-time order, keeps
the per-node sequence sets small (``dedup``): read one stream far ahead of the other and every
message of the fast one becomes a separate range until the slow one catches up. This matters
most on catch-up and replay, where one stream could otherwise race through a day of history.

``Merger`` is pure: the projector pushes what each stream's reader delivered, says which
streams are *quiet* (nothing more arrived for a moment, or the stream is done), and takes
messages in time order. A message is released once no busy stream could still deliver an
earlier one: its time is at most the last time seen on every busy stream with an empty buffer,
plus ``skew`` (clock differences between the servers that lead the streams).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Generic, Protocol, TypeVar

from hivebus.projections.views.base import DATA, EVENTS

SKEW_NS = 500_000_000


class Timed(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def time_ns(self) -> int: ...


M = TypeVar("M", bound=Timed)


class Merger(Generic[M]):
    """Buffers per stream and a time-ordered ``take``; ``ordered`` streams are interleaved,
    the others (DEADLETTERS) pass straight through."""

    def __init__(self, streams: Sequence[str], *, ordered: Collection[str] = (EVENTS, DATA),
                 skew_ns: int = SKEW_NS, weight: Callable[[M], int] | None = None) -> None:
        """``weight``: how much work a message is (the readings a packed DATA message carries);
        ``pending`` and ``take``'s limit count that, not messages (default 1 each)."""
        self.streams = list(streams)
        self.weight = weight
        self.weights: dict[str, int] = dict.fromkeys(streams, 0)
        self.ordered = [s for s in self.streams if s in ordered]
        self.skew_ns = skew_ns
        self.buffers: dict[str, deque[M]] = {s: deque() for s in self.streams}
        self.last_ns: dict[str, int | None] = dict.fromkeys(self.streams)
        self.quiet: dict[str, bool] = dict.fromkeys(self.streams, False)

    def push(self, stream: str, messages: Sequence[M]) -> None:
        if messages:
            self.buffers[stream].extend(messages)
            self.last_ns[stream] = messages[-1].time_ns
            weight = self.weight
            self.weights[stream] += len(messages) if weight is None else sum(map(weight, messages))

    def pending(self, stream: str | None = None) -> int:
        """The weight buffered (messages, by default), for ``stream`` or all."""
        if stream is not None:
            return self.weights[stream]
        return sum(self.weights.values())

    def _pop(self, stream: str) -> tuple[M, int]:
        m = self.buffers[stream].popleft()
        w = 1 if self.weight is None else self.weight(m)
        self.weights[stream] -= w
        return m, w

    def bound(self) -> float:
        """Messages stored at or before this time can be released now."""
        limits = [
            float("-inf") if self.last_ns[s] is None else self.last_ns[s] + self.skew_ns  # type: ignore[operator]
            for s in self.ordered
            if not self.buffers[s] and not self.quiet[s]
        ]
        return min(limits, default=float("inf"))

    def take(self, limit: int) -> list[tuple[str, list[M]]]:
        """Messages weighing up to ``limit`` (at least one), per stream in stream order,
        interleaved by stored time."""
        out: dict[str, list[M]] = {}
        taken = 0
        for stream in self.streams:  # pass-through streams first: they do not wait on others
            if stream in self.ordered:
                continue
            buffer = self.buffers[stream]
            while buffer and taken < limit:
                m, w = self._pop(stream)
                out.setdefault(stream, []).append(m)
                taken += w
        bound = self.bound()
        heads = [(b[0].time_ns, i, s) for i, s in enumerate(self.ordered) if (b := self.buffers[s])]
        heapq.heapify(heads)
        while heads and taken < limit:
            time_ns, i, stream = heads[0]
            if time_ns > bound:
                break
            buffer = self.buffers[stream]
            if taken and self.weight is not None and taken + self.weight(buffer[0]) > limit:
                break
            m, w = self._pop(stream)
            out.setdefault(stream, []).append(m)
            taken += w
            if buffer:
                heapq.heapreplace(heads, (buffer[0].time_ns, i, stream))
            else:
                heapq.heappop(heads)
                bound = min(bound, self.bound())  # this stream may now hold the others back
        return [(s, out[s]) for s in self.streams if s in out]
