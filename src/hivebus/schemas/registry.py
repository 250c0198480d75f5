"""Event type registry: ``type`` -> payload model, current version and upcasters.

Payload classes register themselves with ``@event("ecr.bundle.pushed", version=2)``. An
upcaster lifts a payload dict from version N to N+1; the codec applies the chain once, at
decode time, so every reader sees the current shape.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hivebus.errors import DecodeError, SetupError, UnknownEventType
from hivebus.schemas.envelope import Payload

P = TypeVar("P", bound=type[Payload])
Upcaster = Callable[[dict], dict]

_TYPE_PARTS = r"[a-z][a-z0-9_]*"


@dataclass
class EventSpec:
    type: str
    model: builtins.type[Payload]
    version: int
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    def upcast(self, data: dict, from_version: int) -> dict:
        """Lift ``data`` from ``from_version`` to the current version."""
        for v in range(from_version, self.version):
            step = self.upcasters.get(v)
            if step is None:
                raise UnknownEventType(f"no upcaster from version {v} to {v + 1}", field="dataversion", event_type=self.type)
            try:
                data = step(data)
            except Exception as exc:  # an old payload the upcaster cannot read is bad input
                raise DecodeError(
                    f"cannot lift payload from version {v} to {v + 1}: {type(exc).__name__}: {exc}",
                    field="data",
                    event_type=self.type,
                ) from exc
            if not isinstance(data, dict):
                raise DecodeError(
                    f"upcaster from version {v} returned {type(data).__name__}",
                    field="data",
                    event_type=self.type,
                )
        return data


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, EventSpec] = {}

    def event(self, type_: str, *, version: int = 1, route: str = "evt") -> Callable[[P], P]:
        import re

        if not re.fullmatch(rf"{_TYPE_PARTS}(\.{_TYPE_PARTS})+", type_):
            raise SetupError(f"event type {type_!r} must be dotted lower-case")

        def register(cls: P) -> P:
            if type_ in self._specs and self._specs[type_].model is not cls:
                raise SetupError(f"event type {type_!r} registered twice")
            cls.event_type = type_
            cls.version = version
            cls.route = route
            self._specs[type_] = EventSpec(type_, cls, version)
            return cls

        return register

    def upcaster(self, type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def register(fn: Upcaster) -> Upcaster:
            self.spec(type_).upcasters[from_version] = fn
            return fn

        return register

    def spec(self, type_: str) -> EventSpec:
        try:
            return self._specs[type_]
        except KeyError:
            raise UnknownEventType(f"unknown event type {type_!r}", field="type") from None

    def types(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, type_: str) -> bool:
        return type_ in self._specs


registry = Registry()
event = registry.event
upcaster = registry.upcaster
