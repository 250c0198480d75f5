"""User commands: what a user asks the ECR or the scheduler to do (never stored as facts).

A command is imperative (``ecr.grant``); the decider of its aggregate answers it with facts
in the past tense (``ecr.permission.granted``) or one ``*.command.rejected`` with every
reason. A command's body has the shape of the fact it asks for, so each command names the
payload model it carries; before commands existed users published that payload as an event
(``ecr.permission.granted`` from ``user/alice``): ``LEGACY`` maps those request types back to
their command, which is how old logs are read (see ``handlers.runtime``).

In memory a command travels as an ``Event`` whose ``source`` is the user: it has an id (the
facts it causes derive theirs from it) and a time, but it is never published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hivebus.schemas.ecr import (
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    PermissionGranted,
    PermissionRevoked,
)
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSubmitted, JobSuspended


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    """``ecr.push``, ``ses.suspend``..."""
    model: type[Payload]
    """The payload it carries (the request type of old logs)."""
    decider: str
    """The handler that decides it: ``ecr`` or ``ses``."""
    actor: str
    """The payload field naming the user who acts."""


COMMANDS: Final[dict[str, CommandSpec]] = {
    spec.name: spec
    for spec in (
        CommandSpec("ecr.push", BundlePushed, "ecr", "pusher"),
        CommandSpec("ecr.approve", BundleApproved, "ecr", "by"),
        CommandSpec("ecr.freeze", BundleFrozen, "ecr", "by"),
        CommandSpec("ecr.delete", BundleDeleted, "ecr", "by"),
        CommandSpec("ecr.grant", PermissionGranted, "ecr", "by"),
        CommandSpec("ecr.revoke", PermissionRevoked, "ecr", "by"),
        CommandSpec("ses.submit", JobSubmitted, "ses", "user"),
        CommandSpec("ses.suspend", JobSuspended, "ses", "by"),
        CommandSpec("ses.resume", JobResumed, "ses", "by"),
        CommandSpec("ses.remove", JobRemoved, "ses", "by"),
    )
}
LEGACY: Final[dict[str, CommandSpec]] = {spec.model.event_type: spec for spec in COMMANDS.values()}
"""Request event type of old logs (``ecr.bundle.approved``) -> the command it was."""


def command_of(event: Event) -> CommandSpec | None:
    """The command ``event`` carries: a user's request (``source`` ``user/...``) of a
    command's payload type; None for facts (a decider's, a node's) and other events."""
    if not event.source.startswith("user/"):
        return None
    return LEGACY.get(event.type)


def actor_of(event: Event) -> str:
    spec = command_of(event)
    return str(getattr(event.data, spec.actor)) if spec is not None else event.source.removeprefix("user/")


def is_decided(event: Event) -> bool:
    """A fact a hub decider emitted (not a user's request of the same type)."""
    return event.source.startswith("handler/")


__all__ = ["COMMANDS", "LEGACY", "CommandSpec", "actor_of", "command_of", "is_decided"]
