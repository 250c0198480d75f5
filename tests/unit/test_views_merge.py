"""The merge that feeds the views EVENTS and DATA side by side, in stored-time order."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from hivebus.projections.merge import Merger


class Msg(NamedTuple):
    seq: int
    time_ns: int


def msgs(*times: int) -> list[Msg]:
    return [Msg(i + 1, t) for i, t in enumerate(times)]


def test_streams_are_interleaved_by_stored_time_and_keep_their_own_order() -> None:
    merger: Merger[Msg] = Merger(["EVENTS", "DATA", "DEADLETTERS"], skew_ns=0)
    merger.push("EVENTS", msgs(10, 40))
    merger.push("DATA", msgs(20, 30, 50))
    merger.quiet.update(EVENTS=True, DATA=True)
    assert merger.take(100) == [("EVENTS", msgs(10, 40)), ("DATA", msgs(20, 30, 50))]
    assert merger.pending() == 0


def test_a_busy_stream_with_nothing_buffered_holds_later_messages_back() -> None:
    merger: Merger[Msg] = Merger(["EVENTS", "DATA"], skew_ns=5)
    merger.push("DATA", msgs(10, 20, 30, 40))
    merger.push("EVENTS", msgs(12))
    taken = merger.take(100)  # EVENTS may still deliver something stored after 12 (+5 of skew)
    assert taken == [("EVENTS", msgs(12)), ("DATA", msgs(10))]
    assert merger.pending("DATA") == 3
    merger.quiet["EVENTS"] = True  # nothing came for a while: it no longer holds DATA back
    assert merger.take(100) == [("DATA", [Msg(2, 20), Msg(3, 30), Msg(4, 40)])]


def test_a_stream_never_heard_from_holds_the_others_until_it_is_quiet() -> None:
    merger: Merger[Msg] = Merger(["EVENTS", "DATA"])
    merger.push("DATA", msgs(1, 2))
    assert merger.take(10) == []
    merger.quiet["EVENTS"] = True
    assert merger.take(10) == [("DATA", msgs(1, 2))]


def test_dead_letters_pass_straight_through_and_the_limit_holds() -> None:
    merger: Merger[Msg] = Merger(["EVENTS", "DATA", "DEADLETTERS"])
    merger.push("DEADLETTERS", msgs(99))
    merger.push("DATA", msgs(1, 2, 3))
    merger.quiet.update(EVENTS=True, DATA=True)
    assert merger.take(2) == [("DATA", msgs(1)), ("DEADLETTERS", msgs(99))]
    assert merger.take(2) == [("DATA", [Msg(2, 2), Msg(3, 3)])]


@given(st.lists(st.integers(0, 1000), max_size=50), st.lists(st.integers(0, 1000), max_size=50),
       st.integers(1, 7))
def test_everything_pushed_comes_out_once_in_per_stream_order(a: list[int], b: list[int], limit: int) -> None:
    merger: Merger[Msg] = Merger(["EVENTS", "DATA"], skew_ns=0)
    merger.push("EVENTS", msgs(*sorted(a)))
    merger.push("DATA", msgs(*sorted(b)))
    merger.quiet.update(EVENTS=True, DATA=True)
    out: dict[str, list[Msg]] = {"EVENTS": [], "DATA": []}
    while merger.pending():
        batch = merger.take(limit)
        assert 0 < sum(len(taken) for _, taken in batch) <= limit
        for stream, taken in batch:
            out[stream] += taken
    assert out == {"EVENTS": msgs(*sorted(a)), "DATA": msgs(*sorted(b))}
