"""ECR (edge code repository) events and the app spec a ``sage.yaml`` describes.

A bundle is ``namespace/name:version``. ``BundlePushed`` carries the whole ``AppSpec`` plus
who pushed it, artifacts by digest and provenance; the ECR handler answers with
``BundleRegistered`` or ``BundleRejected`` (every reason at once). The model checks shape,
types and enums; policy (semver, frozen versions, WRITE permission, reserved names) is the
handler's, which can call ``version_problems`` / ``architecture_problem`` to explain itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BeforeValidator, Field, StringConstraints, model_validator

from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import (
    STRICT,
    Architecture,
    Digest,
    JsonObject,
    Key,
    Label,
    NodeId,
    NonNegFloat,
    NonNegInt,
    Part,
    UserName,
    architecture_problem,
    one_union_error,
)
from hivebus.schemas.registry import event

__all__ = [
    "AppInput",
    "AppResources",
    "AppSource",
    "AppSpec",
    "AppTesting",
    "ArtifactRef",
    "BundleApproved",
    "BundleDeleted",
    "BundleFrozen",
    "BundleId",
    "BundlePushed",
    "BundleRegistered",
    "BundleRejected",
    "EcrCommandRejected",
    "HardwareProfile",
    "Permission",
    "PermissionGranted",
    "PermissionRevoked",
    "ProfileRecorded",
    "Provenance",
    "architecture_problem",
    "bundle_id",
    "parse_bundle_id",
    "version_problems",
]

_NAMESPACE = (
    r"[a-z0-9]+(?:[_-][a-z0-9]+)*"  # no dots: Docker would read ``a.b/`` as a registry host
)
_NAME = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"  # a Docker repository path component
_VERSION = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # a Docker tag
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")

Namespace = Annotated[str, StringConstraints(max_length=64, pattern=rf"^{_NAMESPACE}$")]
AppName = Annotated[str, StringConstraints(max_length=128, pattern=rf"^{_NAME}$")]
Version = Annotated[str, StringConstraints(pattern=rf"^{_VERSION}$")]
BundleId = Annotated[
    str, StringConstraints(max_length=330, pattern=rf"^{_NAMESPACE}/{_NAME}:{_VERSION}$")
]
"""``namespace/name:version``, e.g. ``waggle/plugin-bme680:0.2.1``."""
_BUNDLE_ID = re.compile(rf"({_NAMESPACE})/({_NAME}):({_VERSION})")

Permission = Literal["READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL"]
InputType = Literal["boolean", "int", "long", "float", "double", "string", "File"]
ALL_USERS: Final = "AllUsers"


def bundle_id(namespace: str, name: str, version: str) -> str:
    """The bundle id ``namespace/name:version``."""
    return f"{namespace}/{name}:{version}"


def parse_bundle_id(text: str) -> tuple[str, str, str]:
    """``(namespace, name, version)`` from ``namespace/name:version``; ValueError if malformed."""
    match = _BUNDLE_ID.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a bundle id (namespace/name:version)")
    return match.group(1), match.group(2), match.group(3)


def version_problems(version: str) -> list[str]:
    """Why ``version`` is not a release version ``X.Y.Z`` (ECR policy); empty when it is."""
    if not isinstance(version, str) or not version:
        return ["version is empty"]
    if version.startswith("v") and _SEMVER.fullmatch(version[1:]):
        return [f"version {version!r} must not start with 'v' (write {version[1:]!r})"]
    if not _SEMVER.fullmatch(version):
        return [f"version {version!r} is not of the form X.Y.Z (numbers without leading zeros)"]
    return []


def _split_commas(value: Any) -> Any:
    """sage.yaml writes ``keywords``/``authors`` as ``"a, b"``; lists are accepted as they are."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[
    list[Annotated[str, StringConstraints(min_length=1)]], BeforeValidator(_split_commas)
]


class AppSource(Part):
    """Where the code is and what it builds for."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    branch: str | None = None
    tag: str | None = None
    git_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{7,64}$")] | None = None
    directory: str = "."
    dockerfile: str = "Dockerfile"
    architectures: Annotated[list[Architecture], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_ref_and_distinct_platforms(self) -> Self:
        if self.branch is not None and self.tag is not None:
            raise ValueError("give a branch or a tag, not both")
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError("architectures are listed more than once")
        return self


_DEFAULT_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "string": (str,),
    "File": (str,),
}


class AppInput(Part):
    """One argument the app accepts (``--interval 30``)."""

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=64)]
    type: InputType
    description: str = ""
    default: (
        Annotated[
            bool | int | Annotated[float, Field(allow_inf_nan=False)] | str,
            one_union_error("input_default", "default must be a boolean, a number or a string"),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _default_matches_type(self) -> Self:
        if self.default is None:
            return self
        allowed = _DEFAULT_TYPES[self.type]
        is_bool = isinstance(self.default, bool)
        if (is_bool and bool not in allowed) or not isinstance(self.default, allowed):
            raise ValueError(f"default {self.default!r} does not match type {self.type!r}")
        return self


class AppResources(Part):
    """What one instance needs: cores, bytes of memory, GPUs (numbers; formats parse ``128Mi``)."""

    cpu: NonNegFloat | None = None
    memory: NonNegInt | None = None
    gpu: NonNegInt | None = None


class AppTesting(Part):
    command: Annotated[str, StringConstraints(min_length=1)]


class Provenance(Part):
    """Where a bundle's model came from: training data (bucket objects or URLs) and model."""

    training_data: list[str] = Field(default_factory=list)
    model: str | None = None
    notes: str = ""


