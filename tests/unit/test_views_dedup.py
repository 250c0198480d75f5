"""Per-node exactly-once (guarantee 4): each (node, nodeseq) is counted once, whatever the order.

The model is a plain Python set. A retried message (a lower nodeseq arriving after higher ones)
must be accepted, a true repeat dropped; and the compact representation must stay small.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.projections.dedup import NodeSeqs, SeenSeqs

seqs = st.integers(min_value=1, max_value=400)


@given(st.lists(seqs, max_size=600))
def test_any_order_with_repeats_counts_each_number_once(deliveries: list[int]) -> None:
    seen = SeenSeqs(horizon=10**9)
    model: set[int] = set()
    for seq in deliveries:
        assert seen.add(seq) == (seq not in model), seq
        model.add(seq)
    assert seen.duplicates == len(deliveries) - len(model)
    assert all(n in seen for n in model)
    assert not any(n in seen for n in range(1, 401) if n not in model)


@given(st.lists(seqs, max_size=300))
def test_ranges_stay_sorted_disjoint_and_above_the_watermark(deliveries: list[int]) -> None:
    seen = SeenSeqs(horizon=10**9)
    for seq in deliveries:
        seen.add(seq)
        assert seen.los == sorted(seen.los)
        assert all(lo <= hi for lo, hi in zip(seen.los, seen.his, strict=True))
        assert all(seen.his[i] + 1 < seen.los[i + 1] for i in range(len(seen.los) - 1))  # never adjacent
        assert not seen.los or seen.los[0] > seen.watermark + 1


def test_a_retry_below_higher_numbers_is_accepted_and_its_repeat_is_not() -> None:
    seen = SeenSeqs()
    assert [seen.add(n) for n in (1, 2, 4, 5)] == [True] * 4
    assert seen.add(3)  # failed first, retried after 4 and 5: counted
    assert not seen.add(3) and not seen.add(5) and not seen.add(1)
    assert (seen.watermark, seen.los) == (5, [])


def test_a_fresh_outbox_starting_at_a_large_number_is_one_range_then_folds() -> None:
    seen = SeenSeqs(horizon=100)
    start = 1_700_000_000_000_000
    for n in range(start, start + 150):
        assert seen.add(n, "DATA")
    assert seen.watermark == start + 149 and seen.los == []  # the gap below was given up
    assert not seen.add(start + 10, "DATA")


@st.composite
def node_history(draw: st.DrawFn) -> tuple[list[tuple[str, int]], set[int]]:
    """Deliveries of one node over DATA and EVENTS, as the projector reads them.

    The node numbers messages 1..n; some are dropped for good (full outbox); each goes to one
    stream. A message arrives up to ``lag`` numbers late (a retry) and some arrive twice (a
    resend after the duplicate window); the streams are read side by side with up to ``skew``
    numbers between them (the projector's merge). Each delivery's arrival key is its number
    plus its delay plus its stream's skew; deliveries arrive in key order.
    """
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 400))
    drop = draw(st.sampled_from([0.0, 0.05, 0.3]))
    share = draw(st.sampled_from([0.0, 0.1, 0.5]))
    lag = draw(st.integers(0, 30))
    skew = draw(st.integers(0, 20))
    sent = [i for i in range(1, n + 1) if rng.random() >= drop]
    deliveries: list[tuple[float, str, int]] = []
    for seq in sent:
        stream = "EVENTS" if rng.random() < share else "DATA"
        copies = 2 if rng.random() < 0.1 else 1
        for _ in range(copies):
            offset = rng.uniform(-skew, skew) / 2
            deliveries.append((seq + rng.uniform(0, lag) + offset, stream, seq))
    deliveries.sort()
    return [(stream, seq) for _, stream, seq in deliveries], set(sent)


@settings(max_examples=300)
@given(node_history(), st.sampled_from([10**6, 120]))
def test_interleaved_streams_with_retries_repeats_and_drops_count_each_message_once(
    history: tuple[list[tuple[str, int]], set[int]], horizon: int
) -> None:
    """With a horizon wider than the retry lag plus the streams' skew (30 + 20 < 120), gaps are
    folded away (a small horizon) or kept (a large one) and the count is exact either way."""
    deliveries, sent = history
    seen = NodeSeqs(horizon=horizon)
    counted: list[int] = []
    seen.begin()
    for stream, seq in deliveries:
        if seen.add("W001", seq, stream):
            counted.append(seq)
    seen.commit()
    assert sorted(counted) == sorted(sent)  # every message once, none twice


def test_permanent_gaps_are_folded_once_every_stream_is_far_past_them() -> None:
    seen = SeenSeqs(horizon=50)
    for n in range(1, 1000):
        if n % 10 == 0:
            continue  # dropped for good
        seen.add(n, "EVENTS" if n % 7 == 0 else "DATA")
    assert len(seen.los) <= 50 // 10 + 1  # only the gaps within the horizon are still held


def test_a_lagging_stream_keeps_its_late_numbers() -> None:
    """EVENTS read far ahead of DATA (a catch-up): the DATA numbers must not be given up."""
    seen = SeenSeqs(horizon=100)
    seen.add(1, "DATA")
    for n in range(2, 2000, 2):
        assert seen.add(n, "EVENTS")
    for n in range(3, 2000, 2):
        assert seen.add(n, "DATA"), n
    assert (seen.watermark, seen.los) == (1999, [])


def test_the_range_cap_is_a_counted_last_resort() -> None:
    seen = SeenSeqs(horizon=10**9, max_ranges=10)
    for n in range(2, 60, 2):
        seen.add(n)
    assert len(seen.los) == 10 and seen.compacted == 19


def test_a_batch_rolled_back_leaves_the_state_untouched() -> None:
    seen = NodeSeqs()
    seen.begin()
    assert seen.add("W001", 1) and seen.add("W001", 2)
    seen.commit()
    seen.begin()
    assert seen.add("W001", 3)
    seen.rollback()
    seen.begin()
    assert seen.add("W001", 3)  # the rolled-back batch is applied again, and counted
    assert not seen.add("W001", 2)
