"""Human quantities in Sage files: sizes (``128Mi``), cores (``250m``), durations (``120s``)."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Final

__all__ = ["parse_bytes", "parse_cpu", "parse_duration"]

_BYTE_UNITS: Final = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_BYTES_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKMGTPE]i?)?B?\s*")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_bytes(value: object) -> int:
    """``8Gi`` -> 8589934592, ``128Mi``, ``1.5G``, ``512`` (k8s quantities; a trailing ``B``
    is allowed). Fractions round up to a whole byte. ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8Gi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    match = _BYTES_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size such as 512, 128Mi or 8Gi, got {value!r}")
    number = Decimal(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]
    return int(number.to_integral_value(rounding=ROUND_CEILING))


def parse_cpu(value: object) -> float:
    """Cores: ``2``, ``0.25``, ``"0.25"``, ``250m`` (millicores) -> 0.25. ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}")
    if isinstance(value, int | float):
        cores = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            cores = float(Decimal(text[:-1]) / 1000) if text.endswith("m") else float(Decimal(text))
        except InvalidOperation:
            raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}") from None
    else:
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}")
    if not cores >= 0 or cores == float("inf"):
        raise ValueError(f"cores must be a finite number >= 0, got {value!r}")
    return cores


def parse_duration(value: object) -> float:
    """Seconds: ``120s``, ``5m``, ``1h30m``, ``7d``, ``250ms``, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 120s or 5m, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"expected a duration such as 120s, 5m or 1h30m, got {value!r}")
