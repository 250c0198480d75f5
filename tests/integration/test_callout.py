"""The auth callout's thread starts again after a failure (auth.callout.CalloutThread)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hivebus.auth.callout import CalloutThread
from hivebus.auth.hub import HubAuth
from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.projections.client import query
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration


async def test_the_callout_starts_again_after_it_failed(nats_server_factory: NatsServerFactory, tmp_path: Path) -> None:
    auth = HubAuth.of_data_dir(tmp_path).ensure()
    server = nats_server_factory("hub", store_dir=tmp_path / "nats", include=auth.conf_path)
    server._stop_callout()  # the one the server started: this test runs its own
    creds = auth.creds_path("service")
    kept = creds.read_text()
    creds.unlink()  # each attempt now fails (no credential to connect with)
    callout = CalloutThread(server.url, auth.dir)
    starting = asyncio.create_task(asyncio.to_thread(callout.start, 30.0))
    try:
        deadline = time.monotonic() + 15
        while callout.failures < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert callout.failures >= 2 and not callout.ready.is_set()
        creds.write_text(kept)
        await starting  # a later attempt connects
        async with await Bus.connect(server.url, settings=Settings(data_dir=tmp_path / "nowhere")) as public:
            await public.nc.flush()
            assert public.nc.is_connected
            with pytest.raises(Exception, match=r"nothing serves|no reply"):  # no projector here: but connected
                await query(public, "select 1", timeout=1)
    finally:
        callout.stop()
