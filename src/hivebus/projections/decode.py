"""Raw stream messages -> the items views apply, the messages to dead-letter, the duplicates.

Every message is decoded by the one codec (``schemas.codec``) and checked to belong on its
stream (readings on DATA, the rest on EVENTS). A DATA message may carry many readings
(``bus.batch``): each is decoded on its own, and one that cannot be used is rejected alone
(with its index in the batch and its own bytes) while the others go on. Events a node produced are then de-duplicated
on ``(node, nodeseq)`` (see ``dedup``), visiting the batch's messages of all streams in stored
time order, the order the node sent them in. What cannot be used becomes a ``Rejected`` with
the reason, which the projector dead-letters; nothing stops the batch.

The readings of packed messages go through ``bulk`` first (issue 18): those it proves valid
become ``ReadingRows`` (Arrow columns, one item per run of them in a message) and are
de-duplicated per node in bulk (``SeenSeqs.add_run``); the rest take the per-body path. Both
give the same views (``tests/unit/test_projector_bulk.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import count, repeat
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import pyarrow.compute as pc
from pydantic import Field, TypeAdapter, ValidationError, create_model

from hivebus.bus import batch as wire
from hivebus.bus.consumer import DeadLetter
from hivebus.errors import DecodeError
from hivebus.projections import bulk
from hivebus.projections.bulk import ReadingRows
from hivebus.projections.dedup import NodeSeqs
from hivebus.projections.views.base import DATA, DEADLETTERS, INT64_MAX, Item
from hivebus.schemas import codec
from hivebus.schemas.envelope import SPECVERSION
from hivebus.schemas.registry import registry

READING = "data.reading"


class Message(Protocol):
    """A stream message as ``Bus.read`` yields it (``RawMessage``)."""

    @property
    def seq(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def time_ns(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the projector could not use, and why."""

    stream: str
    seq: int
    subject: str
    data: bytes
    reason: str
    field: str | None = None
    index: int | None = None
    """The reading's place in its packed DATA message (``data`` is then that reading alone)."""


Decodable = tuple[Message, Any, int | None, bytes]
"""A message, its decoded event, the event's index in a packed message (None: the message is
the event) and then the event's own bytes (else ``b""``)."""


@dataclass(slots=True)
class Decoded:
    """One stream's part of a batch, decoded (not yet de-duplicated)."""

    stream: str
    items: list[Decodable] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    last_seq: int = 0
    messages: int = 0


def decode_slice(stream: str, messages: Iterable[Message], after: int, *, bulk: bool = True) -> Decoded:
    """Decode ``messages`` of ``stream`` with a sequence above ``after`` (older ones are already
    in the views and are skipped). ``bulk``: the readings of packed DATA messages go through
    ``bulk.decode`` first (False: every reading is decoded on its own, the reference path)."""
    out = Decoded(stream, last_seq=after)
    packed: list[tuple[Message, list[bytes]]] = []
    for m in messages:
        out.messages += 1
        if m.seq <= out.last_seq:
            continue
        out.last_seq = m.seq
        if stream == DEADLETTERS:
            out.items.append((m, _letter(m.data), None, b""))
            continue
        if stream == DATA and wire.is_batch(m.data):
            try:
                bodies = wire.unpack(m.data)
            except DecodeError as exc:
                out.rejected.append(Rejected(DATA, m.seq, m.subject, bytes(m.data), exc.reason, exc.field))
                continue
            if bulk:
                packed.append((m, bodies))
                out.items.append((m, _PENDING, len(packed) - 1, b""))
            else:
                _decode_batch(m, bodies, out.items, out.rejected)
            continue
        try:
            event = codec.decode(m.data)
        except DecodeError as exc:
            out.rejected.append(Rejected(stream, m.seq, m.subject, bytes(m.data), exc.reason, exc.field))
            continue
        if (event.type == READING) != (stream == DATA):
            reason = _misplaced(stream, event.type)
            out.rejected.append(Rejected(stream, m.seq, m.subject, bytes(m.data), reason, "type"))
            continue
        out.items.append((m, event, None, b""))
    if packed:
        _decode_packed(packed, out)
    return out


