"""Fast ordered reads of a stream for readers that keep their own position.

Projections, replay and ``tail`` record the last stream sequence they applied, so they
need neither a durable consumer nor acks: an ephemeral consumer with ``AckPolicy.NONE``
started at ``start_seq`` is enough. nats-py's ``fetch`` waits on each message with
``asyncio.wait_for`` (a task per message); this reader sends the pull requests itself and
drains the subscription queue in bulk, several times faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from hivebus.bus.consumer import RawMessage, reply_position
from hivebus.errors import BusError, PermissionDenied

# Status codes the server sends on the pull inbox instead of messages.
_END_OF_PULL = {"404", "408", "409"}  # no messages / request expired / consumer changed
_HEARTBEAT = "100"
_NO_RESPONDERS = "503"  # (an in-memory consumer does not survive a server restart)
_RECHECK_S = 0.25
MAX_PULL_BYTES = 64 * 1024 * 1024  # how often a wait for a delivery looks whether the client reconnected


async def read_stream(
    js: JetStreamContext,
    stream: str,
    *,
    start_seq: int = 1,
    filter_subjects: Sequence[str] = (),
    batch: int = 2000,
    idle: float = 0.5,
    stop_at_end: bool = False,
    start_time: datetime | None = None,
    new_only: bool = False,
    name: str | None = None,
    denied: Mapping[str, str] | None = None,
) -> AsyncIterator[list[RawMessage]]:
    """Yield lists of raw messages in stream order from ``start_seq`` on.

    ``start_time`` starts at the first message stored at or after it instead, and
    ``new_only`` at the next message to arrive. ``stop_at_end``: stop once nothing is
    pending (for rebuilds and catch-up reads); otherwise wait for new messages forever
    (``idle`` is the pull's expiry). ``name`` names the reader's consumer (an identity
    whose permissions allow only that name, a node's, needs it); a leftover consumer of
    that name, from a reader that died, is deleted first. Otherwise it gets a fresh
    name (a named consumer is created on the API subject that carries its filter, which
    is what the public identity's permissions check). ``denied``: the subjects the server
    refused this connection (``Bus.denied``), to fail at once instead of timing out.
    """
    nc = js._nc
    subjects = list(filter_subjects)
    if name is not None:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    else:
        name = f"rd{secrets.token_hex(8)}"
    info = await _create_consumer(
        js,
        stream,
        ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=_deliver_policy(start_seq, start_time, new_only),
            opt_start_seq=start_seq if start_seq > 1 and start_time is None and not new_only else None,
            opt_start_time=start_time,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            inactive_threshold=30.0,
            name=name,
            mem_storage=True,
            num_replicas=1,
        ),
        denied if denied is not None else {},
    )
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=batch * 4, pending_bytes_limit=256 * 1024 * 1024)
    queue = sub._pending_queue
    # max_bytes: a pull of packed DATA messages (up to 256 KiB each) stays far below the
    # subscription's 256 MB, and above any one message (max_payload is at most 64 MB).
    request: dict[str, object] = {"batch": batch, "max_bytes": MAX_PULL_BYTES}
    if stop_at_end:
        request["no_wait"] = True
    else:
        request["expires"] = int(idle * 1e9)
    body = json.dumps(request).encode()
    try:
        while True:
            await nc.publish(next_subject, body, reply=inbox)
            got, ended = 0, False
            while got < batch and not ended:
                first = await _next(queue, nc, idle + 5.0)
                if first is None:
                    break  # the pull was lost (a reconnect, or no answer): ask again
                msgs = [first]
                while not queue.empty():
                    msgs.append(queue.get_nowait())
                # nats-py counts a subscription's pending bytes down only in its own getters;
                # taken from the queue directly, they must be released here, or past 256 MB
                # read the subscription counts as a slow consumer and drops every message.
                sub._pending_size -= sum(len(m.data) for m in msgs)
                out = []
                for m in msgs:
                    if m.reply:
                        seq, stored = reply_position(m.reply)
                        out.append(RawMessage(seq, m.subject, m.data, stored))
                        continue
                    status = m.headers.get("Status") if m.headers else None
                    if status == _NO_RESPONDERS:
                        # Gone (pulling on would spin), or, in a cluster, created but not yet
                        # running on its server: ask, and pull again in the second case.
                        if not await _exists(js, stream, info.name):
                            raise BusError(f"the reader's consumer on {stream} is gone (server restarted?)")
                        await asyncio.sleep(0.05)
                    if status in _END_OF_PULL or status != _HEARTBEAT:
                        ended = True
                got += len(out)
                if out:
                    yield out
            if ended and stop_at_end and got < batch and await _drained(js, stream, info.name):
                return
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(stream, info.name)
        except Exception:  # the consumer expires by itself (inactive_threshold)
            pass


async def _next(queue: asyncio.Queue[Msg], nc: Client, timeout: float) -> Msg | None:
    """The next delivery; None after ``timeout`` or as soon as the client has reconnected
    (a pull request does not survive the connection it was sent on: waiting out the
    timeout after a hub restart cost a live reader ~5 s of catch-up)."""
    connection = nc.stats.get("reconnects", 0)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0 or nc.stats.get("reconnects", 0) != connection:
            return None
        try:
            async with asyncio.timeout(min(left, _RECHECK_S)):
                return await queue.get()
        except TimeoutError:
            continue


def _deliver_policy(start_seq: int, start_time: datetime | None, new_only: bool) -> DeliverPolicy:
    if new_only:
        return DeliverPolicy.NEW
    if start_time is not None:
        return DeliverPolicy.BY_START_TIME
    return DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else DeliverPolicy.ALL


async def _exists(js: JetStreamContext, stream: str, consumer: str) -> bool:
    """Whether the server still has the consumer (True when it cannot tell: ask again)."""
    try:
        await js.consumer_info(stream, consumer)
    except NotFoundError:
        return False
    except Exception:
        return True
    return True


async def _drained(js: JetStreamContext, stream: str, consumer: str) -> bool:
    """Whether the consumer has nothing left to deliver.

    A short no-wait pull usually means the end, but a status reply during a cluster
    leader change ends a pull early too: ask the server instead of trusting the pull. In a
    cluster the consumer may live on a replica that is still catching up (a server just
    restarted): its "nothing pending" counts only what that replica has, so it is believed
    only once that replica is current (seen: a read of 1,000 events that ended empty).
    """
    try:
        info = await js.consumer_info(stream, consumer)
        if info.num_pending != 0:
            return False
        host = info.cluster.leader if info.cluster is not None else None
        if host is None:
            return True
        cluster = (await js.stream_info(stream)).cluster
    except Exception:  # the server is away: reading on would not end either; ask again
        await asyncio.sleep(0.2)
        return False
    if cluster is None or cluster.leader == host:
        return True
    peer = next((r for r in cluster.replicas or [] if r.name == host), None)
    if peer is not None and peer.current and not peer.lag:
        return True
    await asyncio.sleep(0.05)
    return False


async def _create_consumer(
    js: JetStreamContext, stream: str, config: ConsumerConfig, denied: Mapping[str, str], attempts: int = 6
) -> ConsumerInfo:
    """Create the ephemeral consumer, riding out a JetStream that is electing a leader
    (right after a server restart, or a cluster member's loss, the API times out for a
    few seconds)."""
    for attempt in range(attempts):
        try:
            return await js.add_consumer(stream, config)
        except (TimeoutError, NatsTimeout, NoRespondersError, ServiceUnavailableError) as exc:
            refused = f"$js.api.consumer.create.{stream}.{config.name}".lower()
            if any(subject.startswith(refused) for subject in denied):
                what = ", ".join(config.filter_subjects or [config.filter_subject or ">"])
                raise PermissionDenied(
                    f"the hub does not let this identity read {what} from {stream}",
                    hint="without credentials you may read evt.>, fromedge.> and data.>, one filter at a time",
                ) from None
            if attempt == attempts - 1:
                raise BusError(f"JetStream did not create a reader on {stream} ({type(exc).__name__})", hint="is the server or cluster healthy?") from None
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover
