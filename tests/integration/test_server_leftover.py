"""A server left running on a data dir is stopped by the next start there; one of another
data dir holding the port is refused (issue 15: crash-safe supervision).

The leftover is a real nats-server started by hand on the store's own config (as a
``hivebus server`` forgotten in another terminal, or a server that outlived its parent on a
system without parent-death signals): not a child this process knows.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from hivebus.bus.leftover import server_of
from hivebus.bus.server import NatsServer, nats_server_binary
from hivebus.bus.server_config import ServerConfig
from hivebus.errors import PortInUse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def by_hand() -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """Start nats-server on a config file as a process of its own; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(nats_server_binary()), "-c", str(config.resolve())],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def wait_serving(store_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + 10
    while server_of(store_dir) != pid:
        assert time.monotonic() < deadline, "the hand-started server never wrote its pid file"
        time.sleep(0.05)


async def test_a_server_left_running_on_the_data_dir_is_stopped_and_its_data_kept(
    nats_server_factory: Callable[..., NatsServer], by_hand: Callable[[Path], subprocess.Popen[bytes]],
) -> None:
    first = nats_server_factory("hub")
    port, store = first.port, first.store_dir
    first.stop()
    leftover = by_hand(first.config_path)
    wait_serving(store, leftover.pid)
    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=5)
    js = nc.jetstream()
    await js.add_stream(name="KEPT", subjects=["kept.>"])
    await js.publish("kept.one", b"written to the leftover")
    await nc.close()

    again = nats_server_factory("hub", store_dir=store, port=port)  # the same data dir, started anew

    assert again.replaced_pid == leftover.pid
    assert leftover.wait(timeout=10) == 0  # stopped with SIGTERM: a clean JetStream shutdown
    assert server_of(store) == again.pid
    nc = await nats.connect(again.url, connect_timeout=5)
    msg = await nc.jetstream().get_last_msg("KEPT", "kept.one")
    await nc.close()
    assert msg.data == b"written to the leftover"


def test_a_server_of_another_data_dir_on_the_port_is_refused_and_left_running(
    nats_server_factory: Callable[..., NatsServer], by_hand: Callable[[Path], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    other = nats_server_factory("other")
    port = other.port
    other.stop()
    foreign = by_hand(other.config_path)
    wait_serving(other.store_dir, foreign.pid)

    ours = NatsServer(ServerConfig(store_dir=tmp_path / "ours", server_name="ours", port=port))
    with pytest.raises(PortInUse, match=rf"client port {port} .*already in use"):
        ours.start()
    assert foreign.poll() is None  # someone else's: not ours to stop
    assert not ours.is_running()
