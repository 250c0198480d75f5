"""Event schemas: the envelope, the registry, the codec and every payload model.

Importing this package registers the whole catalogue.
"""

from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.registry import event, registry, upcaster

__all__ = ["Event", "Payload", "event", "registry", "upcaster"]
