"""Take a (simulated) camera snapshot and upload it.

Written as an official Sage plugin, against pywaggle's API (`from waggle.plugin import ...`).
It writes a small grayscale PGM image (a gradient with noise, or uploads --image as it is),
publishes its mean brightness and hands the file to upload_file: a simulated frame is removed
once the node has it, a given --image is kept (keep=True).
"""

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

from waggle.plugin import Plugin, get_timestamp


def simulated_frame(width, height):
    """A left-to-right gradient whose brightness follows the time of day, plus sensor noise."""
    hour = time.localtime().tm_hour
    daylight = max(0.1, 1 - abs(hour - 12) / 12)
    rows = []
    for _ in range(height):
        rows.append(bytes(
            max(0, min(255, int(daylight * 255 * x / (width - 1) + random.gauss(0, 8))))
            for x in range(width)
        ))
    return b"".join(rows)


def write_pgm(path, pixels, width, height):
    path.write_bytes(b"P5\n%d %d\n255\n" % (width, height) + pixels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--image", type=Path, help="upload this file instead of a simulated frame")
    parser.add_argument("--camera", default="simulated", help="camera name for the metadata")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    with Plugin() as plugin:
        now = get_timestamp()
        if args.image is not None:
            path = args.image
            keep = True  # not ours to delete
        else:
            pixels = simulated_frame(args.width, args.height)
            path = Path(tempfile.gettempdir()) / f"snapshot-{now}.pgm"
            write_pgm(path, pixels, args.width, args.height)
            plugin.publish("image.brightness.mean", round(sum(pixels) / len(pixels), 2),
                           meta={"camera": args.camera}, timestamp=now)
            keep = False
        plugin.upload_file(path, meta={"camera": args.camera}, timestamp=now, keep=keep)
        logging.info("uploaded %s", path.name)


if __name__ == "__main__":
    main()
