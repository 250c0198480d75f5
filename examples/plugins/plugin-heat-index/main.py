"""Derive the heat index from temperature and humidity published on the node.

Written as an official Sage plugin, against pywaggle's API (`from waggle.plugin import ...`).
It subscribes to env.temperature and env.relative_humidity on the node, pairs readings taken
close together and publishes env.heat_index (degrees Celsius, the US National Weather Service
formula) for the cloud only (scope "beehive": nothing on the node consumes it).
"""

import argparse
import logging
import math

from waggle.plugin import Plugin


def heat_index(temperature_c, humidity):
    """NWS heat index: Steadman's simple form below 80 F, else Rothfusz with adjustments."""
    t = temperature_c * 9 / 5 + 32
    rh = humidity
    simple = 0.5 * (t + 61.0 + (t - 68.0) * 1.2 + rh * 0.094)
    hi = (simple + t) / 2
    if hi >= 80:
        hi = (
            -42.379 + 2.04901523 * t + 10.14333127 * rh - 0.22475541 * t * rh
            - 0.00683783 * t * t - 0.05481717 * rh * rh + 0.00122874 * t * t * rh
            + 0.00085282 * t * rh * rh - 0.00000199 * t * t * rh * rh
        )
        if rh < 13 and 80 <= t <= 112:
            hi -= (13 - rh) / 4 * math.sqrt((17 - abs(t - 95)) / 17)
        elif rh > 85 and 80 <= t <= 87:
            hi += (rh - 85) / 10 * (87 - t) / 5
    return (hi - 32) * 5 / 9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=0, help="stop after this many values (0: no limit)")
    parser.add_argument("--idle", type=float, default=120.0, help="stop after this many seconds without input")
    parser.add_argument("--max-skew", type=float, default=60.0, help="pair readings at most this many seconds apart")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    latest = {}
    paired = set()
    published = 0
    with Plugin() as plugin:
        plugin.subscribe("env.temperature", "env.relative_humidity")
        while args.count == 0 or published < args.count:
            try:
                msg = plugin.get(timeout=args.idle)
            except TimeoutError:
                logging.info("no input for %.0f s; stopping", args.idle)
                break
            latest[msg.name] = msg
            t, rh = latest.get("env.temperature"), latest.get("env.relative_humidity")
            if t is None or rh is None or (t.timestamp, rh.timestamp) in paired:
                continue
            if abs(t.timestamp - rh.timestamp) > args.max_skew * 1e9:
                continue
            paired.add((t.timestamp, rh.timestamp))
            value = round(heat_index(float(t.value), float(rh.value)), 2)
            meta = {"units": "degrees Celsius", "method": "nws"}
            if "sensor" in t.meta:
                meta["sensor"] = t.meta["sensor"]
            plugin.publish("env.heat_index", value, meta=meta, timestamp=max(t.timestamp, rh.timestamp),
                           scope="beehive")
            logging.info("heat index %.2f C from t=%s C rh=%s %%", value, t.value, rh.value)
            published += 1


if __name__ == "__main__":
    main()
