"""The WASM worker: runs one WASI module in its own process, for the ``wasm`` executor.

``python -m hivebus.edge.executors.wasm_worker SPEC.json`` where the spec (written by
``WasmExecutor``) names the module (``.wasm``, or ``.wat`` text that wasmtime compiles), its
arguments and environment, its memory limit and wall time, and where to write the outcome.

* **Limits.** Memory: ``Store.set_limits(memory_size=...)``, so a ``memory.grow`` past the
  limit returns -1 inside the module, and a module whose initial memory is larger does not
  instantiate. Wall time: epoch interruption; a watchdog thread advances the engine's epoch at
  the deadline, or when SIGTERM arrives (``signal.set_wakeup_fd``: the Python handler cannot
  run while the module executes native code), and the module traps at its next check.
* **Output.** WASI stdout and stderr are this process's own, which the executor logs.
* **Readings.** The host functions of ``docs/executors.md`` (import module ``hivebus``):
  ``publish(name_ptr, name_len, value: f64) -> i32``, ``publish_i64(name_ptr, name_len,
  value: i64) -> i32`` and ``get(name_ptr, name_len, timeout: f64) -> f64``, through the
  plugin SDK's ``Plugin`` (so a WASM plugin's readings reach ``local.publish.<name>`` exactly
  as a Python plugin's do), entered on first use and left (flushed) when the module ends.
* **Outcome.** A JSON object in the spec's ``status`` file: ``outcome`` (``exit``, ``trap``,
  ``oom``, ``timeout``, ``stopped``, ``invalid``, ``not_found``), ``code``, ``message``,
  ``memory_bytes`` (the store's linear memory at the end, which is its peak: wasm memories
  never shrink) and ``memory_limit``. The process exits with the module's exit code (0 for a
  ``_start`` that returns), 70 after a trap, 137 (as if killed) after oom, timeout or stop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

PAGE: Final = 65536
MIB: Final = 2**20
TRAPPED: Final = 70  # EX_SOFTWARE
KILLED: Final = 137


def oom_headroom(limit: int) -> int:
    """How close to its limit a failed module's memory must end for the failure to be ``oom``."""
    return max(limit // 8, MIB)


class Interrupter:
    """Advances the engine's epoch once: at the wall-time deadline, when the process has used
    its CPU-time budget, or on SIGTERM; ``reason`` then says which."""

    CPU_POLL: Final = 0.05

    def __init__(self, engine: Any, wall_seconds: float | None, cpu_seconds: float | None) -> None:
        self.engine = engine
        self.deadline = time.monotonic() + wall_seconds if wall_seconds else None
        self.cpu_seconds = cpu_seconds
        self.reason: str | None = None  # "timeout", "cpu" or "stopped" once it fired
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # so the wakeup fd hears it
        signal.set_wakeup_fd(self._write)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="wasm-interrupter", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            waits = [self.CPU_POLL] if self.cpu_seconds else []
            if self.deadline is not None:
                waits.append(max(0.0, self.deadline - time.monotonic()))
            ready, _, _ = select.select([self._read], [], [], min(waits) if waits else None)
            if self._done.is_set():
                return
            if ready:
                if signal.SIGTERM.value not in os.read(self._read, 64):
                    continue
                self.reason = "stopped"
            elif self.cpu_seconds and time.process_time() >= self.cpu_seconds:
                self.reason = "cpu"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.reason = "timeout"
            else:
                continue
            self.engine.increment_epoch()
            return

    def close(self) -> None:
        self._done.set()
        with contextlib.suppress(OSError):
            os.write(self._write, b"\0")
        self._thread.join(timeout=1.0)


class Readings:
    """The host side of the ``hivebus`` imports: the plugin SDK, entered on first use."""

    def __init__(self) -> None:
        self._plugin: Any = None
        self._subscribed: set[str] = set()
        self._pending: dict[str, list[float]] = {}

    def plugin(self) -> Any:
        if self._plugin is None:
            from hivebus.plugin import Plugin

            plugin = Plugin()
            plugin.__enter__()
            self._plugin = plugin
        return self._plugin

    def publish(self, name: str, value: float | int) -> int:
        try:
            self.plugin().publish(name, value)
        except Exception as exc:  # a bad name or value: the module gets -1, its log says why
            print(
                f"hivebus-wasm: publish({name!r}, {value!r}) refused: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return -1
        return 0

    def get(self, name: str, timeout: float) -> float:
        """The next value of reading ``name`` (subscribed on first call), NaN at ``timeout``."""
        plugin = self.plugin()
        if name not in self._subscribed:
            plugin.subscribe(name)
            self._subscribed.add(name)
        queued = self._pending.get(name)
        if queued:
            return queued.pop(0)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                msg = plugin.get(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return math.nan
            try:
                value = float(msg.value)
            except (TypeError, ValueError):
                continue
            if msg.name == name:
                return value
            self._pending.setdefault(msg.name, []).append(value)

    def close(self) -> None:
        if self._plugin is not None:
            self._plugin.__exit__(None, None, None)
            self._plugin = None


def _text(caller: Any, ptr: int, length: int) -> str:
    memory = caller.get("memory")
    if memory is None:
        raise ValueError("the module exports no memory named 'memory'")
    return bytes(memory.read(caller, ptr, ptr + length)).decode("utf-8", "replace")


def _define_host(linker: Any, readings: Readings) -> None:
    from wasmtime import FuncType, ValType

    i32, i64, f64 = ValType.i32(), ValType.i64(), ValType.f64()

    def publish(caller: Any, ptr: int, length: int, value: float) -> int:
        return readings.publish(_text(caller, ptr, length), float(value))

    def publish_i64(caller: Any, ptr: int, length: int, value: int) -> int:
        return readings.publish(_text(caller, ptr, length), int(value))

    def get(caller: Any, ptr: int, length: int, timeout: float) -> float:
        return readings.get(_text(caller, ptr, length), float(timeout))

    linker.define_func(
        "hivebus", "publish", FuncType([i32, i32, f64], [i32]), publish, access_caller=True
    )
    linker.define_func(
        "hivebus", "publish_i64", FuncType([i32, i32, i64], [i32]), publish_i64, access_caller=True
    )
    linker.define_func("hivebus", "get", FuncType([i32, i32, f64], [f64]), get, access_caller=True)


def _memory_bytes(store: Any, instance: Any) -> int:
    from wasmtime import Memory

    if instance is None:
        return 0
    return sum(
        item.data_len(store)
        for item in instance.exports(store).values()
        if isinstance(item, Memory)
    )


def run(spec: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Run the module ``spec`` names; (the outcome object, this process's exit code)."""
    import wasmtime

    limit: int | None = spec.get("memory_bytes")
    outcome: dict[str, Any] = {"code": None, "memory_bytes": 0, "memory_limit": limit}

    def done(kind: str, message: str, code: int) -> tuple[dict[str, Any], int]:
        outcome.update(outcome=kind, message=message)
        return outcome, code

    path = Path(spec["module"])
    try:
        source = path.read_bytes()
    except OSError as exc:
        return done("not_found", f"cannot read module {path}: {exc.strerror}", 127)
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    try:
        module = wasmtime.Module(engine, source.decode() if path.suffix == ".wat" else source)
    except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
        return done(
            "invalid", f"{path.name} is not a valid WebAssembly module: {_first_line(exc)}", 65
        )
    store = wasmtime.Store(engine)
    if limit:
        store.set_limits(memory_size=limit)
    store.set_epoch_deadline(1)  # the interrupter advances the epoch once, when it must stop
    wasi = wasmtime.WasiConfig()
    wasi.argv = [path.name, *spec.get("args", [])]
    wasi.env = sorted(spec.get("env", {}).items())
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    if spec.get("preopen_tmp") and os.environ.get("TMPDIR"):
        wasi.preopen_dir(os.environ["TMPDIR"], "/tmp")  # the run's private scratch directory
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    readings = Readings()
    _define_host(linker, readings)
    interrupter = Interrupter(engine, spec.get("wall_seconds"), spec.get("cpu_seconds"))
    instance = None
    kind, message, code = "exit", "", 0
    try:
        try:
            instance = linker.instantiate(store, module)
            start = instance.exports(store).get("_start")
            if not isinstance(start, wasmtime.Func):
                return done("invalid", "the module exports no _start function (a WASI command)", 65)
            start(store)
        except wasmtime.ExitTrap as exc:
            code = exc.code
            kind, message = "exit", f"exited with code {code}"
        except wasmtime.Trap as exc:
            if exc.trap_code == wasmtime.TrapCode.INTERRUPT and interrupter.reason is not None:
                kind, code = interrupter.reason, KILLED
                if kind == "cpu":
                    kind, message = (
                        "timeout",
                        f"used up its CPU-time budget of {spec['cpu_seconds']:g} s; interrupted",
                    )
                elif kind == "timeout":
                    message = f"still running at its {spec['wall_seconds']:g} s wall-time limit; interrupted"
                else:
                    message = "stopped on request"
            else:
                kind, code, message = "trap", TRAPPED, f"trapped: {_trap_reason(exc)}"
        except wasmtime.WasmtimeError as exc:
            text = _first_line(exc)
            if limit and "exceeds memory limits" in text:
                kind, code = "oom", KILLED
                message = f"its initial memory is over its {limit / MIB:.1f} MiB limit ({text})"
            else:
                kind, code, message = "invalid", 65, f"cannot instantiate {path.name}: {text}"
        else:
            message = "exited with code 0"
    finally:
        interrupter.close()
        with contextlib.suppress(Exception):
            readings.close()
        sys.stdout.flush()
    used = _memory_bytes(store, instance)
    outcome["memory_bytes"] = used
    if kind in ("trap", "exit") and code != 0 and limit and limit - used < oom_headroom(limit):
        then = message.replace("trapped: ", "trapped (", 1) + ")" if kind == "trap" else message
        message = (
            f"linear memory reached {used / MIB:.1f} MiB of its {limit / MIB:.1f} MiB limit: "
            f"memory.grow was refused, then the module {then}"
        )
        kind, code = "oom", KILLED
    outcome["code"] = code
    return done(kind, message, code)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _trap_reason(exc: BaseException) -> str:
    """``wasm `unreachable` instruction executed`` rather than the whole backtrace."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("wasm trap:"):
            return line.removeprefix("wasm trap:").strip()
    return lines[-1] if lines else "trap"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hivebus.edge.executors.wasm_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    outcome, code = run(spec)
    if outcome["outcome"] not in ("exit",):
        print(f"hivebus-wasm: {outcome['message']}", file=sys.stderr, flush=True)
    Path(spec["status"]).write_text(json.dumps(outcome))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
