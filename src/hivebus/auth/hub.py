"""The hub's identities on disk: ``<data-dir>/auth/``.

- ``identities.json``: user name -> bcrypt hash of its password (never the password).
- ``identities.json`` also keeps ``sites``: each site leaf (``hivebus site add``) -> its nodes.
- ``nats-auth.conf``: what the hub's nats-server includes (``permissions.render``).
- ``service.creds`` and ``admin.creds`` (mode 0600): the platform's own credentials,
  used by the processes ``hivebus up`` starts and by the operator's CLI on the hub machine.
- ``callout.nk`` (mode 0600): the key the hub's auth callout signs connections' permissions
  with (``auth.callout``); the server config names its public half as the issuer.

With TLS (``hivebus up --tls``, ``auth.tls``) every credential carries the hub's CA, so a node
given its file connects over TLS to that hub and no other.

A node's password exists only in what ``add_node`` returns: ``hivebus node add`` prints it
once (or writes it to the file the operator asked for). Every change rewrites the config
and asks the running server to reload it: the server then asks the callout again about each
open connection and closes those of a removed identity at once (tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import bcrypt
import structlog

from hivebus.auth import callout, permissions
from hivebus.auth.credentials import Credential
from hivebus.auth.sites import SiteCredential
from hivebus.auth.tls import cert_der, hub_ca, issue_leaf_cert, issue_node_cert, issued_node_cert
from hivebus.bus.server import reload_server
from hivebus.errors import SetupError

log = structlog.get_logger()

IDENTITIES: Final = "identities.json"
CONF: Final = "nats-auth.conf"
NODE_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COST: Final = 11  # bcrypt cost nats-server's own `nats server passwd` uses


def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_COST)).decode()


class HubAuth:
    """Reads and changes the identities in one auth directory (``<data-dir>/auth``)."""

    def __init__(self, auth_dir: Path) -> None:
        self.dir = Path(auth_dir)

    @classmethod
    def of_data_dir(cls, data_dir: Path) -> HubAuth:
        return cls(Path(data_dir) / "auth")

    @property
    def conf_path(self) -> Path:
        return self.dir / CONF

    def creds_path(self, user: str) -> Path:
        return self.dir / f"{user}.creds"

    def ca(self) -> str | None:
        """The CA (PEM) of the hub's TLS, when this data dir has one (``auth.tls``)."""
        path = hub_ca(self.dir.parent)
        return path.read_text() if path is not None else None

    # --- reading ----------------------------------------------------------------------

    def users(self) -> dict[str, str]:
        return dict(self._doc().get("users", {}))

    def sites(self) -> dict[str, list[str]]:
        """Each site (``hivebus site add``) -> the nodes behind its leaf."""
        return {site: list(nodes) for site, nodes in self._doc().get("sites", {}).items()}

    def _doc(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / IDENTITIES).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise SetupError(f"{self.dir / IDENTITIES} is corrupt: {exc}", hint="restore it from a backup") from None
        return dict(doc)

    # --- changing ---------------------------------------------------------------------

    def ensure(self) -> HubAuth:
        """Create the service, admin and public identities (and their creds files) and the
        callout key if missing; the creds files carry the hub's current CA."""
        ca = self.ca()
        self.dir.mkdir(parents=True, exist_ok=True)
        callout.ensure_issuer(self.dir)
        with self._locked() as users:
            for user in (permissions.SERVICE, permissions.ADMIN):
                path = self.creds_path(user)
                if user not in users or not path.exists():
                    password = new_password()
                    users[user] = hash_password(password)
                    Credential(user=user, password=password, inbox_prefix=permissions.inbox_prefix(user), ca=ca).save(path)
                elif (held := Credential.load(path)).ca != ca:
                    held.with_ca(ca).save(path)
            # Nobody logs in as public with a password: it is the identity of connections without one.
            users.setdefault(permissions.PUBLIC, hash_password(new_password()))
        return self

    def add_node(self, node: str, *, rotate: bool = False) -> Credential:
        """A new credential for ``node`` (``rotate`` replaces an existing one); the password
        is in the returned value only."""
        if not NODE_ID.match(node):
            raise SetupError(f"node id {node!r} is not valid", hint="letters, digits, _ and - (e.g. W012), at most 64")
        user = permissions.node_user(node)
        with self._locked() as users:
            if user in users and not rotate:
                raise SetupError(
                    f"node {node} already has a credential",
                    hint=f"`hivebus node add {node} --rotate` issues a new one (the old one stops working)",
                )
            password = new_password()
            users[user] = hash_password(password)
        log.info("auth.node_added", node=node, rotated=rotate)
        return Credential(user=user, password=password, inbox_prefix=permissions.inbox_prefix(user), ca=self.ca())

    def add_site(self, site: str, nodes: Sequence[str], *, rotate: bool = False, domain: str = "hub",
                 leaf_hosts: Sequence[str] = ()) -> SiteCredential:
        """A site leaf's link credential, bound to ``nodes`` (each needs its own credential
        already: the leaf checks the nodes' passwords against the hashes it carries)."""
        if not NODE_ID.match(site):
            raise SetupError(f"site name {site!r} is not valid", hint="letters, digits, _ and - (e.g. north-field), at most 64")
        if not nodes:
            raise SetupError(f"site {site}: no nodes", hint=f"name the nodes behind its leaf: hivebus site add {site} --node W0A1 --node W0A2")
        user = permissions.site_user(site)
        with self._locked_doc() as (users, sites):
            if user in users and not rotate:
                raise SetupError(
                    f"site {site} already has a credential",
                    hint=f"`hivebus site add {site} --rotate --node ...` issues a new one (the old one stops working)",
                )
            missing = [n for n in nodes if permissions.node_user(n) not in users]
            if missing:
                raise SetupError(
                    f"site {site}: node(s) {', '.join(missing)} have no credential on this hub",
                    hint="`hivebus node add ID --out ID.creds` for each first: a node uses the same credential at its site's leaf",
                )
            password = new_password()
            users[user] = hash_password(password)
            sites[site] = sorted(set(nodes))
            hashes = {n: users[permissions.node_user(n)] for n in sites[site]}
        ca = self.ca()
        cert = key = None
        if ca is not None:  # a TLS hub: the leaf serves its nodes TLS too, with the hub's CA
            cert, key = issue_leaf_cert(self.dir.parent, ["localhost", "127.0.0.1", "::1", *leaf_hosts])
        log.info("auth.site_added", site=site, nodes=sorted(set(nodes)), rotated=rotate, tls=ca is not None)
        return SiteCredential(site=site, user=user, password=password, nodes=hashes, domain=domain, ca=ca,
                              leaf_cert=cert, leaf_key=key)

    def remove_site(self, site: str) -> bool:
        with self._locked_doc() as (users, sites):
            existed = users.pop(permissions.site_user(site), None) is not None
            sites.pop(site, None)
        return existed

    def remove_node(self, node: str) -> bool:
        user = permissions.node_user(node)
        with self._locked() as users:
            existed = users.pop(user, None) is not None
        return existed

    def node_credential(self, node: str, path: Path) -> Path:
        """A credential file for a node this machine runs itself (``hivebus up``'s virtual
        nodes): kept at ``path`` and reused while the hub still knows it. On a hub with its own
        CA it carries the certificate the node was issued last (one is issued when it holds
        none, or another), so virtual nodes connect on the node listener like any node."""
        known = path.exists() and permissions.node_user(node) in self.users()
        before = Credential.load(path) if known else None
        held = before.with_ca(self.ca()) if before is not None else self.add_node(node, rotate=True)
        data_dir = self.dir.parent
        recorded = issued_node_cert(data_dir, node)
        if recorded is None or held.cert is None or cert_der(held.cert) != recorded:
            issued = issue_node_cert(data_dir, node) if hub_ca(data_dir) is not None else None
            held = replace(held, cert=None, key=None, node_url=None) if issued is None else replace(
                held, cert=issued.cert, key=issued.key, node_url=issued.url("127.0.0.1"))
        return path if held == before else held.save(path)

    def reload(self, store_dir: Path) -> bool:
        """Ask the server running on ``store_dir`` to re-read the rules (False: none runs)."""
        return reload_server(store_dir)

    # --- internals --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        with self._locked_doc() as (users, _sites):
            yield users

    @contextlib.contextmanager
    def _locked_doc(self) -> Iterator[tuple[dict[str, str], dict[str, list[str]]]]:
        """Read-modify-write the identities (and sites) under a lock, then rewrite the server config."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        with (self.dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users, sites = self.users(), self.sites()
            yield users, sites
            # a site whose link credential is gone, or a node withdrawn from it, no longer counts
            sites = {s: [n for n in ns if permissions.node_user(n) in users] for s, ns in sites.items()
                     if permissions.site_user(s) in users}
            doc: dict[str, Any] = {"users": users, **({"sites": sites} if sites else {})}
            _write_atomic(self.dir / IDENTITIES, json.dumps(doc, indent=2, sort_keys=True) + "\n")
            nodes = [u.removeprefix(permissions.NODE_PREFIX) for u in users if u.startswith(permissions.NODE_PREFIX)]
            issuer = callout.ensure_issuer(self.dir).public_key
            _write_atomic(self.conf_path, permissions.render(users, nodes, sites, issuer=issuer))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
