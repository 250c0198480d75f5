"""Who holds which role and who is in which group, folded from the ``auth.*`` facts.

The ECR and the scheduler decide on these (who may approve, whom a group grant reaches, who
may run on a node with ``allow_groups``), so a replay anywhere decides as the hub did. Only
the hub's admin identity may publish ``evt.auth.>`` (see ``auth.permissions``). The user
``admin`` is a reviewer and an admin by definition (``HandlerConfig.reviewers``); groups a
``HandlerConfig`` names are built in, for tests and embedded use.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from hivebus.schemas.auth import GroupMemberAdded, GroupMemberRemoved, RoleGranted, RoleRevoked
from hivebus.schemas.envelope import Event

INPUTS = ("evt.auth.role.>", "evt.auth.group.>")
"""The subjects a handler must read for its directory."""

REVIEWING_ROLES = frozenset({"reviewer", "admin"})


@dataclass(slots=True)
class Directory:
    roles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    groups: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def holds(self, user: str, roles: frozenset[str]) -> bool:
        return bool(self.roles.get(user, set()) & roles)

    def groups_of(self, user: str) -> set[str]:
        return {group for group, members in self.groups.items() if user in members}

    def fold(self, event: Event) -> bool:
        """Fold one event; False when it is not a directory fact."""
        data = event.data
        match data:
            case RoleGranted():
                self.roles[data.user].add(data.role)
            case RoleRevoked():
                self.roles[data.user].discard(data.role)
            case GroupMemberAdded():
                self.groups[data.group].add(data.user)
            case GroupMemberRemoved():
                members = self.groups.get(data.group)
                if members is not None:
                    members.discard(data.user)
                    if not members:
                        del self.groups[data.group]
            case _:
                return False
        return True


__all__ = ["INPUTS", "REVIEWING_ROLES", "Directory"]
