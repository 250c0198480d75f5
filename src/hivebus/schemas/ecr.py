"""ECR (edge code repository) events and the app spec a ``sage.yaml`` describes.

A bundle is ``namespace/name:version``. ``BundlePushed`` carries the whole ``AppSpec`` plus
who pushed it, artifacts by digest and provenance; the ECR handler answers with
``BundleRegistered`` or ``BundleRejected`` (every reason at once). The model checks shape,
types and enums; policy (semver, frozen versions, WRITE permission, reserved names) is the
handler's, which can call ``version_problems`` / ``architecture_problem`` to explain itself.
"""

from __future__ import annotations

import re
import shlex
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
from hivebus.schemas.storage import object_ref

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
    "version_key",
    "version_problems",
]

_NAMESPACE = (
    r"[a-z0-9]+(?:[_-][a-z0-9]+)*"  # no dots: Docker would read ``a.b/`` as a registry host
)
_NAME = r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"
"""A Docker repository path component, upper case allowed as Sage's ECR allows it
(``METEKsonic-3d``): the ECR stores the name as written."""
_VERSION = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # a Docker tag
_RELEASE = re.compile(r"([0-9]+(?:\.[0-9]+)*)(?:-([0-9A-Za-z.-]+))?")
"""A release version: dot-separated numbers (``1``, ``1.0``, ``1.00``, ``0.2.1``,
``0.23.4.13``), optionally ``-suffix`` (``0.2.1-rc1``, or ``git describe``'s ``0.2.1-3-gabc1234``)."""

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
    """Why ``version`` is not a release version (ECR policy); empty when it is.

    Sage's ECR stores any version as written; hivebus takes dot-separated numbers of any
    count, leading zeros included (``1.0``, ``1.00``, ``0.23.4.13``), with an optional
    ``-suffix``, so that versions can be ordered (``version_key``); a leading ``v`` is
    refused with the spelling to use, and so is anything else (``latest``, ``main``).
    """
    if not isinstance(version, str) or not version:
        return ["version is empty"]
    if version[:1] in ("v", "V") and _RELEASE.fullmatch(version[1:]):
        return [f"version {version!r} must not start with 'v' (write {version[1:]!r})"]
    if not _RELEASE.fullmatch(version):
        return [
            f"version {version!r} is not a release version: numbers separated by dots "
            "(1.0, 0.2.1, 0.23.4.13), optionally followed by -suffix (0.2.1-rc1)"
        ]
    return []


def version_key(version: str) -> tuple[tuple[int, ...], int, str, int, str]:
    """A sort key for release versions: numbers compared one by one as integers, a missing
    number counting as 0 (``1.0`` < ``1.0.1`` < ``1.2`` < ``1.10``; ``0.23.4.13`` > ``0.23.4``);
    a version with a ``-suffix`` sorts before the same numbers without one (``0.2.1-rc1`` <
    ``0.2.1``); versions equal so far (``1``, ``1.0``, ``1.00``) order by the text, shortest
    first, so the order is total. A version that is not a release sorts before every release."""
    match = _RELEASE.fullmatch(version)
    if match is None:
        return ((), 0, "", len(version), version)
    numbers = tuple(int(part) for part in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers = numbers[:-1]
    suffix = match.group(2)
    return (numbers, 0 if suffix is not None else 1, suffix or "", len(version), version)


def _split_commas(value: Any) -> Any:
    """sage.yaml writes ``keywords``/``authors`` as ``"a, b"``; lists are accepted as they are."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[
    list[Annotated[str, StringConstraints(min_length=1)]], BeforeValidator(_split_commas)
]


def _scalar_text(value: Any) -> Any:
    """A YAML scalar as the text a build or a command line gets (``5`` -> ``"5"``,
    ``true`` -> ``"true"``); anything else is left for validation to refuse."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _texts(value: Any) -> Any:
    if isinstance(value, list):
        return [_scalar_text(item) for item in value]
    if isinstance(value, dict):
        return {key: _scalar_text(item) for key, item in value.items()}
    return value


TextList = Annotated[list[str], BeforeValidator(_texts)]
TextMap = Annotated[dict[str, str], BeforeValidator(_texts)]


class AppSource(Part):
    """Where the code is and what it builds for."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    branch: str | None = None
    tag: str | None = None
    git_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{7,64}$")] | None = None
    directory: str = "."
    dockerfile: str = "Dockerfile"
    architectures: Annotated[list[Architecture], Field(min_length=1)]
    build_args: TextMap = Field(default_factory=dict)
    """``docker build --build-arg KEY=VALUE`` pairs, as the ECR passes them to its build."""

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

    id: Annotated[
        str, StringConstraints(pattern=r"^-{0,2}[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)
    ]
    """The argument's name, as the app reads it: ``interval``, ``sampling-interval`` or, as
    written on its command line, ``--rate`` (Sage's ECR does not look at ids at all)."""
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


_TEST_WORD = re.compile(r"[a-zA-Z0-9_. -]+")


def _command_words(value: Any) -> Any:
    """``testing.command`` is a list of words on Sage (``["python3", "-m", "unittest"]``);
    a string is split as a shell would (hivebus's earlier sage.yaml files wrote one)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"command {value!r}: {exc}") from None
    return value


class AppTesting(Part):
    """How the ECR tests a built image: ``docker run [--entrypoint ''] IMAGE COMMAND...``."""

    command: Annotated[list[str], Field(min_length=1), BeforeValidator(_command_words)]
    mask_entrypoint: bool = False
    """Run ``command`` instead of the image's entrypoint rather than as its arguments."""

    @model_validator(mode="after")
    def _words_sage_accepts(self) -> Self:
        for word in self.command:
            if not _TEST_WORD.fullmatch(word):
                raise ValueError(
                    f"command word {word!r} has characters Sage's ECR refuses in a test "
                    "command (letters, digits, '_', '.', '-' and spaces only)"
                )
        return self


class Provenance(Part):
    """Where a bundle's model came from: training data (bucket objects or URLs) and model.

    An entry ``storage://<bucket>/<key>`` names an object of the hub's object store (bucket id
    or name; ``schemas.storage.object_ref``), which ``hivebus ecr show`` resolves against the
    ``objects`` view; anything else (a URL, a DOI) is kept as written."""

    training_data: list[str] = Field(default_factory=list)
    model: str | None = None
    notes: str = ""

    @model_validator(mode="after")
    def _object_refs_are_well_formed(self) -> Self:
        for ref in [*self.training_data, *([self.model] if self.model else [])]:
            object_ref(ref)  # ValueError for a malformed storage:// reference
        return self


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
    arguments: TextList = Field(default_factory=list)
    """The app's default command-line arguments (``[speed, '5']``)."""
    inputs: list[AppInput] = Field(default_factory=list)
    resources: AppResources = Field(default_factory=AppResources)
    """What one instance needs (hivebus's form, used for placement: cpu, memory, gpu)."""
    resource_list: list[JsonObject] = Field(default_factory=list)
    """Sage's form of ``resources``, a list (``- type: RGB_image_producer``): stored as
    written, not used for placement (Sage calls it a future feature)."""
    metadata: JsonObject = Field(default_factory=dict)
    frozen: bool = False
    testing: AppTesting | None = None

    @model_validator(mode="before")
    @classmethod
    def _resources_as_sage_lists_them(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("resources"), list):
            data = dict(data)
            data["resource_list"] = data.pop("resources")
        return data

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
