"""The platform's subjects, declared on FastStream's router so its AsyncAPI document lists them.

Every event type of ``hivebus.schemas.registry`` is one channel, on the subject it travels
(DESIGN.md §4): a hub fact on ``evt.<type>.{key}`` (``{key}`` the aggregate: a bundle id, a
job id, a node id, encoded into one token), a message to a node on ``toedge.{node}.<type>``,
what a node reports on ``fromedge.{node}.<type>``, readings on ``data.{node}.{name}``. Each
channel's payload is the CloudEvents envelope (``schemas.envelope.Event``) with ``type``
fixed and ``data`` the type's pydantic model, so the document carries every field, limit and
pattern the codec checks. The routes publish nothing through these publishers: they exist to
be documented (``/asyncapi`` on the web app, ``hivebus docs asyncapi`` without a server).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from faststream.nats.fastapi import NatsRouter
from pydantic import BaseModel, create_model

import hivebus.schemas  # noqa: F401  (registers every payload type)
from hivebus.schemas.envelope import SPECVERSION, Event
from hivebus.schemas.registry import EventSpec, registry
from hivebus.version import __version__

FROM_EDGE: Final = frozenset({
    "node.registered", "node.heartbeat", "node.sensor.lost", "node.sensor.restored", "node.toedge.applied",
    "plugin.status", "trigger.fired", "ses.offload.requested", "ses.offload.ran_locally",
})
"""Types a node emits (``source`` ``node/<id>``): they travel from-edge."""
TITLE: Final = "hivebus"
DESCRIPTION: Final = ("The subjects of the hivebus platform: the control-plane log (EVENTS: evt., toedge., fromedge.) "
                      "and readings (DATA: data.). Bodies are CloudEvents JSON envelopes; Nats-Msg-Id is the event id.")


def subject_of(spec: EventSpec) -> str:
    route = spec.model.route
    if route == "data":
        return "data.{node}.{name}"
    if route == "toedge":
        return f"toedge.{{node}}.{spec.type}"
    if spec.type in FROM_EDGE:
        return f"fromedge.{{node}}.{spec.type}"
    return f"evt.{spec.type}.{{key}}"


def envelope_of(spec: EventSpec) -> type[BaseModel]:
    """``Event`` with ``type`` fixed and ``data`` typed: what one message of ``spec.type`` holds."""
    fixed: Any = Literal[spec.type]
    cloudevents: Any = Literal[SPECVERSION]
    model: type[BaseModel] = create_model(
        f"{spec.model.__name__}Event",
        __base__=Event,
        __doc__=f"A {spec.type} event (dataversion {spec.version}): the envelope and its payload.",
        specversion=(cloudevents, SPECVERSION),  # the codec adds it on the wire
        type=(fixed, spec.type),
        dataversion=(int, spec.version),
        data=(spec.model, ...),
    )
    return model


def declare_subjects(router: NatsRouter) -> None:
    """One publisher per event type, documented with its subject and its envelope's schema."""
    for event_type in registry.types():
        spec = registry.spec(event_type)
        doc = (spec.model.__doc__ or "").strip().split("\n\n")[0]
        router.publisher(subject_of(spec), schema=envelope_of(spec), title=event_type,
                         description=" ".join(doc.split()) or None)


def document(nats_url: str = "nats://127.0.0.1:4222") -> dict[str, Any]:
    """The AsyncAPI document as JSON, with no server needed (nothing connects)."""
    router = NatsRouter([s.strip() for s in nats_url.split(",")], schema_url="/asyncapi", logger=None)
    declare_subjects(router)
    router.schema.title = TITLE
    router.schema.version = __version__
    router.schema.description = DESCRIPTION
    spec: dict[str, Any] = router.schema.to_specification().to_jsonable()
    return spec
