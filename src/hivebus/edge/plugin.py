"""The plugin SDK under the edge package: the very objects of ``hivebus.plugin``.

Both ``from hivebus.plugin import Plugin`` and ``from hivebus.edge.plugin import Plugin``
give the same class; the implementation lives in ``hivebus.plugin`` so that importing it
pulls in nothing of the agent.
"""

from hivebus.plugin import (
    Message,
    Plugin,
    PluginConfig,
    get,
    init,
    publish,
    subscribe,
    timeit,
    upload_file,
)

__all__ = [
    "Message",
    "Plugin",
    "PluginConfig",
    "get",
    "init",
    "publish",
    "subscribe",
    "timeit",
    "upload_file",
]
