"""A private Docker engine for the suite, and for people (``make docker-engine``).

``docker_engine`` (a session fixture) gives a ``DockerEngine``: a ``dockerd`` of the session's
own, on a short ``/tmp/hbd-XXXX`` directory (its socket, data-root, exec-root and pidfile; a
long path breaks containerd's socket), with no networking of its own
(``--iptables=false --ip-forward=false --bridge=none``; plugins use the host's network), and
the plugin base image built there from this machine's own Debian ``python3`` with
``docker import`` (no registry). Teardown stops the daemon by its pid, unmounts whatever is
mounted under its directory and removes it.

When ``DOCKER_HOST`` is set and answers, that engine is used instead (and the image built in
it if missing). Without an engine the docker tests skip with the reason, except under
``HIVEBUS_REQUIRE_DOCKER=1`` (CI), where they fail.

``python tests/docker_engine.py`` starts an engine for a person, prints the ``DOCKER_HOST``
to export and waits; Ctrl-C tears it down.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

BASE_IMAGE: Final = "hivebus/plugin-base:py3.11"
REQUIRE_ENV: Final = "HIVEBUS_REQUIRE_DOCKER"
HOST_PYTHON: Final = "/usr/bin/python3.11"  # Debian's python3.11-minimal
_START_SECONDS: Final = 30.0


class EngineUnavailable(Exception):
    """No Docker engine can run here; the message says why and what to do."""


@dataclass
class DockerEngine:
    host: str  # DOCKER_HOST for clients: unix:///tmp/hbd-XXXX/docker.sock
    image: str  # the plugin base image, present in the engine
    root: Path | None = None  # the private engine's directory (None: an engine we did not start)
    process: subprocess.Popen[bytes] | None = None

    def client(self, timeout: int = 60) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


# --- the daemon -------------------------------------------------------------------------------


def start_engine(image: str = BASE_IMAGE) -> DockerEngine:
    """A private dockerd with ``image`` built in it; ``EngineUnavailable`` says why not."""
    dockerd = shutil.which("dockerd") or next(
        (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None
    )
    if dockerd is None:
        raise EngineUnavailable(
            "dockerd is not installed (Debian: apt-get install -y docker.io; or set DOCKER_HOST)"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable("a private dockerd needs root (or set DOCKER_HOST to an engine)")
    root = Path(tempfile.mkdtemp(prefix="hbd-", dir="/tmp"))  # short: unix socket paths <= 104
    host = f"unix://{root}/docker.sock"
    with open(root / "dockerd.log", "wb") as out:
        process = subprocess.Popen(
            [
                dockerd,
                "--host",
                host,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "docker.pid"),
                "--storage-driver",
                "overlay2",
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin"},
        )
    engine = DockerEngine(host=host, image=image, root=root, process=process)
    try:
        _wait_until_it_answers(engine)
        build_base_image(engine.client(), image)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def _wait_until_it_answers(engine: DockerEngine) -> None:
    import docker

    assert engine.process is not None and engine.root is not None
    deadline = time.monotonic() + _START_SECONDS
    while True:
        try:  # DockerClient() asks the API version: build it only once the daemon is up
            client = docker.DockerClient(base_url=engine.host, timeout=5)
            client.ping()
            client.close()
            return
        except Exception as exc:
            if engine.process.poll() is not None:
                raise EngineUnavailable(
                    f"dockerd exited with code {engine.process.returncode} at start: "
                    f"{_log_tail(engine.root)}"
                ) from None
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not answer within {_START_SECONDS:g} s ({exc}): {_log_tail(engine.root)}"
                ) from None
            time.sleep(0.05)


def _log_tail(root: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        return " | ".join((root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def stop_engine(engine: DockerEngine, timeout: float = 30.0) -> None:
    """SIGTERM the daemon by its pid (SIGKILL after ``timeout``), unmount, remove its dir."""
    if engine.process is not None:
        with contextlib.suppress(ProcessLookupError):
            engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait()
    if engine.root is None:
        return
    # Its containerd (a child, stopped by dockerd) left nothing running; what dockerd mounted
    # (its data-root bind mount, overlay layers) may still be there: unmount, deepest first.
    for mount in sorted(_mounts_under(engine.root), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    if not _mounts_under(engine.root):  # never rm -rf through a live mount
        shutil.rmtree(engine.root, ignore_errors=True)
    for empty in glob.glob("/sys/fs/cgroup/*/docker"):  # cgroup v1 leaves these behind
        with contextlib.suppress(OSError):
            os.rmdir(empty)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root)
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


# --- the plugin base image --------------------------------------------------------------------

_PYTHON_EXCLUDES: Final = (
    "__pycache__",
    "test",
    "idlelib",
    "tkinter",
    "lib2to3",
    "ensurepip",
    "turtledemo",
)
_rootfs_cache: bytes | None = None


def build_base_image(client: Any, tag: str = BASE_IMAGE) -> None:
    """``tag`` in the engine: this machine's python3.11 with its stdlib and shared libraries.

    No registry: the rootfs is a tar of the host's own files, ``docker import``-ed (~60 MB,
    ~2 s). hivebus's SDK, the waggle shim and nats-py are not in it: the docker executor
    bind-mounts them read-only into every container (``hivebus.edge.shim.container_mounts``).
    """
    import docker.errors

    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return
    global _rootfs_cache
    if _rootfs_cache is None:
        _rootfs_cache = host_python_rootfs()
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(
        _rootfs_cache,
        repository=repository,
        tag=version,
        changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin", "ENV LANG=C.UTF-8", 'CMD ["python3"]'],
    )
    client.images.get(tag)


def host_python_rootfs() -> bytes:
    """A tar of a minimal root filesystem holding this machine's Debian python3.11."""
    if not os.access(HOST_PYTHON, os.X_OK):
        raise EngineUnavailable(
            f"{HOST_PYTHON} is missing: the base image is built from the host's Debian python3.11 "
            "(apt-get install -y python3.11-minimal)"
        )
    wanted: set[str] = set()

    def add(path: str) -> None:
        if not os.path.lexists(path):
            return
        canonical = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if canonical in wanted:
            return
        wanted.add(canonical)
        if os.path.islink(canonical):
            target = os.readlink(canonical)
            add(
                target
                if target.startswith("/")
                else os.path.join(os.path.dirname(canonical), target)
            )

    for path in (
        HOST_PYTHON,
        "/usr/bin/python3",
        "/usr/bin/sh",
        "/usr/bin/dash",
        "/usr/bin/env",
        "/usr/lib64/ld-linux-x86-64.so.2",
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        add(path)
    binaries = [
        HOST_PYTHON,
        "/usr/bin/dash",
        "/usr/bin/env",
        *glob.glob("/usr/lib/python3.11/lib-dynload/*.so"),
    ]
    ldd = subprocess.run(["ldd", *binaries], capture_output=True, text=True, check=False).stdout
    for line in ldd.splitlines():
        parts = line.split()
        if (
            "=>" in parts
            and len(parts) > parts.index("=>") + 1
            and parts[parts.index("=>") + 1].startswith("/")
        ):
            add(parts[parts.index("=>") + 1])

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs = {
            "usr",
            "usr/bin",
            "usr/lib",
            "usr/lib64",
            "usr/sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "root",
            "tmp",
            "run",
            "var",
            "var/tmp",
        }
        for path in wanted:
            parent = os.path.dirname(path.lstrip("/"))
            while parent:
                dirs.add(parent)
                parent = os.path.dirname(parent)
        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name in ("tmp", "var/tmp") else 0o755
            tar.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):  # Debian 12's merged /usr
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
        for name, text in (
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(wanted):
            tar.add(path, arcname=path.lstrip("/"), recursive=False)

        def stdlib(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = info.name.split("/")
            return None if any(p in _PYTHON_EXCLUDES for p in parts[3:4] + parts[-1:]) else info

        tar.add("/usr/lib/python3.11", arcname="usr/lib/python3.11", filter=stdlib)
    return buffer.getvalue()


# --- the fixture ------------------------------------------------------------------------------


def engine_from_environment(image: str = BASE_IMAGE) -> DockerEngine | None:
    """The engine ``DOCKER_HOST`` names, with ``image`` built in it; None when unset."""
    host = os.environ.get("DOCKER_HOST")
    if not host:
        return None
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=60)
        client.ping()
    except Exception as exc:
        raise EngineUnavailable(f"DOCKER_HOST={host} does not answer: {exc}") from None
    build_base_image(client, image)
    client.close()
    return DockerEngine(host=host, image=image)


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``; fail it under HIVEBUS_REQUIRE_DOCKER=1."""
    import pytest

    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but no Docker engine: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


try:
    import pytest
except ImportError:  # `python tests/docker_engine.py` needs no pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def docker_engine() -> Iterator[DockerEngine]:
        """The session's engine with the plugin base image; skip (or fail, see above) without."""
        try:
            engine = engine_from_environment() or start_engine()
        except EngineUnavailable as exc:
            unavailable(str(exc))
            raise  # unreachable: unavailable() skips or fails
        try:
            yield engine
        finally:
            stop_engine(engine)


def main() -> int:
    """``make docker-engine``: start one for a person, print what to export, wait for Ctrl-C."""
    try:
        engine = engine_from_environment() or start_engine()
    except EngineUnavailable as exc:
        print(f"docker-engine: {exc}", file=sys.stderr)
        return 1
    print(f"export DOCKER_HOST={engine.host}")
    print(
        f"# plugin base image: {engine.image}; dockerd pid {engine.pid}, dir {engine.root}",
        flush=True,
    )
    print("# Ctrl-C stops it and removes its directory", flush=True)
    stop = False

    def quit_(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, quit_)
    signal.signal(signal.SIGINT, quit_)
    try:
        while not stop and (engine.process is None or engine.process.poll() is None):
            time.sleep(0.2)
    finally:
        stop_engine(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
