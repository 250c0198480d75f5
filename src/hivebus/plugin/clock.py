"""pywaggle's ``get_timestamp``: nanoseconds since the epoch, the unit of every reading."""

from time import time_ns as get_timestamp

__all__ = ["get_timestamp"]
