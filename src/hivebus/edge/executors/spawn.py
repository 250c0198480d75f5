"""Starting a plugin under its limits: the environment, the rlimits and the exec shim.

* **Environment.** A clean one: a few inherited basics (``PATH``, locale, ``HOME``...), the
  node-local-bus variables (``base.plugin_environment``) and a private ``TMPDIR``. The
  agent's own settings (hub URL, credentials) never reach a plugin. A run that did not ask
  for a GPU gets ``CUDA_VISIBLE_DEVICES=""`` (the job's env may override).
* **Limits.** ``RLIMIT_AS`` with headroom over the memory limit (:func:`default_address_space`)
  as a backstop against one huge allocation (the resident set itself is watched, see
  ``accounting``); ``cpu`` cores over ``wall_seconds`` as a CPU-time budget with
  ``RLIMIT_CPU`` (SIGXCPU at the soft limit, SIGKILL two seconds later).
* **The shim.** Limits are applied by a tiny exec shim (``setrlimit`` then ``execv``), not
  ``preexec_fn``, which CPython documents as unsafe in a process with threads (the agent has
  several). When the agent is a subreaper the shim *forks* the plugin from its own small
  image and exits, so the plugin's ``ru_maxrss`` does not start at the agent's high-water
  mark; otherwise it simply ``exec``s. Either way it writes the plugin's pid on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hivebus.edge.executors.base import Limits, RunSpec, plugin_environment
from hivebus.edge.executors.processes import exited, pid_in, read_line, reap_leftovers, signal_group
from hivebus.edge.executors.runlog import RunLog
from hivebus.edge.shim import plugin_pythonpath

MIB: Final = 2**20
INHERITED_ENV: Final = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
EXEC_FAILED: Final = 127  # the shell's "command not found"
EXEC_FAILED_MARK: Final = "hivebus-exec: "  # how the shim says it could not run the command

# Runs first: forks the plugin from this small image (see the module docstring), or becomes it.
SHIM: Final = """\
import os, resource, sys
fd, address_space, cpu_soft, cpu_hard, fork = (int(v) for v in sys.argv[1:6])
argv = sys.argv[6:]
pid = os.fork() if fork else 0
if pid:
    os.write(fd, b"%d\\n" % pid)
    os._exit(0)
if fork:
    os.setsid()
else:
    os.write(fd, b"%d\\n" % os.getpid())
os.close(fd)
if address_space > 0:
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
if cpu_soft > 0:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
try:
    os.execv(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"hivebus-exec: cannot run {argv[0]}: {exc.strerror}\\n")
    os._exit(127)
"""


def default_address_space(memory_bytes: int) -> int:
    """RLIMIT_AS for a memory limit: twice the limit plus 256 MiB.

    The headroom is needed because address space is not memory: every thread reserves a
    64 MiB malloc arena and a stack, so a 25 MiB Python process with one thread already
    maps ~100 MiB.
    """
    return 2 * memory_bytes + 256 * MIB


@dataclass(frozen=True)
class ShimLimits:
    """The rlimits the shim sets (0: none) and the CPU budget they enforce (None: none)."""

    address_space: int = 0
    cpu_soft: int = 0
    cpu_hard: int = 0
    cpu_budget: float | None = None

    @classmethod
    def of(cls, limits: Limits, address_space: Callable[[int], int]) -> ShimLimits:
        space = address_space(limits.memory_bytes) if limits.memory_bytes else 0
        if not (limits.cpu and limits.wall_seconds):
            return cls(address_space=space)
        budget = limits.cpu * limits.wall_seconds
        soft = max(1, int(budget + 0.999))
        return cls(space, soft, soft + 2, budget)  # SIGXCPU at the soft limit, SIGKILL at the hard one


def environment(spec: RunSpec, tmpdir: Path, inherit: Sequence[str]) -> dict[str, str]:
    """The plugin's whole environment (see the module docstring)."""
    env = {k: os.environ[k] for k in inherit if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are printed
    env["TMPDIR"] = str(tmpdir)
    if not spec.limits.gpu:  # as under docker without a device request: no GPU unless asked
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(plugin_environment(spec))
    env["PYTHONPATH"] = plugin_pythonpath(env.get("PYTHONPATH"))  # `import waggle.plugin` is hivebus's
    return env


@dataclass(frozen=True)
class Launched:
    shim: subprocess.Popen[bytes]
    pid: int  # the plugin's pid, also its process group id
    started: float  # time.monotonic() just before the shim was spawned


async def launch(
    python: str,
    argv: Sequence[str],
    limits: ShimLimits,
    *,
    fork: bool,
    cwd: Path,
    env: Mapping[str, str],
    output: RunLog,
    tasks: list[asyncio.Task[None]],
    background: Callable[[Coroutine[Any, Any, None]], None],
) -> Launched:
    """Spawn the shim for ``argv``, feed its output to ``output`` and return the plugin's pid.

    The output reader is appended to ``tasks``. On any failure (cancelled, timed out, the
    shim gone before the plugin) nothing half-started is left behind: a plugin already
    forked is SIGKILLed with its group (reaped through ``background``), the shim killed.
    """
    pid_r, pid_w = os.pipe()
    try:
        started = time.monotonic()
        shim = subprocess.Popen(
            [python, "-S", "-I", "-c", SHIM, str(pid_w), str(limits.address_space),
             str(limits.cpu_soft), str(limits.cpu_hard), str(int(fork)), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=not fork,  # forked plugins call setsid themselves
            pass_fds=(pid_w,),
        )
    except BaseException:
        os.close(pid_r)
        raise
    finally:
        os.close(pid_w)
    tasks.append(asyncio.create_task(output.read_output(shim.stdout)))  # type: ignore[arg-type]
    line = b""
    try:
        try:
            line = await read_line(pid_r, timeout=30.0)
        finally:
            os.close(pid_r)
        if fork:
            shim_status, _ = await exited(shim.pid)
            shim.returncode = os.waitstatus_to_exitcode(shim_status)  # reaped by us, not Popen
        if not line.strip().isdigit():
            raise RuntimeError("the launcher exited before starting the plugin: " + " | ".join(output.tail(3)))
    except BaseException:
        if plugin_pid := pid_in(line):
            signal_group(plugin_pid, signal.SIGKILL)
            background(reap_leftovers(plugin_pid))
        if shim.returncode is None:
            shim.kill()
            with contextlib.suppress(Exception):
                status, _ = await asyncio.shield(exited(shim.pid))
                shim.returncode = os.waitstatus_to_exitcode(status)
        await output.done(timeout=1.0)
        raise
    return Launched(shim, int(line), started)