_PENDING: Any = object()
"""Stands in ``Decoded.items`` for a packed message until its readings are decoded in bulk."""


def _decode_packed(packed: list[tuple[Message, list[bytes]]], out: Decoded) -> None:
    """The readings of the packed messages of a slice, all in one ``bulk.decode``: each
    message's proven readings become ``ReadingRows`` (one per run of them), the others go
    through ``_decode_batch`` (which names what is wrong with a bad one)."""
    decoded = bulk.decode([body for _, bodies in packed for body in bodies])
    ok = decoded.ok
    starts = np.zeros(len(packed) + 1, dtype=np.int64)
    np.cumsum([len(bodies) for _, bodies in packed], out=starts[1:])
    rows_before = np.zeros(len(ok) + 1, dtype=np.int64)
    np.cumsum(ok, out=rows_before[1:])
    items: list[Decodable] = []
    for entry in out.items:
        if entry[1] is not _PENDING:
            items.append(entry)
            continue
        m, k = entry[0], entry[2]
        assert k is not None
        bodies = packed[k][1]
        lo, hi = int(starts[k]), int(starts[k + 1])
        mine = ok[lo:hi]
        if hi == lo:  # an empty batch: nothing to apply
            continue
        if mine.all():
            table = decoded.table.slice(int(rows_before[lo]), hi - lo)
            items.append((m, ReadingRows(table, np.arange(hi - lo)), None, b""))
            continue
        # Runs of proven readings and of the others, in the message's order.
        edges = np.flatnonzero(np.diff(mine.astype(np.int8))) + 1
        for a, b in zip(np.concatenate(([0], edges)).tolist(), np.concatenate((edges, [hi - lo])).tolist(), strict=True):
            if mine[a]:
                table = decoded.table.slice(int(rows_before[lo + a]), b - a)
                items.append((m, ReadingRows(table, np.arange(a, b)), None, b""))
            else:
                _decode_batch(m, bodies[a:b], items, out.rejected, first=a)
    out.items = items
    out.rejected.sort(key=lambda r: (r.seq, -1 if r.index is None else r.index))  # stream order, as one pass gives


def _decode_batch(m: Message, bodies: Sequence[bytes], items: list[Decodable], rejected: list[Rejected],
                  first: int = 0) -> None:
    """Readings of one packed DATA message (``bodies``: its readings from index ``first`` on).

    All at once first: the bodies joined into one JSON array and validated in one pydantic
    call against the current ``data.reading`` model (1.7x faster than one ``codec.decode``
    each). Anything that pass refuses (one bad reading, an old ``dataversion`` to upcast, a
    body over the size limit) sends the bodies through ``codec.decode`` one by one, which
    finds and names each bad reading.
    """
    if max(map(len, bodies), default=0) <= codec.MAX_EVENT_BYTES:
        try:
            events = _readings_adapter().validate_json(b"[" + b",".join(bodies) + b"]")
        except ValidationError:
            pass
        else:
            items.extend(zip(repeat(m), events, count(first), bodies))
            return
    decode = codec.decode
    for index, body in enumerate(bodies, first):
        try:
            event = decode(body)
        except DecodeError as exc:
            rejected.append(Rejected(DATA, m.seq, m.subject, body, exc.reason, exc.field, index))
            continue
        if event.type != READING:
            rejected.append(Rejected(DATA, m.seq, m.subject, body, _misplaced(DATA, event.type), "type", index))
            continue
        items.append((m, event, index, body))


