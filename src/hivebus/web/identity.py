"""Who an HTTP request is: ``Authorization: sage <token>`` resolved to a user, or anonymous.

Tokens are checked as the command gateway checks them (``services.gateway.Gateway``): against
the ``auth.user.*`` facts, caught up on every request, so a revoked or rotated token stops
working at once. A token never reaches a log line or an error message.
"""

from __future__ import annotations

from hivebus.auth.permissions import ADMIN
from hivebus.bus.client import Bus
from hivebus.services.gateway import Gateway
from hivebus.web.errors import ApiError

SCHEMES = ("sage", "bearer")
ADMIN_ROLES = frozenset({"admin"})
HINT = "send 'Authorization: sage <token>'; an admin issues tokens with `hivebus user add NAME`"


class Identities:
    def __init__(self, bus: Bus) -> None:
        self._book = Gateway(bus)

    async def user_of(self, authorization: str | None) -> str | None:
        """The token's user; None without a header (anonymous); 401 for a bad or unknown token."""
        if authorization is None or not authorization.strip():
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() not in SCHEMES or not token.strip():
            raise ApiError(401, "the Authorization header is not 'sage <token>'", HINT)
        await self._book.catch_up()
        user = self._book.users.who(token.strip())
        if user is None:
            raise ApiError(401, "the token is unknown, rotated or revoked", "ask an admin for a new one (`hivebus user add NAME`)")
        return user

    def is_admin(self, user: str) -> bool:
        """The hub's own ``admin`` user, or one an admin gave the role (``hivebus user role U admin``);
        as of the last ``user_of`` (which catches up on the ``auth.*`` facts)."""
        return user == ADMIN or self._book.directory.holds(user, ADMIN_ROLES)
