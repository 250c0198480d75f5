"""``hivebus storage``: the object store from a terminal, through the web API (``hivebus web``).

    hivebus storage bucket create --datatype training-data --name camera7
    hivebus storage put camera7 camera_picture1.jpg
    hivebus storage ls camera7
    hivebus storage grant camera7 READ --to bob
    hivebus storage get camera7 camera_picture1.jpg -o copy.jpg

A bucket is named by its id or by its name (when only one bucket you may see has it). Your
token is ``--token``, ``HIVEBUS_TOKEN`` or the one ``hivebus user add NAME --save`` kept for
``--user``; files go up and down streamed, never whole in memory.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hivebus.cli.app import app, out
from hivebus.errors import HivebusError

storage_app = typer.Typer(name="storage", help="The object store: typed buckets, objects, permissions.",
                          no_args_is_help=True)
bucket_app = typer.Typer(name="bucket", help="Create, list, show and delete buckets.", no_args_is_help=True)
storage_app.add_typer(bucket_app, name="bucket")
app.add_typer(storage_app, name="storage")

Api = Annotated[str, typer.Option("--api", envvar="HIVEBUS_API_URL", help="The web API (hivebus web / hivebus up).")]
User = Annotated[str | None, typer.Option("--user", "-u", envvar="HIVEBUS_USER", help="Who you are (finds your saved token).")]
Token = Annotated[str | None, typer.Option("--token", help="Your token (default: HIVEBUS_TOKEN or the saved one).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
DEFAULT_API = "http://127.0.0.1:8080"
PIECE = 1 << 20


class StorageError(HivebusError):
    """The web API refused a storage request, or could not be reached."""


class Client:
    def __init__(self, api: str, user: str | None, token: str | None) -> None:
        import httpx

        from hivebus.auth.tokens import find_token

        found = find_token(_whoami(user), token)
        headers = {"Authorization": f"sage {found}"} if found else {}
        self.base = api.rstrip("/") + "/api/v1/objects"
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(60.0, read=600.0))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str = "", **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot reach the web API at {self.base} ({type(exc).__name__})",
                               hint="start it with `hivebus web` (or `hivebus up`), or point --api / HIVEBUS_API_URL at it") from None
        _check(response)
        return response.json()


def _check(response: Any) -> None:
    if response.status_code < 400:
        return
    try:
        doc = response.json()
        error, hint = doc.get("error") or response.reason_phrase, doc.get("hint")
    except ValueError:
        error, hint = f"{response.status_code} {response.reason_phrase}", None
    raise StorageError(f"{error} (HTTP {response.status_code})", hint=hint)


def _whoami(user: str | None) -> str:
    from hivebus.cli.ecr import whoami

    return whoami(user)


def _print(doc: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    elif isinstance(doc, dict):
        for key, value in doc.items():
            out.print(f"{key:18} {value}", highlight=False)
    else:
        for item in doc:
            out.print(str(item), highlight=False)


# --- buckets -----------------------------------------------------------------------------


@bucket_app.command("create")
def bucket_create(
    datatype: Annotated[str, typer.Option(help="training-data, model, profile or upload")],
    name: Annotated[str | None, typer.Option(help="A human-readable name (default: the id)")] = None,
    public: Annotated[bool, typer.Option(help="Readable by anyone, with or without a token")] = False,
    api: Api = DEFAULT_API, user: User = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Create a bucket you own; prints its id."""
    params: dict[str, Any] = {"type": datatype, "public": public}
    if name:
        params["name"] = name
    with Client(api, user, token) as client:
        _print(client.call("POST", params=params), as_json)


@bucket_app.command("list")
def bucket_list(api: Api = DEFAULT_API, user: User = None, token: Token = None, as_json: AsJson = False) -> None:
    """The buckets you own, were granted anything on, or that are public."""
    with Client(api, user, token) as client:
        buckets = client.call("GET")
    if as_json:
        _print(buckets, True)
        return
    table = Table(header_style="bold")
    for column in ("id", "name", "owner", "type"):
        table.add_column(column)
    for bucket in buckets:
        table.add_row(bucket["id"], bucket["name"], bucket["owner"], bucket["type"])
    out.print(table)


@bucket_app.command("show")
def bucket_show(bucket: str, permissions: Annotated[bool, typer.Option(help="Show its ACL instead")] = False,
                api: Api = DEFAULT_API, user: User = None, token: Token = None, as_json: AsJson = False) -> None:
    """A bucket's properties, or (--permissions) who holds what on it."""
    with Client(api, user, token) as client:
        doc = client.call("GET", f"/{bucket}", params={"permissions": ""} if permissions else None)
    if permissions and not as_json:
        for grant in doc:
            out.print(f"{grant['granteeType']:6} {grant['grantee']:24} {grant['permission']}", highlight=False)
        return
    _print(doc, as_json)


@bucket_app.command("rm")
def bucket_rm(bucket: str, api: Api = DEFAULT_API, user: User = None, token: Token = None) -> None:
    """Delete a bucket and every object in it (owner or FULL_CONTROL)."""
    with Client(api, user, token) as client:
        doc = client.call("DELETE", f"/{bucket}")
    out.print(f"deleted bucket {', '.join(doc['deleted'])}")


