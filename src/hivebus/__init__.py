"""hivebus: an event-sourced message bus for an edge-computing sensor network."""

__version__ = "0.1.0"
