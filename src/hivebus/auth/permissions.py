"""Which subjects each NATS identity may publish and subscribe to (pure; no I/O).

The node rules are the point of the whole scheme: a node publishes only under its own
node id, reads the hub only through its own to-edge consumer and its own reconciliation
readers, and can never publish ``evt.*`` (the platform's own decisions) or ``toedge.*``
(it may hear one to-edge subject live: ``toedge.<ID>.ses.offload.decided``, the answer to
its own offload request).
JetStream API calls are plain subjects too, so "consume only your own consumer" is a
publish permission on ``$JS.API.CONSUMER.MSG.NEXT.EVENTS.toedge-<ID>``; consumers are
created on the API subject that carries their filter (``CONSUMER.CREATE.<stream>.<name>.
<filter>``), which the server checks against the consumer's config, so a permission on
that subject pins the filter. Inboxes are per identity (``_INBOX_<ID>``), and per connection
for the public identity (``auth.callout``): nobody can subscribe to replies or pull
deliveries meant for somebody else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from hivebus.bus.streams import DATA, DEADLETTERS, EVENTS
from hivebus.schemas.offload import OffloadDecided
from hivebus.schemas.storage import UPLOAD_SUBJECT, upload_bucket

SERVICE: Final = "service"
ADMIN: Final = "admin"
PUBLIC: Final = "public"
NODE_PREFIX: Final = "node-"
SITE_PREFIX: Final = "site-"
USER_PREFIX: Final = "user-"  # + a user's name: a connection made with that user's token (auth.user_callout)
USER_COMMANDS: Final = "hivebus.cmd.user"  # + the user's name as one subject token: its own commands
# What the public identity may request (request/reply services).
PUBLIC_SERVICES: Final = ("hivebus.query", "hivebus.cmd", "hivebus.ses.dryrun", "hivebus.projector.status")
HANDLER_DURABLES: Final = ("handler-ecr", "handler-ses", "handler-health")

Permissions = dict[str, dict[str, list[str]]]
# The password of every identity the callout decides on, in the server's own list: a cheap
# bcrypt (cost 4) of a random value nobody kept. The server's own check of it always fails
# and costs ~1 ms instead of the ~130 ms a real hash costs; the callout's answer is what counts.
_CALLOUT_DECIDES: Final = "$2b$04$MaN5doVgSkH2x6/pL6EVyOignFi1BUX81in1YF1cYKBSSCsU21sGW"


def node_user(node: str) -> str:
    return f"{NODE_PREFIX}{node}"


def site_user(site: str) -> str:
    return f"{SITE_PREFIX}{site}"


def inbox_prefix(user: str) -> str:
    """Each identity's own inbox prefix (a public connection's is its own, ``auth.callout``)."""
    return f"_INBOX_{user.removeprefix(NODE_PREFIX)}"


def reconcile_consumer(node: str) -> str:
    """The name of the reader a node's forwarder uses to check what the hub stored."""
    return f"reconcile-{node}"


