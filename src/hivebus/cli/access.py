"""``hivebus node add|remove`` (node credentials), ``hivebus user add|revoke|role|list`` (user
tokens and roles) and ``hivebus group add|remove|list``.

Both are operator commands: ``node add`` edits the hub's identities in ``<data-dir>/auth``
(run it on the hub machine) and reloads the running server; ``user add`` publishes an
``auth.user.added`` event, which needs the admin identity (on the hub machine the CLI
uses ``<data-dir>/auth/admin.creds`` by itself).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, get_args

import typer
from nats.errors import Error as NatsError

from hivebus.auth.hub import HubAuth
from hivebus.auth.tls import issue_node_cert
from hivebus.auth.tokens import digest, new_token, save_token
from hivebus.bus.client import Bus
from hivebus.bus.streams import ensure_consumer, toedge_consumer
from hivebus.cli.app import Hub, app, out, run, settings
from hivebus.cli.ecr import whoami
from hivebus.cli.node import node_app
from hivebus.config import Settings
from hivebus.errors import HivebusError, PermissionDenied, SetupError
from hivebus.schemas.auth import (
    GroupMemberAdded,
    GroupMemberRemoved,
    Role,
    RoleGranted,
    RoleRevoked,
    UserAdded,
    UserRevoked,
)
from hivebus.schemas.ecr import ALL_USERS
from hivebus.schemas.envelope import Event, Payload
from hivebus.services.gateway import Gateway

ROLES = get_args(Role)
user_app = typer.Typer(help="User tokens: who may push, approve, grant and submit.", no_args_is_help=True)
app.add_typer(user_app, name="user")

DataDir = Annotated[Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="The hub's data dir (its auth/ holds the identities).")]


@node_app.command("add")
def node_add(
    node_id: Annotated[str, typer.Argument(help="The node's id, e.g. W012.")],
    data_dir: DataDir = Path(".hivebus"),
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the credential to this file (mode 0600) instead of printing it.")] = None,
    rotate: Annotated[bool, typer.Option(help="Replace the node's credential (the old one stops working).")] = False,
    hub: Hub = None,
) -> None:
    """Create a node's hub credential (printed once; the hub keeps only its bcrypt hash)."""
    auth = HubAuth.of_data_dir(data_dir)
    if not (auth.dir / "identities.json").exists():
        raise SetupError(f"{auth.dir} has no hub identities", hint="run this on the hub machine, in the data dir of `hivebus up` (--data-dir)")
    credential = auth.add_node(node_id, rotate=rotate)
    config = settings(hub, data_dir=data_dir)
    # a hub with TLS from its own CA: a client certificate for the node listener (auth.tls)
    node_cert = issue_node_cert(data_dir, node_id)
    if node_cert is not None:
        credential = replace(credential, cert=node_cert.cert, key=node_cert.key, node_url=node_cert.url(config.nats_url))
    reloaded = auth.reload(data_dir / "nats")
    consumer = run(_create_toedge_consumer(config, node_id))
    if out_file is not None:
        credential.save(out_file)
        out.print(f"node {node_id}: credential written to {out_file} (keep it secret; it is not stored anywhere else)")
    else:
        out.print(f"node {node_id}: credential (shown once; the hub keeps only its hash):", highlight=False)
        print(credential.dumps(), end="")
    out.print(
        ("hub reloaded" if reloaded else "no hub running on this data dir: the next start reads it")
        + ("; to-edge consumer ready" if consumer else ""),
        highlight=False,
    )
    if node_cert is not None:
        out.print(f"client certificate node-{node_id} from the hub's CA in the credential: the node connects to the node "
                  f"listener {credential.node_url} (port {node_cert.port} at the host --hub names)", highlight=False)
    out.print(f"on the node: hivebus node run --node-id {node_id} --hub URL --credentials FILE", highlight=False)


@node_app.command("remove")
def node_remove(node_id: Annotated[str, typer.Argument()], data_dir: DataDir = Path(".hivebus")) -> None:
    """Withdraw a node's credential (it can no longer connect)."""
    auth = HubAuth.of_data_dir(data_dir)
    if not auth.remove_node(node_id):
        raise SetupError(f"node {node_id} has no credential", hint="`hivebus node list` shows the nodes")
    auth.reload(data_dir / "nats")
    out.print(f"node {node_id}: credential withdrawn")


async def _create_toedge_consumer(config: Settings, node: str) -> bool:
    """Create the node's durable to-edge consumer now (as the hub's admin), so what is sent
    before it first connects waits for it. False if that fails (the node creates it)."""
    try:
        async with await Bus.connect(config.nats_url, name="hivebus-node-add", settings=config, connect_timeout=2.0) as bus:
            await ensure_consumer(bus.js, toedge_consumer(node))
        return True
    except (HivebusError, NatsError, TimeoutError):
        return False


RoleOption = Annotated[str | None, typer.Option("--role", help="Also give a role: reviewer (approves bundles) or admin.")]


