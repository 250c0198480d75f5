"""The read API for dashboards and scripts: nodes, jobs, apps and dead letters as JSON.

    GET /nodes[?status=online|offline&tag=T]       the ``nodes`` view
    GET /nodes/{node}[?runs=N]                      the node, its sensors, its recent plugin runs
    GET /jobs[?state=Running&user=U&node=N]        the ``jobs`` view
    GET /jobs/{job}[?runs=N]                        the job, its goals per node, runs, refusals, triggers
    GET /apps[?namespace=NS&state=approved]        the apps you may read, each with its versions
    GET /apps/{namespace}/{name}                    every version: review, provenance, grants, profiles
    GET /dead-letters[?stream=EVENTS&consumer=C]   the ``dead_letters`` view (admins only)

Rows are the views' rows, read through the projector's query service exactly as ``POST
/api/v1/sql`` reads them (``projections.client.query``); JSON columns (``attributes``,
``spec``...) are parsed into objects. ``status`` is the view's: a node goes offline when the
hub's health handler says so (``node.offline``, by the hub's clock), not by the browser's.

Jobs are listed for everyone, as ``hivebus job status`` and ``hivebus query`` show every job
to anyone who asks (a job's spec names only public facts: bundles, nodes, rules); ``?user=``
narrows the list to one submitter's jobs.

Apps are filtered by viewer, with the ECR's own rule (``web.catalog.Access``, the catalog
folded here with the ECR's ``evolve``; ``Catalog.may_read``): a private bundle shows only to
its owner, its namespace's owner, users and groups granted READ on it or its namespace, and
reviewers; anonymous sees public bundles only. An app no version of which you may read is a
404, as if it did not exist. A version's grants (``permissions``) show only to those holding
READ_ACP on it (the object store's rule), ``null`` to others.

Dead letters are for admins only: the hub's ``admin`` user or a user given the ``admin`` role
(``hivebus user role NAME admin``); anonymous is a 401, anyone else a 403. A dead letter holds
the raw bytes of a message no consumer could read, whatever they carried (any node's readings,
any user's command), so it belongs with the operator who repairs the platform, the one
identity the auth model already trusts with everything (it alone publishes ``evt.auth.>``).
``payload`` is base64, as ``/sql`` answers BLOBs.

Lists are paged: ``?limit=`` (default 100, at most 1000) and ``?cursor=``, the opaque
``next`` of the previous page; every answer is ``{"items": [...], "next": <cursor or
null>}``. The order is the view's key (``node_id``...), and a cursor is the key of the last
row sent, so a page goes on after it even when rows were added or changed in between: every
row present throughout is seen exactly once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query

from hivebus.projections.client import query
from hivebus.web.app import Face, WebFace
from hivebus.web.errors import ApiError

router = APIRouter(tags=["read"])

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
RECENT_RUNS: Final = 20
LimitParam = Annotated[str | None, Query(description=f"rows per page, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})")]
CursorParam = Annotated[str | None, Query(description="the `next` of the previous page")]
RunsParam = Annotated[str | None, Query(description=f"how many recent plugin runs (default {RECENT_RUNS})")]


@dataclass(frozen=True)
class Listing:
    """One paged list: its name (in its cursors), the view and the key it is ordered by."""

    name: str
    view: str
    key: tuple[str, ...]


NODES = Listing("nodes", "nodes", ("node_id",))
JOBS = Listing("jobs", "jobs", ("job_id",))
APPS = Listing("apps", "(SELECT namespace, name FROM bundles WHERE list_contains(?::VARCHAR[], bundle_id) "
                       "AND (state = ? OR (? IS NULL AND state <> 'deleted')) GROUP BY namespace, name) apps",
                ("namespace", "name"))
# A packed DATA message has a dead letter per bad reading (``batch_index``; NULL for a whole
# message), so the key needs it; NULL would drop out of the row comparison of a cursor.
DEAD_LETTERS = Listing("dead-letters", "(SELECT *, coalesce(batch_index, -1) AS batch_position FROM dead_letters) letters",
                       ("stream", "seq", "consumer", "batch_position"))
BUNDLE_STATES: Final = ("registered", "approved", "frozen", "deleted")
JOB_STATES: Final = ("Created", "Submitted", "Running", "Completed", "Suspended", "Removed")
JSON_COLUMNS: Final = frozenset({"attributes", "spec", "inputs", "metadata", "artifacts", "provenance", "data"})


async def viewer(web: WebFace, authorization: Annotated[str | None, Header(description="sage <token>")] = None,
                 ) -> str | None:
    """The token's user, None for anonymous; a bad token is a 401 on every route."""
    return await web.identities.user_of(authorization)


