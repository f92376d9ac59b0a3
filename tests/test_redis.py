"""Redis only: hubs in several processes on one server, connection loss, restarts with AOF."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

import agentcomm
from processes import finish, kill_and_read_rest, spawn
from redis_server import BINARY, RedisServer, drop_prefixes

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")

WAIT = 30.0  # a guard against hanging, never a timing assertion


def _store(base: str, **options: object) -> str:
    """A store of its own on the server at `base` (a fresh key prefix), with URL options."""
    query = "&".join(f"{k}={v}" for k, v in {"prefix": f"t-{uuid4().hex[:8]}", **options}.items())
    return f"{base}?{query}"


@pytest.fixture
def store(redis_url: str) -> Iterator[Callable[..., str]]:
    """Make stores of their own on the session's server; their keys are deleted after."""
    made: list[str] = []

    def make(**options: object) -> str:
        url = _store(redis_url, **options)
        made.append(url.split("prefix=")[1].split("&")[0])
        return url

    yield make
    drop_prefixes(redis_url, made)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, fsyncing every write to its append-only file."""
    with RedisServer(tmp_path, aof=True) as s:
        yield s


# --- several processes ------------------------------------------------------------------------

SENDER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("producer")
        await me.send("consumer", {"hello": "from another process"})
"""


@pytest.mark.slow
async def test_send_in_one_process_receive_in_another(store: Callable[..., str]) -> None:
    # recheck=60: a receiver that wakes in time was woken by pub/sub, not by the safety poll
    url = store(recheck=60)
    async with agentcomm.connect(url) as hub:
        consumer = await hub.agent("consumer")
        waiting = asyncio.create_task(consumer.receive(timeout=WAIT))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        proc = spawn(SENDER, url)
        msg = await asyncio.wait_for(waiting, WAIT)
        finish(proc)
        assert msg is not None and msg.data == {"hello": "from another process"}
        assert msg.sender == "producer"
        assert time.monotonic() - started < 20  # well before the 60 s re-check
        await msg.ack()


RESPONDER = """
async def main(url, count):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("responder")
        print("ready", flush=True)
        for _ in range(int(count)):
            msg = await me.receive(timeout=30)
            await msg.reply({"echo": msg.data, "pid": __import__("os").getpid()})
"""


@pytest.mark.slow
async def test_request_reply_between_two_processes(store: Callable[..., str]) -> None:
    url = store(recheck=60)
    proc = spawn(RESPONDER, url, "20")
    assert proc.stdout is not None
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("requester")
        replies = [await me.request("responder", i, timeout=WAIT) for i in range(10)]
        replies += await asyncio.gather(
            *(me.request("responder", i, timeout=WAIT) for i in range(10, 20))
        )
    finish(proc)
    assert [r.data["echo"] for r in replies] == list(range(20))
    assert {r.data["pid"] for r in replies} == {proc.pid}


WRITER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        kv = hub.memory("plans")
        await kv.put("plan", {"steps": 1})
        await kv.put("plan", {"steps": 2}, expected_version=1)
        await kv.delete("plan")
"""


@pytest.mark.slow
async def test_watch_sees_changes_made_in_another_process(store: Callable[..., str]) -> None:
    url = store(recheck=60)  # woken by pub/sub, not by the re-check
    async with agentcomm.connect(url) as hub:
        seen: list[tuple[str, int]] = []

        async def watch() -> None:
            async for change in hub.memory("plans").watch("plan*"):
                seen.append((change.kind, change.version))
                if len(seen) == 3:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.to_thread(finish, spawn(WRITER, url))
        await asyncio.wait_for(watcher, WAIT)
        assert seen == [("put", 1), ("put", 2), ("delete", 3)]
        assert time.monotonic() - started < 20


CLAIMER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("worker")
        got = []
        while msgs := await me.receive_many(50, timeout=1):
            got.extend(m.data for m in msgs)
            await me.ack_many(msgs)
        print(" ".join(map(str, got)))
"""


