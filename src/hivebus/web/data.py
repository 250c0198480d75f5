"""Sage's data API (``POST /api/v1/query``) and SQL on the views (``POST /api/v1/sql``).

``/query`` takes the body sage-data-client sends (``start``, ``end``, ``head``/``tail``,
``filter``, ``experimental_func``/``experimental_window``; see ``hivebus.data.request``) and
answers newline-delimited JSON records as Beehive does, one ``{"timestamp", "name", "value",
"meta"}`` a line, so the unmodified client builds its frame from them. ``/sql`` runs one
read-only statement through the projector's query service, checked first by the same guard
(``projections.guard``) with the same row and time limits as ``hivebus query``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import hivebus.data
from hivebus.projections.client import query as sql_query
from hivebus.projections.guard import check_sql
from hivebus.projections.query import DEFAULT_LIMIT, DEFAULT_TIMEOUT, QueryRequest
from hivebus.web.app import WebFace
from hivebus.web.errors import ApiError

router = APIRouter(tags=["data"])
NDJSON = "application/x-ndjson"


class DataBody(BaseModel):
    """The Sage data API body (documented here; the route checks it as Beehive does)."""

    start: str = Field(examples=["-1h", "2025-05-01T10:30:00Z"])
    end: str | None = None
    head: int | None = None
    tail: int | None = None
    filter: dict[str, str] | None = Field(default=None, examples=[{"name": "env.temperature", "vsn": "W0.*"}])
    experimental_func: str | None = Field(default=None, examples=["mean"])
    experimental_window: str | None = Field(default=None, examples=["1m"])


class SqlBody(BaseModel):
    sql: str = Field(examples=["select node_id, status from nodes order by node_id"])
    params: list[Any] | dict[str, Any] | None = None
    limit: int = DEFAULT_LIMIT
    timeout: float = DEFAULT_TIMEOUT
    min_seq: int | dict[str, int] | None = None


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}", 'send a JSON object, e.g. {"start": "-1h"}') from None


@router.post("/query", response_class=StreamingResponse, openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": DataBody.model_json_schema()}}, "required": True}},
    responses={200: {"content": {NDJSON: {}}, "description": "one JSON record a line"}})
async def data_query(request: Request, web: WebFace) -> StreamingResponse:
    """Readings as the Sage data API answers them (sage-data-client's ``endpoint=``)."""
    body = await json_body(request)
    records = await hivebus.data.records_for(web.bus, body, limit=web.config.query_limit)

    def lines() -> Iterator[bytes]:
        batch: list[str] = []
        for record in records:
            batch.append(json.dumps(hivebus.data.wire_record(record), ensure_ascii=False))
            if len(batch) >= 1000:
                yield ("\n".join(batch) + "\n").encode()
                batch = []
        if batch:
            yield ("\n".join(batch) + "\n").encode()

    return StreamingResponse(lines(), media_type=NDJSON)


@router.post("/sql", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": SqlBody.model_json_schema()}}, "required": True}})
async def sql(request: Request, web: WebFace) -> JSONResponse:
    """One read-only statement on the views: ``{"columns", "types", "rows", "positions", "truncated"}``."""
    body = await json_body(request)
    checked = QueryRequest.from_dict(body)  # the service's own checks: 400 with what to write
    check_sql(checked.sql)  # the guard: QueryRefused is a 403
    result = await sql_query(web.bus, checked.sql, checked.params, min_seq=checked.min_seq, limit=checked.limit,
                             timeout=checked.timeout)
    return JSONResponse({"columns": result.columns, "types": result.types, "rows": result.rows,
                         "positions": result.positions, "truncated": result.truncated})
