"""The ECR's state: bundles, namespace owners, grants, node hardware and run profiles.

Both the ECR handler and the scheduler fold the ECR events into a ``Catalog`` with the same
``evolve``, so they agree on who may read what. Access rules (S3-style verbs, as the Sage
object store and ECR use them):

- the first user whose push is *registered* in a namespace owns it: FULL_CONTROL on the
  namespace and every bundle in it; the user who registered a bundle has FULL_CONTROL on it;
- grants add verbs for a user or a group on a namespace (covering its bundles) or on one
  bundle; FULL_CONTROL implies every verb; WRITE does not imply READ;
- ``AllUsers`` (everyone) may only be granted READ: that makes a bundle (or a namespace's
  bundles) public. Without it a bundle is private: invisible to others, unschedulable by them;
- reviewers read every bundle (they must, to review it) and alone may approve;
- a grant or revoke needs WRITE_ACP on the resource.

The fold takes facts only: an approval, freeze, deletion, grant or revoke changes the catalog
when the ECR decided it (``source`` ``handler/...``); a user's request of the same type (what
logs held before commands existed) changes nothing here: the ECR decides it as a command and
the fact it appends is what counts (see ``handlers.runtime``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import singledispatch
from typing import Final

import structlog

from hivebus.handlers.config import ALL_USERS, HandlerConfig
from hivebus.handlers.directory import REVIEWING_ROLES, Directory
from hivebus.schemas.commands import is_decided
from hivebus.schemas.ecr import (
    AppSpec,
    ArtifactRef,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    BundleRejected,
    HardwareProfile,
    PermissionGranted,
    PermissionRevoked,
    ProfileRecorded,
    Provenance,
)
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import NodeManifest, NodeRegistered

log = structlog.get_logger()

VERBS: Final = frozenset({"READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL"})
Principal = tuple[str, str]  # ("user", "alice") | ("group", "AllUsers")
HardwareKey = tuple[str, str, str]  # (arch, gpu, node class)


def hardware_key(hw: HardwareProfile) -> HardwareKey:
    return (hw.arch, hw.gpu or "", hw.node_class or "")


def manifest_hardware(manifest: NodeManifest) -> HardwareProfile:
    return HardwareProfile(
        arch=manifest.hardware.arch, gpu=manifest.hardware.gpu, node_class=manifest.node_class
    )


@dataclass(slots=True)
class Bundle:
    id: str
    app: AppSpec
    owner: str
    registered: datetime
    artifacts: list[ArtifactRef] = field(default_factory=list)
    provenance: Provenance | None = None
    frozen: bool = False
    approved_by: str | None = None
    deleted: bool = False

    @property
    def namespace(self) -> str:
        return self.app.namespace

    @property
    def approved(self) -> bool:
        return self.approved_by is not None


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run: cores used on average, peak memory, GPU percent, wall seconds."""

    cpu: float
    memory: int
    gpu: float
    wall: float


@dataclass(slots=True)
class Profile:
    """Recent runs of one bundle on one hardware class; estimates take the worst of them."""

    runs: deque[Run]

    @property
    def cpu(self) -> float:
        return max(r.cpu for r in self.runs)

    @property
    def memory(self) -> int:
        return max(r.memory for r in self.runs)

    @property
    def gpu(self) -> float:
        return max(r.gpu for r in self.runs)

    @property
    def wall(self) -> float:
        return max(r.wall for r in self.runs)


