"""Beehive's filters: ``{"name": "env.temperature", "vsn": "W0[0-9]+|W1.*"}``.

A filter value containing ``*`` or ``|`` is a regular expression matched against the whole
value (``^(...)$``, RE2 syntax as the data API's InfluxDB uses); any other value matches
exactly. So ``vsn="W0*"`` means "W followed by zeros" (as on Sage), and ``"W0.*"`` is "starts
with W0". Keys are ``name`` or a meta key (``node``, ``vsn``, ``plugin``, ``sensor``...) written
without ``meta.``; anything else is refused with what to write instead, never a silently empty
result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from hivebus.errors import QueryError

KEY: Final = re.compile(r"^[A-Za-z0-9_\-]+$")
COLUMNS: Final = ("timestamp", "value")


def is_pattern(value: str) -> bool:
    return "*" in value or "|" in value


def check_filter(filter: Any) -> dict[str, str]:
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise QueryError(f"filter must be a mapping of key to value, not {type(filter).__name__}",
                         hint='e.g. {"name": "env.temperature", "vsn": "W0.*"}')
    checked: dict[str, str] = {}
    for key, value in filter.items():
        if not isinstance(key, str) or not KEY.match(key):
            hint = f"write {key[5:]!r}" if isinstance(key, str) and key.startswith("meta.") else \
                "keys are name or a meta key such as node, vsn, plugin, sensor"
            raise QueryError(f"filter key {key!r} is not a name or meta key", hint=hint)
        if key in COLUMNS:
            raise QueryError(f"filter key {key!r}: filters match name and meta keys",
                             hint="give the time range with start/end")
        if not isinstance(value, str):
            raise QueryError(f"filter {key!r}: the value must be a string, not {type(value).__name__}",
                             hint=f'e.g. {{"{key}": "{value}"}}')
        if is_pattern(value):
            try:
                re.compile(value)
            except re.error as exc:
                raise QueryError(f"filter {key!r}: {value!r} is not a valid regular expression ({exc})",
                                 hint='a value with * or | is a regular expression: "env.*" means starts with "env"') from None
        checked[key] = value
    return checked


def where_clause(key: str, value: str) -> tuple[str, list[Any]]:
    """The SQL condition over the ``readings`` view for one filter, with its parameters."""
    params: list[Any] = []
    if key == "name":
        column = "name"
    elif key == "node":
        column = "coalesce(meta['node'], node)"
    else:
        column, params = "meta[?]", [key]
    if is_pattern(value):
        return f"coalesce(regexp_full_match({column}, ?), false)", [*params, f"^({value})$"]
    return f"{column} = ?", [*params, value]
