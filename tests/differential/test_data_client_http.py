"""The unmodified sage-data-client 0.9.1 against a real ``hivebus web``: the same frames.

``sage_data_client.query(..., endpoint=<hivebus web>/api/v1/query)`` posts its body to a real
``hivebus web`` process on a free port, which asks the projector's query service over a real
nats-server; the service answers from the DuckDB file ``test_data_parity`` builds with the
real ``readings`` view. The client's frame must equal ``hivebus.data.query``'s on that file
(``assert_frame_equal``) for every case of ``test_data_parity.CASES``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sage_data_client
from pandas.testing import assert_frame_equal

import hivebus.data
from hivebus.bus.server import NatsServer, ServerConfig
from tests.differential.test_data_parity import CASES, case_id, db
from tests.integration.test_web import query_service, web_process

pytestmark = pytest.mark.integration
__all__ = ["db"]  # the fixture, shared with test_data_parity


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(ServerConfig(store_dir=tmp_path_factory.mktemp("nats"))).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def answering(hub: str, db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The query service over a copy of ``db`` (``hivebus.data.query`` opens ``db`` itself),
    on its own thread's loop (sage-data-client blocks)."""
    copy = tmp_path_factory.mktemp("served") / "views.duckdb"
    shutil.copyfile(db, copy)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None
    failure: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with query_service(hub, copy):
                started.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30) and not failure, failure
    try:
        yield
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def endpoint(hub: str, answering: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with web_process(hub, tmp_path_factory.mktemp("web")) as web:
        yield f"{web.url}/api/v1/query"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sage_data_client_over_hivebus_web_gives_hivebus_frame(case: dict[str, Any], db: Path, endpoint: str) -> None:
    theirs = sage_data_client.query(endpoint=endpoint, **case)
    ours = hivebus.data.query(db=db, **case)
    assert_frame_equal(ours, theirs)


def test_the_answer_is_ndjson_records_as_beehive_writes_them(endpoint: str) -> None:
    import httpx

    response = httpx.post(endpoint, json={"start": "-3h", "filter": {"name": "env.pressure"}, "tail": 1})
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert lines and all(set(json.loads(line)) == {"timestamp", "name", "value", "meta"} for line in lines)
    assert {json.loads(line)["name"] for line in lines} == {"env.pressure"}


@pytest.mark.parametrize(("body", "words"), [
    ({"start": "-1h", "filter": {"meta.vsn": "W001"}}, "vsn"),
    ({"start": "yesterday-ish"}, "not a time"),
    ({"start": "-1h", "experimental_func": "median"}, "experimental_func"),
    ({"start": "-1h", "head": 1, "tail": 1}, "only one of"),
    ({"end": "-1h"}, "start"),
    (["-1h"], "object"),
])
def test_a_bad_body_is_a_400_that_says_what_to_write(body: Any, words: str, endpoint: str) -> None:
    import httpx

    response = httpx.post(endpoint, json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_sage_data_client_sees_a_bad_filter_as_an_http_error(endpoint: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        sage_data_client.query("-1h", filter={"meta.vsn": "W001"}, endpoint=endpoint)
    assert raised.value.code == 400
