"""SES (edge scheduler) events and the job spec the scheduler's YAML describes.

A job names plugins (each an image of an ECR bundle), the nodes it targets (by id or by
tag), science rules and success criteria. The scheduler answers ``ses.job.submitted`` with
``ses.job.scheduled`` (placements) or ``ses.job.rejected`` (every reason), and sends each
chosen node one ``ses.goal.assigned`` per job, to-edge, with what that node has to run.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import AliasChoices, BeforeValidator, Field, StringConstraints, model_validator

from hivebus.schemas.ecr import BundleId, parse_bundle_id
from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import (
    STRICT,
    Key,
    Label,
    NodeId,
    NonNegFloat,
    NonNegInt,
    Part,
    UserName,
)
from hivebus.schemas.registry import event


class JobState(StrEnum):
    CREATED = "Created"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    REMOVED = "Removed"


class PluginState(StrEnum):
    """A plugin's life on a node: inactive -> queued -> scheduled -> initializing -> running -> completed | failed."""

    INACTIVE = "inactive"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    INITIALIZING = "initializing"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


DEFAULT_REGISTRY: Final = "registry.sagecontinuum.org"


def bundle_from_image(image: str) -> str:
    """The ECR bundle an image names.

    ``registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1`` -> ``waggle/plugin-bme680:0.2.1``.
    The first path part is a registry host when it looks like one, as Docker decides (it has a
    dot or a port, or is ``localhost``). ValueError when what remains is not exactly
    ``namespace/name:version`` (no namespace, nested paths, no tag, a digest only).
    """
    ref = image.strip()
    if "@" in ref:  # name:tag@sha256:...; the tag names the version, the digest pins it
        ref = ref.split("@", 1)[0]
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    candidate = "/".join(parts)
    try:
        parse_bundle_id(candidate)
    except ValueError:
        raise ValueError(
            f"image {image!r} does not name a bundle [registry/]namespace/name:version"
        ) from None
    return candidate


def image_for_bundle(bundle: str, registry: str = DEFAULT_REGISTRY) -> str:
    """The image reference of a bundle in ``registry`` (the inverse of ``bundle_from_image``)."""
    parse_bundle_id(bundle)
    return f"{registry}/{bundle}"


def _label_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _str_values(value: Any) -> Any:
    """Selectors and env are string maps; YAML reads ``true`` and ``3`` as bool and int."""
    if isinstance(value, dict):
        return {key: _label_text(item) for key, item in value.items()}
    return value


def _node_ids(value: Any) -> Any:
    """``nodes`` is a map of node ids in the YAML (``W012:`` with no value); keep the ids."""
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value)
    return value


def _words(value: Any) -> Any:
    """``args`` is a ``[]string`` to Sage's scheduler: an unquoted ``30`` or ``true`` is the
    word ``"30"`` / ``"true"`` (``hivebus.formats.load_job`` keeps the text as written)."""
    if isinstance(value, list):
        return [_label_text(item) for item in value]
    return value


StrMap = Annotated[dict[str, str], BeforeValidator(_str_values)]
Words = Annotated[list[str], BeforeValidator(_words)]
PLUGIN_NAME: Final = re.compile(r"[a-z0-9-]+")
"""A plugin's name within a job, by Sage's scheduler's rule: lower-case letters, digits, ``-``
(it becomes a Kubernetes object name on the node). Checked where a job is submitted
(``hivebus.formats.load_job``, the scheduler's decision), not when an event is read: a log
written before the rule keeps decoding."""


def plugin_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plugin name Sage's scheduler takes, or None."""
    if PLUGIN_NAME.fullmatch(name):
        return None
    hint = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "my-plugin"
    return (
        f"plugin name {name!r} must be lower-case letters, digits and '-' (as Sage's "
        f"scheduler requires): write {hint!r}"
    )


Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]


class PluginSpec(Part):
    """How to run one plugin: its image, arguments, environment and placement hints."""

    image: Image
    args: Words = Field(default_factory=list)
    entrypoint: str | None = None
    env: StrMap = Field(default_factory=dict)
    selector: StrMap = Field(default_factory=dict)
    resource: StrMap = Field(default_factory=dict)
    """k8s-style requests as written (``request.cpu: 250m``, ``limit.memory: 1Gi``)."""
    volume: StrMap = Field(default_factory=dict)
    """Host paths to mount, as Sage's scheduler takes them (``volume: {}`` is common)."""
    privileged: bool = False
    """Run with the node's devices and privileges; only where the node's policy allows it
    (setting ``allow_privileged``), else the scheduler refuses the job with the reason."""

    @property
    def bundle_id(self) -> str:
        return bundle_from_image(self.image)

    @model_validator(mode="after")
    def _image_names_a_bundle(self) -> Self:
        bundle_from_image(self.image)  # ValueError explains
        return self


class JobPlugin(Part):
    name: Label
    plugin_spec: PluginSpec = Field(validation_alias=AliasChoices("plugin_spec", "pluginSpec"))


