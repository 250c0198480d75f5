"""The object store's REST routes, in sage-storage-api's shape (``/api/v1/objects``).

    POST   /objects?type=training-data&name=camera7[&public=true]   create a bucket (owner: you)
    GET    /objects                                                  the buckets you may see
    GET    /objects/{bucket}                                         show one
    DELETE /objects/{bucket}                                         delete it and its objects
    GET    /objects/{bucket}?permissions                             its ACL (READ_ACP)
    PUT    /objects/{bucket}?permissions   {"granteeType", "grantee", "permission"}   grant (WRITE_ACP)
    DELETE /objects/{bucket}?permissions&grantee=USER:bob[:READ]     revoke (WRITE_ACP)
    PUT    /objects/{bucket}/{key}        -F file=@x.jpg, or the raw bytes   upload (WRITE)
    GET    /objects/{bucket}/{key}                                   download, streamed (READ)
    GET    /objects/{bucket}/{prefix/}[?recursive]                   list (READ)
    DELETE /objects/{bucket}/{key}                                   delete an object (WRITE)

``{bucket}`` is the bucket's id, or its name when exactly one bucket you may see has it.
Decisions are ``handlers.storage``'s (facts appended by ``web.storage.Storage``); the bytes
go to a JetStream object store per bucket, streamed both ways (``web.objects``).
"""

from __future__ import annotations

import hashlib
import mimetypes
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from hivebus.handlers import storage as rules
from hivebus.schemas.storage import AclVerb, BucketType, Grant
from hivebus.web import objects
from hivebus.web.app import Face, WebFace
from hivebus.web.data import json_body
from hivebus.web.errors import ApiError
from hivebus.web.multipart import upload_of
from hivebus.web.storage import Refused

router = APIRouter(prefix="/objects", tags=["objects"])
Authorization = Annotated[str | None, Header(description="sage <token>")]
TOKEN_HINT = "send 'Authorization: sage <token>' (an admin issues tokens with `hivebus user add NAME`)"
GRANT_HINT = 'e.g. {"granteeType": "USER", "grantee": "bob", "permission": "READ"}'
NO_BYTES = f"sha256:{hashlib.sha256(b'').hexdigest()}"  # a put decided before its bytes
STATUS = {"missing": 404, "forbidden": 403, "conflict": 409, "invalid": 400}


class GrantBody(BaseModel):
    granteeType: Literal["USER", "GROUP", "user", "group"]  # sage-storage-api spells it so
    grantee: str
    permission: Literal["FULL_CONTROL", "WRITE", "READ", "WRITE_ACP", "READ_ACP"]


class BucketDoc(BaseModel):
    id: str
    name: str
    owner: str
    type: str
    time_created: str | None = None
    time_last_updated: str | None = None


