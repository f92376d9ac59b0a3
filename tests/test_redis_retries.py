"""Redis only: a call whose connection drops after the server ran its script is run again by
redis-py (the client's `Retry`); that rerun must change nothing the first run changed.

`dropped_after` makes the drop deterministic: the script runs on the server, its reply is read
and thrown away, the connection is closed and redis-py sees a ConnectionError, as after a
`CLIENT KILL` that lands between the script and its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as rexc

import agentcomm
from agentcomm._backends.redis import RedisBackend
from redis_server import BINARY

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")


@pytest.fixture(params=["auto", "eval"])
async def hub(
    redis_url: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[agentcomm.Hub]:
    """A hub calling the scripts by FCALL (Redis 7+) or, with `scripts=eval`, by EVALSHA."""
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}&scripts={request.param}") as h:
        yield h


class Drops:
    """How many replies of which script operation were thrown away so far."""

    def __init__(self, op: str, times: int) -> None:
        self.op = op.encode()
        self.left = times
        self.dropped = 0


@contextlib.contextmanager
def dropped_after(monkeypatch: pytest.MonkeyPatch, op: str, times: int = 1) -> Iterator[Drops]:
    """Drop the connection after the server ran script operation `op` (`times` times)."""
    drops = Drops(op, times)
    original: Any = aioredis.Redis._send_command_parse_response

    async def send(self: Any, conn: Any, command_name: str, *args: Any, **options: Any) -> Any:
        reply = await original(self, conn, command_name, *args, **options)
        # FCALL (or EVALSHA), function (or sha), 0, prefix, origin, now, op...: the op, with
        # its token after a NUL byte
        if command_name in ("FCALL", "EVALSHA") and drops.left > 0:
            op = args[6]
            name = op if isinstance(op, bytes) else str(op).encode()
            if name.split(b"\0")[0] == drops.op:
                drops.left -= 1
                drops.dropped += 1
                await conn.disconnect()
                raise rexc.ConnectionError("dropped after the server ran the script (test)")
        return reply

    with monkeypatch.context() as m:
        m.setattr(aioredis.Redis, "_send_command_parse_response", send)
        yield drops


def keys(raw: redis.Redis, pattern: str) -> list[bytes]:
    return list(raw.scan_iter(match=pattern, count=1000))


async def test_a_retried_send_is_stored_once(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    with dropped_after(monkeypatch, "enqueue") as drops:
        sent = await a.send("b", {"n": 1})
    assert drops.dropped == 1  # the script ran twice
    assert len(keys(raw, f"{prefix}:m:*")) == 1
    msg = await b.receive(timeout=1)
    assert msg is not None and msg.id == sent and msg.attempt == 1
    await msg.ack()
    assert await b.receive(timeout=0.2) is None


async def test_a_retried_batch_is_stored_once_with_its_deduplicated_ids(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    first = await a.send("b", "x", idempotency_key="k")
    batch = [
        agentcomm.Outgoing(to="b", data="y", idempotency_key="k"),  # a duplicate of `first`
        agentcomm.Outgoing(to="b", data="z"),
    ]
    with dropped_after(monkeypatch, "enqueue"):
        ids = await a.send_many(batch)
    assert ids[0] == first  # the rerun gives the first run's answer
    assert len(keys(raw, f"{prefix}:m:*")) == 2
    got = await b.receive_many(10, timeout=1)
    assert sorted(m.data for m in got) == ["x", "z"]
    stats = await hub.stats()
    assert (stats.sent, stats.deduplicated) == (2, 1)


async def test_a_rerun_after_the_message_was_acked_stores_nothing(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window a check per stored message would leave: the message is received and acked
    (its hash deleted) before the rerun of its send comes."""
    a, b = await hub.agent("a"), await hub.agent("b")
    backend = hub._backend
    assert isinstance(backend, RedisBackend)
    scripts = backend._scripts
    original = scripts.call
    runs: list[tuple[Any, ...]] = []

    async def call(*args: Any) -> Any:
        runs.append(args)
        return await original(*args)

    with monkeypatch.context() as m:
        m.setattr(scripts, "call", call)
        await a.send("b", "once")
    msg = await b.receive(timeout=1)
    assert msg is not None
    await msg.ack()
    assert keys(raw, f"{prefix}:m:*") == []
    [enqueue] = [r for r in runs if r[1] == "enqueue"]
    await original(*enqueue)  # the late rerun: same arguments, same token
    assert keys(raw, f"{prefix}:m:*") == []
    assert await b.receive(timeout=0.2) is None


async def test_a_retried_publish_is_one_record(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await hub.agent("a")
    with dropped_after(monkeypatch, "publish") as drops:
        result = await a.publish("news.x", {"n": 1})
    assert drops.dropped == 1
    stats = await hub.topic_stats("news.x")
    assert (stats.published, stats.last_sequence, result.sequence) == (1, 1, 1)


async def test_a_retried_put_is_one_version(
    hub: agentcomm.Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = (await hub.agent("a")).memory("ns")
    with dropped_after(monkeypatch, "put"):
        entry = await mem.put("k", 1)
        entry2 = await mem.put("k", 2, expected_version=1)  # no conflict with itself
    assert (entry.version, entry2.version) == (1, 2)


async def test_a_retried_retain_holds_once(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await hub.refs.store(b"x" * 100)
    with dropped_after(monkeypatch, "adjust") as drops:
        await hub.refs.retain(ref)
    assert drops.dropped == 1
    assert raw.hget(f"{prefix}:ref:{ref.id}", "refcount") == b"2"  # store + one retain


async def test_a_retried_reply_is_delivered(
    hub: agentcomm.Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")

    async def serve() -> None:
        msg = await b.receive(timeout=5)
        assert msg is not None
        with dropped_after(monkeypatch, "reply") as drops:
            await msg.reply("pong")
        assert drops.dropped == 1

    server = asyncio.get_running_loop().create_task(serve())
    assert (await a.request("b", "ping", timeout=5)).data == "pong"
    await server
    assert (await hub.stats()).late_replies == 0


async def test_a_retried_take_of_a_durable_consumer_delivers(
    hub: agentcomm.Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await hub.agent("a")
    async with a.subscribe("news.>", durable="d", start="all") as sub:
        await a.publish("news.x", 1)
        with dropped_after(monkeypatch, "take") as drops:
            got = await sub.next(timeout=2)
        assert drops.dropped == 1
        assert got is not None and got.data == 1  # not left leased until its lease ends


async def test_a_retried_schedule_add_and_cancel(
    hub: agentcomm.Hub, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await hub.agent("a")
    big = b"x" * 1_000_000  # stored by reference: each schedule's payload holds it
    await a.schedule("a", big, every=60)
    [ref] = await hub.refs.list_refs()
    with dropped_after(monkeypatch, "sched_add") as drops:
        sid = await a.schedule("a", big, every=60)
    assert drops.dropped == 1
    [again] = await hub.refs.list_refs()
    assert again.refcount == ref.refcount + 1
    with dropped_after(monkeypatch, "sched_cancel"):
        assert await hub.cancel_schedule(sid) is True
