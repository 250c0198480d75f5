"""Resource accounting of a plugin's process group: its memory while it runs, its figures after.

* **Memory.** The resident set of the plugin's group (the plugin, its descendants and members
  re-parented to the agent) is summed with psutil every ``poll`` seconds; past the limit the
  executor SIGKILLs the group (the kernel OOM killer's way), reason ``oom``.
* **Figures.** ``os.wait4`` gives what the kernel accounted to the plugin: user + system CPU
  seconds and the peak resident set (including children it waited for); wall time is from
  spawn to exit (:func:`perf_of`).
"""

from __future__ import annotations

import asyncio
import resource

import psutil

from hivebus.edge.executors.base import Perf
from hivebus.edge.executors.processes import adopted_members, descendants


class GroupMemory:
    """The resident memory of process group ``pgid``; ``peak`` is the most seen at one poll."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.peak = 0
        self._procs: dict[int, psutil.Process] = {}
        self._adopted: set[int] = set()

    def rss(self, rescan: bool) -> int:
        """The group's resident bytes now; ``rescan`` also scans /proc for adopted members
        (and reaps those that exited), which takes milliseconds rather than microseconds."""
        if rescan:
            self._adopted = set(adopted_members(self.pgid))
        pids = {self.pgid, *descendants(self.pgid), *self._adopted}
        total = 0
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                total += proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        for gone in self._procs.keys() - pids:
            del self._procs[gone]
        self.peak = max(self.peak, total)
        return total

    async def watch(self, limit: int | None, poll: float) -> int:
        """Poll until the group's memory is over ``limit``, then return it (never without one).

        Descendants are read from ``/proc/<pid>/task/*/children`` on every poll, so a child
        that allocates fast is seen at once; once a second a scan of /proc adds members of
        the group re-parented to the agent. Without a limit it only does that scan.
        """
        poll = poll if limit else 1.0
        scan_every = max(1, round(1.0 / poll))
        tick = 0
        while True:
            rss = self.rss(rescan=tick % scan_every == 0)
            tick += 1
            if limit and rss > limit:
                return rss
            await asyncio.sleep(poll)


def perf_of(usage: resource.struct_rusage, wall_seconds: float) -> Perf:
    """The figures of a run from its ``wait4`` rusage and its measured wall time."""
    return Perf(
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        wall_seconds=wall_seconds,
    )
