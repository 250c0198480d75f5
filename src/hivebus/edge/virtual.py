"""A simulated BME680 for virtual nodes ("virtual waggle"): believable weather, no hardware.

Each quantity is a deterministic function of time plus slowly wandering weather plus sensor
noise, so the values look like a real outdoor sensor's and rules such as
``avg('env.temperature', '10m') > 30`` behave as they would on a node:

- temperature (deg C): a diurnal cycle peaking mid-afternoon local solar time (``mean`` +-
  ``amplitude``), a weather anomaly that wanders (Ornstein-Uhlenbeck, ~3 h memory, sd 2 C),
  and sensor noise (sd 0.05 C, the BME680's resolution is 0.01 C);
- relative humidity (%): from a dew point that wanders slowly (sd 1.5 C) by the Magnus
  formula, so humidity falls as the afternoon warms, clipped to 1..100, noise sd 0.3 %;
- pressure (Pa): 101325 + a synoptic anomaly (~12 h memory, sd 600 Pa) + the semi-diurnal
  atmospheric tide (~100 Pa, peaks near 10:00 and 22:00) + noise sd 3 Pa.

Reading names and units follow the Waggle BME680 plugin: ``env.temperature``,
``env.relative_humidity``, ``env.pressure`` with ``meta.sensor = "bme680"``.

Load: with ``readings_per_second`` set, ``due(now)`` returns every reading due since the
previous call at that rate (samples of three readings, timestamps spread evenly between the
calls), so a node produces a known, steady rate however often its loop runs (``hivebus node
run --virtual --virtual-rate 5000 --virtual-interval 0.05``). A loop that falls behind catches
up at most ``MAX_CATCH_UP_S`` seconds of readings; what it skips is counted in ``skipped``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

from hivebus.errors import SetupError
from hivebus.schemas.data import Reading

SENSOR: Final = "bme680"
NAMES: Final = ("env.temperature", "env.relative_humidity", "env.pressure")
MAX_CATCH_UP_S: Final = 5.0


@dataclass
class _Wander:
    """An Ornstein-Uhlenbeck process: mean-reverting noise with memory ``tau`` seconds."""

    sd: float
    tau: float
    value: float = 0.0
    last_s: float | None = None

    def at(self, t_s: float, rng: random.Random) -> float:
        if self.last_s is None:
            self.value = rng.gauss(0.0, self.sd)
        elif t_s > self.last_s:
            decay = math.exp(-(t_s - self.last_s) / self.tau)
            self.value = self.value * decay + rng.gauss(0.0, self.sd * math.sqrt(1 - decay * decay))
        self.last_s = t_s
        return self.value


@dataclass
class VirtualBme680:
    """Call ``sample(t_ns)`` for the three readings at time ``t_ns``, or ``due(now_ns)`` for
    what is due now (one sample, or every reading due at ``readings_per_second``)."""

    mean_c: float = 14.0
    amplitude_c: float = 6.0
    dewpoint_c: float = 7.0
    utc_offset_hours: float = -6.0  # local solar time of the simulated site (Chicago-ish)
    seed: int | None = None
    readings_per_second: float | None = None
    skipped: int = field(default=0, init=False)
    _next_ns: int | None = field(default=None, init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _weather: _Wander = field(default_factory=lambda: _Wander(sd=2.0, tau=3 * 3600), repr=False)
    _dew: _Wander = field(default_factory=lambda: _Wander(sd=1.5, tau=6 * 3600), repr=False)
    _synoptic: _Wander = field(default_factory=lambda: _Wander(sd=600.0, tau=12 * 3600), repr=False)

    def __post_init__(self) -> None:
        if self.readings_per_second is not None and not self.readings_per_second > 0:
            raise SetupError(
                f"virtual readings_per_second must be > 0, got {self.readings_per_second}"
            )
        self._rng = random.Random(self.seed)

    def due(self, now_ns: int, meta: dict[str, str] | None = None) -> list[Reading]:
        """The readings due at ``now_ns``: one sample without a rate; with one, every sample
        due since the previous call (the first call starts the clock and returns one sample)."""
        if self.readings_per_second is None:
            return self.sample(now_ns, meta)
        step = round(len(NAMES) * 1e9 / self.readings_per_second)  # ns between samples
        if self._next_ns is None:
            self._next_ns = now_ns
        behind = now_ns - self._next_ns
        if behind > MAX_CATCH_UP_S * 1e9:
            skip = (behind - int(MAX_CATCH_UP_S * 1e9)) // step + 1
            self.skipped += skip * len(NAMES)
            self._next_ns += skip * step
        out: list[Reading] = []
        while self._next_ns <= now_ns:
            out += self.sample(self._next_ns, meta)
            self._next_ns += step
        return out

    def temperature(self, t_s: float) -> float:
        hour = (t_s / 3600 + self.utc_offset_hours) % 24
        diurnal = self.amplitude_c * math.cos(2 * math.pi * (hour - 15) / 24)
        return self.mean_c + diurnal + self._weather.at(t_s, self._rng)

    def sample(self, t_ns: int, meta: dict[str, str] | None = None) -> list[Reading]:
        rng = self._rng
        t_s = t_ns / 1e9
        temp = self.temperature(t_s)
        dew = min(self.dewpoint_c + self._dew.at(t_s, rng), temp)
        humidity = 100 * _saturation(dew) / _saturation(temp)
        hour = (t_s / 3600 + self.utc_offset_hours) % 24
        tide = 100 * math.cos(2 * math.pi * (hour - 10) / 12)
        pressure = 101325 + self._synoptic.at(t_s, rng) + tide
        values = (
            round(temp + rng.gauss(0, 0.05), 2),
            round(min(100.0, max(1.0, humidity + rng.gauss(0, 0.3))), 2),
            round(pressure + rng.gauss(0, 3.0), 1),
        )
        tags = {"sensor": SENSOR, **(meta or {})}
        return [
            Reading(name=name, value=value, timestamp=t_ns, meta=tags)
            for name, value in zip(NAMES, values, strict=True)
        ]


def _saturation(celsius: float) -> float:
    """Saturation vapour pressure (hPa), Magnus formula (Alduchov & Eskridge 1996)."""
    return 6.1094 * math.exp(17.625 * celsius / (celsius + 243.04))
