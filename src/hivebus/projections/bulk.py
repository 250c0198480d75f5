"""Readings decoded in bulk: the columns of a batch's readings with no Python object per reading.

The bodies of packed DATA messages (``bus.batch``) become one Arrow array, and pyarrow's compute
kernels (C++, outside the GIL) do what pydantic does per reading. One regular expression (RE2)
proves that a body is a ``data.reading`` event of the current version in the exact form
``codec.encode`` writes it (or as a node's outbox stores it: the same with ``"nodeseq"`` spliced
in as the first key, ``Outbox._row``; every reading from a node has that form): the envelope's and
the payload's keys once each, in the model's order, no whitespace, no escape sequences or
control characters in any string, a number in each numeric field; it also enforces the model's constraints (the name's pattern, a timestamp
in nanoseconds from 2000 on, an aware ``time``, ``scope`` one of its three words, strings in
``meta``). The few checks a pattern cannot express are columns of their own (the name's length,
the timestamp's lower bound, the date existing, ``meta`` keys unique). A body that passes all of
them is one pydantic accepts, and its columns are what the per-reading path computes.

The pattern is deliberately narrower than the model: a body it does not take (an escape in a
string, a value of more than 18 digits, an older ``dataversion``, another key order, a bad
reading...) is not refused here but handed back, and the per-body path (``decode``) decides
and names the reason. ``tests/unit/test_projector_bulk.py`` checks both paths give the same
views.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hivebus.schemas import codec
from hivebus.schemas.data import MIN_TIMESTAMP_NS, Reading
from hivebus.schemas.envelope import SPECVERSION, Event
from hivebus.schemas.registry import registry

READING: Final = "data.reading"
MAX_NAME: Final = 128

_S = r'[^"\\\x00-\x1f]*'  # a JSON string's text that needs no unescaping
_DATE = r"2[0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_INT = r"-?(?:0|[1-9][0-9]{0,17})"  # fits 64 bits; a double holds it to the nearest, as float() does
_MANTISSA = r"-?(?:0|[1-9][0-9]{0,29})"
_FLOAT = _MANTISSA + r"(?:\.[0-9]{1,30}(?:[eE][+-]?[0-9]{1,2})?|[eE][+-]?[0-9]{1,2})"  # finite, always
_VALUE = f'"{_S}"|{_INT}|{_FLOAT}'
_PAIR = f'"{_S}":"{_S}"'


def _pattern(version: int) -> str:
    return (
        r'^\{(?:"nodeseq":(?P<leadseq>[1-9][0-9]{0,17}),)?"specversion":"' + SPECVERSION.replace(".", r"\.")
        + f'","id":"{_S}","type":"data\\.reading",'
        f'(?:"dataversion":{version},)?"source":"(?P<source>{_S})","subject":"{_S}",'
        f'"time":"(?P<date>{_DATE})T{_CLOCK}",(?:"correlationid":"{_S}",)?(?:"causationid":"{_S}",)?'
        r'(?:"nodeseq":(?P<nodeseq>[1-9][0-9]{0,17}),)?"data":\{'
        r'"name":"(?P<name>[a-z0-9_]+(?:\.[a-z0-9_]+)*)",'
        f'"value":(?P<value>{_VALUE}),'
        r'"timestamp":(?P<timestamp>[1-9][0-9]{17}|[1-8][0-9]{18}),'
        f'"meta":\\{{(?P<meta>{_PAIR}(?:,{_PAIR})*)?\\}}'
        r'(?:,"scope":"(?:node|beehive|all)")?\}\}$'
    )


def _models_as_written() -> bool:
    """The pattern spells out the envelope and the reading: it is used only while they are
    the models it was written for (a changed model sends every reading the per-body way)."""
    envelope = ("id", "type", "dataversion", "source", "subject", "time", "correlationid", "causationid",
                "nodeseq", "data")
    return tuple(Event.model_fields) == envelope and tuple(Reading.model_fields) == (
        "name", "value", "timestamp", "meta", "scope")  # fmt: skip


ENABLED: Final = _models_as_written()
PATTERN: Final = _pattern(registry.spec(READING).version)
MATCH: Final = re.sub(r"\(\?P<\w+>", "(?:", PATTERN)
"""``PATTERN`` without its named groups: RE2 matches it with its DFA, several times faster."""

COLUMNS: Final = ("timestamp", "name", "value", "value_text", "node", "meta", "nodeseq")
READING_FIELDS: Final = [
    pa.field("timestamp", pa.timestamp("ns")),
    pa.field("name", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("value_text", pa.string()),
    pa.field("node", pa.string()),
    pa.field("meta", pa.map_(pa.string(), pa.string())),
]
"""A reading's columns in the ``readings`` view (which adds its message's ``seq``)."""
SCHEMA: Final = pa.schema([*READING_FIELDS, pa.field("nodeseq", pa.int64())])


@dataclass(frozen=True, slots=True)
class ReadingRows:
    """Readings of one packed message decoded in bulk, in their order in it (``index``:
    their places), as the ``readings`` view's columns (``SCHEMA``) plus ``nodeseq``."""

    table: pa.Table
    index: np.ndarray

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, keep: np.ndarray) -> ReadingRows:
        """The rows where ``keep`` (a bool per row) is true."""
        if keep.all():
            return self
        return ReadingRows(self.table.filter(pa.array(keep)), self.index[keep])


