"""An upload's bytes as an async stream, whether sent raw or as ``multipart/form-data``.

``curl -F file=@camera_picture1.jpg`` (sage-storage-api's way) sends multipart; ``curl -T``
or ``--data-binary`` sends the bytes as they are. ``upload_of(request)`` gives the file's
name (multipart only) and its bytes, parsed as they arrive (python-multipart's streaming
parser): nothing is spooled to memory or disk whole, so the object store receives the bytes
as fast as the client sends them. The first part that carries a file (or is called
``file``) is the upload; other fields are ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from hivebus.web.errors import ApiError


@dataclass
class Upload:
    filename: str | None
    content_type: str | None
    chunks: AsyncIterator[bytes]


async def upload_of(request: Request) -> Upload:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        content_type = request.headers.get("content-type") or None
        return Upload(None, content_type, _raw(request))
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "a multipart upload without a boundary", "let curl build it: -F 'file=@<filename>'")
    return await _multipart(request, boundary)


async def _raw(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


class _FilePart:
    """python-multipart's callbacks, collecting the first file part's bytes as they come."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.filename: str | None = None
        self.content_type: str | None = None
        self.started = False  # the file's headers are read
        self.finished = False
        self._in_file = False
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        if self.started:
            return
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = disposition.get(b"filename")
        if filename is not None or disposition.get(b"name") == b"file":
            self.started = self._in_file = True
            self.filename = filename.decode(errors="replace") if filename else None
            kind = self._headers.get(b"content-type")
            self.content_type = kind.decode(errors="replace") if kind else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pieces.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self.finished = True

    def take(self) -> list[bytes]:
        pieces, self.pieces = self.pieces, []
        return pieces


async def _multipart(request: Request, boundary: bytes) -> Upload:
    part = _FilePart()
    parser = MultipartParser(boundary, callbacks={  # type: ignore[arg-type]
        name: getattr(part, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end")
    })
    stream = request.stream().__aiter__()
    ended = False
    while not part.started:  # read until the file's headers: its name may make the key
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            ended = True
            break
        _feed(parser, chunk)
    if not part.started:
        raise ApiError(400, "the multipart upload has no file part", "send it as -F 'file=@<filename>'")

    async def chunks() -> AsyncIterator[bytes]:
        for piece in part.take():
            yield piece
        if ended:
            return
        async for chunk in stream:
            _feed(parser, chunk)
            for piece in part.take():
                yield piece
            if part.finished:
                break
        if not part.finished:
            raise ApiError(400, "the multipart upload ended inside the file", "the client stopped sending; try again")

    return Upload(part.filename, part.content_type, chunks())


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except Exception as exc:  # python-multipart's errors carry no hivebus meaning
        raise ApiError(400, f"the multipart upload is malformed: {exc}", "let curl build it: -F 'file=@<filename>'") from None