class JobSpec(Part):
    """A job as written in the scheduler's YAML (see ``hivebus.formats.load_job``)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S(.*\S)?$")]
    user: UserName | None = None
    """The owner the file names, if any; the submitter of record is ``JobSubmitted.user``."""
    plugins: Annotated[list[JobPlugin], Field(min_length=1)]
    nodes: Annotated[list[NodeId], BeforeValidator(_node_ids)] = Field(default_factory=list)
    node_tags: list[Label] = Field(
        default_factory=list, validation_alias=AliasChoices("node_tags", "nodeTags")
    )
    science_rules: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("science_rules", "scienceRules")
    )
    success_criteria: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("success_criteria", "successcriteria", "successCriteria"),
    )

    @model_validator(mode="after")
    def _targets_and_distinct_names(self) -> Self:
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise ValueError(
                f"plugin names are not unique: {sorted({n for n in names if names.count(n) > 1})}"
            )
        if not self.nodes and not self.node_tags:
            raise ValueError("a job needs target nodes (nodes) or node tags (nodeTags)")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("nodes are listed more than once")
        return self


class Placement(Part):
    """One plugin of a job placed on one node, with the policy's score when it has one."""

    node: NodeId
    plugin: Label
    bundle_id: BundleId
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    devices: list[Label] = Field(default_factory=list)
    """The node's devices the plugin claimed there (docs/scheduling.md), by name."""


class ResourceRequest(Part):
    """Resources a plugin asked for, as numbers: cores, bytes, GPUs."""

    cpu: NonNegFloat | None = None
    memory: NonNegInt | None = None
    gpu: NonNegInt = 0


class GoalDevice(Part):
    """A device of the node the scheduler gave a plugin for one of its claims: what an
    executor would pass through (``path``); an exclusive one is the plugin's alone."""

    name: Label
    type: Label
    path: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    exclusive: bool = True


class GoalPlugin(Part):
    """One plugin a node must run for a job."""

    name: Label
    bundle_id: BundleId
    image: Image
    args: list[str] = Field(default_factory=list)
    entrypoint: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    executor: Label | None = None
    """The executor that runs it on that node (``process``, ``docker``, ``wasm``), as the
    scheduler chose it: the selector's ``executor``, or ``wasm`` for a bundle placed there
    for its ``wasi/wasm`` build; None: the node decides (docs/executors.md)."""
    devices: list[GoalDevice] | None = None
    """The node's devices it claimed, one per claim (docs/scheduling.md); the scheduler
    counts an exclusive one as held while the goal stands. None when it claims none, so a
    goal without devices reads as before on an agent of an older release."""


_Reasons = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


# --- events ---------------------------------------------------------------------------------


@event("ses.job.submitted")
class JobSubmitted(Payload):
    model_config = STRICT

    job_id: Key
    user: UserName
    spec: JobSpec
    policy: Label | None = None
    """Placement policy asked for (``fit``, ``score``, ``roundrobin``); None: the scheduler's default."""
    max_nodes: Annotated[int, Field(ge=1)] | None = None
    """Run on at most this many of the matching nodes, the policy's best; None: on all of them."""


@event("ses.job.scheduled")
class JobScheduled(Payload):
    """The scheduler accepted a submission and placed it. It carries the submission (``user``,
    ``spec``, ``max_nodes``); a log written before commands existed has them in the
    ``ses.job.submitted`` request this answers (``causationid``), and these fields are None."""

    model_config = STRICT

    job_id: Key
    placements: Annotated[list[Placement], Field(min_length=1)]
    policy: Label
    user: UserName | None = None
    spec: JobSpec | None = None
    max_nodes: Annotated[int, Field(ge=1)] | None = None


@event("ses.job.rejected")
class JobRejected(Payload):
    """Submission refused; ``reasons`` lists every problem found."""

    model_config = STRICT

    job_id: Key
    reasons: _Reasons


@event("ses.job.suspended")
class JobSuspended(Payload):
    model_config = STRICT

    job_id: Key
    by: UserName
    reason: str = ""


@event("ses.job.resumed")
class JobResumed(Payload):
    model_config = STRICT

    job_id: Key
    by: UserName


@event("ses.job.removed")
class JobRemoved(Payload):
    model_config = STRICT

    job_id: Key
    by: UserName
    reason: str = ""


@event("ses.job.completed")
class JobCompleted(Payload):
    """A success criterion was met (``criterion``: e.g. ``WallClock(7d)``)."""

    model_config = STRICT

    job_id: Key
    criterion: str = ""


@event("ses.command.rejected")
class SesCommandRejected(Payload):
    """The scheduler refused a user's command (``ses.submit``, ``ses.suspend``...): who asked,
    for which job, and every reason. Kept for audit; no view treats it as a change of state."""

    model_config = STRICT

    command: Annotated[str, StringConstraints(pattern=r"^ses\.[a-z]+$")]
    by: UserName
    job_id: Key
    reasons: _Reasons
    data: dict[str, Any] = Field(default_factory=dict)
    """The command's payload as it was asked."""


@event("ses.goal.assigned", route="toedge")
class GoalAssigned(Payload):
    """What one node must run for one job: its plugins and the rules relevant to it."""

    model_config = STRICT

    node: NodeId
    job_id: Key
    plugins: Annotated[list[GoalPlugin], Field(min_length=1)]
    science_rules: list[str] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)


@event("ses.goal.removed", route="toedge")
class GoalRemoved(Payload):
    """The node must stop running the job's plugins (job suspended, removed or completed)."""

    model_config = STRICT

    node: NodeId
    job_id: Key
    reason: str = ""


__all__ = [
    "DEFAULT_REGISTRY",
    "PLUGIN_NAME",
    "GoalAssigned",
    "GoalDevice",
    "GoalPlugin",
    "GoalRemoved",
    "JobCompleted",
    "JobPlugin",
    "JobRejected",
    "JobRemoved",
    "JobResumed",
    "JobScheduled",
    "JobSpec",
    "JobState",
    "JobSubmitted",
    "JobSuspended",
    "Placement",
    "PluginSpec",
    "PluginState",
    "ResourceRequest",
    "SesCommandRejected",
    "bundle_from_image",
    "image_for_bundle",
    "plugin_name_problem",
]
