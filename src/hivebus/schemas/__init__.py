"""Event schemas: the envelope, the registry, the codec and every payload model.

Importing this package registers the whole catalogue (one module per area).
"""

from hivebus.schemas import auth, data, ecr, node, offload, ses, storage
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.registry import event, registry, upcaster

__all__ = [
    "Event",
    "Payload",
    "auth",
    "data",
    "ecr",
    "event",
    "node",
    "offload",
    "registry",
    "ses",
    "storage",
    "upcaster",
]
