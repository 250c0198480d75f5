"""User identities, roles and groups: who may act, and with which rights.

A user's token never enters the log, only its SHA-256 (tokens are 256-bit random
strings, so the digest cannot be turned back into one). Adding a user again replaces
its token (rotation); revoking removes it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import StringConstraints

from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import STRICT, UserName
from hivebus.schemas.registry import event

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


@event("auth.user.added")
class UserAdded(Payload):
    model_config = STRICT

    user: UserName
    token_sha256: Sha256Hex
    by: UserName


@event("auth.user.revoked")
class UserRevoked(Payload):
    model_config = STRICT

    user: UserName
    by: UserName


Role = Literal["reviewer", "admin"]
"""``reviewer``: approves bundles and reads every bundle to review it; ``admin``: a reviewer
who may also manage anyone's jobs. The user ``admin`` (the hub's own identity) holds both."""



@event("auth.role.granted")
class RoleGranted(Payload):
    """An admin gave ``user`` a role; the ECR and the scheduler read roles from these facts."""

    model_config = STRICT

    user: UserName
    role: Role
    by: UserName


@event("auth.role.revoked")
class RoleRevoked(Payload):
    model_config = STRICT

    user: UserName
    role: Role
    by: UserName


@event("auth.group.member.added")
class GroupMemberAdded(Payload):
    """``user`` is in ``group`` (a group exists while it has members); grants to the group
    (``--grantee-type group``) and nodes' ``allow_groups`` reach them."""

    model_config = STRICT

    group: UserName
    user: UserName
    by: UserName


@event("auth.group.member.removed")
class GroupMemberRemoved(Payload):
    model_config = STRICT

    group: UserName
    user: UserName
    by: UserName
