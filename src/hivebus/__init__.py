"""hivebus: an event-sourced message bus for an edge-computing sensor network."""

from hivebus.version import __version__

__all__ = ["__version__", "connect"]


def connect(url: str | None = None, *, name: str = "hivebus-api"):  # lazy import keeps `import hivebus` cheap
    """``async with hivebus.connect(url) as hub:`` -- see ``hivebus.api``."""
    from hivebus.api import connect as _connect

    return _connect(url, name=name)