@dataclass(frozen=True, slots=True)
class Bulk:
    """Bodies decoded in bulk: ``ok[i]`` tells whether body ``i`` was proven a reading;
    ``table`` holds the proven ones' columns, in order."""

    ok: np.ndarray
    table: pa.Table


def decode(bodies: list[bytes]) -> Bulk:
    """The readings among ``bodies`` this fast path can prove valid, as columns."""
    n = len(bodies)
    if not n or not ENABLED:
        return Bulk(np.zeros(n, dtype=bool), SCHEMA.empty_table())
    raw = pa.array(bodies, pa.binary())
    try:
        text = raw.cast(pa.string())  # checks UTF-8, all at once
    except pa.ArrowInvalid:
        return _decode_valid_utf8(bodies)
    ok = pc.and_(pc.match_substring_regex(text, MATCH), pc.less_equal(pc.binary_length(raw), codec.MAX_EVENT_BYTES))
    mask = ok.to_numpy(zero_copy_only=False)
    if not mask.any():
        return Bulk(mask, SCHEMA.empty_table())
    table, good = _columns(text.filter(ok) if not mask.all() else text)
    if not good.all():
        mask[np.flatnonzero(mask)[~good]] = False
        table = table.filter(pa.array(good))
    return Bulk(mask, table)


