"""The ECR handler: register or reject pushes, police approvals and grants, record profiles.

``ecr.bundle.pushed`` -> ``ecr.bundle.registered`` (id ``namespace/name:version``; plus
``ecr.bundle.frozen`` when the app says ``frozen: true``) or ``ecr.bundle.rejected`` with every
reason found. A version that is registered and not frozen may be pushed again by someone with
WRITE on it: the new push replaces it and needs a new approval. ``plugin.status`` that ends a
run with perf figures -> ``ecr.profile.recorded`` (bundle x the node's hardware class).
Approvals, freezes, deletions and grants are facts users publish; the handler refuses (as a
dead letter naming the reason) those their author had no right to make, and the fold in
``catalog`` ignores them by the same rule.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from hivebus.errors import DecodeError
from hivebus.handlers.base import NOTHING, Decision, Outputs, broken_input, validation_reasons
from hivebus.handlers.catalog import Catalog, evolve, manifest_hardware
from hivebus.handlers.config import HandlerConfig
from hivebus.schemas.ecr import (
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    BundleRejected,
    PermissionGranted,
    PermissionRevoked,
    ProfileRecorded,
    bundle_id,
    version_problems,
)
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import PluginStatus
from hivebus.schemas.ses import PluginState

SOURCE: Final = "handler/ecr"
URL_SCHEMES: Final = ("https://", "http://", "ssh://", "git://", "git@", "file://")
TERMINAL: Final = frozenset({PluginState.COMPLETED, PluginState.FAILED})


def push_problems(catalog: Catalog, push: BundlePushed) -> list[str]:
    """Every reason the ECR refuses a push that is well formed; empty when it registers."""
    config = catalog.config
    app = push.app
    bid = app.bundle_id
    reasons = list(version_problems(app.version))
    for arch in app.source.architectures:
        if arch not in config.architectures:
            accepted = ", ".join(sorted(config.architectures))
            reasons.append(f"architecture {arch!r} is not accepted (accepted: {accepted})")
    for i, item in enumerate(app.inputs):
        if item.type not in config.input_types:
            allowed = ", ".join(sorted(config.input_types))
            reasons.append(
                f"inputs[{i}] {item.id!r}: input type {item.type!r} is not allowed (allowed: {allowed})"
            )
    if app.namespace in config.reserved_namespaces and push.pusher not in config.reviewers:
        reasons.append(f"namespace {app.namespace!r} is reserved for the platform")
    if app.name in config.reserved_names:
        reasons.append(
            f"name {app.name!r} is not allowed (reserved: {', '.join(sorted(config.reserved_names))})"
        )
    if not app.source.url.startswith(URL_SCHEMES):
        reasons.append(
            f"source.url {app.source.url!r} is not a repository URL (https://, ssh://, git@...)"
        )
    names = Counter(a.name for a in push.artifacts)
    reasons += [
        f"artifact {name!r} is listed {n} times" for name, n in sorted(names.items()) if n > 1
    ]
    if bid in catalog.frozen_ids:
        reasons.append(
            f"version {app.version} of {app.namespace}/{app.name} is already registered and frozen; push a new version"
        )
    elif catalog.live(bid) is not None:
        if not catalog.can(push.pusher, "WRITE", bid):
            reasons.append(f"{push.pusher} lacks WRITE on {bid}, which is already registered")
    else:
        owner = catalog.namespace_owner.get(app.namespace)
        if owner is not None and not catalog.can(push.pusher, "WRITE", app.namespace):
            reasons.append(
                f"{push.pusher} lacks WRITE on namespace {app.namespace!r} (owned by {owner}; ask for a grant)"
            )
    return reasons


def decide_push(catalog: Catalog, event: Event) -> Decision:
    push: BundlePushed = event.data
    out = Outputs(event, SOURCE)
    bid = push.bundle_id
    reasons = push_problems(catalog, push)
    if reasons:
        out.emit(BundleRejected(bundle_id=bid, pusher=push.pusher, reasons=reasons), bid)
        return out.decision()
    existing = catalog.live(bid)
    owner = existing.owner if existing is not None else push.pusher
    out.emit(BundleRegistered(bundle_id=bid, owner=owner), bid)
    if push.app.frozen:
        out.emit(BundleFrozen(bundle_id=bid, by=push.pusher), bid)
    return out.decision()


def decide_profile(catalog: Catalog, event: Event) -> Decision:
    status: PluginStatus = event.data
    if status.state not in TERMINAL or status.perf is None:
        return NOTHING
    if catalog.live(status.bundle_id) is None:
        return NOTHING  # not an ECR bundle (or deleted): nothing to attach the profile to
    hardware = status.hardware or catalog.hardware.get(status.node)
    if hardware is None:
        return Decision.refuse(
            f"run {status.run_id} of {status.bundle_id} on {status.node}: no hardware class "
            "(the node never registered and the status carries none); profile not recorded"
        )
    perf = status.perf
    out = Outputs(event, SOURCE)
    out.emit(
        ProfileRecorded(
            bundle_id=status.bundle_id,
            hardware=hardware,
            node=status.node,
            run_id=status.run_id,
            job_id=status.job_id,
            exit_state="completed" if status.state == PluginState.COMPLETED else "failed",
            exit_code=status.exit_code,
            cpu_seconds=perf.cpu_seconds,
            max_rss_bytes=perf.max_rss_bytes,
            gpu_percent=perf.gpu_percent,
            wall_seconds=perf.wall_seconds,
        ),
        status.bundle_id,
    )
    return out.decision()


def decide(catalog: Catalog, event: Event) -> Decision:
    data = event.data
    if event.source == SOURCE:
        return NOTHING
    match data:
        case BundlePushed():
            return decide_push(catalog, event)
        case PluginStatus():
            return decide_profile(catalog, event)
        case BundleApproved():
            problem = catalog.approval_problem(data)
        case BundleFrozen():
            problem = catalog.change_problem(data.bundle_id, data.by, "WRITE", "freeze")
        case BundleDeleted():
            problem = catalog.change_problem(data.bundle_id, data.by, "FULL_CONTROL", "delete")
        case PermissionGranted() | PermissionRevoked():
            problem = catalog.permission_problem(data)
        case _:
            return NOTHING
    return NOTHING if problem is None else Decision.refuse(f"{event.type} refused: {problem}")


def salvage_push(raw: bytes) -> Decision | None:
    """Reject a push that does not even decode, listing every problem pydantic finds.

    Needs a readable envelope (id, time) and a bundle id and pusher in the payload: the
    rejection must say which bundle and whom it answers; otherwise None (dead letter).
    """
    broken = broken_input(raw, BundlePushed.event_type)
    if broken is None:
        return None
    cause, data = broken
    try:
        app = data["app"]
        bid = bundle_id(app["namespace"], app["name"], str(app["version"]))
        rejected = BundleRejected(
            bundle_id=bid, pusher=data["pusher"], reasons=validation_reasons(BundlePushed, data)
        )
    except (KeyError, TypeError, ValidationError):
        return None  # no bundle id or pusher to answer, or nothing wrong after all
    out = Outputs(cause, SOURCE)
    out.emit(rejected, bid)
    return out.decision()


class EcrHandler:
    """The ECR as the runtime drives it."""

    name = "ecr"
    source = SOURCE
    inputs = (
        "evt.ecr.bundle.pushed.>",
        "evt.ecr.bundle.approved.>",
        "evt.ecr.bundle.frozen.>",
        "evt.ecr.bundle.deleted.>",
        "evt.ecr.permission.>",
        "evt.node.registered.>",
        "fromedge.*.node.registered",
        "fromedge.*.plugin.status",
    )
    outputs = (
        "evt.ecr.bundle.registered.>",
        "evt.ecr.bundle.rejected.>",
        "evt.ecr.profile.recorded.>",
    )

    def __init__(self, config: HandlerConfig | None = None) -> None:
        self.config = config or HandlerConfig()

    def initial(self) -> Catalog:
        return Catalog(self.config)

    def evolve(self, state: Catalog, event: Event) -> None:
        evolve(state, event)

    def decide(self, state: Catalog, event: Event) -> Decision:
        return decide(state, event)

    def tick(self, state: Catalog, now: datetime) -> list[Event]:
        return []

    def salvage(self, raw: bytes, error: DecodeError) -> Decision | None:
        return salvage_push(raw) if error.event_type == BundlePushed.event_type else None


__all__ = [
    "EcrHandler",
    "decide",
    "decide_push",
    "manifest_hardware",
    "push_problems",
    "salvage_push",
]
