"""The SAGE object store over HTTP (issue 16): a large file up and down through ``hivebus web``
against nats-py's own object store put/get of the same file on the same server.

hivebus side: a real ``hivebus web`` process on a fresh embedded nats-server (fsync=always, the
platform default); a user from an ``auth.user.added`` fact; ``POST /api/v1/objects`` creates a
training-data bucket; the file goes up as curl's ``-F file=@...`` sends it (multipart PUT,
streamed from disk by httpx) and comes down with a streaming GET written to disk; the bytes
are compared by SHA-256. Each upload is decided (a ``storage.object.put`` fact) and ETagged.

Baseline: nats-py 2.x ``ObjectStore.put(name, open(file))`` and ``get(name, writeinto=file)``
into a plain object store on the same server, no HTTP, no decisions, no digest.

Memory: the web process's peak RSS (``VmHWM``) after both transfers, against its RSS before
the first byte: the upload and download paths stream, so the peak stays far below the size.

    python bench/objects.py                # 1 GiB, 2 rounds, alternating sides
    python bench/objects.py --mib 128 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from common import Timer, fresh_server, machine, peak_rss_mib, result
from nats.js.errors import BucketNotFoundError

from hivebus.auth.tokens import digest, new_token
from hivebus.bus.client import Bus
from hivebus.schemas.auth import UserAdded
from hivebus.schemas.envelope import Event

MiB = 1024 * 1024
BLOCK = 16 * MiB


def make_file(path: Path, size: int) -> str:
    """``size`` bytes that do not compress (random blocks, varied), and their SHA-256."""
    sha = hashlib.sha256()
    seed = os.urandom(BLOCK)
    with path.open("wb") as f:
        written = 0
        while written < size:
            block = (written.to_bytes(8, "big") + seed)[: min(BLOCK, size - written)]
            f.write(block)
            sha.update(block)
            written += len(block)
    return sha.hexdigest()


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(BLOCK):
            sha.update(chunk)
    return sha.hexdigest()


def current_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@contextlib.contextmanager
def web_process(hub: str, workdir: Path, max_upload: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, "HIVEBUS_DATA_DIR": str(workdir / ".hivebus"), "HIVEBUS_LOG_LEVEL": "warning"}
    env.pop("HIVEBUS_NATS_CREDENTIALS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "hivebus", "web", "--hub", hub, "--http-port", "0", "--max-upload", str(max_upload)],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        url = process.stdout.readline().strip() if ready and process.stdout else ""
        if not url.startswith("http://"):
            process.kill()
            raise SystemExit(f"hivebus web did not start: {url!r}\n{process.communicate(timeout=10)[1]}")
        yield url, process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


async def add_user(url: str, user: str, token: str) -> None:
    async with await Bus.connect(url) as bus:
        await bus.ensure_streams()
        await bus.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"),
                                    source="user/admin", subject=user))


def http_round(base: str, token: str, bucket: str, source: Path, sink: Path, key: str) -> tuple[float, float]:
    """Seconds to upload ``source`` as ``key`` and to download it into ``sink``."""
    headers = {"Authorization": f"sage {token}"}
    with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=600) as http:
        with source.open("rb") as f, Timer() as up:
            put = http.put(f"/objects/{bucket}/", files={"file": (key, f, "application/octet-stream")})
        if put.status_code != 200:
            raise SystemExit(f"upload failed: {put.status_code} {put.text}")
        with sink.open("wb") as out, Timer() as down, http.stream("GET", f"/objects/{bucket}/{key}") as got:
            if got.status_code != 200:
                raise SystemExit(f"download failed: {got.status_code}")
            for chunk in got.iter_bytes(1 * MiB):
                out.write(chunk)
    return up.seconds, down.seconds


async def raw_round(url: str, source: Path, sink: Path, key: str) -> tuple[float, float]:
    """Seconds for nats-py's object store to put ``source`` and get it into ``sink``."""
    async with await Bus.connect(url) as bus:
        try:
            store = await bus.js.object_store("bench-raw")
        except BucketNotFoundError:  # the first round creates it
            store = await bus.js.create_object_store("bench-raw")
        with source.open("rb") as f, Timer() as up:
            await store.put(key, f)
        with sink.open("wb") as out, Timer() as down:
            await store.get(key, writeinto=out)
        await store.delete(key)
    return up.seconds, down.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (default 1 GiB)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side, alternating")
    args = parser.parse_args()
    size = args.mib * MiB
    print(f"machine: {machine()['cores']}; file {args.mib} MiB; {args.rounds} round(s) per side", flush=True)

    with tempfile.TemporaryDirectory(prefix="hivebus-bench-objects-") as d, fresh_server() as server:
        work = Path(d)
        source, sink = work / "camera7.bin", work / "back.bin"
        want = make_file(source, size)
        token = new_token()
        asyncio.run(add_user(server.url, "alice", token))
        with web_process(server.url, work, max_upload=size + MiB) as (base, process):
            with httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"sage {token}"}) as http:
                created = http.post("/objects", params={"type": "training-data", "name": "camera7"})
                if created.status_code != 200:
                    raise SystemExit(f"bucket create failed: {created.status_code} {created.text}")
                bucket = created.json()["id"]
            rss_before = current_rss_mib(process.pid)
            hb_up: list[float] = []
            hb_down: list[float] = []
            raw_up: list[float] = []
            raw_down: list[float] = []
            for i in range(args.rounds):
                sides = ("hivebus", "raw") if i % 2 == 0 else ("raw", "hivebus")
                for side in sides:
                    key = f"round{i}.bin"
                    if side == "hivebus":
                        up, down = http_round(base, token, bucket, source, sink, key)
                        hb_up.append(up)
                        hb_down.append(down)
                    else:
                        up, down = asyncio.run(raw_round(server.url, source, sink, key))
                        raw_up.append(up)
                        raw_down.append(down)
                    if file_sha256(sink) != want:
                        raise SystemExit(f"{side} round {i}: the bytes that came back differ")
                    print(f"  round {i} {side:7}: up {size / MiB / up:7.1f} MiB/s, down {size / MiB / down:7.1f} MiB/s",
                          flush=True)
            peak = peak_rss_mib(process.pid)

    def best(xs: list[float]) -> float:
        return size / MiB / min(xs)

    print(f"web process RSS: {rss_before:.0f} MiB before the first byte, peak {peak:.0f} MiB "
          f"over {args.rounds} x {args.mib} MiB up and down")
    result(f"object upload over HTTP, {args.mib} MiB multipart PUT (MiB/s)", best(hb_up), "MiB/s",
           best(raw_up), "nats-py ObjectStore.put of the same file")
    result(f"object download over HTTP, {args.mib} MiB streaming GET (MiB/s)", best(hb_down), "MiB/s",
           best(raw_down), "nats-py ObjectStore.get(writeinto=file)")
    result(f"web process peak RSS, {args.mib} MiB up and down (MiB)", peak, "MiB")


if __name__ == "__main__":
    main()