def _columns(text: pa.Array) -> tuple[pa.Table, np.ndarray]:
    """The columns of bodies ``MATCH`` took, and which of them pass the checks it cannot make.

    No string in such a body holds a quote, so its quotes cut it into tokens at places fixed by
    which optional keys it has (``_pattern``): ``{``, ``specversion``, ``:``, ``1.0``, ``,``,
    ``id``, ``:``, the id, ``,``, ``type``, ``:``, ``data.reading``, ``,``, then ``dataversion``
    and ``:1,`` if it is there, ``source``, ``:``, the source, ... Token ``k`` of a body lies
    between its quotes ``k - 1`` and ``k``: found with numpy over the whole buffer at once.
    """
    rows = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=rows + 1, offset=text.offset * 4).astype(np.int64)
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    quotes = np.flatnonzero(data[offsets[0] : offsets[-1]] == 34) + offsets[0]
    first_quote = np.searchsorted(quotes, offsets)  # per row, and one past the last row
    tokens = Tokens(data, quotes, first_quote[:-1], first_quote[1:], offsets[1:])

    # "nodeseq" first (as a node's outbox writes it: ``Outbox._row``), else "specversion"
    lead = tokens.starts_with(np.ones(rows, dtype=np.int64), b"n")
    lead_seq = tokens.text(np.full(rows, 2, dtype=np.int64), trim=1)  # ":<n>," -> <n>
    place = np.full(rows, 13, dtype=np.int64) + 2 * lead
    place += 2 * tokens.starts_with(place, b"d")  # "dataversion", else "source"
    source = tokens.text(place + 2)
    date_at = tokens.start(place + 10)
    place += 12
    place += 4 * tokens.starts_with(place, b"co")  # "correlationid"
    place += 4 * tokens.starts_with(place, b"c")  # "causationid"
    late = tokens.starts_with(place, b"n")  # "nodeseq" in the model's place, then ":<n>,"
    nodeseq = pc.if_else(pa.array(lead), lead_seq, tokens.text(place + 1, trim=1))
    place += 2 * late  # now at "data"
    with_seq = lead | late
    name = tokens.text(place + 4)
    is_str = tokens.length(place + 7) == 1  # ":" before a string, else ":<number>,"
    string_value = tokens.text(place + 8)
    number_value = tokens.text(place + 7, trim=1)
    place += 2 * is_str  # place + 8 is now "timestamp"
    timestamp = tokens.text(place + 9, trim=1)
    metas, unique = _meta(tokens, place + 12)

    str_mask = pa.array(is_str)
    value = pc.if_else(str_mask, string_value, number_value)
    stamp = pc.cast(timestamp, pa.int64())
    good = unique & _real_dates(data, date_at) & ~(lead & late)  # nodeseq twice: the per-body path decides
    good &= pc.less_equal(pc.binary_length(name), MAX_NAME).to_numpy(zero_copy_only=False)
    good &= pc.greater_equal(stamp, MIN_TIMESTAMP_NS).to_numpy(zero_copy_only=False)
    is_int = pc.and_(pc.invert(str_mask), pc.match_substring_regex(value, f"^{_INT}$"))
    numeric = pc.if_else(str_mask, "0", value)
    as_int = pc.cast(pc.if_else(is_int, numeric, "0"), pa.int64())
    number = pc.if_else(is_int, pc.cast(as_int, pa.float64(), safe=False), pc.cast(numeric, pa.float64()))
    none_str = pa.scalar(None, pa.string())
    table = pa.table(
        {
            "timestamp": stamp.cast(pa.timestamp("ns")),
            "name": name,
            "value": pc.if_else(str_mask, pa.scalar(None, pa.float64()), number),
            "value_text": pc.if_else(str_mask, value, pc.if_else(is_int, pc.cast(as_int, pa.string()), none_str)),
            "node": pc.if_else(pc.starts_with(source, "node/"), pc.utf8_slice_codeunits(source, 5), none_str),
            "meta": metas,
            "nodeseq": pc.if_else(pa.array(with_seq), pc.cast(pc.if_else(pa.array(with_seq), nodeseq, "0"), pa.int64()),
                                  pa.scalar(None, pa.int64())),
        },
        schema=SCHEMA,
    )
    return table, good


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of many bodies, by their quotes: ``quotes`` (positions in ``data``, in
    order), each body's first quote (an index into ``quotes``) and where each body ends."""

    data: np.ndarray
    quotes: np.ndarray
    first: np.ndarray
    after: np.ndarray
    """One past each body's last quote (an index into ``quotes``)."""
    ends: np.ndarray

    def start(self, k: np.ndarray) -> np.ndarray:
        return self.quotes[self.first + k - 1] + 1

    def end(self, k: np.ndarray) -> np.ndarray:
        i = self.first + k
        last = i >= self.after  # the body's last token ends with the body
        return np.where(last, self.ends, self.quotes[np.minimum(i, len(self.quotes) - 1)])

    def length(self, k: np.ndarray) -> np.ndarray:
        return self.end(k) - self.start(k)

    def starts_with(self, k: np.ndarray, prefix: bytes) -> np.ndarray:
        at = self.start(k)
        out = np.ones(len(at), dtype=bool)
        for i, byte in enumerate(prefix):
            out &= self.data[at + i] == byte
        return out

    def text(self, k: np.ndarray, trim: int = 0) -> pa.Array:
        """Token ``k`` of each body (``trim`` bytes off both ends) as a string array."""
        return _gather(self.data, self.start(k) + trim, self.end(k) - trim)


