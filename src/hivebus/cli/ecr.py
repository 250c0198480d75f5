"""``hivebus ecr``: push bundles, list and show them, approve, freeze, delete, grant, revoke.

Write commands are commands: they go to the ECR's decider (through the gateway with your
token), which appends the facts or one ``ecr.command.rejected`` with every reason, and say
what it decided. Read commands go through the query service (``hivebus.query``); ``show``
lists the refused commands about a bundle too.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, app, out, run, settings
from hivebus.errors import FormatError, QueryError, RequestRejected
from hivebus.formats import checkout_of, load_app
from hivebus.schemas.ecr import (
    ArtifactRef,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    PermissionGranted,
    PermissionRevoked,
    Provenance,
)
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.storage import object_ref
from hivebus.services.requests import Answer, request_at

ecr_app = typer.Typer(
    help="The edge code repository: bundles, reviews, permissions.", no_args_is_help=True
)
app.add_typer(ecr_app, name="ecr")

User = Annotated[
    str | None,
    typer.Option(
        "--user", "-u", envvar="HIVEBUS_USER", help="Who you are (default: your login name)."
    ),
]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the handler's answer.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PERMISSIONS = ("READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL")
_MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".tflite", ".pb", ".h5", ".ckpt", ".safetensors")
_CODE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar")


def whoami(user: str | None) -> str:
    """``--user``, ``HIVEBUS_USER`` or the login name, as a user name the platform accepts."""
    name = user or getpass.getuser()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}", name):
        raise RequestRejected(
            f"{name!r} is not a user name", ["pass --user NAME (letters, digits, _ . @ + -)"]
        )
    return name


def artifact(path: Path) -> ArtifactRef:
    """A file of the bundle, named by its sha256 digest."""
    if not path.is_file():
        raise FormatError(str(path), [(None, "artifact file does not exist")])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    name = path.name.lower()
    kind: Literal["model", "code", "other"] = "other"
    if name.endswith(_MODEL_SUFFIXES):
        kind = "model"
    elif name.endswith(_CODE_SUFFIXES):
        kind = "code"
    return ArtifactRef(
        name=path.name, kind=kind, digest=f"sha256:{digest.hexdigest()}", size=path.stat().st_size
    )


def _refused(answer: Answer) -> None:
    rejection = answer.rejection
    if rejection is not None:
        reasons = list(rejection.data.reasons)
        raise RequestRejected(
            f"{rejection.data.command} refused:\n" + "\n".join(f"  - {r}" for r in reasons), reasons
        )
    if answer.refused is not None:
        raise RequestRejected(answer.refused, [answer.refused])


APP_FILES = ("sage.yaml", "sage.yml")


def app_file(path: Path) -> Path:
    """``path`` itself, or the app file in the folder ``path``."""
    if not path.is_dir():
        return path
    for name in APP_FILES:
        if (path / name).is_file():
            return path / name
    raise FormatError(str(path), [(None, f"no {' or '.join(APP_FILES)} in this folder")])


@ecr_app.command()
def push(
    file: Annotated[Path, typer.Argument(help="The app's sage.yaml, or the folder that holds it.")],
    user: User = None,
    namespace: Annotated[
        str | None,
        typer.Option(help="Namespace when sage.yaml names none (default: your user name)."),
    ] = None,
    source_url: Annotated[
        str | None,
        typer.Option(
            "--source-url",
            help="The repository, when sage.yaml has no source.url "
            "(default: the git checkout's remote 'origin').",
        ),
    ] = None,
    branch: Annotated[
        str | None,
        typer.Option(
            help="The branch, when sage.yaml has no source.branch (default: the checkout's)."
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="The version, when sage.yaml has none (default: git describe --tags).",
        ),
    ] = None,
    artifacts: Annotated[
        list[Path] | None,
        typer.Option(
            "--artifact", "-a", help="A file of the bundle (model, code archive); repeatable."
        ),
    ] = None,
    training_data: Annotated[
        list[str] | None,
        typer.Option(
            "--training-data",
            help="Where the model's training data is: storage://<bucket>/<key> (an object "
            "of the object store) or a URL/DOI; repeatable.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="The model it runs: storage://<bucket>/<key> or a URL."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Kept for old scripts: a push is always decided at once.")
    ] = True,
    timeout: Timeout = 15.0,
    hub: Hub = None,
    as_json: AsJson = False,
) -> None:
    """Push an app version; prints its id when registered, every reason when rejected.

    What sage.yaml leaves out, as the Sage portal fills it in: source.url, source.branch and
    the commit from the git checkout around the file, version from its latest tag.
    """
    pusher = whoami(user)
    path = app_file(file)
    explicit = [
        field
        for field, value in (
            ("source.url", source_url),
            ("source.branch", branch),
            ("version", version),
        )
        if value is not None
    ]
    spec = load_app(
        path,
        name=str(path),
        namespace=namespace or pusher.split("@")[0].lower(),
        checkout=checkout_of(path),
        source_url=source_url,
        branch=branch,
        version=version,
        explicit=explicit,
    )
    provenance = _provenance(training_data or [], model)
    payload = BundlePushed(
        app=spec, pusher=pusher, artifacts=[artifact(p) for p in artifacts or []],
        provenance=provenance,
    )
    event = Event.new(payload, source=f"user/{pusher}", subject=spec.bundle_id)
    answer = run(_ask(hub, event, [], timeout))
    if answer.rejection is not None:
        reasons = answer.reasons
        raise RequestRejected(
            f"{spec.bundle_id} rejected:\n" + "\n".join(f"  - {r}" for r in reasons), reasons
        )
    registered = answer.of_type("ecr.bundle.registered")
    if not registered:
        raise RequestRejected(f"{spec.bundle_id}: the ECR gave no answer (sequence {answer.seq})")
    frozen = bool(answer.of_type("ecr.bundle.frozen"))
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "bundle_id": spec.bundle_id,
                    "state": "registered",
                    "owner": registered[0].data.owner,
                    "frozen": frozen,
                    "seq": answer.seq,
                }
            )
        )
    else:
        out.print(
            f"registered {spec.bundle_id} (owner {registered[0].data.owner}{', frozen' if frozen else ''})"
        )
        out.print(
            "  it runs on nodes tagged 'virtual' until a reviewer approves it: hivebus ecr approve "
            + spec.bundle_id
        )


def _acted(
    hub: str | None, payload: Payload, who: str, subject: str, timeout: float, done: str
) -> None:
    event = Event.new(payload, source=f"user/{who}", subject=subject)
    answer = run(_ask(hub, event, [], timeout))
    _refused(answer)
    out.print(done)


@ecr_app.command()
def approve(
    bundle: Annotated[str, typer.Argument(help="namespace/name:version")],
    comment: Annotated[str, typer.Option(help="Review note.")] = "",
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Approve a bundle (reviewers only): it may then run on real nodes."""
    who = whoami(user)
    _acted(
        hub,
        BundleApproved(bundle_id=bundle, by=who, comment=comment),
        who,
        bundle,
        timeout,
        f"approved {bundle}",
    )


