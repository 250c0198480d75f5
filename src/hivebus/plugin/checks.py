"""What ``publish`` accepts, exactly as pywaggle 0.56.3 decides it, and the body it sends.

pywaggle checks, in this order: the name (``TypeError`` for a non-str; ``ValueError`` past 128
characters, for the reserved ``upload`` and for a part outside ``[a-z0-9_]+``), then the value
(``isinstance(value, (int, float, str))``, so a bool, NaN and the infinities pass and bytes are a
``TypeError`` since 0.55.1), the timestamp (an int, else ``TypeError``; below pywaggle's
``MIN_TIMESTAMP_NS``, else ``ValueError``) and the meta (a dict whose *values* are str; its keys
are not checked). The scope is not checked at all.

The hub's ``data.reading`` is stricter (no bool, finite floats, str keys, three scopes), so what
pywaggle lets through and the hub would refuse travels in a form the hub takes and that hivebus
turns back on the way out (``decode_value``): a bool as ``"true"``/``"false"`` with
``meta["enc"] = "bool"``, NaN and the infinities as ``"nan"``/``"inf"``/``"-inf"`` with
``meta["enc"] = "float"``, a meta key that is not a str as its ``str()``, and a scope other
than ``node``/``beehive``/``all`` as ``all`` (the reading is kept, never dropped).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any, Final

NAME_PART: Final = re.compile(r"^[a-z0-9_]+$")
MAX_NAME_LENGTH: Final = 128
# pywaggle's own constant (its comment says 2000-01-01T00:00:00Z; the number is 06:00 UTC).
MIN_TIMESTAMP_NS: Final = 946_706_400_000_000_000
MAX_TIMESTAMP_NS: Final = 2**63 - 1  # the hub stores nanoseconds in a signed 64-bit column
SCOPES: Final = ("node", "beehive", "all")
FALLBACK_SCOPE: Final = "all"
RESERVED_NAMES: Final = frozenset({"upload"})
BYTES_ENCODING: Final = "b64"
BOOL_ENCODING: Final = "bool"
FLOAT_ENCODING: Final = "float"
_FLOAT_TEXT: Final = {math.inf: "inf", -math.inf: "-inf"}


def check_name(name: object, *, allow_reserved: bool = False) -> str:
    if not isinstance(name, str):
        raise TypeError(f"publish name must be a string: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"publish name must be at most {MAX_NAME_LENGTH} characters: {name!r}")
    if name in RESERVED_NAMES and not allow_reserved:
        raise ValueError(f"name {name!r} is reserved for system use only")
    for part in name.split("."):
        if not NAME_PART.match(part):
            raise ValueError(
                f"publish name invalid: {name!r} part: {part!r} "
                "(names must consist of [a-z0-9_] and may be joined by .)"
            )
    return name


def check_value(value: object) -> int | float | str:
    if not isinstance(value, int | float | str):
        kind = type(value).__name__
        hint = " (bytes are refused since pywaggle 0.55.1: upload_file a file instead)" if isinstance(
            value, bytes | bytearray | memoryview) else ""
        raise TypeError(f"Value must be an int, float or str, not {kind}{hint}.")
    return value


def check_timestamp(timestamp: object) -> int:
    if not isinstance(timestamp, int):
        raise TypeError(
            "Timestamp must be an int and have units of nanoseconds since epoch "
            f"(time.time_ns() or get_timestamp()), not {type(timestamp).__name__}."
        )
    if timestamp < MIN_TIMESTAMP_NS:
        raise ValueError(
            f"Timestamp {timestamp} probably has wrong units and is being processed as before "
            "2000-01-01T00:00:00Z. Timestamp must have units of nanoseconds since epoch."
        )
    if timestamp > MAX_TIMESTAMP_NS:  # pywaggle has no upper bound; the hub cannot store it
        raise ValueError(f"Timestamp {timestamp} is beyond what nanoseconds since epoch can hold (2262).")
    return int(timestamp)


def check_meta(meta: object) -> dict[Any, str]:
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TypeError("Meta must be a dictionary of strings to strings.")
    return dict(meta)


def wire_scope(scope: object) -> str:
    """pywaggle routes on any scope; hivebus knows three and keeps the rest as ``all``."""
    return scope if isinstance(scope, str) and scope in SCOPES else FALLBACK_SCOPE


def encode_value(value: int | float | str) -> tuple[int | float | str, str | None]:
    """(the value the hub takes, the ``enc`` marker that undoes it, or None)."""
    if isinstance(value, bool):
        return ("true" if value else "false"), BOOL_ENCODING
    if isinstance(value, float) and not math.isfinite(value):
        return _FLOAT_TEXT.get(value, "nan"), FLOAT_ENCODING
    return value, None


def decode_value(value: Any, meta: Mapping[str, str]) -> tuple[Any, bool]:
    """(the value as the plugin published it, whether ``meta["enc"]`` was one of ours)."""
    enc = meta.get("enc")
    if not isinstance(value, str) or enc is None:
        return value, False
    if enc == BOOL_ENCODING and value in ("true", "false"):
        return value == "true", True
    if enc == FLOAT_ENCODING and value in ("nan", "inf", "-inf"):
        return float(value), True
    if enc == BYTES_ENCODING:
        try:
            return base64.b64decode(value, validate=True), True
        except ValueError:
            return value, False
    return value, False


def reading_body(
    name: object, value: object, meta: object, timestamp: object, scope: object,
    identity: Mapping[str, str], *, allow_reserved: bool = False,
) -> dict[str, Any]:
    """The hub ``Reading`` a publish sends (docs/node-local-bus.md): checked, encoded, enriched.

    The checks run in pywaggle's order, so the first error is the one pywaggle raises.
    """
    check_name(name, allow_reserved=allow_reserved)
    checked = check_value(value)
    ts = check_timestamp(timestamp)
    own_meta = check_meta(meta)
    sent, enc = encode_value(checked)
    full_meta = {str(k): v for k, v in own_meta.items()}
    if enc is not None:
        full_meta["enc"] = enc
    full_meta.update(identity)
    return {"name": name, "value": sent, "timestamp": ts, "meta": full_meta, "scope": wire_scope(scope)}