def bucket_doc(bucket: rules.Bucket, *, times: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": bucket.bucket_id, "name": bucket.name, "owner": bucket.owner, "type": bucket.type}
    if times:
        doc["time_created"] = _iso(bucket.created)
        doc["time_last_updated"] = _iso(bucket.updated)
    return doc


def acl_doc(bucket: rules.Bucket) -> list[dict[str, str]]:
    owner = {"granteeType": "USER", "grantee": bucket.owner, "permission": "FULL_CONTROL"}
    return [owner, *({"granteeType": g.grantee_type.upper(), "grantee": g.grantee, "permission": g.permission}
                     for g in bucket.acl)]


# --- who, which bucket, may they ---------------------------------------------------------


async def _user(web: Face, authorization: str | None, *, required: bool = False) -> str | None:
    user = await web.identities.user_of(authorization)
    if user is None and required:
        raise ApiError(401, "this needs a user", TOKEN_HINT)
    return user


async def _bucket(web: Face, ref: str, user: str | None) -> rules.Bucket:
    state = await web.storage.catch_up()
    bucket = state.buckets.get(ref)
    if bucket is not None:
        return bucket
    named = [b for b in rules.visible(state, user) if b.name == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ApiError(409, f"{len(named)} buckets you may see are called {ref!r}", "use the bucket's id (GET /api/v1/objects)")
    raise ApiError(404, f"no bucket {ref!r}", "GET /api/v1/objects lists the buckets you may see")


def _require(bucket: rules.Bucket, user: str | None, verb: AclVerb) -> None:
    if rules.may(bucket, user, verb):
        return
    if user is None:
        raise ApiError(401, f"bucket {bucket.bucket_id} is not public", TOKEN_HINT)
    raise ApiError(403, f"{user} has no {verb} on bucket {bucket.bucket_id}", f"its owner ({bucket.owner}) may grant it")


async def _act(web: Face, command: rules.Command) -> None:
    try:
        await web.storage.act(command)
    except Refused as exc:
        raise ApiError(STATUS[exc.refusal.kind], "; ".join(exc.refusal.reasons)) from None


async def _check(web: Face, command: rules.Command) -> None:
    """Refuse ``command`` now if the decider would (the refusal is a fact); append nothing if not."""
    try:
        await web.storage.check(command)
    except Refused as exc:
        hint = "the bucket's owner may grant it" if exc.refusal.kind == "forbidden" else None
        raise ApiError(STATUS[exc.refusal.kind], "; ".join(exc.refusal.reasons), hint) from None


# --- buckets -----------------------------------------------------------------------------


@router.post("", status_code=200, response_model=BucketDoc)
async def create_bucket(
    web: WebFace,
    authorization: Authorization = None,
    type: Annotated[BucketType | None, Query(description="training-data, model, profile or upload")] = None,
    datatype: Annotated[BucketType | None, Query(description="the same as type")] = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
    public: bool = False,
) -> JSONResponse:
    """Create a bucket owned by the token's user (sage-storage-api: ``?type=...&name=...``)."""
    user = await _user(web, authorization, required=True)
    assert user is not None
    kind = type or datatype
    if kind is None:
        raise ApiError(400, "a bucket needs a type", "add ?type=training-data (or model, profile, upload)")
    bucket_id = str(uuid.uuid4())
    await _act(web, rules.CreateBucket(user=user, bucket_id=bucket_id, name=name or bucket_id, type=kind, public=public))
    bucket = (await web.storage.catch_up()).buckets[bucket_id]
    return JSONResponse(bucket_doc(bucket, times=False))


@router.get("", response_model=list[BucketDoc])
async def list_buckets(web: WebFace, authorization: Authorization = None) -> JSONResponse:
    """The buckets you own, were granted anything on, or that are public."""
    user = await _user(web, authorization)
    state = await web.storage.catch_up()
    return JSONResponse([bucket_doc(b, times=False) for b in sorted(rules.visible(state, user), key=lambda b: b.created)])


@router.get("/{bucket}")
async def show_bucket(bucket: str, web: WebFace, authorization: Authorization = None,
                      permissions: Annotated[str | None, Query(description="present: the ACL instead")] = None) -> JSONResponse:
    user = await _user(web, authorization)
    found = await _bucket(web, bucket, user)
    if permissions is not None:
        _require(found, user, "READ_ACP")
        return JSONResponse(acl_doc(found))
    if not rules.verbs_of(found, user):
        _require(found, user, "READ")
    return JSONResponse(bucket_doc(found))


@router.put("/{bucket}", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": GrantBody.model_json_schema()}}, "required": True}})
async def grant_access(bucket: str, request: Request, web: WebFace, authorization: Authorization = None,
                       permissions: Annotated[str | None, Query()] = None) -> JSONResponse:
    """Grant a permission (``?permissions``; to make a bucket public, READ to the group AllUsers).

    The body is JSON whatever the Content-Type says (``curl -d '{...}'``, as Sage's docs write it)."""
    if permissions is None:
        raise ApiError(400, "PUT on a bucket changes its permissions", "add ?permissions (uploads go to /objects/{bucket}/{key})")
    user = await _user(web, authorization, required=True)
    assert user is not None
    found = await _bucket(web, bucket, user)
    try:
        grant = GrantBody.model_validate(await json_body(request))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, f"not a grant: {problems}", GRANT_HINT) from None
    try:
        entry = Grant(grantee_type="user" if grant.granteeType.lower() == "user" else "group",
                      grantee=grant.grantee, permission=grant.permission)
    except ValidationError as exc:
        raise ApiError(422, f"not a grant: {exc.errors()[0]['msg']}", GRANT_HINT) from None
    await _act(web, rules.GrantAccess(user=user, bucket_id=found.bucket_id, grant=entry))
    return JSONResponse(grant.model_dump())


@router.delete("/{bucket}")
async def delete_bucket(bucket: str, web: WebFace, authorization: Authorization = None,
                        permissions: Annotated[str | None, Query()] = None,
                        grantee: Annotated[str | None, Query(description="USER:bob or GROUP:AllUsers, optionally :PERMISSION")] = None,
                        ) -> JSONResponse:
    """Delete the bucket and every object in it; with ``?permissions&grantee=...``, revoke."""
    user = await _user(web, authorization, required=True)
    assert user is not None
    found = await _bucket(web, bucket, user)
    if permissions is not None:
        kind, who, verb = _grantee(grantee)
        await _act(web, rules.RevokeAccess(user=user, bucket_id=found.bucket_id, grantee_type=kind, grantee=who,
                                           permission=verb))
        return JSONResponse({"deleted": [grantee]})
    await _act(web, rules.DeleteBucket(user=user, bucket_id=found.bucket_id))
    await objects.drop_store(web.bus, found.bucket_id)
    return JSONResponse({"deleted": [found.bucket_id]})


def _grantee(text: str | None) -> tuple[Literal["user", "group"], str, Any]:
    parts = (text or "").split(":")
    if len(parts) not in (2, 3) or parts[0].upper() not in ("USER", "GROUP") or not parts[1]:
        raise ApiError(400, f"grantee={text!r} is not TYPE:NAME[:PERMISSION]", "e.g. grantee=USER:bob or grantee=USER:bob:READ")
    verb = parts[2] if len(parts) == 3 else None
    if verb is not None and verb not in rules.VERBS:
        raise ApiError(400, f"{verb!r} is not a permission", f"one of {', '.join(rules.VERBS)}")
    return ("user" if parts[0].upper() == "USER" else "group"), parts[1], verb


# --- objects -----------------------------------------------------------------------------


@router.put("/{bucket}/{key:path}", openapi_extra={"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_object(bucket: str, key: str, request: Request, web: WebFace, authorization: Authorization = None) -> JSONResponse:
    """Upload (``-F file=@x.jpg`` or the raw bytes); a key ending in ``/`` gets the file's name."""
    user = await _user(web, authorization, required=True)
    assert user is not None
    found = await _bucket(web, bucket, user)
    upload = await upload_of(request)
    if key == "" or key.endswith("/"):
        if not upload.filename:
            raise ApiError(400, "the key names a folder and the upload has no file name", "PUT to /objects/{bucket}/{key}")
        key += upload.filename.rsplit("/", 1)[-1]
    if problem := rules.key_problem(key):
        raise ApiError(400, problem, "keys are path-like: parts separated by /, no empty, '.' or '..' part")
    content_type = upload.content_type or mimetypes.guess_type(key)[0]
    # Decided before a byte is read (a refusal is a fact in the log) and again once the bytes
    # are staged: the older object stays visible until the second decision accepts the new one.
    await _check(web, rules.PutObject(user=user, bucket_id=found.bucket_id, key=key, size=0, digest=NO_BYTES,
                                      content_type=content_type))
    try:
        staged = await objects.stage_stream(web.bus, found.bucket_id, upload.chunks, max_bytes=web.config.max_upload)
    except objects.TooLarge as exc:
        raise ApiError(413, str(exc), "raise the server's --max-upload, or split the file") from None
    stored = staged.stored
    try:
        await _act(web, rules.PutObject(user=user, bucket_id=found.bucket_id, key=key, size=stored.size,
                                        digest=stored.digest, content_type=content_type))
    except BaseException:
        await objects.discard(web.bus, staged)  # refused meanwhile: the older version stays as it was
        raise
    await objects.publish_staged(web.bus, staged, key)
    return JSONResponse({"bucket-id": found.bucket_id, "key": key, "size": stored.size, "digest": stored.digest})


@router.get("/{bucket}/{key:path}")
async def get_object(bucket: str, key: str, web: WebFace, authorization: Authorization = None,
                     recursive: Annotated[str | None, Query(description="present: list every key under the prefix")] = None,
                     ) -> Any:
    """Download an object (streamed), or list a folder (a path ending in ``/``)."""
    user = await _user(web, authorization)
    found = await _bucket(web, bucket, user)
    _require(found, user, "READ")
    if key == "" or key.endswith("/"):
        return JSONResponse(_listing(found, key, recursive is not None and recursive.lower() not in ("0", "false")))
    stored = found.objects.get(key)
    info = await objects.info_of(web.bus, found.bucket_id, key) if stored is not None else None
    if stored is None or info is None:
        raise ApiError(404, f"no object {key!r} in bucket {found.bucket_id}", f"GET /api/v1/objects/{found.bucket_id}/ lists it")
    headers = {"Content-Length": str(info.size), "ETag": f'"{stored.digest}"',
               "Content-Disposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"'}
    return StreamingResponse(_bytes(web, found.bucket_id, info), media_type=stored.content_type or "application/octet-stream",
                             headers=headers)


async def _bytes(web: Face, bucket_id: str, info: Any) -> AsyncIterator[bytes]:
    async for chunk in objects.get_stream(web.bus, bucket_id, info):
        yield chunk


def _listing(bucket: rules.Bucket, prefix: str, recursive: bool) -> list[str]:
    keys = sorted(k for k in bucket.objects if k.startswith(prefix))
    if recursive:
        return keys
    entries: list[str] = []
    for key in keys:
        rest = key[len(prefix):]
        entry = rest.split("/", 1)[0] + "/" if "/" in rest else rest
        if not entries or entries[-1] != entry:
            entries.append(entry)
    return entries


@router.delete("/{bucket}/{key:path}")
async def delete_object(bucket: str, key: str, web: WebFace, authorization: Authorization = None) -> JSONResponse:
    user = await _user(web, authorization, required=True)
    assert user is not None
    found = await _bucket(web, bucket, user)
    if key == "":
        raise ApiError(400, "no key", f"DELETE /api/v1/objects/{found.bucket_id} deletes the bucket")
    await _act(web, rules.DeleteObject(user=user, bucket_id=found.bucket_id, key=key))
    await objects.delete_object(web.bus, found.bucket_id, key)
    return JSONResponse({"deleted": [key]})


def _iso(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")