def _role(role: str) -> Role:
    if role not in ROLES:
        raise SetupError(f"{role!r} is not a role", hint=f"roles: {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def _admin_fact(payload: Payload, subject: str) -> Event:
    return Event.new(payload, source="user/admin", subject=subject)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The user name (as in --user / the source of their actions).")],
    save: Annotated[bool, typer.Option(help="Also save the token for this machine's CLI ($XDG_CONFIG_HOME/hivebus/tokens/NAME).")] = False,
    role: RoleOption = None,
    hub: Hub = None,
) -> None:
    """Issue a user's token (shown once; the log keeps only its SHA-256). Again = rotate."""
    who = whoami(name)
    token = new_token()
    events = [_admin_fact(UserAdded(user=who, token_sha256=digest(token), by="admin"), who)]
    if role is not None:
        events.append(_admin_fact(RoleGranted(user=who, role=_role(role), by="admin"), who))
    run(_publish(hub, *events))
    if save:
        path = save_token(who, token)
        out.print(f"user {who}: token saved to {path}", highlight=False)
    else:
        out.print(f"user {who}: token (shown once):", highlight=False)
        print(token)


@user_app.command("revoke")
def user_revoke(name: Annotated[str, typer.Argument()], hub: Hub = None) -> None:
    """Revoke a user's token: the gateway refuses it from now on."""
    who = whoami(name)
    run(_publish(hub, Event.new(UserRevoked(user=who, by="admin"), source="user/admin", subject=who)))
    out.print(f"user {who}: token revoked")


@user_app.command("role")
def user_role(
    name: Annotated[str, typer.Argument()],
    role: Annotated[str, typer.Argument(help="reviewer or admin")],
    revoke: Annotated[bool, typer.Option(help="Take the role away instead.")] = False,
    hub: Hub = None,
) -> None:
    """Give a user a role (an auth.role.granted fact the ECR and the scheduler decide on)."""
    who, chosen = whoami(name), _role(role)
    fact: Payload = RoleRevoked(user=who, role=chosen, by="admin") if revoke else RoleGranted(user=who, role=chosen, by="admin")
    run(_publish(hub, _admin_fact(fact, who)))
    out.print(f"user {who}: {'no longer ' if revoke else ''}{chosen}")


@user_app.command("list")
def user_list(hub: Hub = None) -> None:
    """The users holding a token now, with their roles and groups."""
    gateway = run(_directory(hub))
    directory = gateway.directory
    for user in sorted(set(gateway.users.digest_of) | {u for u, r in directory.roles.items() if r}):
        roles = sorted(directory.roles.get(user, set()))
        groups = sorted(directory.groups_of(user))
        token = "" if user in gateway.users.digest_of else "  (no token)"
        details = "  ".join(part for part in (",".join(roles), " ".join(f"@{g}" for g in groups)) if part)
        print(f"{user}{'  ' + details if details else ''}{token}")


group_app = typer.Typer(help="Groups of users: grants to a group and nodes' allow_groups reach its members.", no_args_is_help=True)
app.add_typer(group_app, name="group")
Members = Annotated[list[str], typer.Argument(help="User names.")]


def _group_name(group: str) -> str:
    if group == ALL_USERS:
        raise SetupError(f"{group} is built in and holds everyone", hint="choose another group name")
    return group


@group_app.command("add")
def group_add(group: Annotated[str, typer.Argument()], users: Members, hub: Hub = None) -> None:
    """Put users in a group (creating it)."""
    name = _group_name(group)
    run(_publish(hub, *(_admin_fact(GroupMemberAdded(group=name, user=whoami(u), by="admin"), name) for u in users)))
    out.print(f"group {name}: added {', '.join(users)}")


@group_app.command("remove")
def group_remove(group: Annotated[str, typer.Argument()], users: Members, hub: Hub = None) -> None:
    """Take users out of a group (a group with no members is gone)."""
    name = _group_name(group)
    run(_publish(hub, *(_admin_fact(GroupMemberRemoved(group=name, user=whoami(u), by="admin"), name) for u in users)))
    out.print(f"group {name}: removed {', '.join(users)}")


@group_app.command("list")
def group_list(hub: Hub = None) -> None:
    """Every group and its members."""
    directory = run(_directory(hub)).directory
    for group, members in sorted(directory.groups.items()):
        print(f"{group}: {' '.join(sorted(members))}")


async def _publish(hub: str | None, *events: Event) -> None:
    async with await Bus.connect(settings(hub).nats_url, name="hivebus-user") as bus:
        try:
            for event in events:
                await bus.publish(event, retries=0)
        except PermissionDenied:
            raise SetupError(
                "only the hub's admin may change users, roles and groups",
                hint="run it on the hub machine (its <data-dir>/auth/admin.creds is used), or set HIVEBUS_NATS_CREDENTIALS",
            ) from None


async def _directory(hub: str | None) -> Gateway:
    async with await Bus.connect(settings(hub).nats_url, name="hivebus-user") as bus:
        gateway = Gateway(bus)
        await gateway.catch_up()
        return gateway
