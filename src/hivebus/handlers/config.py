"""Policy the handlers apply that is configuration, not history: who reviews, who is in
which group, which names are reserved, what a plugin with no profile is assumed to need.

It is read once when the handlers start (``HandlerConfig.from_env``). Changing it changes
future decisions only: what was decided is in the log, and restarts trust the log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, get_args

from hivebus.errors import SetupError
from hivebus.schemas.ecr import InputType
from hivebus.schemas.fields import ARCHITECTURES

ALL_USERS: Final = "AllUsers"
RESERVED_NAMESPACES: Final = frozenset(
    {"admin", "hivebus", "system", "root", "ecr", "ses", "library"}
)
RESERVED_NAMES: Final = frozenset({"latest", "admin", "internal"})
MiB: Final = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class HandlerConfig:
    reviewers: frozenset[str] = frozenset({"admin"})
    """Users who may approve bundles (and read every bundle, to review it)."""
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Named groups and their members; ``AllUsers`` is built in and holds everyone."""
    reserved_namespaces: frozenset[str] = RESERVED_NAMESPACES
    reserved_names: frozenset[str] = RESERVED_NAMES
    architectures: frozenset[str] = frozenset(ARCHITECTURES)
    """Platforms the ECR accepts bundles for."""
    input_types: frozenset[str] = frozenset(get_args(InputType))
    """Input types the ECR accepts in a bundle's ``inputs``."""
    default_policy: str = "fit"
    default_cpu: float = 0.1
    default_memory: int = 64 * MiB
    """What a plugin is assumed to need when neither a profile, a request nor the bundle says."""
    profile_window: int = 20
    """How many recent runs of a bundle on one hardware class its profile keeps."""
    node_offline_after: timedelta = timedelta(seconds=30)

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset({ALL_USERS, *(g for g, members in self.groups.items() if user in members)})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> HandlerConfig:
        """``HIVEBUS_ECR_REVIEWERS=admin,ana``, ``HIVEBUS_ECR_GROUPS=lab=ana,bo;ops=cy``,
        ``HIVEBUS_SES_POLICY=fit``."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if reviewers := env.get("HIVEBUS_ECR_REVIEWERS"):
            values["reviewers"] = frozenset(_names(reviewers))
        if groups := env.get("HIVEBUS_ECR_GROUPS"):
            values["groups"] = _parse_groups(groups)
        if policy := env.get("HIVEBUS_SES_POLICY"):
            values["default_policy"] = policy
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)  # type: ignore[arg-type]
        from hivebus.handlers.placement import POLICIES

        if config.default_policy not in POLICIES:
            raise SetupError(
                f"HIVEBUS_SES_POLICY: {config.default_policy!r} is not a placement policy",
                hint=f"one of {', '.join(POLICIES)}",
            )
        return config


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _parse_groups(text: str) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, members = part.partition("=")
        if not sep or not name.strip():
            raise SetupError(
                f"HIVEBUS_ECR_GROUPS: {part!r} is not group=member,member",
                hint="e.g. lab=ana,bo;ops=cy",
            )
        groups[name.strip()] = frozenset(_names(members))
    return groups
