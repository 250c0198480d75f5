"""``python -m hivebus.projections [--db PATH] [--hub URL]``: the projector alone.

The same as ``hivebus projector``, without the CLI: what process supervisors and the crash
tests run. It imports nothing above the projections' floor (no ``hivebus.cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from hivebus.config import Settings
from hivebus.errors import HivebusError
from hivebus.logs import configure_logging
from hivebus.projections.runner import Projector, run_until_signalled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hivebus.projections",
                                     description="Project EVENTS, DATA and DEADLETTERS into DuckDB and serve hivebus.query.")
    parser.add_argument("--db", type=Path, help="the DuckDB file of the views (default <data_dir>/views.duckdb)")
    parser.add_argument("--hub", help="NATS URL of the hub (default HIVEBUS_NATS_URL or the local one)")
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error (default HIVEBUS_LOG_LEVEL)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level or os.environ.get("HIVEBUS_LOG_LEVEL", "warning"))

    def announce(projector: Projector) -> None:
        print(f"projector: {projector.db_path} <- {projector.settings.nats_url} (Ctrl-C stops)", file=sys.stderr)

    try:
        asyncio.run(run_until_signalled(Settings.from_env(nats_url=args.hub), args.db, announce))
    except HivebusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
