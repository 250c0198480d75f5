"""The ``hivebus`` command. Thin: parse, call a service, print.

Each area has its own module that adds its commands to ``app`` (``cli/server.py``,
``cli/events.py``, ...). ``main`` turns every ``HivebusError`` into one clear line on
stderr and a non-zero exit: a user never sees a traceback.
"""

from __future__ import annotations

from hivebus.cli.app import app, main

__all__ = ["app", "main"]
