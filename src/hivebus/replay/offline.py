"""Rebuilds and snapshots without a running projector: ``hivebus replay rebuild --db`` and
``hivebus replay as-of``.

``rebuild_file`` replays the log into a new file up to the old file's checkpoints, then swaps
it in (the whole file when every view is rebuilt, else only the rebuilt views' tables, in one
transaction). The projector, started afterwards, continues from those checkpoints. A file a
projector has open is refused (``StoreBusy``): ask that projector instead (``--hub``).

``as_of`` builds the views as they were at an EVENTS sequence or a time, into a separate file
that can then be queried offline (``hivebus query --db``, ``hivebus.data.query(db=...)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hivebus.bus.client import Bus
from hivebus.projections.store import Store
from hivebus.projections.views import all_views, select_views
from hivebus.replay.build import Build, Progress, as_of_targets, remove_db


@dataclass(frozen=True)
class Report:
    path: Path
    views: list[str]
    positions: dict[str, int]
    messages: int
    seconds: float


async def rebuild_file(bus: Bus, db_path: Path, names: list[str] | None = None,
                       progress: Progress | None = None) -> Report:
    import time

    started = time.monotonic()
    views = select_views(names)
    everything = len(views) == len(all_views())
    probe = Store(db_path, all_views())  # StoreBusy if a projector holds it
    targets = dict(probe.positions)
    probe.close()
    tmp = db_path.with_name(db_path.name + ".rebuild")
    build = Build(bus, tmp, all_views() if everything else views)
    try:
        await build.run_to(targets, progress)
        if everything:
            await build.close(keep=True)
            remove_db(db_path)
            os.replace(tmp, db_path)
        else:
            def swap() -> None:
                live = Store(db_path, all_views())
                try:
                    assert build.store is not None
                    live.copy_views_from(build.store, views)
                    live.checkpoint()
                finally:
                    live.close()

            await build.in_writer(swap)
            await build.close(keep=False)
    except BaseException:
        await build.close(keep=False)
        raise
    return Report(db_path, [v.name for v in views], targets, build.messages, time.monotonic() - started)


async def as_of(bus: Bus, out: Path, *, to_seq: int | None = None, when: datetime | None = None,
                names: list[str] | None = None, progress: Progress | None = None) -> Report:
    import time

    started = time.monotonic()
    views = select_views(names)
    targets = await as_of_targets(bus, to_seq=to_seq, as_of=when)
    build = Build(bus, out, views)
    try:
        await build.run_to(targets, progress)
    finally:
        await build.close(keep=True)
    return Report(out, [v.name for v in views], targets, build.messages, time.monotonic() - started)