class ArtifactRef(Part):
    """A file that is part of the bundle, named by content digest."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    kind: Literal["code", "model", "config", "data", "other"] = "other"
    digest: Digest
    size: NonNegInt
    url: str | None = None


class AppSpec(Part):
    """An app as its ``sage.yaml`` describes it (see ``hivebus.formats.load_app``)."""

    namespace: Namespace
    name: AppName
    version: Version
    description: Annotated[str, StringConstraints(min_length=1)]
    keywords: CommaList = Field(default_factory=list)
    authors: CommaList = Field(default_factory=list)
    collaborators: CommaList = Field(default_factory=list)
    funding: str | None = None
    license: str | None = None
    homepage: str | None = None
    source: AppSource
    inputs: list[AppInput] = Field(default_factory=list)
    resources: AppResources = Field(default_factory=AppResources)
    metadata: JsonObject = Field(default_factory=dict)
    frozen: bool = False
    testing: AppTesting | None = None

    @model_validator(mode="after")
    def _distinct_inputs(self) -> Self:
        ids = [i.id for i in self.inputs]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"input ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}"
            )
        return self

    @property
    def bundle_id(self) -> str:
        return bundle_id(self.namespace, self.name, self.version)


class HardwareProfile(Part):
    """The hardware class a profile was measured on: profiles are keyed bundle x this."""

    arch: Architecture
    gpu: str | None = None
    node_class: Label | None = None


# --- events ---------------------------------------------------------------------------------


@event("ecr.bundle.pushed")
class BundlePushed(Payload):
    """A user pushed an app version; the ECR handler decides whether to register it."""

    model_config = STRICT

    app: AppSpec
    pusher: UserName
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    provenance: Provenance | None = None

    @property
    def bundle_id(self) -> str:
        return self.app.bundle_id


@event("ecr.bundle.registered")
class BundleRegistered(Payload):
    """The ECR accepted a push. It carries what was pushed (``app``, ``pusher``, artifacts,
    provenance); a log written before commands existed has them in the ``ecr.bundle.pushed``
    request this answers (``causationid``), and these fields are None."""

    model_config = STRICT

    bundle_id: BundleId
    owner: UserName
    pusher: UserName | None = None
    app: AppSpec | None = None
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    provenance: Provenance | None = None


@event("ecr.bundle.rejected")
class BundleRejected(Payload):
    """A push was refused; ``reasons`` lists every problem found, not only the first."""

    model_config = STRICT

    bundle_id: BundleId
    pusher: UserName
    reasons: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


@event("ecr.bundle.approved")
class BundleApproved(Payload):
    model_config = STRICT

    bundle_id: BundleId
    by: UserName
    comment: str = ""


@event("ecr.bundle.frozen")
class BundleFrozen(Payload):
    """The version can no longer be overwritten."""

    model_config = STRICT

    bundle_id: BundleId
    by: UserName


@event("ecr.bundle.deleted")
class BundleDeleted(Payload):
    model_config = STRICT

    bundle_id: BundleId
    by: UserName
    reason: str = ""


class _PermissionChange(Payload):
    """A grant on a namespace (``waggle``) or a bundle (``waggle/plugin-bme680:0.2.1``)."""

    model_config = STRICT

    resource: Annotated[
        str, StringConstraints(max_length=330, pattern=rf"^{_NAMESPACE}(/{_NAME}:{_VERSION})?$")
    ]
    grantee_type: Literal["user", "group"]
    grantee: UserName
    permission: Permission
    by: UserName

    @model_validator(mode="after")
    def _all_users_is_a_group(self) -> Self:
        if self.grantee == ALL_USERS and self.grantee_type != "group":
            raise ValueError(f"{ALL_USERS} is a group (grantee_type: group)")
        return self

    @property
    def resource_kind(self) -> Literal["namespace", "bundle"]:
        return "bundle" if "/" in self.resource else "namespace"


@event("ecr.permission.granted")
class PermissionGranted(_PermissionChange):
    pass


@event("ecr.permission.revoked")
class PermissionRevoked(_PermissionChange):
    pass


@event("ecr.profile.recorded")
class ProfileRecorded(Payload):
    """What one real run of a bundle cost on one hardware class (from ``plugin.status``)."""

    model_config = STRICT

    bundle_id: BundleId
    hardware: HardwareProfile
    node: NodeId
    run_id: Key
    job_id: Key | None = None
    exit_state: Literal["completed", "failed"]
    exit_code: int | None = None
    cpu_seconds: NonNegFloat
    max_rss_bytes: NonNegInt
    gpu_percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    wall_seconds: NonNegFloat


@event("ecr.command.rejected")
class EcrCommandRejected(Payload):
    """The ECR refused a user's command (``ecr.push``, ``ecr.grant``...): who asked, for what,
    and every reason. Kept for audit; no view treats it as a change of state."""

    model_config = STRICT

    command: Annotated[str, StringConstraints(pattern=r"^ecr\.[a-z]+$")]
    by: UserName
    target: Annotated[str, StringConstraints(min_length=1, max_length=330)]
    """The bundle or namespace the command was about."""
    reasons: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]
    data: JsonObject = Field(default_factory=dict)
    """The command's payload as it was asked."""