@dataclass(slots=True)
class Deduplicated:
    items: dict[str, list[Item]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0


def deduplicate(parts: Sequence[Decoded], seen: NodeSeqs) -> Deduplicated:
    """Drop events a node already delivered, walking all streams in stored-time order."""
    out = Deduplicated(items={p.stream: [] for p in parts})
    walk: Iterable[tuple[str, Message, Any, int | None, bytes]]
    if sum(1 for p in parts if p.items) <= 1:  # one stream: its own order, no merge to pay for
        walk = ((p.stream, m, event, index, body) for p in parts for m, event, index, body in p.items)
    else:
        ordered = [
            [(m.time_ns, i, k, p.stream, m, event, index, body) for k, (m, event, index, body) in enumerate(p.items)]
            for i, p in enumerate(parts)
        ]
        walk = (entry[3:] for entry in heapq.merge(*ordered))
    for stream, m, event, index, body in walk:
        if stream == DEADLETTERS:
            out.items[stream].append(Item(m.seq, m.subject, event, bytes(m.data)))
            continue
        if type(event) is ReadingRows:
            fresh = _fresh(event, seen, stream)
            out.duplicates += len(event) - len(fresh)
            if len(fresh):
                out.items[stream].append(Item(m.seq, m.subject, fresh))
            continue
        node, nodeseq = event.node, event.nodeseq
        if node is not None and nodeseq is not None:
            if not 0 < nodeseq <= INT64_MAX:
                reason = f"nodeseq {nodeseq} is not between 1 and 2^63-1"
                data = body if index is not None else bytes(m.data)
                out.rejected.append(Rejected(stream, m.seq, m.subject, data, reason, "nodeseq", index))
                continue
            if not seen.add(node, nodeseq, stream):
                out.duplicates += 1
                continue
        out.items[stream].append(Item(m.seq, m.subject, event, body, index))
    return out  # (merge keeps each stream's own order: views see every stream in stream order)


def _fresh(rows: ReadingRows, seen: NodeSeqs, stream: str) -> ReadingRows:
    """The readings of ``rows`` their nodes had not delivered yet, recorded in ``seen`` as
    ``seen.add`` would record them one by one (in bulk when a node's numbers are new and
    increasing, as an outbox sends them; else one by one)."""
    table = rows.table
    nodes = table.column("node").combine_chunks().dictionary_encode()
    seqs = table.column("nodeseq").combine_chunks()
    counted = pc.and_(nodes.is_valid(), seqs.is_valid()).to_numpy(zero_copy_only=False)
    if not counted.any():
        return rows
    codes = nodes.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    numbers = seqs.fill_null(0).to_numpy(zero_copy_only=False)
    keep = np.ones(len(rows), dtype=bool)
    names = nodes.dictionary.to_pylist()
    for code, node in enumerate(names):
        where = np.flatnonzero((codes == code) & counted) if len(names) > 1 or not counted.all() else None
        mine = numbers if where is None else numbers[where]
        if not len(mine) or seen.add_run(node, mine, stream):
            continue
        added = np.fromiter((seen.add(node, n, stream) for n in mine.tolist()), dtype=bool, count=len(mine))
        if where is None:
            keep = added
        else:
            keep[where] = added
    return rows.take(keep)


@cache
def _readings_adapter() -> TypeAdapter[list[Any]]:
    """Readings as the current model takes them, envelope and all (built on first use)."""
    spec = registry.spec(READING)
    fields: dict[str, Any] = {
        "specversion": (Annotated[Literal[SPECVERSION], Field(exclude=True)], ...),  # dumps as an Event does
        "type": (Literal[READING], ...),
        "dataversion": (Literal[spec.version], spec.version),  # an older one is upcast by codec.decode
    }
    model: Any = create_model("PackedReading", __base__=codec.typed_model(spec.model), **fields)
    return TypeAdapter(list[model])


def _misplaced(stream: str, event_type: str) -> str:
    if stream == DATA:
        return f"{event_type} is not a reading: only {READING} belongs on the DATA stream"
    return f"{READING} belongs on the DATA stream, not {stream}"


def _letter(data: bytes) -> DeadLetter | None:
    try:
        return DeadLetter.model_validate_json(data)
    except (ValidationError, ValueError):
        return None
