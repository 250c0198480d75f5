"""``python -m hivebus.projections [--db PATH] [--hub URL]``: the projector alone.

The same as ``hivebus projector``, without loading the other areas' commands: what process
supervisors and the crash tests run.
"""

from __future__ import annotations

import sys

from hivebus.cli import query as _commands  # noqa: F401  (registers `projector` on the app)
from hivebus.cli.app import app, err
from hivebus.errors import HivebusError


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=["projector", *(sys.argv[1:] if argv is None else argv)], standalone_mode=True)
    except HivebusError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