# --- objects -----------------------------------------------------------------------------


@storage_app.command("put")
def put(bucket: str, file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
        key: Annotated[str | None, typer.Argument(help="Object key (default: the file's name; a key ending in / gets it)")] = None,
        api: Api = DEFAULT_API, user: User = None, token: Token = None, as_json: AsJson = False) -> None:
    """Upload FILE into BUCKET, streamed."""
    target = key if key is not None else file.name
    if target.endswith("/"):
        target += file.name
    import mimetypes

    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    with Client(api, user, token) as client:
        doc = client.call("PUT", f"/{bucket}/{target}", content=_pieces(file),
                          headers={"Content-Type": kind, "Content-Length": str(file.stat().st_size)})
    if as_json:
        _print(doc, True)
    else:
        out.print(f"{doc['key']} ({doc['size']:,} bytes, {doc['digest']}) in bucket {doc['bucket-id']}", highlight=False)


def _pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(PIECE):
            yield piece


@storage_app.command("get")
def get(bucket: str, key: str,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write it ('-': stdout; default: the key's file name)")] = None,
        api: Api = DEFAULT_API, user: User = None, token: Token = None) -> None:
    """Download an object, streamed."""
    import httpx

    target = output or Path(key.rsplit("/", 1)[-1])
    with Client(api, user, token) as client:
        try:
            with client.http.stream("GET", f"{client.base}/{bucket}/{key}") as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                if str(target) == "-":
                    for chunk in response.iter_bytes():
                        sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                    return
                size = 0
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as sink:
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                        size += len(chunk)
                partial.replace(target)
        except httpx.HTTPError as exc:
            raise StorageError(f"the download of {key!r} failed ({type(exc).__name__})", hint="try again") from None
    out.print(f"{target} ({size:,} bytes)", highlight=False)


@storage_app.command("ls")
def ls(bucket: str, prefix: Annotated[str, typer.Argument(help="A folder in the bucket, e.g. weights/")] = "",
       recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Every key under the prefix")] = False,
       api: Api = DEFAULT_API, user: User = None, token: Token = None, as_json: AsJson = False) -> None:
    """List a bucket's folder (its files and subfolders), or every key under it (-r)."""
    folder = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
    with Client(api, user, token) as client:
        _print(client.call("GET", f"/{bucket}/{folder}", params={"recursive": ""} if recursive else None), as_json)


@storage_app.command("rm")
def rm(bucket: str, key: str, api: Api = DEFAULT_API, user: User = None, token: Token = None) -> None:
    """Delete an object (WRITE)."""
    with Client(api, user, token) as client:
        client.call("DELETE", f"/{bucket}/{key}")
    out.print(f"deleted {key}", highlight=False)


def _grantee(to: str | None, group: str | None, public: bool) -> tuple[str, str]:
    chosen = [g for g in (("USER", to), ("GROUP", group), ("GROUP", "AllUsers" if public else None)) if g[1]]
    if len(chosen) != 1:
        raise StorageError("name one grantee", hint="--to USER, --group GROUP (AuthenticatedUsers) or --public")
    kind, name = chosen[0]
    assert name is not None
    return kind, name


@storage_app.command("grant")
def grant(bucket: str,
          permission: Annotated[str, typer.Argument(help="FULL_CONTROL, WRITE, READ, WRITE_ACP or READ_ACP")],
          to: Annotated[str | None, typer.Option("--to", help="A user")] = None,
          group: Annotated[str | None, typer.Option("--group", help="A group (AuthenticatedUsers: every token holder)")] = None,
          public: Annotated[bool, typer.Option("--public", help="Anyone (READ only)")] = False,
          api: Api = DEFAULT_API, user: User = None, token: Token = None) -> None:
    """Grant PERMISSION on BUCKET (WRITE_ACP needed)."""
    kind, name = _grantee(to, group, public)
    body = {"granteeType": kind, "grantee": name, "permission": permission.upper()}
    with Client(api, user, token) as client:
        client.call("PUT", f"/{bucket}", params={"permissions": ""}, json=body)
    out.print(f"granted {body['permission']} on {bucket} to {kind.lower()} {name}", highlight=False)


@storage_app.command("revoke")
def revoke(bucket: str,
           permission: Annotated[str | None, typer.Argument(help="One permission (default: all the grantee's)")] = None,
           to: Annotated[str | None, typer.Option("--from", help="A user")] = None,
           group: Annotated[str | None, typer.Option("--group", help="A group")] = None,
           public: Annotated[bool, typer.Option("--public", help="Anyone: the bucket stops being public")] = False,
           api: Api = DEFAULT_API, user: User = None, token: Token = None) -> None:
    """Revoke a grantee's permission(s) on BUCKET (WRITE_ACP needed)."""
    kind, name = _grantee(to, group, public)
    grantee = f"{kind}:{name}" + (f":{permission.upper()}" if permission else "")
    with Client(api, user, token) as client:
        client.call("DELETE", f"/{bucket}", params={"permissions": "", "grantee": grantee})
    out.print(f"revoked {grantee} on {bucket}", highlight=False)
