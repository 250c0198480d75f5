"""Devices as resources (EdgeRM): what a plugin claims and which of a node's devices serve it.

A node's manifest lists devices (``NodeManifest.devices``: a name, a type, attributes, a path,
``exclusive``). A plugin claims devices in two ways:

- its app's ``resources`` list in sage.yaml (Sage's own form, ``AppSpec.resource_list``): each
  item ``{type: RGB_image_producer, view: top, min_resolution: 600x800}`` is one claim. ``type``
  must equal the device's type; a ``min_<attr>`` key needs the device's ``<attr>`` to be at
  least that, as numbers (``1920x1080`` against ``600x800``: each part, in order); any other key
  must equal the device's attribute of that name, as text (``view: top``);
- the job's ``pluginSpec.resource``: ``device.<name>: "1"`` claims the node's device of that
  name, and failing that ``<name>`` is read as a type (``device.microphone: "1"``; a count
  ``"2"`` claims two devices of that type). Sage's scheduler has no such key, so no real
  Sage job means anything else by it; cameras named in ``args`` (``-stream bottom_camera``)
  are not claims, since Sage's cameras are streams several plugins read at once.

A job's claim pins one of the app's claims when the device it names serves it (or the type
it names is the app claim's), rather than asking for one more device (``by_name_or_type``).
Each claim of a plugin is served by a distinct device of the node (``assign``); an exclusive
device held by another goal's plugin on that node is not available (the scheduler's
``held_devices``). All of it is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hivebus.schemas.node import DeviceSpec

DEVICE_KEY: Final = "device."
_NUMBERS: Final = re.compile(r"^\s*\d+(\.\d+)?(\s*[xX]\s*\d+(\.\d+)?)*\s*$")


@dataclass(frozen=True, slots=True)
class Claim:
    """One device a plugin needs: by name, or by type with attributes to match."""

    source: str
    """Where it was written: ``sage.yaml resources[0]``, ``pluginSpec.resource device.top_camera``."""
    type: str | None = None
    name: str | None = None
    """A claim by name (``device.<name>`` naming one of the node's devices)."""
    equal: tuple[tuple[str, str], ...] = ()
    minimum: tuple[tuple[str, str], ...] = ()
    """``(attribute, least value)``: from ``min_<attribute>`` keys."""

    def describe(self) -> str:
        parts = [f"name {self.name}"] if self.name else []
        parts += [f"type {self.type}"] if self.type else []
        parts += [f"{key} {value}" for key, value in self.equal]
        parts += [f"min_{key} {value}" for key, value in self.minimum]
        return f"{self.source} ({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an exclusive device now: a job's plugin."""

    job_id: str
    plugin: str

    def __str__(self) -> str:
        return f"job {self.job_id}'s plugin {self.plugin}"


@dataclass(slots=True)
class Assignment:
    """The devices a plugin got (one per claim, in claim order), or why it cannot have them."""

    devices: list[DeviceSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def app_claims(resource_list: Sequence[Mapping[str, Any]]) -> tuple[list[Claim], list[str]]:
    """The claims of an app's sage.yaml ``resources`` list, and a problem per item that is
    not one (no ``type``, a value that is a list or a map, a ``min_`` value that is no number)."""
    claims: list[Claim] = []
    problems: list[str] = []
    for i, item in enumerate(resource_list):
        where = f"resources[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: is not a map of keys to values")
            continue
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.strip():
            problems.append(f"{where}: needs a type (e.g. type: RGB_image_producer)")
            continue
        equal: list[tuple[str, str]] = []
        minimum: list[tuple[str, str]] = []
        bad = False
        for key, value in sorted(item.items()):
            if key == "type":
                continue
            if isinstance(value, list | dict) or value is None:
                problems.append(f"{where}.{key}: must be a string or a number")
                bad = True
                continue
            text = _text(value)
            if key.startswith("min_") and len(key) > 4:
                if not _NUMBERS.match(text):
                    problems.append(
                        f"{where}.{key}: {text!r} is not a number or NxM (e.g. 600x800)"
                    )
                    bad = True
                    continue
                minimum.append((key.removeprefix("min_"), text))
            else:
                equal.append((key, text))
        if not bad:
            claims.append(
                Claim(
                    f"sage.yaml {where}",
                    type=kind.strip(),
                    equal=tuple(equal),
                    minimum=tuple(minimum),
                )
            )
    return claims, problems


def job_claims(resource: Mapping[str, str]) -> tuple[list[Claim], list[str]]:
    """The claims of a plugin's ``pluginSpec.resource`` (its ``device.<name>: "<count>"``
    keys); other keys are cpu/memory/gpu requests (``fit.parse_request``)."""
    claims: list[Claim] = []
    problems: list[str] = []
    for key, value in sorted(resource.items()):
        if not key.startswith(DEVICE_KEY):
            continue
        name = key.removeprefix(DEVICE_KEY)
        where = f"pluginSpec.resource {key}"
        if not name:
            problems.append(f'resource {key}: name a device (device.<name>: "1")')
            continue
        count = _count(value)
        if count is None:
            problems.append(f'resource {key}: {value!r} is not a count of devices ("1")')
            continue
        claims += [Claim(where, name=name) for _ in range(count)]
    return claims, problems


def _count(value: str) -> int | None:
    word = value.strip().lower()
    if word in ("true", "yes"):
        return 1
    if word in ("false", "no"):
        return 0
    if word.isdigit():
        return int(word)
    return None


def by_name_or_type(claims: list[Claim], devices: Sequence[DeviceSpec]) -> list[Claim]:
    """The job's ``device.<x>`` claims read on one node, together with the app's claims.

    ``<x>`` names a device of the node; on a node with no device of that name it is a type.
    A job's claim pins one of the app's claims rather than adding a device: a named device that
    serves an app claim becomes that claim's device (``device.top_camera`` with an app asking
    for a top camera is one device, the top_camera), a type the app already asks for is that
    claim. Otherwise the job's claim is one more device."""
    names = {d.name: d for d in devices}
    app = [c for c in claims if c.name is None]
    pinned: set[int] = set()
    out: list[Claim] = []
    for claim in (c for c in claims if c.name is not None):
        device = names.get(claim.name or "")
        free = [i for i in range(len(app)) if i not in pinned]
        if device is not None:
            match = next((i for i in free if mismatch(app[i], device) is None), None)
            if match is None:
                out.append(claim)
                continue
            pinned.add(match)
            base = app[match]
            out.append(
                Claim(
                    f"{claim.source} for {base.source}",
                    type=base.type,
                    name=claim.name,
                    equal=base.equal,
                    minimum=base.minimum,
                )
            )
        else:
            match = next((i for i in free if app[i].type == claim.name), None)
            if match is None:
                out.append(Claim(claim.source, type=claim.name))
            else:  # the app's claim already asks for a device of that type: it is that one
                pinned.add(match)
                out.append(app[match])
    return out + [c for i, c in enumerate(app) if i not in pinned]


def mismatch(claim: Claim, device: DeviceSpec) -> str | None:
    """Why ``device`` cannot serve ``claim`` (its type, an attribute), or None."""
    if claim.name is not None and device.name != claim.name:
        return f"it is not {claim.name}"
    if claim.type is not None and device.type != claim.type:
        return f"type is {device.type}"
    attributes = device.attributes
    for key, wanted in claim.equal:
        have = device.path if key == "path" else attributes.get(key)
        if have is None:
            return f"has no {key}"
        if have != wanted:
            return f"{key} is {have}"
    for key, least in claim.minimum:
        have = attributes.get(key)
        if have is None:
            return f"has no {key}"
        if not _NUMBERS.match(have):
            return f"{key} {have!r} is not a number or NxM"
        if not at_least(have, least):
            return f"{key} {have} is below {least}"
    return None


def _numbers(text: str) -> list[float]:
    return [float(part) for part in re.split(r"\s*[xX]\s*", text.strip())]


def at_least(have: str, least: str) -> bool:
    """``1920x1080`` >= ``600x800``: every part, in order; a plain number against a plain
    number. Parts that do not line up (``1920x1080`` against ``30``) do not compare: False."""
    a, b = _numbers(have), _numbers(least)
    return len(a) == len(b) and all(x >= y for x, y in zip(a, b, strict=True))


def assign(
    node_id: str,
    claims: Sequence[Claim],
    devices: Sequence[DeviceSpec],
    held: Mapping[str, Holder],
) -> Assignment:
    """Serve every claim with a distinct device of the node, exclusive devices in ``held``
    left out; otherwise say, per claim that cannot be served, why each device does not."""
    if not claims:
        return Assignment()
    claims = by_name_or_type(list(claims), devices)
    free = [d for d in devices if not (d.exclusive and d.name in held)]
    options = [[j for j, d in enumerate(free) if mismatch(c, d) is None] for c in claims]
    matched = _matching(options, len(free))
    if all(m is not None for m in matched):
        return Assignment(devices=[free[m] for m in matched if m is not None])
    problems = []
    for i, claim in enumerate(claims):
        if matched[i] is not None:
            continue
        problems.append(_why_unserved(node_id, claim, devices, held, bool(options[i])))
    return Assignment(problems=problems)


def _matching(options: list[list[int]], n_devices: int) -> list[int | None]:
    """A maximum matching of claims to devices (augmenting paths; a plugin has few claims)."""
    owner: list[int | None] = [None] * n_devices

    def place(claim: int, seen: set[int]) -> bool:
        for device in options[claim]:
            if device in seen:
                continue
            seen.add(device)
            current = owner[device]
            if current is None or place(current, seen):
                owner[device] = claim
                return True
        return False

    for index in range(len(options)):
        place(index, set())
    matched: list[int | None] = [None] * len(options)
    for device, claimed_by in enumerate(owner):
        if claimed_by is not None:
            matched[claimed_by] = device
    return matched


def _why_unserved(
    node_id: str,
    claim: Claim,
    devices: Sequence[DeviceSpec],
    held: Mapping[str, Holder],
    had_free_options: bool,
) -> str:
    if not devices:
        return f"{claim.describe()}: {node_id} lists no devices"
    if had_free_options:
        return (
            f"{claim.describe()}: the plugin's other claims take every device of {node_id} "
            "that serves it (each claim needs its own device)"
        )
    taken = [
        f"{node_id}'s {d.describe()} is claimed by {held[d.name]}"
        for d in devices
        if mismatch(claim, d) is None and d.exclusive and d.name in held
    ]
    if taken:  # the devices that would serve it are held: that is the reason, not the others
        return f"{claim.describe()}: " + "; ".join(taken)
    of_type = [d for d in devices if d.type == claim.type] or list(devices)
    shown = "; ".join(f"{d.describe()}: {mismatch(claim, d)}" for d in of_type)
    return f"{claim.describe()}: no device of {node_id} serves it ({shown})"


def held_devices(
    goals: Iterable[tuple[str, Iterable[tuple[str, Iterable[str]]]]],
    devices: Sequence[DeviceSpec],
) -> dict[str, Holder]:
    """Exclusive devices of a node held by goals: ``goals`` is ``(job id, [(plugin, device
    names)])``. A device the manifest no longer lists, or that is not exclusive, is not held."""
    exclusive = {d.name for d in devices if d.exclusive}
    held: dict[str, Holder] = {}
    for job_id, plugins in goals:
        for plugin, names in plugins:
            for name in names:
                if name in exclusive and name not in held:
                    held[name] = Holder(job_id, plugin)
    return held


__all__ = [
    "Assignment",
    "Claim",
    "Holder",
    "app_claims",
    "assign",
    "at_least",
    "held_devices",
    "job_claims",
    "mismatch",
]
