"""The ECR: decide users' commands on the catalog, record profiles from real runs.

Commands (``decide_command``, pure ``(catalog, command) -> facts``):

- ``ecr.push`` -> ``ecr.bundle.registered`` (id ``namespace/name:version``, carrying the app;
  plus ``ecr.bundle.frozen`` when the app says ``frozen: true``). A version that is registered
  and not frozen may be pushed again by someone with WRITE on it: the new push replaces it and
  needs a new approval;
- ``ecr.approve`` / ``freeze`` / ``delete`` / ``grant`` / ``revoke`` -> the fact of the same
  shape (``ecr.bundle.approved``, ..., ``ecr.permission.revoked``);
- any of them refused -> one ``ecr.command.rejected`` with who, what and every reason.

``plugin.status`` that ends a run with perf figures -> ``ecr.profile.recorded`` (bundle x the
node's hardware class). A user's request event of a command's type (how logs were written
before commands existed, and what a raw ``hivebus publish`` still writes) is decided as that
command.
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
from hivebus.handlers.directory import INPUTS as DIRECTORY_INPUTS
from hivebus.schemas.commands import command_of
from hivebus.schemas.ecr import (
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    BundleRejected,
    EcrCommandRejected,
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
    if app.namespace in config.reserved_namespaces and not catalog.is_reviewer(push.pusher):
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


def decide_push(catalog: Catalog, command: Event) -> Decision:
    push: BundlePushed = command.data
    out = Outputs(command, SOURCE)
    bid = push.bundle_id
    reasons = push_problems(catalog, push)
    if reasons:
        return rejected(command, bid, reasons)
    existing = catalog.live(bid)
    owner = existing.owner if existing is not None else push.pusher
    out.emit(
        BundleRegistered(
            bundle_id=bid,
            owner=owner,
            pusher=push.pusher,
            app=push.app,
            artifacts=list(push.artifacts),
            provenance=push.provenance,
        ),
        bid,
    )
    if push.app.frozen:
        out.emit(BundleFrozen(bundle_id=bid, by=push.pusher), bid)
    return out.decision()


def rejected(command: Event, target: str, reasons: list[str]) -> Decision:
    """The one fact a refused command leaves: who, what, every reason."""
    spec = command_of(command)
    assert spec is not None
    out = Outputs(command, SOURCE)
    out.emit(
        EcrCommandRejected(
            command=spec.name,
            by=getattr(command.data, spec.actor),
            target=target,
            reasons=reasons,
            data=command.data.model_dump(mode="json"),
        ),
        target,
    )
    return out.decision()


def command_problem(catalog: Catalog, data: object) -> str | None:
    """Why an approve/freeze/delete/grant/revoke command is refused, or None."""
    match data:
        case BundleApproved():
            return catalog.approval_problem(data)
        case BundleFrozen():
            return catalog.change_problem(data.bundle_id, data.by, "WRITE", "freeze")
        case BundleDeleted():
            return catalog.change_problem(data.bundle_id, data.by, "FULL_CONTROL", "delete")
        case PermissionGranted() | PermissionRevoked():
            return catalog.permission_problem(data)
    raise TypeError(f"not an ECR command: {type(data).__name__}")


def decide_command(catalog: Catalog, command: Event) -> Decision:
    """The facts an ECR command leads to on ``catalog`` (which it does not change)."""
    data = command.data
    if isinstance(data, BundlePushed):
        return decide_push(catalog, command)
    target = data.resource if isinstance(data, PermissionGranted | PermissionRevoked) else data.bundle_id
    problem = command_problem(catalog, data)
    if problem is not None:
        return rejected(command, target, [problem])
    out = Outputs(command, SOURCE)
    out.emit(data, target)
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
    if event.source == SOURCE:
        return NOTHING
    if isinstance(event.data, PluginStatus):
        return decide_profile(catalog, event)
    spec = command_of(event)
    if spec is not None and spec.decider == "ecr":
        return decide_command(catalog, event)
    return NOTHING


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
        "evt.ecr.bundle.registered.>",
        "evt.ecr.bundle.approved.>",
        "evt.ecr.bundle.frozen.>",
        "evt.ecr.bundle.deleted.>",
        "evt.ecr.permission.>",
        "evt.node.registered.>",
        "fromedge.*.node.registered",
        "fromedge.*.plugin.status",
        *DIRECTORY_INPUTS,
    )
    redelivered = frozenset(
        {
            "ecr.bundle.registered",
            "ecr.bundle.approved",
            "ecr.bundle.frozen",
            "ecr.bundle.deleted",
            "ecr.permission.granted",
            "ecr.permission.revoked",
        }
    )
    """Own facts the inputs deliver again (how replicas see each other's decisions)."""
    outputs = (
        "evt.ecr.bundle.rejected.>",
        "evt.ecr.command.rejected.>",
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

    def decide_command(self, state: Catalog, command: Event) -> Decision:
        return decide_command(state, command)

    def aggregate(self, command: Event) -> tuple[str, str | None]:
        """The facts one decision is checked against (optimistic concurrency), as an event
        type glob and an aggregate key: the whole catalog, since ownership and grants of a
        namespace reach every bundle in it."""
        return ">", None

    def tick(self, state: Catalog, now: datetime) -> list[Event]:
        return []

    def salvage(self, raw: bytes, error: DecodeError) -> Decision | None:
        return salvage_push(raw) if error.event_type == BundlePushed.event_type else None


__all__ = [
    "EcrHandler",
    "decide",
    "decide_command",
    "decide_push",
    "manifest_hardware",
    "push_problems",
    "salvage_push",
]