@pytest.mark.slow
async def test_consumers_in_three_processes_share_a_mailbox_without_duplicates(
    store: Callable[..., str],
) -> None:
    url = store()
    async with agentcomm.connect(url) as hub:
        producer = await hub.agent("producer")
        await hub.agent("worker")
        for lo in range(0, 3000, 100):
            await producer.send_many(
                [agentcomm.Outgoing(to="worker", data=i) for i in range(lo, lo + 100)]
            )
        procs = [spawn(CLAIMER, url) for _ in range(3)]
        outs = [await asyncio.to_thread(finish, p) for p in procs]
        seen = [int(x) for out in outs for x in out.split()]
        assert sorted(seen) == list(range(3000))  # each exactly once
        assert (await hub.mailbox_stats("worker")).in_flight == 0


async def test_a_quiet_wake_connection_is_pinged_and_still_wakes(
    store: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcomm._backends.redis import backend

    monkeypatch.setattr(backend, "_IDLE_PING", 0.05)
    url = store(recheck=60)
    async with agentcomm.connect(url) as hub, agentcomm.connect(url) as other:
        consumer = await hub.agent("consumer")
        waiting = asyncio.create_task(consumer.receive(timeout=WAIT))
        await asyncio.sleep(0.5)  # several quiet periods: PINGs, answered, nothing dropped
        await (await other.agent("producer")).send("consumer", "late")
        msg = await asyncio.wait_for(waiting, 10)  # woken by pub/sub, not the 60 s re-check
        assert msg is not None and msg.data == "late"


async def test_dead_letter_reasons_are_the_texts_every_backend_uses(
    store: Callable[..., str],
) -> None:
    # the Lua builds these texts itself, from templates made of the shared functions
    from agentcomm._backends.common import final_nack_reason, lease_expired_reason

    async with agentcomm.connect(store()) as hub:
        me = await hub.agent("me")
        await me.send("me", "expires", max_attempts=1)
        assert await me.receive(timeout=WAIT, lease=0.05) is not None
        assert await me.receive(timeout=0.3) is None  # the lease ends: dead
        await me.send("me", "nacked", max_attempts=1)
        msg = await me.receive(timeout=WAIT)
        assert msg is not None
        await msg.nack()
        reasons = {d.data: d.reason for d in await hub.dead_letters("me")}
    assert reasons == {"expires": lease_expired_reason(1, 1), "nacked": final_nack_reason(1)}


# --- isolation and configuration ------------------------------------------------------------


async def test_prefixes_keep_deployments_apart(redis_url: str) -> None:
    ours = [f"deploy-a-{uuid4().hex[:8]}", f"deploy-b-{uuid4().hex[:8]}"]
    try:
        await _two_deployments(redis_url, *ours)
    finally:
        drop_prefixes(redis_url, ours)


async def _two_deployments(redis_url: str, prefix_a: str, prefix_b: str) -> None:
    async with (
        agentcomm.connect(redis_url, prefix=prefix_a) as a,
        agentcomm.connect(redis_url, prefix=prefix_b) as b,
    ):
        sender = await a.agent("sender")
        await a.agent("worker")
        await sender.send("worker", "for a")
        assert f"prefix={prefix_a}" in a.url
        assert await b.agents() == []
        with pytest.raises(agentcomm.UnknownAgent):
            await (await b.agent("sender")).send("worker", "b has no worker")
        assert await a.queue_depth("worker") == 1
        await a.memory("ns").put("k", 1)
        assert await b.memory("ns").get("k") is None


def test_bad_redis_configuration_is_reported() -> None:
    with pytest.raises(agentcomm.ConfigurationError, match="prefix"):
        agentcomm.connect("redis://127.0.0.1:6379/0?prefix=has space")
    with pytest.raises(agentcomm.ConfigurationError, match="redis"):
        agentcomm.connect("sqlite:///x.db", prefix="p")
    with pytest.raises(agentcomm.ConfigurationError, match="recheck"):
        agentcomm.connect("redis://127.0.0.1:6379/0?recheck=0")


def test_missing_redis_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(agentcomm.ConfigurationError, match=r"agentcomm\[redis\]"):
        agentcomm.connect("redis://127.0.0.1:6379/0")


async def test_unreachable_server_raises_backend_unavailable() -> None:
    hub = agentcomm.connect("redis://127.0.0.1:1/0")
    with pytest.raises(agentcomm.BackendUnavailable, match="cannot be reached"):
        await hub.open()


# --- connection loss and restarts -------------------------------------------------------------


async def _until_back(coro_fn: object, timeout: float = WAIT) -> object:
    """Retry `coro_fn()` while the backend is unavailable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await coro_fn()  # type: ignore[operator]
        except agentcomm.BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_connection_loss_raises_backend_unavailable_and_the_hub_recovers(
    server: RedisServer,
) -> None:
    url = _store(server.url, recheck=60)
    async with agentcomm.connect(url) as hub, agentcomm.connect(url) as other:
        producer = await hub.agent("producer")
        consumer = await other.agent("consumer")
        await producer.send("consumer", "before")
        held = await consumer.receive(timeout=WAIT, lease=120)
        assert held is not None
        # a receiver waiting in the other hub through the outage: its wake-up listener
        # reconnects by itself
        waiting = asyncio.create_task(consumer.receive(timeout=WAIT))
        await asyncio.sleep(0.1)
        server.stop(kill=True)
        with pytest.raises(agentcomm.BackendUnavailable):
            await producer.send("consumer", "during")
        with pytest.raises(agentcomm.BackendUnavailable):
            await hub.memory("ns").get("k")
        await asyncio.sleep(0.3)  # the listener notices and retries meanwhile
        assert not waiting.done()
        await asyncio.to_thread(server.start)
        await _until_back(lambda: producer.send("consumer", "after"))
        msg = await asyncio.wait_for(waiting, WAIT)
        assert msg is not None and msg.data == "after"
        await msg.ack()
        await held.ack()  # the lease survived the outage
        stats = await hub.mailbox_stats("consumer")
        assert (stats.ready, stats.in_flight) == (0, 0)


PRODUCER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("producer")
        i = 0
        while True:
            try:
                msg_id = await me.send("consumer", i)
            except agentcomm.BackendUnavailable:
                await asyncio.sleep(0.05)
                continue
            print(msg_id, flush=True)
            i += 1
"""


@pytest.mark.slow
async def test_restart_with_aof_mid_stream_loses_nothing_acknowledged(server: RedisServer) -> None:
    url = _store(server.url)
    async with agentcomm.connect(url) as hub:
        await hub.agent("producer")
        consumer = await hub.agent("consumer")
        proc = spawn(PRODUCER, url)
        assert proc.stdout is not None
        confirmed = [await asyncio.to_thread(proc.stdout.readline) for _ in range(300)]
        held = await consumer.receive(timeout=WAIT, lease=120)
        assert held is not None
        server.stop(kill=True)  # kill -9 mid-stream: only what was fsynced survives
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)
        confirmed += [await asyncio.to_thread(proc.stdout.readline) for _ in range(300)]
        rest = kill_and_read_rest(proc)
        confirmed_ids = {c.strip() for c in confirmed + rest.splitlines() if c.strip()}
        await _until_back(lambda: held.ack())  # the lease survived the restart too
        stored = {held.id}
        while msgs := await _until_back(lambda: consumer.receive_many(500, timeout=0)):
            stored.update(m.id for m in msgs)  # type: ignore[attr-defined]
            await consumer.ack_many(msgs)  # type: ignore[arg-type]
        assert len(confirmed_ids) >= 600
        assert confirmed_ids <= stored