@ecr_app.command()
def freeze(
    bundle: Annotated[str, typer.Argument(help="namespace/name:version")],
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Freeze a version: it can never be pushed again (needs WRITE)."""
    who = whoami(user)
    _acted(hub, BundleFrozen(bundle_id=bundle, by=who), who, bundle, timeout, f"froze {bundle}")


@ecr_app.command()
def delete(
    bundle: Annotated[str, typer.Argument(help="namespace/name:version")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Delete a bundle (needs FULL_CONTROL); running jobs keep it, new ones cannot use it."""
    who = whoami(user)
    _acted(
        hub,
        BundleDeleted(bundle_id=bundle, by=who, reason=reason),
        who,
        bundle,
        timeout,
        f"deleted {bundle}",
    )


def _grantee(to: str | None, group: str | None, public: bool) -> tuple[str, str]:
    chosen = [x for x in (to, group, "AllUsers" if public else None) if x]
    if len(chosen) != 1:
        raise RequestRejected("name exactly one grantee", ["--to USER, --group GROUP or --public"])
    return ("user", to) if to else ("group", group or "AllUsers")


def _permission(text: str) -> str:
    verb = text.upper()
    if verb not in PERMISSIONS:
        raise RequestRejected(f"unknown permission {text!r}", [f"one of {', '.join(PERMISSIONS)}"])
    return verb


def _change_permission(
    model: type[PermissionGranted] | type[PermissionRevoked],
    verb: str,
    preposition: str,
    resource: str,
    permission: str,
    to: str | None,
    group: str | None,
    public: bool,
    user: str | None,
    timeout: float,
    hub: str | None,
) -> None:
    who = whoami(user)
    kind, grantee = _grantee(to, group, public)
    payload = model.model_validate(
        {"resource": resource, "grantee_type": kind, "grantee": grantee, "permission": _permission(permission), "by": who}
    )
    _acted(hub, payload, who, resource, timeout, f"{verb} {payload.permission} on {resource} {preposition} {kind} {grantee}")


@ecr_app.command()
def grant(
    resource: Annotated[
        str, typer.Argument(help="A namespace (waggle) or a bundle (waggle/plugin-bme680:0.2.1).")
    ],
    permission: Annotated[
        str, typer.Argument(help="READ, WRITE, READ_ACP, WRITE_ACP or FULL_CONTROL")
    ],
    to: Annotated[str | None, typer.Option("--to", help="The user to grant it to.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="The group to grant it to.")] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Grant READ to AllUsers: make it public.")
    ] = False,
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Grant a permission on a namespace or a bundle (needs WRITE_ACP there)."""
    _change_permission(PermissionGranted, "granted", "to", resource, permission, to, group, public, user, timeout, hub)


@ecr_app.command()
def revoke(
    resource: Annotated[str, typer.Argument(help="A namespace or a bundle.")],
    permission: Annotated[
        str, typer.Argument(help="READ, WRITE, READ_ACP, WRITE_ACP or FULL_CONTROL")
    ],
    to: Annotated[str | None, typer.Option("--to", help="The user who holds it.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="The group that holds it.")] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Revoke AllUsers READ: make it private.")
    ] = False,
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Revoke a permission granted earlier (needs WRITE_ACP)."""
    _change_permission(PermissionRevoked, "revoked", "from", resource, permission, to, group, public, user, timeout, hub)


# --- reading -------------------------------------------------------------------------------

VISIBLE_SQL = """
WITH ns_owner AS (
    SELECT namespace, arg_min(owner, registered_at) AS ns_owner
    FROM bundles WHERE registered_at IS NOT NULL GROUP BY namespace
)
SELECT b.bundle_id, b.state, b.owner, b.approved, b.frozen, b.public
FROM bundles b LEFT JOIN ns_owner o ON o.namespace = b.namespace
WHERE b.state <> 'deleted' AND (b.state NOT IN ('pushed', 'rejected') OR b.pusher = $user OR $all) AND (
    $all OR b.public OR b.owner = $user OR o.ns_owner = $user
    OR EXISTS (
        SELECT 1 FROM bundle_permissions p
        WHERE p.grantee_type = 'user' AND p.grantee = $user
          AND p.permission IN ('READ', 'FULL_CONTROL')
          AND (p.resource = b.bundle_id OR p.resource = b.namespace)
    )
)
ORDER BY b.bundle_id
"""


async def _query(
    hub: str | None, sql: str, params: dict[str, Any] | list[Any]
) -> list[dict[str, Any]]:
    from hivebus.projections.client import query

    async with await Bus.connect(settings(hub).nats_url) as bus:
        result = await query(bus, sql, params)
    return result.records()


@ecr_app.command("list")
def list_bundles(
    user: User = None,
    all_bundles: Annotated[
        bool, typer.Option("--all", help="Every bundle, private ones included.")
    ] = False,
    hub: Hub = None,
    as_json: AsJson = False,
) -> None:
    """The bundles you can see: public ones, yours, and those shared with you."""
    who = whoami(user)
    rows = run(_query(hub, VISIBLE_SQL, {"all": all_bundles, "user": who}))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("state", "owner", "approved", "frozen", "public")
    table.add_column("bundle", no_wrap=True)
    for row in rows:
        table.add_row(
            row["state"],
            row["owner"] or "",
            _yes(row["approved"]),
            _yes(row["frozen"]),
            _yes(row["public"]),
            row["bundle_id"],
        )
    out.print(table)


@ecr_app.command()
def show(
    bundle: Annotated[str, typer.Argument(help="namespace/name:version")],
    hub: Hub = None,
    as_json: AsJson = False,
) -> None:
    """One bundle: metadata, review, permissions, measured profiles and refused commands."""

    async def fetch() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        from hivebus.projections.client import query

        async with await Bus.connect(settings(hub).nats_url) as bus:
            rows = (
                await query(bus, "SELECT * FROM bundles WHERE bundle_id = ?", [bundle])
            ).records()
            ns = bundle.split("/", 1)[0]
            grants = (
                await query(
                    bus,
                    "SELECT resource, grantee_type, grantee, permission, granted_by FROM bundle_permissions "
                    "WHERE resource = ? OR resource = ? ORDER BY resource, grantee, permission",
                    [bundle, ns],
                )
            ).records()
            try:
                profiles = (
                    await query(
                        bus, "SELECT * FROM profiles WHERE bundle_id = ? ORDER BY arch", [bundle]
                    )
                ).records()
            except QueryError:
                profiles = []
            refused = (
                await query(
                    bus,
                    "SELECT time, command, requested_by, target, reasons FROM rejections "
                    "WHERE decider = 'ecr' AND target IN (?, ?) ORDER BY seq",
                    [bundle, ns],
                )
            ).records()
            if rows:
                rows[0]["provenance_objects"] = await _resolve_provenance(bus, rows[0].get("provenance"))
        return rows, grants, profiles, refused

    rows, grants, profiles, refused = run(fetch())
    if not rows and not refused:
        raise RequestRejected(
            f"no bundle {bundle}", ["check the id (namespace/name:version) or `hivebus ecr list`"]
        )
    if as_json:
        out.print_json(
            json.dumps(
                {"bundle": rows[0] if rows else None, "permissions": grants, "profiles": profiles, "rejections": refused},
                default=str,
            )
        )
        return
    if not rows:
        out.print(f"[bold]{bundle}[/]: not registered (the ECR refused it)")
        _print_rejections(refused)
        return
    row = rows[0]
    out.print(
        f"[bold]{row['bundle_id']}[/]  {row['state']}"
        + (f"  (approved by {row['approved_by']})" if row["approved"] else "  (not approved)")
    )
    for key in (
        "owner",
        "description",
        "source_url",
        "git_commit",
        "architectures",
        "license",
        "frozen",
        "public",
    ):
        if row.get(key) not in (None, "", []):
            out.print(f"  {key}: {row[key]}")
    if row.get("reasons"):
        out.print("  last push rejected:")
        for reason in row["reasons"]:
            out.print(f"    - {reason}")
    _print_provenance(row.get("provenance_objects") or [], _provenance_notes(row.get("provenance")))
    for g in grants:
        out.print(
            f"  grant: {g['grantee_type']} {g['grantee']} {g['permission']} on {g['resource']} (by {g['granted_by']})"
        )
    for p in profiles:
        summary = {k: v for k, v in p.items() if k not in ("bundle_id",) and v is not None}
        out.print(f"  profile: {summary}")
    _print_rejections(refused)


def _provenance(training_data: list[str], model: str | None) -> Provenance | None:
    if not training_data and not model:
        return None
    try:
        return Provenance(training_data=training_data, model=model)
    except ValueError as exc:
        problems = [str(e.get("msg", e)).removeprefix("Value error, ") for e in getattr(exc, "errors", lambda: [])()]
        error = RequestRejected("provenance: " + "; ".join(problems or [str(exc)]), problems)
        error.hint = "an object is storage://<bucket>/<key>, e.g. storage://camera7/imgs/a.jpg"
        raise error from None


def _provenance_doc(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _provenance_notes(value: object) -> str:
    return str(_provenance_doc(value).get("notes") or "")


async def _resolve_provenance(bus: Bus, value: object) -> list[dict[str, Any]]:
    """Each provenance entry, and for a ``storage://`` one the object the ``objects`` view
    holds under that bucket (id, or name when one bucket has it) and key: size, digest."""
    from hivebus.projections.client import query

    doc = _provenance_doc(value)
    entries = [("training_data", str(r)) for r in doc.get("training_data") or []]
    if doc.get("model"):
        entries.append(("model", str(doc["model"])))
    resolved: list[dict[str, Any]] = []
    for field, ref in entries:
        entry: dict[str, Any] = {"field": field, "ref": ref}
        resolved.append(entry)
        try:
            parts = object_ref(ref)
        except ValueError:
            parts = None
        if parts is None:
            entry["status"] = "external"
            continue
        bucket, key = parts
        entry.update(bucket=bucket, key=key)
        try:
            found = (await query(
                bus,
                "SELECT b.bucket_id, b.name, o.size, o.digest, o.put_at FROM buckets b "
                "LEFT JOIN objects o ON o.bucket_id = b.bucket_id AND o.key = ? "
                "WHERE b.bucket_id = ? OR b.name = ? ORDER BY b.bucket_id = ? DESC, b.created_at",
                [key, bucket, bucket, bucket],
            )).records()
        except QueryError as exc:
            entry.update(status="unresolved", reason=f"the object store's views cannot be read ({exc})")
            continue
        exact = [f for f in found if f["bucket_id"] == bucket]
        candidates = exact or found
        if not candidates:
            entry.update(status="missing", reason=f"no bucket {bucket}")
        elif len(candidates) > 1:
            ids = ", ".join(f["bucket_id"] for f in candidates)
            entry.update(status="ambiguous", reason=f"{len(candidates)} buckets are called {bucket} ({ids}): use the id")
        elif candidates[0]["size"] is None:
            entry.update(status="missing", bucket_id=candidates[0]["bucket_id"],
                         reason=f"no object {key} in bucket {candidates[0]['bucket_id']}")
        else:
            hit = candidates[0]
            entry.update(status="present", bucket_id=hit["bucket_id"], size=hit["size"], digest=hit["digest"],
                         put_at=str(hit["put_at"]))
    return resolved


def _print_provenance(entries: list[dict[str, Any]], notes: str) -> None:
    if not entries and not notes:
        return
    out.print("  provenance:")
    for e in entries:
        label = "training data" if e["field"] == "training_data" else "model"
        if e["status"] == "present":
            detail = f"{e['size']:,} bytes, {e['digest']} (bucket {e['bucket_id']})"
        elif e["status"] == "external":
            detail = "not in the object store"
        else:
            detail = f"[red]{e['status'].upper()}[/]: {e['reason']}"
        out.print(f"    {label}: {e['ref']}  {detail}", highlight=False)
    if notes:
        out.print(f"    notes: {notes}", highlight=False)


def _print_rejections(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        out.print(f"  refused {r['command']} by {r.get('requested_by') or '?'} on {r['target']} at {r['time']}:")
        for reason in r["reasons"]:
            out.print(f"    - {reason}")


def _yes(value: object) -> str:
    return "yes" if value else ""


def _ask(hub: str | None, event: Event, answers: list[str], timeout: float) -> Coroutine[Any, Any, Answer]:
    return request_at(settings(hub).nats_url, event, handler="ecr", answers=answers, timeout=timeout)
