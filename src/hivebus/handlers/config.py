"""Policy the handlers apply that is configuration, not history: which names are reserved,
what a plugin with no profile is assumed to need, the default placement policy. Who reviews
and who is in which group is history (``handlers.directory``); ``reviewers`` and ``groups``
here are the built-in ones (the user ``admin``; groups an embedding or a test names).

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
RETIRED: Final = {
    "HIVEBUS_ECR_REVIEWERS": "hivebus user role NAME reviewer",
    "HIVEBUS_ECR_GROUPS": "hivebus group add GROUP USER...",
}


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
        """``HIVEBUS_SES_POLICY=fit``. Reviewers and groups are facts in the log (``hivebus
        user role``, ``hivebus group add``), never configuration: a replay elsewhere must
        decide as the hub did, so the variables that once set them are refused."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, instead in RETIRED.items():
            if env.get(name):
                raise SetupError(
                    f"{name} is no longer read: roles and groups are facts in the log now",
                    hint=f"unset it and record them once: {instead}",
                )
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


