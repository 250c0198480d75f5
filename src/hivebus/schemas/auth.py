"""User identities: who may act through the command gateway.

A user's token never enters the log, only its SHA-256 (tokens are 256-bit random
strings, so the digest cannot be turned back into one). Adding a user again replaces
its token (rotation); revoking removes it.
"""

from __future__ import annotations

from typing import Annotated

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
