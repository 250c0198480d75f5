"""Many readings in one DATA message (issue 18): the batch wire format.

nats-server with ``sync_interval: always`` writes and fsyncs each stored message before its
ack, one at a time per stream, so one message per reading caps a hub at a few thousand
readings a second. A node therefore sends its readings packed, many to a message; every
reading stays a whole encoded event (``schemas.codec.encode``, with its own ``id`` and
``nodeseq``), so exactly-once stays per reading.

Format (all integers unsigned 32-bit big-endian)::

    b"HBB1"  count  (length  body) * count

``MAGIC`` first (an event's JSON starts with ``{``, so a reader tells a batch from a single
event by its first bytes, whatever the subject), then how many bodies follow, then each body
prefixed by its length. Nothing may follow the last body. Unpacking is slicing (no JSON is
parsed to find the readings), each body is decoded on its own, so one bad reading is one dead
letter and the rest of its batch is used; measured against a JSON array of the events in
``docs/wire.md``.

Subject: ``data.<node>.BATCH`` (``batch_subject``), under ``data.<node>.>`` so the permissions
that confine a node to its own subjects hold unchanged; reading names are lower case, so no
reading's own subject is ever ``BATCH``. ``Nats-Msg-Id``: ``batch_id``, a hash of the node and
the events' ids in order, so a retried batch is the same message to JetStream's duplicate
window and two different batches never share an id.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Final

from hivebus.bus.subjects import encode_token
from hivebus.errors import DecodeError

MAGIC: Final = b"HBB1"
BATCH_TOKEN: Final = "BATCH"
MAX_BATCH_BYTES: Final = 256 * 1024
"""What the forwarder packs into one message at most (a reading larger than this goes alone)."""
MAX_BATCH_READINGS: Final = 1000
_HEAD: Final = struct.Struct(">4sI")
_LEN: Final = struct.Struct(">I")
OVERHEAD: Final = _HEAD.size
"""Bytes of a batch besides its bodies and their ``PER_BODY`` length prefixes."""
PER_BODY: Final = _LEN.size


def is_batch(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is a batch (else: one encoded event, the old wire)."""
    return bytes(data[:4]) == MAGIC


def count(data: bytes | bytearray | memoryview) -> int:
    """How many events a DATA message carries (a batch's announced count, else 1), unchecked:
    for sizing the work ahead, not for trusting the contents."""
    if bytes(data[:4]) != MAGIC or len(data) < _HEAD.size:
        return 1
    return max(1, _HEAD.unpack_from(data)[1])


def pack(bodies: Sequence[bytes]) -> bytes:
    """One message carrying ``bodies`` (encoded events), in order."""
    parts = [_HEAD.pack(MAGIC, len(bodies))]
    for body in bodies:
        parts.append(_LEN.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def unpack(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The events a DATA message carries, in order: a batch's bodies, or the message itself
    when it is one event (the old wire, which does not start with ``MAGIC``).
    ``DecodeError`` (field ``<batch>``) for a batch that is not whole and well formed: nothing
    is returned from a truncated or padded one."""
    raw = bytes(data)
    if raw[:4] != MAGIC:
        return [raw]
    if len(raw) < _HEAD.size:
        raise DecodeError(f"a batch is at least {_HEAD.size} bytes, this one {len(raw)}", field="<batch>")
    count = _HEAD.unpack_from(raw)[1]
    if count > (len(raw) - _HEAD.size) // PER_BODY:
        raise DecodeError(f"a batch of {len(raw)} bytes cannot hold the {count} readings it announces",
                          field="<batch>")
    bodies: list[bytes] = []
    at = _HEAD.size
    end = len(raw)
    unpack_len = _LEN.unpack_from
    for i in range(count):
        if at + PER_BODY > end:
            raise DecodeError(f"batch truncated: reading {i} of {count} has no length ({end} bytes)",
                              field="<batch>")
        (size,) = unpack_len(raw, at)
        at += PER_BODY
        if at + size > end:
            raise DecodeError(f"batch truncated: reading {i} of {count} needs {size} bytes, "
                              f"{end - at} are left", field="<batch>")
        bodies.append(raw[at : at + size])
        at += size
    if at != end:
        raise DecodeError(f"{end - at} bytes after the last of the {count} readings of a batch",
                          field="<batch>")
    return bodies


bodies_of = unpack
"""What a DATA message carries: a batch's bodies, or the message itself (one event)."""


def batch_subject(node: str) -> str:
    """``data.<node>.BATCH``: where ``node`` sends its batches."""
    return f"data.{encode_token(node)}.{BATCH_TOKEN}"


def batch_id(node: str, event_ids: Sequence[str]) -> str:
    """The ``Nats-Msg-Id`` of the batch of ``node`` carrying ``event_ids`` (in order)."""
    digest = hashlib.sha256()
    digest.update(node.encode())
    for event_id in event_ids:
        digest.update(b"\n")
        digest.update(event_id.encode())
    return f"batch:{digest.hexdigest()[:40]}"
