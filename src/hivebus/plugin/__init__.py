"""The plugin SDK: pywaggle 0.56.3's API on the node-local bus.

A plugin written for pywaggle runs unchanged: the node's executors put hivebus's ``waggle``
shim first on its import path (``hivebus.edge.shim``), so ``from waggle.plugin import Plugin,
get_timestamp`` gives these very objects. Written against hivebus directly::

    from hivebus.plugin import Plugin, get_timestamp

    with Plugin() as plugin:
        plugin.subscribe("env.temperature")
        msg = plugin.get(timeout=60)
        plugin.publish("env.temperature.smoothed", msg.value * 0.9, meta={"sensor": "bme680"},
                       timestamp=get_timestamp())
        with plugin.timeit("plugin.duration.compute"):
            ...
        plugin.upload_file("snapshot.jpg", keep=True)

Modules, one idea each: ``checks`` (what publish accepts, as pywaggle decides it, and the
hub body it becomes), ``topics`` (AMQP topic wildcards on NATS subjects, received messages),
``config``, ``plugin`` (the ``Plugin`` class), ``uploader`` (pywaggle's staging layout),
``runlog`` (pywaggle's ``PYWAGGLE_LOG_DIR`` run log, hivebus's offline log), ``buslink`` (the
NATS connection on a background thread), ``clock`` (``get_timestamp``), ``default`` (the older
module-level ``init()/publish()`` form). Importing this package imports no third-party
package; nats-py is loaded only when a bus is used.
"""

from hivebus.plugin.checks import (
    BOOL_ENCODING,
    BYTES_ENCODING,
    FLOAT_ENCODING,
    MAX_NAME_LENGTH,
    MIN_TIMESTAMP_NS,
    NAME_PART,
    RESERVED_NAMES,
    SCOPES,
    check_meta,
    check_name,
    check_timestamp,
    check_value,
    decode_value,
    encode_value,
    reading_body,
)
from hivebus.plugin.clock import get_timestamp
from hivebus.plugin.config import IDENTITY_ENV, BrokerConfig, PluginConfig
from hivebus.plugin.default import get, init, publish, subscribe, timeit, upload_file
from hivebus.plugin.plugin import PUBLISH_PREFIX, UPLOAD_SUBJECT, Plugin
from hivebus.plugin.runlog import OfflineLog, RunLog, isoformat_time_ns
from hivebus.plugin.topics import (
    READINGS_PREFIX,
    Message,
    message_of,
    subject_covers,
    topic_matcher,
    topic_subjects,
)
from hivebus.plugin.uploader import Uploader

__all__ = [
    "BOOL_ENCODING",
    "BYTES_ENCODING",
    "FLOAT_ENCODING",
    "IDENTITY_ENV",
    "MAX_NAME_LENGTH",
    "MIN_TIMESTAMP_NS",
    "NAME_PART",
    "PUBLISH_PREFIX",
    "READINGS_PREFIX",
    "RESERVED_NAMES",
    "SCOPES",
    "UPLOAD_SUBJECT",
    "BrokerConfig",
    "Message",
    "OfflineLog",
    "Plugin",
    "PluginConfig",
    "RunLog",
    "Uploader",
    "check_meta",
    "check_name",
    "check_timestamp",
    "check_value",
    "decode_value",
    "encode_value",
    "get",
    "get_timestamp",
    "init",
    "isoformat_time_ns",
    "message_of",
    "publish",
    "reading_body",
    "subject_covers",
    "subscribe",
    "timeit",
    "topic_matcher",
    "topic_subjects",
    "upload_file",
]
