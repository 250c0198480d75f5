"""pywaggle 0.56.3's ``waggle.plugin`` names, served by hivebus's SDK (``hivebus.plugin``).

``PluginConfig`` is pywaggle's broker config (``username, password, host, port, app_id``);
a ``Plugin`` given one talks to the node's bus all the same.
"""

from hivebus.plugin import BrokerConfig as PluginConfig
from hivebus.plugin import Plugin, Uploader, get_timestamp

__all__ = ["Plugin", "PluginConfig", "Uploader", "get_timestamp"]
