"""The hivebus error tree.

Every error a user can meet is a ``HivebusError``: it says what was wrong, where, and
(when there is one) what to do. Driver errors (nats, duckdb, OS) are translated into
these at the adapter boundary so callers never handle a third-party exception.
"""

from __future__ import annotations


class HivebusError(Exception):
    """Base of every error hivebus raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class SetupError(HivebusError):
    """A setting or a component's configuration is invalid; raised when it is built."""


# --- events -----------------------------------------------------------------------------


class SchemaError(HivebusError):
    """An event or payload is malformed."""


class DecodeError(SchemaError):
    """Bytes could not be turned into an event. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None, event_type: str | None = None) -> None:
        self.field = field
        self.event_type = event_type
        where = f" at {field!r}" if field else ""
        of = f" in {event_type}" if event_type else ""
        super().__init__(f"cannot decode event{of}{where}: {message}")
        self.reason = message


class UnknownEventType(DecodeError):
    """The ``type`` attribute names no registered event."""


class FormatError(SchemaError):
    """A user's file (sage.yaml, a job YAML, node.yaml) is invalid.

    ``file`` names the file, ``field`` the first offending field (``source.architectures[1]``),
    ``problems`` every (field, message) pair found, so one run reports them all.
    """

    def __init__(self, file: str, problems: list[tuple[str | None, str]]) -> None:
        self.file = file
        self.problems = problems
        self.field = problems[0][0] if problems else None
        lines = [
            f"{file}: {field}: {message}" if field else f"{file}: {message}"
            for field, message in problems
        ]
        super().__init__("\n".join(lines) or f"{file}: invalid")


# --- bus --------------------------------------------------------------------------------


class BusError(HivebusError):
    """Talking to NATS failed."""


class ServerStartError(BusError):
    """The embedded nats-server did not start."""


class PortInUse(ServerStartError):
    """The port asked for is held by another process."""


class ConnectError(BusError):
    """The NATS server could not be reached."""


class CredentialRefused(ConnectError):
    """The NATS server answered and refused the credentials presented (none, wrong, withdrawn)."""


class PermissionDenied(BusError):
    """The hub's NATS server refused this identity a publish or subscription."""


class PublishError(BusError):
    """The server did not acknowledge a publish."""


class ConcurrencyConflict(PublishError):
    """The aggregate changed since it was read (expected-last-subject-sequence mismatch)."""

    def __init__(self, subject: str, expected: int, message: str = "") -> None:
        self.subject = subject
        self.expected = expected
        super().__init__(
            f"concurrent write on {subject!r}: expected last sequence {expected}"
            + (f" ({message})" if message else ""),
            hint="re-read the aggregate and decide again",
        )


class RequestTimeout(BusError):
    """A request/reply call got no answer in time."""


# --- domain -----------------------------------------------------------------------------


class RuleSyntaxError(HivebusError):
    """A science rule does not parse. ``position`` is the 0-based offset of the error."""

    def __init__(self, rule: str, position: int, message: str) -> None:
        self.rule = rule
        self.position = position
        pointer = " " * position + "^"
        super().__init__(f"bad science rule at position {position}: {message}\n  {rule}\n  {pointer}")


class QueryError(HivebusError):
    """A query was refused or failed."""


class QueryRefused(QueryError):
    """A query is not a single read-only statement, or touches files."""


# --- edge execution ---------------------------------------------------------------------


class ExecutorError(HivebusError):
    """An executor cannot be built or used here (unknown name, no Docker engine...)."""


class AdmissionRefused(ExecutorError):
    """A run asks for more cpu, memory or GPUs than the node has: it can never be admitted."""


class UploadError(HivebusError):
    """A plugin's file could not be accepted for upload (missing file, store full, no agent)."""


# --- edge -------------------------------------------------------------------------------


class OutboxError(HivebusError):
    """The node's outbox refused an event (too large for its cap, from another node, closed)."""


# --- projections ------------------------------------------------------------------------


class QueryTimeout(QueryError):
    """A query ran past its time limit, or the views did not reach ``min_seq`` in time."""


class ProjectionError(HivebusError):
    """The projector's DuckDB store cannot be opened, built or written."""


class StoreBusy(ProjectionError):
    """Another process holds the DuckDB file (DuckDB allows one writer process)."""


# --- handlers ---------------------------------------------------------------------------


class RequestRejected(HivebusError):
    """The platform refused a request (a push, a job, a grant...); the message says why."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        self.reasons = list(reasons or [])
        super().__init__(message)


class Unauthorized(HivebusError):
    """A user action came without a valid token, or with someone else's."""


class NoAnswer(HivebusError):
    """A handler did not process a request in time (is it running?)."""
