"""hivebus's ``waggle``: ``waggle.plugin`` is hivebus's SDK; any other ``waggle`` subpackage
(e.g. a real pywaggle's ``waggle.data`` in the plugin's image) is found further on the path."""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