@dataclass(slots=True)
class Catalog:
    config: HandlerConfig
    bundles: dict[str, Bundle] = field(default_factory=dict)
    namespace_owner: dict[str, str] = field(default_factory=dict)
    grants: dict[str, dict[Principal, set[str]]] = field(default_factory=dict)
    pushes: dict[str, BundlePushed] = field(default_factory=dict)
    """Pushes not answered yet, by event id (the answer's causation id)."""
    hardware: dict[str, HardwareProfile] = field(default_factory=dict)
    """Each registered node's hardware class, from its manifest."""
    profiles: dict[str, dict[HardwareKey, Profile]] = field(default_factory=dict)
    frozen_ids: set[str] = field(default_factory=set)
    """Bundle ids ever frozen, deleted or not: a frozen id is never reused."""
    directory: Directory = field(default_factory=Directory)
    """Roles and groups from the ``auth.*`` facts."""

    # --- who ------------------------------------------------------------------------------

    def is_reviewer(self, user: str) -> bool:
        return user in self.config.reviewers or self.directory.holds(user, REVIEWING_ROLES)

    def groups_of(self, user: str) -> frozenset[str]:
        return self.config.groups_of(user) | self.directory.groups_of(user)

    def known_groups(self) -> set[str]:
        return set(self.config.groups) | set(self.directory.groups)

    # --- access ---------------------------------------------------------------------------

    def live(self, bundle_id: str) -> Bundle | None:
        bundle = self.bundles.get(bundle_id)
        return bundle if bundle is not None and not bundle.deleted else None

    def verbs(self, user: str, resource: str) -> frozenset[str]:
        """Every verb ``user`` holds on a namespace or a bundle."""
        namespace = resource.split("/", 1)[0]
        if self.namespace_owner.get(namespace) == user:
            return VERBS
        bundle = self.bundles.get(resource) if "/" in resource else None
        if bundle is not None and bundle.owner == user:
            return VERBS
        principals: list[Principal] = [("user", user)]
        principals += [("group", g) for g in self.groups_of(user)]
        held: set[str] = set()
        for res in {namespace, resource}:
            table = self.grants.get(res)
            if table:
                for principal in principals:
                    held |= table.get(principal, set())
        if "FULL_CONTROL" in held:
            return VERBS
        if self.is_reviewer(user):
            held.add("READ")
        return frozenset(held)

    def can(self, user: str, verb: str, resource: str) -> bool:
        return verb in self.verbs(user, resource)

    def may_read(self, user: str | None, resource: str) -> bool:
        """The ECR's read rule for a viewer: anonymous (None) reads public bundles only."""
        return self.is_public(resource) if user is None else self.can(user, "READ", resource)

    def is_public(self, resource: str) -> bool:
        namespace = resource.split("/", 1)[0]
        return any(
            "READ" in self.grants.get(res, {}).get(("group", ALL_USERS), set())
            for res in {namespace, resource}
        )

    def permission_problem(self, change: PermissionGranted | PermissionRevoked) -> str | None:
        """Why a grant or revoke has no effect, or None when it is valid."""
        what = "grant" if isinstance(change, PermissionGranted) else "revoke"
        resource = change.resource
        if change.resource_kind == "namespace":
            if resource not in self.namespace_owner:
                return f"namespace {resource!r} has no owner yet (push a bundle to claim it)"
        elif self.live(resource) is None:
            return f"bundle {resource} is not registered"
        if not self.can(change.by, "WRITE_ACP", resource):
            return f"{change.by} lacks WRITE_ACP on {resource}, needed to {what} permissions"
        if (
            change.grantee_type == "group"
            and change.grantee != ALL_USERS
            and change.grantee not in self.known_groups()
        ):
            known = ", ".join([ALL_USERS, *sorted(self.known_groups())])
            return f"unknown group {change.grantee!r} (groups: {known}; an admin adds one: hivebus group add NAME USER...)"
        if change.grantee == ALL_USERS and change.permission != "READ":
            return f"{ALL_USERS} can only be granted READ (which makes {resource} public)"
        if isinstance(change, PermissionRevoked):
            held = self.grants.get(resource, {}).get((change.grantee_type, change.grantee), set())
            if change.permission not in held:
                return f"{change.grantee_type} {change.grantee} holds no {change.permission} grant on {resource}"
        return None

    def approval_problem(self, approval: BundleApproved) -> str | None:
        if self.live(approval.bundle_id) is None:
            return f"bundle {approval.bundle_id} is not registered"
        if not self.is_reviewer(approval.by):
            return f"{approval.by} is not a reviewer; only reviewers approve bundles (an admin gives the role: hivebus user role {approval.by} reviewer)"
        return None

    def change_problem(self, bundle_id: str, by: str, verb: str, what: str) -> str | None:
        if self.live(bundle_id) is None:
            return f"bundle {bundle_id} is not registered"
        if not self.can(by, verb, bundle_id):
            return f"{by} lacks {verb} on {bundle_id}, needed to {what} it"
        return None

    # --- profiles ---------------------------------------------------------------------------

    def profile(self, bundle_id: str, hw: HardwareProfile | None) -> tuple[Profile | None, str]:
        """The profile to plan with: this hardware class, else this arch, else any; and which."""
        by_hw = self.profiles.get(bundle_id)
        if not by_hw:
            return None, ""
        if hw is not None:
            exact = by_hw.get(hardware_key(hw))
            if exact is not None:
                return exact, f"profiled on {hw.arch}" + (f"/{hw.gpu}" if hw.gpu else "")
            same_arch = [p for key, p in by_hw.items() if key[0] == hw.arch]
            if same_arch:
                return _worst(same_arch), f"profiled on {hw.arch}"
        return _worst(list(by_hw.values())), "profiled on other hardware"


