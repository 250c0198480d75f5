"""The JetStream streams and consumers, declared as data and applied idempotently.

| stream        | subjects                          | retention                       |
|---------------|-----------------------------------|---------------------------------|
| ``EVENTS``    | ``evt.>``, ``toedge.>``, ``fromedge.>`` | forever by default (the log)  |
| ``DATA``      | ``data.>``                        | age-limited, 30 d by default     |
| ``DEADLETTERS``| ``dlq.>``                        | 30 d: what consumers could not use |

``ensure_streams`` creates a stream that is missing and updates one whose config drifted,
so every process can call it at start; option names are the server's. It never lowers a
stream's replicas: a process that was not told the cluster's ``HIVEBUS_REPLICAS`` would
otherwise scale a replicated stream down to one copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from hivebus.bus.subjects import DATA_SUBJECTS, DLQ_SUBJECTS, EVENTS_SUBJECTS, toedge_filter
from hivebus.config import Settings

EVENTS = "EVENTS"
DATA = "DATA"
DEADLETTERS = "DEADLETTERS"

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age: timedelta = timedelta(0)  # 0 = no age limit
    duplicate_window: timedelta = timedelta(minutes=2)
    num_replicas: int = 1
    max_bytes: int = -1
    description: str = ""

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age.total_seconds(),
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window.total_seconds(),
            num_replicas=self.num_replicas,
            allow_direct=True,
        )


def platform_streams(settings: Settings) -> list[StreamSpec]:
    """EVENTS, DATA and DEADLETTERS as ``settings`` configure them."""
    window, replicas = settings.duplicate_window, settings.replicas
    return [
        StreamSpec(
            name=EVENTS,
            subjects=EVENTS_SUBJECTS,
            max_age=settings.events_max_age,
            description="control-plane log: one global order for replay",
            duplicate_window=window,
            num_replicas=replicas,
        ),
        StreamSpec(
            name=DATA,
            subjects=DATA_SUBJECTS,
            max_age=settings.data_max_age,
            description="readings",
            duplicate_window=window,
            num_replicas=replicas,
        ),
        StreamSpec(
            name=DEADLETTERS,
            subjects=DLQ_SUBJECTS,
            max_age=timedelta(days=30),
            description="messages a consumer could not decode or apply, with the reason",
            duplicate_window=window,
            num_replicas=replicas,
        ),
    ]


_COMPARED = ("subjects", "max_age", "duplicate_window", "num_replicas", "max_bytes", "description")


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> str:
    """Create or update one stream; returns ``"created"``, ``"updated"`` or ``"unchanged"``."""
    wanted = spec.config()
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(wanted)
        return "created"
    current = info.config
    if (current.num_replicas or 1) > (wanted.num_replicas or 1):
        # A process started without HIVEBUS_REPLICAS (a handler on another machine, a CLI
        # command) must not scale a replicated stream down: it would silently trade away
        # the copies that let the cluster lose a server without losing acknowledged writes.
        log.warning(
            "streams.replicas_kept",
            stream=spec.name,
            replicas=current.num_replicas,
            asked=wanted.num_replicas,
            hint="set HIVEBUS_REPLICAS to match; scale a stream down with the nats CLI",
        )
        wanted.num_replicas = current.num_replicas
    if all(_same(getattr(current, k), getattr(wanted, k)) for k in _COMPARED):
        return "unchanged"
    await js.update_stream(wanted)
    return "updated"


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return abs(float(a) - float(b)) < 1e-6
    if isinstance(a, list) and isinstance(b, list):
        return sorted(a) == sorted(b)
    return a == b or (not a and not b)


async def ensure_streams(js: JetStreamContext, specs: list[StreamSpec]) -> dict[str, str]:
    return {spec.name: await ensure_stream(js, spec) for spec in specs}


@dataclass(frozen=True, kw_only=True)
class ConsumerSpec:
    """A durable pull consumer. Names and option names are the server's."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...] = ()
    ack_wait: timedelta = timedelta(seconds=30)
    max_deliver: int = -1
    max_ack_pending: int = 20_000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    opt_start_seq: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def config(self) -> ConsumerConfig:
        subjects = list(self.filter_subjects)
        return ConsumerConfig(
            # The name too: nats-py then creates it on the API subject that carries the
            # filter, which is what a node's permissions allow (hivebus.auth.permissions).
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait.total_seconds(),
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
            opt_start_seq=self.opt_start_seq,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            **self.extra,  # type: ignore[arg-type]
        )


def toedge_consumer(node: str) -> ConsumerSpec:
    """The durable consumer through which one node receives what the hub sends it,
    including what was sent while it was offline."""
    return ConsumerSpec(stream=EVENTS, durable=f"toedge-{node}", filter_subjects=(toedge_filter(node),))


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer if missing, else update its config in place."""
    await js.add_consumer(spec.stream, spec.config())
