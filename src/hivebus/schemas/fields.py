"""Field types shared by the payload models: identifiers, digests, architectures, JSON values.

Each is an ``Annotated`` type whose checks are pydantic constraints (patterns and lengths run
in pydantic-core, not in Python), so models that use them stay fast. ``Part`` is the base of
every nested model: frozen, unknown keys refused, strict types (no ``"6"`` -> ``6`` coercion
that would hide a mistake in a file or on the wire).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    JsonValue,
    Strict,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

STRICT: Final = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class Part(BaseModel):
    """Base of nested (non-event) models: frozen, strict, unknown keys refused."""

    model_config = STRICT


def one_union_error(error_type: str, message: str) -> GetPydanticSchema:
    """Make a union fail with one error at the field, not one per member at ``field.int``...

    It edits the core schema once, when the model is built, so validation costs nothing extra.
    """

    def edit(source: Any, handler: GetCoreSchemaHandler) -> Any:
        schema: dict[str, Any] = dict(handler(source))
        if schema.get("type") != "union":
            raise TypeError(f"one_union_error applies to a union, not {schema.get('type')!r}")
        schema["custom_error_type"] = error_type
        schema["custom_error_message"] = message
        return schema

    return GetPydanticSchema(edit)


# A token usable as one NATS subject part without encoding, and as a DuckDB key.
_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$"

NodeId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
"""A node id (``W012``, ``000048B02D15BFD2``): no dots, so it is one subject token."""

UserName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_TOKEN)]
"""A user or group name (``alice``, ``ada@example.org``, the group ``AllUsers``)."""

Key = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_TOKEN)]
"""An id chosen by a service: job ids, run ids, bucket ids."""

Label = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
]
"""A short name: plugin names within a job, sensor names, tags, node classes."""

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
"""A content digest, ``sha256:<64 lower-case hex>``."""

NonNegInt = Annotated[int, Field(ge=0, lt=2**63)]
"""A count or a size in bytes (fits DuckDB's BIGINT)."""

NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""Seconds, cores, percentages: finite and not negative."""

ARCHITECTURES: Final = (
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/arm/v8",  # on Sage's ECR's list (it builds as linux/arm64 does)
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
    "wasi/wasm",  # Docker's name for WebAssembly (WASI) builds: nodes with the wasm executor run them
)
WASM_PLATFORM: Final = "wasi/wasm"


def architecture_problem(name: object) -> str | None:
    """Why ``name`` is not a known container platform, or None when it is."""
    if name in ARCHITECTURES:
        return None
    return f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})"


def _check_architecture(name: str) -> str:
    problem = architecture_problem(name)
    if problem is not None:
        raise PydanticCustomError("architecture", problem)
    return name


Architecture = Annotated[str, AfterValidator(_check_architecture)]
"""A container platform as Docker names it: ``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``..."""


def _check_finite(value: Any) -> Any:
    """Refuse NaN and infinities anywhere in a JSON value: JSON cannot carry them back."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError(
                "finite_number", "numbers must be finite (no NaN or infinity)"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_check_finite)]
"""Free-form metadata that survives a JSON round trip unchanged."""


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float):  # lax datetimes would read 1700000000 as unix seconds
        raise PydanticCustomError(
            "datetime_type", "expected an ISO 8601 time with a UTC offset, not a number"
        )
    return value


UtcTime = Annotated[AwareDatetime, Strict(False), BeforeValidator(_not_a_number)]
"""An aware datetime, given as a ``datetime`` or an ISO 8601 string (never a bare number).

Not strict: the codec validates the dict ``from_json`` produced (Python mode), where a
strict datetime would refuse every string.
"""