def _gather(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """The strings ``data[start[i]:end[i]]`` (UTF-8 already checked), one copy."""
    lengths = np.maximum(end - start, 0)
    offsets = np.zeros(len(start) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.Array.from_buffers(pa.large_string(), len(start),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data[index])]).cast(pa.string())


_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _real_dates(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Whether ``YYYY-MM-DD`` at ``at`` is a day of the calendar (the pattern checked the digits)."""
    digit = [data[at + i].astype(np.int64) - 48 for i in (0, 1, 2, 3, 5, 6, 8, 9)]
    year = digit[0] * 1000 + digit[1] * 100 + digit[2] * 10 + digit[3]
    month = digit[4] * 10 + digit[5]
    day = digit[6] * 10 + digit[7]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    return day <= _DAYS[month] + ((month == 2) & leap)


def _decode_valid_utf8(bodies: list[bytes]) -> Bulk:
    """``decode`` for a list holding some body that is not UTF-8 (rare: those go the per-body way)."""
    valid = []
    for body in bodies:
        try:
            body.decode()
        except UnicodeDecodeError:
            valid.append(False)
        else:
            valid.append(True)
    mask = np.array(valid, dtype=bool)
    if not mask.any():
        return Bulk(mask, SCHEMA.empty_table())
    inner = decode([b for b, v in zip(bodies, valid, strict=True) if v])
    out = np.zeros(len(bodies), dtype=bool)
    out[np.flatnonzero(mask)[inner.ok]] = True
    return Bulk(out, inner.table)


def _meta(tokens: Tokens, first: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """``meta``'s pairs (tokens from ``first`` on: key, ``:``, value, ``,``, ...) -> a MAP with
    its keys sorted (as the per-reading path stores it), and whether the keys were unique."""
    rows = len(first)
    count = tokens.after - tokens.first  # quotes per body: tokens are one more
    last = count  # the last token: "}}" after a scope, else "}}}" (or ":{}}}": an empty map)
    with_scope = tokens.length(last) == 2
    closing = np.where(with_scope, last - 4, last)  # the token after the map: "}}}" or "},"
    empty = tokens.length(first - 1) > 2  # ":{}}}" or ":{}," rather than ":{"
    counts = np.where(empty, 0, (closing - first + 1) // 4)
    owners = np.repeat(np.arange(rows), counts)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    key_k = first[owners] + 4 * (np.arange(offsets[-1]) - offsets[:-1][owners])
    sub = Tokens(tokens.data, tokens.quotes, tokens.first[owners], tokens.after[owners], tokens.ends[owners])
    keys = sub.text(key_k)
    values = sub.text(key_k + 2)
    if offsets[-1] > 1:
        order = pc.sort_indices(pa.table({"row": owners, "key": keys}),
                                sort_keys=[("row", "ascending"), ("key", "ascending")])
        keys, values = keys.take(order), values.take(order)
        owners = owners[order.to_numpy()]
    metas = pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), keys, values,
                                    type=SCHEMA.field("meta").type)
    unique = np.ones(rows, dtype=bool)
    if offsets[-1] > 1:
        same = pc.equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False) & (owners[1:] == owners[:-1])
        unique[owners[1:][same]] = False
    return metas, unique


__all__ = ["COLUMNS", "ENABLED", "PATTERN", "SCHEMA", "Bulk", "ReadingRows", "decode"]
