"""Authentication and subject permissions on a real nats-server (hivebus.auth).

A node's credential lets it publish only its own readings and from-edge events and read
only its own to-edge consumer; the platform's decisions (``evt.*``) and everyone else's
subjects are refused by the server itself. User actions need a token that the command
gateway checks against the ``auth.user.*`` events, after which the ECR and the scheduler
decide on that user's rights.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hivebus.auth.credentials import Credential
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tokens import digest, new_token
from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS, ensure_consumer, toedge_consumer
from hivebus.config import Settings
from hivebus.errors import ConnectError, PermissionDenied, RequestRejected, Unauthorized
from hivebus.handlers.testing import app_spec
from hivebus.schemas import codec
from hivebus.schemas.auth import UserAdded, UserRevoked
from hivebus.schemas.ecr import BundleApproved, BundlePushed, PermissionGranted
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import GoalRemoved
from hivebus.services import run_handlers
from hivebus.services.requests import decide, request_at
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration

PUSH_ANSWERS = ["evt.ecr.bundle.registered.>", "evt.ecr.bundle.rejected.>"]


@dataclass
class Hub:
    server: NatsServer
    auth: HubAuth
    data_dir: Path
    service: Settings
    nodes: dict[str, Credential]

    @property
    def url(self) -> str:
        return self.server.url

    async def connect(self, credential: Credential | None = None, **kw: object) -> Bus:
        if credential is None:  # the public identity: no credentials at all
            return await Bus.connect(self.url, settings=Settings(data_dir=self.data_dir / "nowhere"), **kw)
        return await Bus.connect(self.url, settings=Settings(data_dir=self.data_dir / "nowhere"), **credential.connect_options(), **kw)


@pytest.fixture
async def hub(nats_server_factory: NatsServerFactory, tmp_path: Path) -> AsyncIterator[Hub]:
    auth = HubAuth.of_data_dir(tmp_path).ensure()
    nodes = {n: auth.add_node(n) for n in ("W001", "W002")}
    server = nats_server_factory("hub", store_dir=tmp_path / "nats", include=auth.conf_path)
    service = Settings(nats_credentials=auth.creds_path(SERVICE), data_dir=tmp_path)
    async with await Bus.connect(server.url, settings=service) as bus:
        await bus.ensure_streams()
        for node in nodes:
            await ensure_consumer(bus.js, toedge_consumer(node))
    yield Hub(server, auth, tmp_path, service, nodes)


async def stored(bus: Bus, stream: str, subject: str) -> list[bytes]:
    """The events stored on ``subject``: each message, the readings of a packed one each (issue 18)."""
    found: list[bytes] = []
    async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
        found += [body for m in batch for body in bodies_of(m.data)]
    return found


# --- nodes -------------------------------------------------------------------------------


async def test_a_node_publishes_its_own_readings_and_from_edge_events(hub: Hub) -> None:
    async with await hub.connect(hub.nodes["W001"]) as w1:
        await w1.publish_raw_many([Outgoing("data.W001.env.temperature", b"{}", "r1"), Outgoing("fromedge.W001.node.heartbeat", b"{}", "h1")], retries=0)
    async with await Bus.connect(hub.url, settings=hub.service) as bus:
        assert len(await stored(bus, DATA, "data.W001.>")) == 1
        assert len(await stored(bus, EVENTS, "fromedge.W001.>")) == 1


@pytest.mark.parametrize(
    "subject",
    [
        "data.W002.env.temperature",  # another node's readings
        "fromedge.W002.node.heartbeat",  # another node's events
        "evt.ses.job.scheduled.j1",  # the platform's own decisions
        "evt.ecr.bundle.approved.x",
        "toedge.W002.ses.goal.assigned",  # goals are the hub's to send
    ],
)
async def test_a_node_cannot_publish_outside_its_own_subjects(hub: Hub, subject: str) -> None:
    async with await hub.connect(hub.nodes["W001"]) as w1:
        with pytest.raises(PermissionDenied, match="does not let this identity publish"):
            await w1.publish_raw_many([Outgoing(subject, b"{}", "x1")], timeout=2.0, retries=0)
    async with await Bus.connect(hub.url, settings=hub.service) as bus:
        stream = DATA if subject.startswith("data.") else EVENTS
        assert await stored(bus, stream, subject) == []


async def test_a_node_reads_its_own_goals_and_no_one_elses(hub: Hub) -> None:
    async with await Bus.connect(hub.url, settings=hub.service) as bus:
        for node in ("W001", "W002"):
            await bus.publish(Event.new(GoalRemoved(node=node, job_id="j1"), source="handler/ses", subject="j1"))
    async with await hub.connect(hub.nodes["W001"]) as w1:
        mine = []
        async for delivery in w1.consume(toedge_consumer("W001"), batch=8, idle=0.5):
            mine.append(delivery.event)
            await delivery.ack()
            break
        assert mine[0].data.node == "W001"
        # Not through its own consumer: the W002 durable, a consumer filtered on W002, a raw pull.
        with pytest.raises(Exception):  # noqa: B017 - the server answers nothing: a timeout
            await asyncio.wait_for(ensure_consumer(w1.js, toedge_consumer("W002")), 3.0)
        assert any(s.startswith("$js.api.consumer.create.events.toedge-w002") for s in w1.denied), w1.denied
        with pytest.raises(PermissionDenied):
            async for _ in w1.read(EVENTS, filter_subjects=["toedge.W002.>"], stop_at_end=True):
                pass
        with pytest.raises(Exception):  # noqa: B017
            await w1.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS}.toedge-W002", b'{"batch":1,"no_wait":true}', timeout=2.0)
        assert f"$js.api.consumer.msg.next.{EVENTS.lower()}.toedge-w002" in w1.denied, w1.denied
        # Nor by listening on the subject as it is published.
        sniffed = await w1.nc.subscribe("toedge.>")
        await w1.nc.flush()
        async with await Bus.connect(hub.url, settings=hub.service) as bus:
            await bus.publish(Event.new(GoalRemoved(node="W002", job_id="j2"), source="handler/ses", subject="j2"))
        with pytest.raises(asyncio.TimeoutError):
            await sniffed.next_msg(timeout=1.0)
        assert any(s.startswith("toedge.") for s in w1.denied), w1.denied


async def test_a_wrong_or_withdrawn_credential_cannot_connect(hub: Hub) -> None:
    forged = Credential(user="node-W001", password="guess", inbox_prefix="_INBOX_W001")
    with pytest.raises(ConnectError, match="refused the credentials"):
        await hub.connect(forged, connect_timeout=3.0)
    hub.auth.remove_node("W002")
    hub.server.reload()
    await asyncio.sleep(0.5)  # the reload is asynchronous in the server
    with pytest.raises(ConnectError, match="refused the credentials"):
        await hub.connect(hub.nodes["W002"], connect_timeout=3.0)


def hivebus_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hivebus", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


async def test_node_add_issues_a_credential_the_running_hub_accepts_at_once(hub: Hub, tmp_path: Path) -> None:
    creds = tmp_path / "W003.creds"
    done = await asyncio.to_thread(
        hivebus_cli, "node", "add", "W003", "--data-dir", str(hub.data_dir), "--out", str(creds), "--hub", hub.url, env={}
    )
    assert done.returncode == 0, done.stderr
    assert "hub reloaded" in done.stdout and "to-edge consumer ready" in done.stdout
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    credential = Credential.load(creds)
    assert credential.password not in (hub.auth.dir / "identities.json").read_text()  # only its hash
    await asyncio.sleep(0.5)
    async with await hub.connect(credential) as w3:
        await w3.publish_raw_many([Outgoing("data.W003.env.temperature", b"{}", "w3")], retries=0)
        with pytest.raises(PermissionDenied):
            await w3.publish_raw_many([Outgoing("data.W001.env.temperature", b"{}", "w3b")], timeout=2.0, retries=0)
    again = await asyncio.to_thread(hivebus_cli, "node", "add", "W003", "--data-dir", str(hub.data_dir), env={})
    assert again.returncode == 1 and "already has a credential" in again.stderr


async def test_an_agent_with_its_credential_works_without_a_single_permission_violation(hub: Hub, tmp_path: Path) -> None:
    creds = hub.nodes["W001"].save(tmp_path / "W001.creds")
    env = {**os.environ, "HIVEBUS_NATS_CREDENTIALS": str(creds), "HIVEBUS_LOG_LEVEL": "warning"}
    argv = [sys.executable, "-m", "hivebus", "node", "run", "--virtual", "--node-id", "W001", "--hub", hub.url,
            "--data-dir", str(tmp_path / "W001"), "--virtual-interval", "0.2", "--heartbeat", "1"]  # fmt: skip
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with await Bus.connect(hub.url, settings=hub.service) as bus:
            for _ in range(150):
                if len(await stored(bus, DATA, "data.W001.>")) >= 5 and await stored(bus, EVENTS, "fromedge.W001.>"):
                    break
                await asyncio.sleep(0.2)
            assert len(await stored(bus, DATA, "data.W001.>")) >= 5
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    assert "Permissions Violation" not in hub.server.log_tail(10_000)


# --- the public identity and user tokens -------------------------------------------------


async def test_without_credentials_one_reads_the_platforms_events_but_not_to_edge(hub: Hub) -> None:
    async with await Bus.connect(hub.url, settings=hub.service) as bus:
        await bus.publish(Event.new(GoalRemoved(node="W001", job_id="j1"), source="handler/ses", subject="j1"))
    async with await hub.connect() as public:
        async for _ in public.read(EVENTS, filter_subjects=["evt.>"], stop_at_end=True):
            pass
        with pytest.raises(PermissionDenied):
            async for _ in public.read(EVENTS, filter_subjects=["toedge.>"], stop_at_end=True):
                pass
        with pytest.raises(PermissionDenied):
            await public.publish_raw_many([Outgoing("evt.ecr.bundle.pushed.x", b"{}", "p1")], timeout=2.0, retries=0)


@pytest.fixture
async def platform(hub: Hub) -> AsyncIterator[Bus]:
    """The handlers and the command gateway, as the service identity."""
    stop = asyncio.Event()
    async with await Bus.connect(hub.url, settings=hub.service) as bus:
        task = asyncio.create_task(run_handlers(hub.service, bus, stop))
        await asyncio.sleep(1.0)
        try:
            yield bus
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def add_user(bus: Bus, user: str) -> str:
    token = new_token()
    await bus.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"), source="user/admin", subject=user))
    return token


def push(user: str, namespace: str = "alice") -> Event:
    spec = app_spec(f"{namespace}/plugin-x:1.0.0")
    return Event.new(BundlePushed(app=spec, pusher=user), source=f"user/{user}", subject=spec.bundle_id)


async def test_user_actions_need_the_users_own_valid_token(hub: Hub, platform: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVEBUS_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(hub.data_dir / "config"))  # no saved tokens
    monkeypatch.setenv("HIVEBUS_DATA_DIR", str(hub.data_dir / "nowhere"))  # the public identity
    alice = await add_user(platform, "alice")
    bob = await add_user(platform, "bob")

    with pytest.raises(Unauthorized, match="only with a user token"):
        await request_at(hub.url, push("alice"), handler="ecr", answers=PUSH_ANSWERS, timeout=10)
    with pytest.raises(Unauthorized, match="unknown, rotated or revoked"):
        await request_at(hub.url, push("alice"), handler="ecr", answers=PUSH_ANSWERS, token=new_token())
    with pytest.raises(Unauthorized, match="the token is bob's"):
        await request_at(hub.url, push("alice"), handler="ecr", answers=PUSH_ANSWERS, token=bob)

    command = push("alice")
    answer = await request_at(hub.url, command, handler="ecr", answers=PUSH_ANSWERS, token=alice)
    assert [e.type for e in answer.events] == ["ecr.bundle.registered"]
    # The command is never stored; the fact is the ECR's, caused by it, naming alice, and
    # nothing in the log carries her token.
    assert await stored(platform, EVENTS, "evt.ecr.bundle.pushed.>") == []
    registered = codec.decode((await stored(platform, EVENTS, "evt.ecr.bundle.registered.>"))[0])
    assert registered.source == "handler/ecr" and registered.causationid == command.id
    assert registered.data.pusher == "alice" and alice not in str(codec.to_dict(registered))

    # A valid token is not a right: alice is no reviewer, so her approval is refused by the ECR,
    # and the refusal is a fact of its own.
    approval = Event.new(BundleApproved(bundle_id="alice/plugin-x:1.0.0", by="alice"), source="user/alice", subject="alice/plugin-x:1.0.0")
    answer = await request_at(hub.url, approval, handler="ecr", answers=["evt.ecr.bundle.approved.>"], token=alice)
    assert answer.refused is not None and "not a reviewer" in answer.refused
    assert answer.rejection is not None and answer.rejection.data.command == "ecr.approve"
    assert await stored(platform, EVENTS, "evt.ecr.bundle.approved.>") == []
    # Nor may bob push into alice's namespace with his own token.
    answer = await request_at(hub.url, push("bob", namespace="alice"), handler="ecr", answers=PUSH_ANSWERS, token=bob)
    assert [e.type for e in answer.events] == ["ecr.command.rejected"]
    assert answer.rejection is not None and answer.rejection.data.by == "bob"

    await platform.publish(Event.new(UserRevoked(user="alice", by="admin"), source="user/admin", subject="alice"))
    with pytest.raises(Unauthorized, match="revoked"):
        await request_at(hub.url, push("alice"), handler="ecr", answers=PUSH_ANSWERS, token=alice)


async def test_a_command_without_a_token_is_refused_at_once_not_after_its_timeout(
    hub: Hub, platform: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public identity may not publish to a decider: the server's refusal ends the wait
    (before, the caller waited out its whole timeout, 20 s by default, to learn it)."""
    monkeypatch.delenv("HIVEBUS_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(hub.data_dir / "config"))  # no saved tokens
    async with await Bus.connect(hub.url) as public:
        for _ in range(2):  # the second time too (the first refusal is remembered by the connection)
            async with asyncio.timeout(60):  # far below the request's own hour
                with pytest.raises(PermissionDenied, match="does not let this identity publish"):
                    await decide(public, push("alice"), timeout=3600)


async def test_the_gateway_takes_only_user_actions(hub: Hub, platform: Bus) -> None:
    alice = await add_user(platform, "alice")
    decision = Event.new(UserAdded(user="alice", token_sha256="0" * 64, by="alice"), source="user/alice", subject="alice")
    with pytest.raises((Unauthorized, RequestRejected), match="is not a command"):
        await request_at(hub.url, decision, handler="ecr", answers=[], token=alice)


async def test_grants_and_jobs_through_the_api_are_decided_on_the_tokens_user(hub: Hub, platform: Bus) -> None:
    import hivebus
    from hivebus.handlers.testing import job_spec
    from hivebus.schemas.ecr import PermissionGranted
    from hivebus.schemas.ses import JobSubmitted

    alice, bob = await add_user(platform, "alice"), await add_user(platform, "bob")
    async with hivebus.connect(hub.url) as api:  # the public identity
        assert await api.publish(push("alice").data, source="user/alice", token=alice) > 0
        grant = PermissionGranted(resource="alice/plugin-x:1.0.0", grantee_type="user", grantee="bob", permission="WRITE", by="bob")
        with pytest.raises(RequestRejected, match="bob lacks WRITE_ACP"):
            await api.publish(grant, source="user/bob", token=bob)  # bob does not own it
        with pytest.raises(Unauthorized, match="only with a user token"):  # no token: never decided
            await api.publish(grant, source="user/bob")
        assert await stored(platform, EVENTS, "evt.ecr.permission.granted.>") == []
        submitted = JobSubmitted(job_id="bobs-job", user="bob", spec=job_spec([("x", "alice/plugin-x:1.0.0")], nodes=["W001"]))
        with pytest.raises(RequestRejected, match=r"alice/plugin-x:1\.0\.0"):  # neither approved nor bob's to run
            await api.publish(submitted, source="user/bob", token=bob)


async def test_a_push_without_waiting_goes_through_the_gateway_too(hub: Hub, platform: Bus, tmp_path: Path) -> None:
    alice = await add_user(platform, "alice")
    sage = Path(__file__).resolve().parents[2] / "examples" / "sage.yaml"
    env = {"HIVEBUS_TOKEN": alice, "HIVEBUS_DATA_DIR": str(tmp_path / "nowhere"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    done = await asyncio.to_thread(hivebus_cli, "ecr", "push", str(sage), "--user", "alice", "--no-wait", "--hub", hub.url, env=env)
    assert done.returncode == 0, done.stderr
    registered = [codec.decode(b) for b in await stored(platform, EVENTS, "evt.ecr.bundle.registered.>")]
    assert [(e.source, e.data.pusher) for e in registered] == [("handler/ecr", "alice")]
    refused = await asyncio.to_thread(
        hivebus_cli, "ecr", "push", str(sage), "--user", "alice", "--no-wait", "--hub", hub.url, env={**env, "HIVEBUS_TOKEN": ""}
    )
    assert refused.returncode == 1 and "takes ecr.push only with a user token" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_roles_and_groups_are_facts_only_the_admin_records(hub: Hub, platform: Bus, tmp_path: Path) -> None:
    admin = {"HIVEBUS_DATA_DIR": str(hub.data_dir), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    public = {"HIVEBUS_DATA_DIR": str(tmp_path / "nowhere"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    added = await asyncio.to_thread(hivebus_cli, "user", "add", "rita", "--role", "reviewer", "--hub", hub.url, env=admin)
    assert added.returncode == 0, added.stderr
    rita = added.stdout.strip().splitlines()[-1]
    grouped = await asyncio.to_thread(hivebus_cli, "group", "add", "lab", "bo", "cy", "--hub", hub.url, env=admin)
    assert grouped.returncode == 0, grouped.stderr
    listed = await asyncio.to_thread(hivebus_cli, "user", "list", "--hub", hub.url, env=admin)
    assert "rita  reviewer" in listed.stdout, listed.stdout
    groups = await asyncio.to_thread(hivebus_cli, "group", "list", "--hub", hub.url, env=admin)
    assert groups.stdout.strip() == "lab: bo cy"
    for args in (("user", "role", "bob", "reviewer"), ("group", "add", "lab", "bob"), ("user", "add", "eve", "--role", "root")):
        refused = await asyncio.to_thread(hivebus_cli, *args, "--hub", hub.url, env=public)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert ("only the hub's admin" in refused.stderr) or ("'root' is not a role" in refused.stderr), refused.stderr

    # The ECR decides on the roles in the log: rita approves, and a grant to lab reaches bo.
    alice = await add_user(platform, "alice")
    await request_at(hub.url, push("alice"), handler="ecr", answers=PUSH_ANSWERS, token=alice)
    approval = Event.new(BundleApproved(bundle_id="alice/plugin-x:1.0.0", by="rita"), source="user/rita", subject="alice/plugin-x:1.0.0")
    answer = await request_at(hub.url, approval, handler="ecr", answers=[], token=rita)
    assert [e.type for e in answer.events] == ["ecr.bundle.approved"]
    grant = Event.new(
        PermissionGranted(resource="alice/plugin-x:1.0.0", grantee_type="group", grantee="lab", permission="READ", by="alice"),
        source="user/alice",
        subject="alice/plugin-x:1.0.0",
    )
    answer = await request_at(hub.url, grant, handler="ecr", answers=[], token=alice)
    assert [e.type for e in answer.events] == ["ecr.permission.granted"]