def full() -> Permissions:
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def node_permissions(node: str) -> Permissions:
    api = "$JS.API"
    toedge = f"toedge-{node}"
    reconcile = reconcile_consumer(node)
    store = f"sage-{upload_bucket(node)}"  # its upload bucket's object store (web.objects.store_name)
    publish = [
        f"data.{node}.>",
        f"fromedge.{node}.>",
        f"dlq.{EVENTS}.{toedge}.>",  # dead letters of its own to-edge consumer, one subject each
        f"{api}.INFO",
        f"{api}.STREAM.INFO.{DATA}",
        f"{api}.STREAM.INFO.{EVENTS}",
        # its own to-edge consumer, created only with its own filter
        f"{api}.CONSUMER.CREATE.{EVENTS}.{toedge}.toedge.{node}.>",
        f"{api}.CONSUMER.INFO.{EVENTS}.{toedge}",
        f"{api}.CONSUMER.MSG.NEXT.{EVENTS}.{toedge}",
        f"$JS.ACK.{EVENTS}.{toedge}.>",
        # the forwarder's reconciliation readers, over its own subjects only
        f"{api}.CONSUMER.CREATE.{DATA}.{reconcile}.data.{node}.>",
        f"{api}.CONSUMER.CREATE.{EVENTS}.{reconcile}.fromedge.{node}.>",
        *(f"{api}.CONSUMER.{verb}.{stream}.{reconcile}" for verb in ("INFO", "MSG.NEXT", "DELETE") for stream in (DATA, EVENTS)),
        # uploads (see edge.uploads): chunks into its own bucket's object store, never an
        # object's info (the hub publishes it once its upload service has checked the chunks
        # and the storage decider recorded the put), and requests to that service for itself
        f"$O.{store}.C.>",
        f"{UPLOAD_SUBJECT}.{node}",
    ]
    subscribe = [
        f"{inbox_prefix(node_user(node))}.>",
        # the scheduler's answer to its own offload request (edge.offload), the one to-edge
        # subject it may hear live besides its durable consumer: a decision about itself only
        f"toedge.{node}.{OffloadDecided.event_type}",
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def in_any_domain(subjects: Iterable[str]) -> list[str]:
    """``subjects`` with each ``$JS.API.X`` also as ``$JS.*.API.X``: the name a JetStream call
    has once a site leaf mapped it to the hub's domain (``$JS.<domain>.API.X``, see
    ``bus.server_config``). Only the hub answers a domain here (leaves run no JetStream)."""
    out: list[str] = []
    for subject in subjects:
        out.append(subject)
        if subject.startswith("$JS.API."):
            out.append("$JS.*.API." + subject.removeprefix("$JS.API."))
    return out


def leaf_node_permissions(node: str) -> Permissions:
    """A node's rules as a site leaf enforces them: the same subjects, its JetStream calls also
    in the hub's domain (the leaf checks a publish after its ``$JS.API.>`` mapping)."""
    perms = node_permissions(node)
    return {"publish": {"allow": in_any_domain(perms["publish"]["allow"])}, "subscribe": perms["subscribe"]}


def site_permissions(nodes: Iterable[str]) -> Permissions:
    """What a site's leaf link may carry (the hub's view; docs/sites.md): into the hub, only
    what its own nodes may publish (JetStream calls arrive in the hub's domain); out of the
    hub, only their inboxes. A leaf machine taken over can therefore speak for its own nodes
    and nobody else: never another site's node, never ``evt.*`` or ``toedge.*``."""
    publish: list[str] = []
    subscribe: list[str] = []
    for node in sorted(set(nodes)):
        perms = node_permissions(node)
        publish += [s if not s.startswith("$JS.API.") else "$JS.*.API." + s.removeprefix("$JS.API.")
                    for s in perms["publish"]["allow"]]
        subscribe += perms["subscribe"]["allow"]
    if not publish:  # an empty allow list would allow everything
        return {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def public_permissions(nodes: Iterable[str], inbox: str | None) -> Permissions:
    """Queries, user commands (through the gateway), and reading the platform's own events,
    from-edge events, readings and dead letters -- never to-edge, never a durable consumer.
    Replies come only to ``inbox`` (one connection's own prefix, ``auth.callout``); with
    None the connection may subscribe to nothing."""
    api = "$JS.API"
    publish = [
        *PUBLIC_SERVICES,
        f"{api}.INFO",
        f"{api}.STREAM.INFO.*",
        f"{api}.CONSUMER.CREATE.{DATA}.>",
        f"{api}.CONSUMER.CREATE.{DEADLETTERS}.>",
        f"{api}.CONSUMER.CREATE.{EVENTS}.*.evt.>",
        f"{api}.CONSUMER.CREATE.{EVENTS}.*.fromedge.>",
        f"{api}.CONSUMER.INFO.*.*",
        f"{api}.CONSUMER.MSG.NEXT.*.*",
        f"{api}.CONSUMER.DELETE.*.*",  # its readers clean up after themselves
    ]
    nodes = sorted(set(nodes))
    theirs = [*HANDLER_DURABLES, *(f"toedge-{n}" for n in nodes), *(reconcile_consumer(n) for n in nodes)]
    deny = [f"{api}.CONSUMER.{verb}.*.{name}" for verb in ("MSG.NEXT", "DELETE") for name in theirs]
    subscribe: dict[str, list[str]] = {"allow": [f"{inbox}.>"]} if inbox is not None else {"deny": [">"]}
    return {"publish": {"allow": publish, "deny": deny}, "subscribe": subscribe}


def user_command_subject(user: str) -> str:
    """The one subject a user's own connection sends its commands on (the gateway reads the
    user from it: only that user's connection may publish there)."""
    from hivebus.bus.subjects import encode_token

    return f"{USER_COMMANDS}.{encode_token(user)}"


def user_permissions(user: str, nodes: Iterable[str], inbox: str) -> Permissions:
    """A connection made with ``user``'s token (``auth.user_callout``): the public rules, its
    replies only on ``inbox``, and commands only as itself: on ``user_command_subject(user)``,
    never on the shared ``hivebus.cmd`` (where a command names its user in a body token)."""
    perms = public_permissions(nodes, inbox=inbox)
    publish = [s for s in perms["publish"]["allow"] if s != "hivebus.cmd"]
    return {"publish": {"allow": [*publish, user_command_subject(user)], "deny": perms["publish"]["deny"]},
            "subscribe": perms["subscribe"]}


def render(users: Mapping[str, str], nodes: Iterable[str], sites: Mapping[str, Sequence[str]] | None = None,
           *, issuer: str | None = None) -> str:
    """The nats-server config text: ``users`` maps user name -> bcrypt hash; a user named
    ``node-<ID>`` gets that node's permissions, ``site-<NAME>`` (a site leaf's link) those of
    the nodes ``sites`` gives it, ``service``/``admin`` everything.

    With ``issuer`` (the hub's callout key, ``auth.callout``) the server checks only
    ``service`` and ``admin`` itself and asks the callout about every other connection,
    which then gets the permissions the callout signs (the same rules, and a public
    connection its own inbox; the callout checks the passwords). The other identities stay
    listed, with a password nobody holds (``_CALLOUT_DECIDES``): on a reload the server
    asks the callout again about each open connection of a listed user, and closes those
    of users no longer listed (a removed node) at once. Without ``issuer``: connections
    without credentials are ``public``, sharing the ``_INBOX`` prefix (no private replies).
    """
    nodes = sorted(set(nodes))
    sites = sites or {}
    entries: list[dict[str, Any]] = []
    for user, hashed in sorted(users.items()):
        if user.startswith(NODE_PREFIX):
            perms = node_permissions(user.removeprefix(NODE_PREFIX))
        elif user.startswith(SITE_PREFIX):
            perms = site_permissions(sites.get(user.removeprefix(SITE_PREFIX), ()))
        elif user == PUBLIC:
            perms = public_permissions(nodes, inbox="_INBOX" if issuer is None else None)
        else:
            perms = full()
        entry: dict[str, Any] = {"user": user, "permissions": perms}
        if issuer is not None and user not in (SERVICE, ADMIN):
            entry["password"] = _CALLOUT_DECIDES
        elif user != PUBLIC:  # without a callout, public is who has no password
            entry["password"] = hashed
        entries.append(entry)
    body = ",\n    ".join(json.dumps(e, separators=(", ", ": ")) for e in entries)
    header = "# generated by hivebus.auth -- `hivebus node add` rewrites it and reloads the server\n"
    if issuer is None:
        return header + f"authorization {{\n  users: [\n    {body}\n  ]\n}}\n" + f"no_auth_user: {json.dumps(PUBLIC)}\n"
    callout = f"  auth_callout {{\n    issuer: {json.dumps(issuer)}\n    auth_users: {json.dumps([SERVICE, ADMIN])}\n  }}\n"
    return header + f"authorization {{\n  users: [\n    {body}\n  ]\n{callout}}}\n"


def render_leaf(node_hashes: Mapping[str, str]) -> str:
    """A site leaf's own config text: its nodes (node id -> the bcrypt hash the hub keeps), each
    confined as on the hub (``leaf_node_permissions``); no ``no_auth_user``, so a connection to
    the leaf without a node's credential is refused."""
    entries = [
        {"user": node_user(node), "password": hashed, "permissions": leaf_node_permissions(node)}
        for node, hashed in sorted(node_hashes.items())
    ]
    body = ",\n    ".join(json.dumps(e, separators=(", ", ": ")) for e in entries)
    return (
        "# generated by hivebus site run from the site's credential -- rewritten on each start\n"
        f"authorization {{\n  users: [\n    {body}\n  ]\n}}\n"
    )