def _worst(profiles: list[Profile]) -> Profile:
    """One profile holding the worst figures of several (planning must not under-estimate)."""
    worst = Run(
        cpu=max(p.cpu for p in profiles),
        memory=max(p.memory for p in profiles),
        gpu=max(p.gpu for p in profiles),
        wall=max(p.wall for p in profiles),
    )
    return Profile(deque([worst]))


# --- the fold ---------------------------------------------------------------------------------


def evolve(catalog: Catalog, event: Event) -> None:
    """Fold one ECR (or node registration) event into the catalog; other events are ignored."""
    apply(event.data, catalog, event)


@singledispatch
def apply(data: Payload, catalog: Catalog, event: Event) -> None:
    """Events the catalog does not track change nothing (roles and groups: its directory)."""
    catalog.directory.fold(event)


@apply.register
def _pushed(data: BundlePushed, catalog: Catalog, event: Event) -> None:
    """A push request of an old log: its registration (``causationid``) names only the id."""
    if not is_decided(event):
        catalog.pushes[event.id] = data


@apply.register
def _registered(data: BundleRegistered, catalog: Catalog, event: Event) -> None:
    push = catalog.pushes.pop(event.causationid or "", None)
    if data.app is not None:
        app, artifacts, provenance = data.app, data.artifacts, data.provenance
    elif push is not None:
        app, artifacts, provenance = push.app, push.artifacts, push.provenance
    else:
        log.warning("catalog.registered_without_push", bundle=data.bundle_id, event_id=event.id)
        return
    catalog.namespace_owner.setdefault(app.namespace, data.owner)
    catalog.bundles[data.bundle_id] = Bundle(
        id=data.bundle_id,
        app=app,
        owner=data.owner,
        registered=event.time,
        artifacts=list(artifacts),
        provenance=provenance,
        frozen=app.frozen,
    )
    if app.frozen:
        catalog.frozen_ids.add(data.bundle_id)


@apply.register
def _rejected(data: BundleRejected, catalog: Catalog, event: Event) -> None:
    catalog.pushes.pop(event.causationid or "", None)


@apply.register
def _approved(data: BundleApproved, catalog: Catalog, event: Event) -> None:
    bundle = catalog.live(data.bundle_id)
    if is_decided(event) and bundle is not None:
        bundle.approved_by = data.by


@apply.register
def _frozen(data: BundleFrozen, catalog: Catalog, event: Event) -> None:
    bundle = catalog.live(data.bundle_id)
    if is_decided(event) and bundle is not None:
        bundle.frozen = True
        catalog.frozen_ids.add(data.bundle_id)


@apply.register
def _deleted(data: BundleDeleted, catalog: Catalog, event: Event) -> None:
    bundle = catalog.live(data.bundle_id)
    if is_decided(event) and bundle is not None:
        bundle.deleted = True


@apply.register
def _granted(data: PermissionGranted, catalog: Catalog, event: Event) -> None:
    if is_decided(event):
        table = catalog.grants.setdefault(data.resource, {})
        table.setdefault((data.grantee_type, data.grantee), set()).add(data.permission)


@apply.register
def _revoked(data: PermissionRevoked, catalog: Catalog, event: Event) -> None:
    if not is_decided(event):
        return
    table = catalog.grants.get(data.resource, {})
    held = table.get((data.grantee_type, data.grantee), set())
    held.discard(data.permission)
    if not held:
        table.pop((data.grantee_type, data.grantee), None)


@apply.register
def _node_registered(data: NodeRegistered, catalog: Catalog, event: Event) -> None:
    catalog.hardware[data.manifest.node_id] = manifest_hardware(data.manifest)


@apply.register
def _profile(data: ProfileRecorded, catalog: Catalog, event: Event) -> None:
    cpu = data.cpu_seconds / data.wall_seconds if data.wall_seconds > 0 else 0.0
    run = Run(
        cpu=cpu, memory=data.max_rss_bytes, gpu=data.gpu_percent or 0.0, wall=data.wall_seconds
    )
    by_hw = catalog.profiles.setdefault(data.bundle_id, {})
    key = hardware_key(data.hardware)
    profile = by_hw.get(key)
    if profile is None:
        by_hw[key] = Profile(deque([run], maxlen=catalog.config.profile_window))
    else:
        profile.runs.append(run)
