"""A run's log capture: stdout and stderr, merged, line by line.

Lines go into a ring buffer (``tail()``: the executor's ``logs()`` and the tail in the
result) and, when the run has a log file, into that file, capped at a byte budget after
which a marker says that later output is only in the tail. A line is cut at ``MAX_LINE``
characters; a very long stretch without a newline is taken as a line of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import IO, Final

MAX_LINE: Final = 1000  # characters kept of one log line
LIMIT_MARKER: Final = b"\n[hivebus: log file limit reached; later output only in the tail]\n"


class RunLog:
    """The output of one run; ``read_output`` feeds it from the run's pipe."""

    def __init__(self, buffer_lines: int) -> None:
        self.lines: deque[str] = deque(maxlen=buffer_lines)
        self.file: IO[bytes] | None = None
        self.file_budget = 0
        self._partial = b""
        self._closed = asyncio.Event()

    def tail(self, n: int) -> list[str]:
        return list(self.lines)[-n:] if n > 0 else []

    def note(self, message: str) -> None:
        """A line of hivebus's own (``hivebus: ...``), as when the run never started."""
        self.lines.append(f"hivebus: {message}")

    def to_file(self, file: IO[bytes], budget: int) -> None:
        """Also write the raw output to ``file`` (closed by ``close_file``), up to ``budget`` bytes."""
        self.file, self.file_budget = file, budget

    def close_file(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def closed(self) -> None:
        """No output will come (the run ended before it had a pipe)."""
        self._closed.set()

    async def read_output(self, pipe: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while chunk := await reader.read(65536):
                self.take(chunk)
        finally:
            transport.close()
            if self._partial:
                self._line(self._partial)
                self._partial = b""
            self._closed.set()

    def take(self, chunk: bytes) -> None:
        if self.file is not None and self.file_budget > 0:
            part = chunk[: self.file_budget]
            self.file_budget -= len(part)
            with contextlib.suppress(OSError):
                self.file.write(part)
                if self.file_budget <= 0:
                    self.file.write(LIMIT_MARKER)
                self.file.flush()
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            self._line(raw)
        if len(self._partial) > 4 * MAX_LINE:  # a very long line without a newline
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text if len(text) <= MAX_LINE else text[:MAX_LINE] + "…")

    async def done(self, timeout: float) -> None:
        """Let the reader drain what was written; a leftover holding the pipe is not waited for."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._closed.wait()