Viewer = Annotated[str | None, Depends(viewer)]


def count(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(400, f"{name} must be a whole number from 1 to {MAX_LIMIT}, not {text!r}",
                       f"e.g. ?{name}={DEFAULT_LIMIT}")
    return value


def encode_cursor(listing: Listing, key: Sequence[Any]) -> str:
    raw = json.dumps([listing.name, list(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(listing: Listing, text: str) -> list[Any]:
    bad = ApiError(400, "the cursor is not one this list gave out",
                   f"pass the `next` of the previous page of /{listing.name} unchanged, or leave cursor out")
    try:
        name, key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise bad from None
    if name != listing.name or not isinstance(key, list) or len(key) != len(listing.key):
        raise bad
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in key):
        raise bad
    return key


def plain(row: dict[str, Any], json_columns: frozenset[str] = JSON_COLUMNS) -> dict[str, Any]:
    """A view row as JSON: its JSON-typed columns parsed (they arrive as text)."""
    for column in json_columns & row.keys():
        value = row[column]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # not JSON after all: the text stays
                row[column] = json.loads(value)
    return row


async def rows(web: Face, sql: str, params: list[Any], limit: int | None = None) -> list[dict[str, Any]]:
    result = await query(web.bus, sql, params, limit=limit)
    return [plain(r) for r in result.records()]


async def page(web: Face, listing: Listing, *, where: Sequence[str] = (), params: Sequence[Any] = (),
               limit: str | None, cursor: str | None, source_params: Sequence[Any] = ()) -> dict[str, Any]:
    """One page of ``listing`` (``where`` conditions use ``?`` parameters, after the view's own
    ``source_params`` when its view is a subquery)."""
    size = count(limit, "limit", DEFAULT_LIMIT)
    conditions, values = list(where), [*source_params, *params]
    if cursor:
        after = decode_cursor(listing, cursor)
        columns = ", ".join(listing.key)
        marks = ", ".join("?" for _ in after)
        conditions.append(f"({columns}) > ({marks})" if len(after) > 1 else f"{columns} > {marks}")
        values += after
    sql = f"SELECT * FROM {listing.view}"
    if conditions:
        sql += " WHERE " + " AND ".join(f"({c})" for c in conditions)
    sql += f" ORDER BY {', '.join(listing.key)} LIMIT {size + 1}"
    found = await rows(web, sql, values, limit=size + 1)
    items = found[:size]
    more = len(found) > size
    next_cursor = encode_cursor(listing, [items[-1][k] for k in listing.key]) if more else None
    return {"items": items, "next": next_cursor}


def one_of(value: str | None, name: str, allowed: Sequence[str]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}, not {value!r}", f"e.g. ?{name}={allowed[0]}")
    return value


# --- nodes ---------------------------------------------------------------------------------


@router.get("/nodes")
async def list_nodes(web: WebFace, _: Viewer, limit: LimitParam = None, cursor: CursorParam = None,
                     status: Annotated[str | None, Query(description="online | offline")] = None,
                     tag: Annotated[str | None, Query(description="only nodes with this tag")] = None) -> dict[str, Any]:
    """Every node the hub knows, by node id: status, last heartbeat, resources, backlog."""
    where, params = [], []
    if one_of(status, "status", ("online", "offline")):
        where.append("status = ?")
        params.append(status)
    if tag:
        where.append("list_contains(tags, ?)")
        params.append(tag)
    return await page(web, NODES, where=where, params=params, limit=limit, cursor=cursor)


@router.get("/nodes/{node}")
async def show_node(node: str, web: WebFace, _: Viewer, runs: RunsParam = None) -> dict[str, Any]:
    """One node with its sensors (``lost`` true for a lost one) and its latest plugin runs."""
    found = await rows(web, "SELECT * FROM nodes WHERE node_id = ?", [node])
    if not found:
        raise ApiError(404, f"no node {node!r}", "GET /api/v1/nodes lists the nodes the hub knows")
    sensors = await rows(web, "SELECT * FROM node_sensors WHERE node = ? ORDER BY sensor", [node])
    for sensor in sensors:
        sensor["lost"] = sensor["status"] == "lost"
    recent = await rows(web, "SELECT * FROM plugin_runs WHERE node = ? ORDER BY updated_at DESC, run_id LIMIT ?",
                        [node, count(runs, "runs", RECENT_RUNS)])
    return {"node": found[0], "sensors": sensors, "runs": recent}


# --- jobs ----------------------------------------------------------------------------------


@router.get("/jobs")
async def list_jobs(web: WebFace, _: Viewer, limit: LimitParam = None, cursor: CursorParam = None,
                    state: Annotated[str | None, Query(description=" | ".join(JOB_STATES))] = None,
                    user: Annotated[str | None, Query(description="only jobs this user submitted")] = None,
                    node: Annotated[str | None, Query(description="only jobs placed on (or aimed at) this node")] = None,
                    ) -> dict[str, Any]:
    """Every job the scheduler decided, by job id: state, user, targets, rules, placement."""
    where, params = [], []
    if one_of(state, "state", JOB_STATES):
        where.append("state = ?")
        params.append(state)
    if user:
        where.append("user = ?")
        params.append(user)
    if node:
        where.append("list_contains(placed_nodes, ?) OR list_contains(nodes, ?)")
        params += [node, node]
    return await page(web, JOBS, where=where, params=params, limit=limit, cursor=cursor)


@router.get("/jobs/{job}")
async def show_job(job: str, web: WebFace, _: Viewer, runs: RunsParam = None) -> dict[str, Any]:
    """One job: the ``jobs`` row, its goal per node x plugin (``assignments``, with the node's
    status), its latest plugin runs and triggers, and the commands about it the scheduler
    refused, with their reasons (a job refused outright has ``job`` null and its refusal)."""
    recent = count(runs, "runs", RECENT_RUNS)
    found = await rows(web, "SELECT * FROM jobs WHERE job_id = ?", [job])
    refused = await rows(web, "SELECT * FROM rejections WHERE decider = 'ses' AND target = ? ORDER BY seq", [job])
    if not found and not refused:
        raise ApiError(404, f"no job {job!r}", "GET /api/v1/jobs lists the jobs; views follow the log within moments")
    goals = await rows(web, "SELECT a.*, n.status AS node_status FROM assignments a LEFT JOIN nodes n ON n.node_id = a.node "
                            "WHERE a.job_id = ? ORDER BY a.node, a.plugin", [job])
    last_runs = await rows(web, "SELECT * FROM plugin_runs WHERE job_id = ? ORDER BY updated_at DESC, run_id LIMIT ?",
                           [job, recent])
    fired = await rows(web, "SELECT * FROM triggers WHERE job_id = ? ORDER BY seq DESC LIMIT ?", [job, recent])
    return {"job": found[0] if found else None, "goals": goals, "runs": last_runs, "rejections": refused,
            "triggers": fired}


# --- apps ----------------------------------------------------------------------------------


def app_doc(namespace: str, name: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"{namespace}/{name}", "namespace": namespace, "name": name, "versions": versions}


@router.get("/apps")
async def list_apps(web: WebFace, viewer: Viewer, limit: LimitParam = None, cursor: CursorParam = None,
                    namespace: Annotated[str | None, Query(description="only this namespace's apps")] = None,
                    state: Annotated[str | None, Query(description=" | ".join(BUNDLE_STATES) +
                                                       " (default: every state but deleted)")] = None,
                    ) -> dict[str, Any]:
    """The apps (``namespace/name``) you may read, by id, each with its versions (``bundles`` rows)."""
    state = one_of(state, "state", BUNDLE_STATES)
    readable = await web.access.readable(viewer)
    where, params = [], []
    if namespace:
        where.append("namespace = ?")
        params.append(namespace)
    found = await page(web, APPS, where=where, params=params, limit=limit, cursor=cursor,
                       source_params=[readable, state, state])
    ids = [f"{a['namespace']}/{a['name']}" for a in found["items"]]
    versions = await rows(web, "SELECT * FROM bundles WHERE list_contains(?::VARCHAR[], bundle_id) "
                               "AND list_contains(?::VARCHAR[], namespace || '/' || name) "
                               "AND (state = ? OR (? IS NULL AND state <> 'deleted')) "
                               "ORDER BY namespace, name, registered_at, version", [readable, ids, state, state])
    by_app: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for version in versions:
        by_app[f"{version['namespace']}/{version['name']}"].append(version)
    found["items"] = [app_doc(a["namespace"], a["name"], by_app[f"{a['namespace']}/{a['name']}"])
                      for a in found["items"]]
    return found


@router.get("/apps/{namespace}/{name}")
async def show_app(namespace: str, name: str, web: WebFace, viewer: Viewer) -> dict[str, Any]:
    """Every version of one app you may read (deleted ones too): the ``bundles`` row (review
    state, provenance, artifacts), its grants (``permissions``, with READ_ACP), its measured
    ``profiles`` per hardware class and the ECR's refusals about it."""
    catalog = await web.access.catch_up()
    readable = [bid for bid in await web.access.readable(viewer) if bid.startswith(f"{namespace}/{name}:")]
    versions = await rows(web, "SELECT * FROM bundles WHERE list_contains(?::VARCHAR[], bundle_id) "
                               "ORDER BY registered_at, version", [readable])
    if not versions:
        raise ApiError(404, f"no app {namespace}/{name} you may read",
                       "GET /api/v1/apps lists the apps you may read; a private one needs its owner's grant")
    ids = [v["bundle_id"] for v in versions]
    grants = await rows(web, "SELECT * FROM bundle_permissions WHERE resource = ? OR list_contains(?::VARCHAR[], resource) "
                             "ORDER BY resource, grantee_type, grantee, permission", [namespace, ids])
    profiles = await rows(web, "SELECT * FROM profiles WHERE list_contains(?::VARCHAR[], bundle_id) "
                               "ORDER BY bundle_id, arch, gpu NULLS FIRST, node_class NULLS FIRST", [ids])
    refused = await rows(web, "SELECT * FROM rejections WHERE decider = 'ecr' AND list_contains(?::VARCHAR[], target) "
                              "ORDER BY seq", [ids])
    for version in versions:
        bid = version["bundle_id"]
        may_see_grants = viewer is not None and catalog.can(viewer, "READ_ACP", bid)
        version["permissions"] = [g for g in grants if g["resource"] in (bid, namespace)] if may_see_grants else None
        version["profiles"] = [p for p in profiles if p["bundle_id"] == bid]
        version["rejections"] = [r for r in refused if r["target"] == bid]
    return app_doc(namespace, name, versions)


# --- dead letters --------------------------------------------------------------------------


@router.get("/dead-letters")
async def list_dead_letters(web: WebFace, viewer: Viewer, limit: LimitParam = None, cursor: CursorParam = None,
                            stream: Annotated[str | None, Query(description="EVENTS | DATA")] = None,
                            consumer: Annotated[str | None, Query(description="the consumer that gave up on it")] = None,
                            ) -> dict[str, Any]:
    """Messages no consumer could read, by (stream, seq, consumer, batch index), with the reason (admins only)."""
    if viewer is None:
        raise ApiError(401, "dead letters are for admins", "send 'Authorization: sage <token>' of an admin")
    if not web.identities.is_admin(viewer):
        raise ApiError(403, f"{viewer} is not an admin; dead letters are for admins",
                       f"an admin gives the role: hivebus user role {viewer} admin")
    where, params = [], []
    if stream:
        where.append("stream = ?")
        params.append(stream)
    if consumer:
        where.append("consumer = ?")
        params.append(consumer)
    found = await page(web, DEAD_LETTERS, where=where, params=params, limit=limit, cursor=cursor)
    for item in found["items"]:
        item.pop("batch_position", None)  # the key's helper column; batch_index is the view's
    return found
