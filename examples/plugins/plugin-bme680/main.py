"""Read temperature, humidity and pressure from a BME680 and publish them.

Written as an official Sage plugin, against pywaggle's API (`from waggle.plugin import ...`):
it runs unchanged under the real pywaggle and on a hivebus node, whose executors put
hivebus's `waggle` first on the import path. Without the sensor (or the `bme680` driver) it
publishes plausible simulated values, marked meta simulated=true, so it can be tried anywhere.
The raw gas resistance stays on the node (scope "node") for local consumers.
"""

import argparse
import logging
import math
import random
import time

from waggle.plugin import Plugin, get_timestamp


class SimulatedBME680:
    """A day-shaped temperature with noise, humidity that falls as it warms, steady pressure.

    With a seed it is a reproducible device: the same readings on every run, whatever the time.
    """

    simulated = True

    def __init__(self, seed=None):
        self.seed = seed
        self.random = random.Random(seed)

    def read(self):
        now = time.localtime()
        hour = 15.0 if self.seed is not None else now.tm_hour + now.tm_min / 60
        temperature = 22 + 6 * math.sin((hour - 9) / 24 * 2 * math.pi) + self.random.gauss(0, 0.2)
        humidity = min(100.0, max(5.0, 70 - 1.5 * (temperature - 20) + self.random.gauss(0, 1)))
        pressure = 101325 + self.random.gauss(0, 30)
        gas = int(50_000 + self.random.gauss(0, 500))
        return temperature, humidity, pressure, gas


class BME680:
    """The Pimoroni `bme680` driver on I2C."""

    simulated = False

    def __init__(self):
        import bme680

        try:
            self.sensor = bme680.BME680(bme680.I2C_ADDR_PRIMARY)
        except (RuntimeError, OSError):
            self.sensor = bme680.BME680(bme680.I2C_ADDR_SECONDARY)

    def read(self):
        if not self.sensor.get_sensor_data():
            raise RuntimeError("bme680: no new data")
        data = self.sensor.data
        return data.temperature, data.humidity, data.pressure * 100, int(data.gas_resistance)  # hPa -> Pa


def open_sensor(simulate, seed=None):
    if simulate:
        return SimulatedBME680(seed)
    try:
        return BME680()
    except Exception as exc:  # no driver or no device: say so and simulate
        logging.warning("no BME680 available (%s); publishing simulated values", exc)
        return SimulatedBME680(seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--continuous", action="store_true", help="keep sampling (default: one sample)")
    parser.add_argument("--count", type=int, default=1, help="samples to take when not continuous")
    parser.add_argument("--simulate", action="store_true", help="do not look for the sensor")
    parser.add_argument("--once", action="store_true", help="same as --count 1 (ECR testing command)")
    parser.add_argument("--seed", type=int, help="a reproducible simulated device")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    sensor = open_sensor(args.simulate, args.seed)
    meta = {"sensor": "bme680"}
    if sensor.simulated:
        meta["simulated"] = "true"

    with Plugin() as plugin:
        taken = 0
        while args.continuous or taken < (1 if args.once else args.count):
            if taken:
                time.sleep(args.interval)
            with plugin.timeit("plugin.duration.read"):
                temperature, humidity, pressure, gas = sensor.read()
            now = get_timestamp()
            plugin.publish("env.temperature", round(temperature, 2), meta={**meta, "units": "degrees Celsius"}, timestamp=now)
            plugin.publish("env.relative_humidity", round(humidity, 2), meta={**meta, "units": "percent"}, timestamp=now)
            plugin.publish("env.pressure", round(pressure, 1), meta={**meta, "units": "Pa"}, timestamp=now)
            plugin.publish("env.raw.gas_resistance", gas, meta={**meta, "units": "ohm"}, timestamp=now, scope="node")
            logging.info("published t=%.2f C rh=%.1f %% p=%.0f Pa", temperature, humidity, pressure)
            taken += 1


if __name__ == "__main__":
    main()
