"""``data.reading``: one pywaggle message, the payload on the hot path (100k/s).

The rules are pywaggle's: ``name`` is at most 128 characters of dot-separated parts matching
``[a-z0-9_]+``; ``value`` is an int, a finite float or a str (a bool is refused, not turned into
1; bytes travel as base64 text with ``meta["enc"] = "b64"``); ``timestamp`` is an int of
nanoseconds since the epoch, not before 2000 (a float or a seconds value is refused); ``meta``
maps str to str. Every check is a pydantic-core constraint, so no Python code runs per reading.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Final, Literal

from pydantic import AllowInfNan, Field, Strict, StringConstraints

from hivebus.errors import SchemaError
from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import STRICT, one_union_error
from hivebus.schemas.registry import event

NAME_PATTERN: Final = r"^[a-z0-9_]+(\.[a-z0-9_]+)*$"
MIN_TIMESTAMP_NS: Final = 946_684_800_000_000_000  # 2000-01-01T00:00:00Z
BYTES_ENCODING: Final = "b64"

ReadingName = Annotated[str, StringConstraints(strict=True, max_length=128, pattern=NAME_PATTERN)]
"""``env.temperature``, ``sys.mem.avail``: dot-separated ``[a-z0-9_]+`` parts, <= 128 chars."""


ReadingValue = Annotated[
    Annotated[int, Strict()]
    | Annotated[float, Strict(), AllowInfNan(False)]
    | Annotated[str, Strict()],
    one_union_error("reading_value", "value must be an int, a finite float or a str (not a bool)"),
]
"""int, finite float or str; a bool is refused rather than read as 0/1.

Ints are not bounded to 64 bits here: a bound would make the (strict) float member take the
big int and round it silently. Views that store values in BIGINT must check the range.
"""

TimestampNs = Annotated[int, Strict(), Field(ge=MIN_TIMESTAMP_NS, lt=2**63)]
"""Nanoseconds since the epoch, from 2000 on; floats and seconds are refused."""

Meta = Annotated[dict[Annotated[str, Strict()], Annotated[str, Strict()]], Strict()]

Scope = Literal["node", "beehive", "all"]


@event("data.reading", route="data")
class Reading(Payload):
    """One measurement as a plugin published it (pywaggle ``Plugin.publish``)."""

    model_config = STRICT

    name: ReadingName
    value: ReadingValue
    timestamp: TimestampNs
    meta: Meta = Field(default_factory=dict)
    scope: Scope = "all"

    @classmethod
    def from_bytes(
        cls,
        name: str,
        raw: bytes | bytearray | memoryview,
        *,
        timestamp: int,
        meta: Mapping[str, str] | None = None,
        scope: Scope = "all",
    ) -> Reading:
        """A reading whose value is binary: carried as base64 with ``meta["enc"] = "b64"``."""
        text = base64.b64encode(bytes(raw)).decode("ascii")
        return cls(
            name=name,
            value=text,
            timestamp=timestamp,
            meta={**(meta or {}), "enc": BYTES_ENCODING},
            scope=scope,
        )

    @property
    def is_bytes(self) -> bool:
        return self.meta.get("enc") == BYTES_ENCODING

    def raw_bytes(self) -> bytes:
        """The binary value of a reading made by ``from_bytes``; SchemaError if it is not one."""
        if not self.is_bytes or not isinstance(self.value, str):
            raise SchemaError(f"reading {self.name!r} does not carry bytes (meta enc is not 'b64')")
        try:
            return base64.b64decode(self.value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SchemaError(f"reading {self.name!r}: value is not valid base64 ({exc})") from None
