"""Redis only: messages delivered to a waiting receive. A receive that finds its mailbox empty
registers its hub as waiting (`<prefix>:w:<agent>`); the sender's script leases the next
message to that hub and sends it whole on the hub's own channel, so the receiver needs no
claim after its wake-up. What must hold around that: a delivery nobody takes goes back, a hub
that does not listen gets none, and a user who may not use its own channel still receives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
import redis

import agentcomm
from agentcomm._backends.redis import RedisBackend
from agentcomm._backends.redis import mailbox as redis_mailbox
from agentcomm._backends.redis.mailbox import parse_delivery
from redis_server import BINARY

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")


def backend_of(hub: agentcomm.Hub) -> RedisBackend:
    backend = hub._backend
    assert isinstance(backend, RedisBackend)
    return backend


def script_ops(hub: agentcomm.Hub) -> list[str]:
    """The script operations the hub sends from now on."""
    scripts = backend_of(hub)._scripts
    ops: list[str] = []
    execute = scripts._execute

    async def recording(*args: Any) -> Any:
        if args[0] in ("FCALL", "EVALSHA"):
            ops.append(str(args[6]).split("\0")[0])  # ARGV 4: the operation
        return await execute(*args)

    scripts._execute = recording
    return ops


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def waiting(raw: redis.Redis, prefix: str, agent: str, receives: int = 1) -> None:
    """Until `receives` receives are registered as waiting for `agent`'s next message."""
    key = f"{prefix}:w:{agent}"
    await until(lambda: raw.zcard(key) >= receives, f"{receives} receive(s) waiting for {agent}")


def register(raw: redis.Redis, prefix: str, agent: str, origin: str) -> None:
    """A registration as the claim script writes it: `origin` waits 10 s, lease 30 s, 1 message."""
    raw.zadd(f"{prefix}:w:{agent}", {f"{origin}\0{30.0!r}\0001\0t1": time.time() + 10})


async def test_a_waiting_receive_gets_its_message_without_claiming_again(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as sending, agentcomm.connect(url) as receiving:
        sender, worker = await sending.agent("sender"), await receiving.agent("worker")
        ops = script_ops(receiving)
        task = asyncio.ensure_future(worker.receive(timeout=10))
        await waiting(raw, prefix, "worker")
        await sender.send("worker", {"text": "a\0b"}, priority=3)
        msg = await task
        assert msg is not None and msg.data == {"text": "a\0b"} and msg.attempt == 1
        assert msg.sender == "sender" and msg.priority == 3
        # the one claim that found nothing and registered; the message came without another
        # (a presence `touch` may follow: it is throttled, not per message)
        assert [op for op in ops if op != "touch"] == ["claim"]
        assert raw.zcard(f"{prefix}:w:worker") == 0
        assert (await receiving.mailbox_stats("worker")).in_flight == 1
        await msg.ack()
        assert (await receiving.mailbox_stats("worker")).in_flight == 0


async def test_requests_and_replies_between_hubs_take_three_script_calls(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # the request's send (which delivers it), the reply (with its ack), and the responder's
    # next claim, which registers it again; no take, no claim after a wake-up
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as asking, agentcomm.connect(url) as answering:
        requester, responder = await asking.agent("asker"), await answering.agent("answerer")

        async def answer(msg: agentcomm.Message) -> Any:
            return msg.data * 2

        serving = asyncio.ensure_future(responder.serve(answer))
        await waiting(raw, prefix, "answerer")
        asked, answered = script_ops(asking), script_ops(answering)
        for i in range(5):
            reply = await requester.request("answerer", i, timeout=10)
            assert reply.data == 2 * i
            await waiting(raw, prefix, "answerer")
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    assert asked.count("enqueue") == 5 and "take" not in asked and "claim" not in asked
    assert answered.count("claim") == 5 and answered.count("reply") == 5


async def test_a_delivery_no_receive_takes_goes_back_uncounted(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as sending, agentcomm.connect(url) as idle:
        sender, worker = await sending.agent("sender"), await idle.agent("worker")
        # the idle hub is registered (as by a receive that has just left) but nothing waits
        register(raw, prefix, "worker", backend_of(idle)._origin)
        await sender.send("worker", "lost?")
        await until(lambda: raw.zcard(f"{prefix}:r:worker") == 1, "the message given back")
        assert raw.zcard(f"{prefix}:w:worker") == 0
        msg = await worker.receive(timeout=5)
        assert msg is not None and msg.data == "lost?"
        assert msg.attempt == 1  # the delivery nobody took does not count
        await msg.ack()


async def test_a_hub_that_does_not_listen_gets_no_delivery(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as hub:
        sender, worker = await hub.agent("sender"), await hub.agent("worker")
        register(raw, prefix, "worker", uuid4().hex)  # a hub that died without closing
        await sender.send("worker", "kept")
        assert raw.zcard(f"{prefix}:w:worker") == 0  # its registration is dropped
        assert (await hub.mailbox_stats("worker")).ready == 1
        msg = await worker.receive(timeout=0)
        assert msg is not None and msg.data == "kept" and msg.attempt == 1
        await msg.ack()


async def test_expired_registrations_get_nothing(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as sending, agentcomm.connect(url) as other:
        sender = await sending.agent("sender")
        await other.agent("worker")
        key = f"{prefix}:w:worker"
        raw.zadd(key, {f"{backend_of(other)._origin}\0{30.0!r}\0001\0t1": time.time() - 1})
        await sender.send("worker", "ready")
        assert raw.zcard(key) == 0 and (await sending.mailbox_stats("worker")).ready == 1


async def test_receives_of_one_hub_waiting_for_one_agent_each_get_one(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # the sender's hub is the receivers' hub: the script answers the deliveries in its reply
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}") as hub:
        sender, worker = await hub.agent("sender"), await hub.agent("worker")
        first = asyncio.ensure_future(worker.receive(timeout=10))
        second = asyncio.ensure_future(worker.receive(timeout=10))
        await waiting(raw, prefix, "worker", receives=2)  # a registration each
        ops = script_ops(hub)
        await sender.send("worker", 1)
        await sender.send("worker", 2)
        got = await asyncio.gather(first, second)
        assert sorted(m.data for m in got if m is not None) == [1, 2]
        assert all(m is not None and m.attempt == 1 for m in got)
        assert ops.count("enqueue") == 2 and "claim" not in ops  # both delivered
        for m in got:
            assert m is not None
            await m.ack()


async def test_a_receive_cancelled_as_its_delivery_comes_gives_it_back(
    redis_url: str, prefix: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url) as sending, agentcomm.connect(url) as receiving:
        sender, worker = await sending.agent("sender"), await receiving.agent("worker")
        tasks: list[asyncio.Future[Any]] = []

        class CancelledOnDelivery(redis_mailbox._Waiter):
            """A waiting receive cancelled the moment its delivery is handed to it."""

            def __setattr__(self, name: str, value: Any) -> None:
                super().__setattr__(name, value)
                if name == "delivery" and value is not None:
                    tasks[0].cancel()

        monkeypatch.setattr(redis_mailbox, "_Waiter", CancelledOnDelivery)
        tasks.append(asyncio.ensure_future(worker.receive(timeout=10)))
        await waiting(raw, prefix, "worker")
        await sender.send("worker", "back")
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        await until(lambda: raw.zcard(f"{prefix}:r:worker") == 1, "the message given back")
        monkeypatch.undo()
        msg = await worker.receive(timeout=5)
        assert msg is not None and msg.data == "back" and msg.attempt == 1
        await msg.ack()


def test_a_delivery_frames_bodies_holding_any_byte() -> None:
    bodies = [b"\0\0", b"", b"x" * 300 + b"\0\n\2"]
    parts = [b"worker", b"1796000000.25", b"3"]
    for i, body in enumerate(bodies):
        parts += [f"{i + 1:016d}".encode(), b"2", str(len(body)).encode(), body]
    agent, lease_until, messages = parse_delivery(b"\0".join(parts))
    assert agent == "worker" and lease_until == 1796000000.25
    assert messages == [(f"{i + 1:016d}".encode(), 2, b) for i, b in enumerate(bodies)]


async def test_a_user_who_may_not_use_its_own_channel_still_receives(
    redis_url: str, prefix: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"u-{uuid4().hex[:8]}", uuid4().hex
    raw.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"],
        channels=[f"{prefix}:wake"], commands=["+@all"],
    )  # fmt: skip
    try:
        parts = urlsplit(redis_url)
        limited = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))
        caplog.set_level(logging.INFO, logger="agentcomm.redis")
        async with (
            agentcomm.connect(f"{redis_url}?prefix={prefix}") as sending,
            agentcomm.connect(f"{limited}?prefix={prefix}") as receiving,
        ):
            assert backend_of(receiving)._mailboxes.deliveries is False
            assert "own channel" in caplog.text
            sender, worker = await sending.agent("sender"), await receiving.agent("worker")
            task = asyncio.ensure_future(worker.receive(timeout=10))
            await asyncio.sleep(0.1)
            assert raw.zcard(f"{prefix}:w:worker") == 0  # it never registers
            await sender.send("worker", "by wake-up")
            msg = await task
            assert msg is not None and msg.data == "by wake-up"
            await msg.ack()
    finally:
        raw.acl_deluser(user)


async def test_receives_that_time_out_or_are_cancelled_lose_no_message(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # two hubs, receives of both that time out quickly or are cancelled mid-wait, while two
    # senders send: every message is acked exactly once, and none is left anywhere
    import random

    rng = random.Random(1234)
    url = f"{redis_url}?prefix={prefix}"
    total = 300
    acked: list[Any] = []
    sent: list[str] = []
    async with agentcomm.connect(url) as one, agentcomm.connect(url) as two:
        hubs = [one, two]
        workers = [await hub.agent("worker") for hub in hubs]
        senders = [await hub.agent(f"sender{i}") for i, hub in enumerate(hubs)]
        stop = asyncio.Event()

        async def receive(worker: agentcomm.Agent) -> agentcomm.Message | None:
            # a short lease: a receive cancelled during its claim's round trip leaves what
            # the claim leased in flight until the lease ends (as on every backend over a
            # network), and the test waits for that
            return await worker.receive(timeout=rng.choice([0.01, 0.05]), lease=1.0)

        async def consume(worker: agentcomm.Agent) -> None:
            while not stop.is_set():
                task = asyncio.ensure_future(receive(worker))
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.02)
                    task.cancel()
                got = (await asyncio.gather(task, return_exceptions=True))[0]
                if isinstance(got, agentcomm.Message):
                    try:
                        await got.ack()
                    except agentcomm.LeaseLost:
                        continue  # delivered again, acked by whoever has it then
                    acked.append(got.data)

        async def produce(sender: agentcomm.Agent, first: int) -> None:
            for i in range(first, total, 2):
                sent.append(await sender.send("worker", i))
                if i % 7 == 0:
                    await asyncio.sleep(0.005)

        consumers = [asyncio.ensure_future(consume(w)) for w in workers for _ in range(3)]
        await asyncio.gather(*(produce(s, k) for k, s in enumerate(senders)))
        await until(lambda: len(acked) >= total, "every message acked", timeout=30)
        stop.set()
        await asyncio.gather(*consumers)
        assert sorted(acked) == list(range(total))  # each exactly once
        stats = await one.mailbox_stats("worker")
        assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)
    assert len(sent) == total


async def test_a_delayed_send_wakes_a_waiting_receive_for_its_due_time(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # nothing to deliver yet, but the waiting receive must learn of the new due time; with a
    # 60 s re-check it would otherwise sleep through it
    url = f"{redis_url}?prefix={prefix}&recheck=60"
    async with agentcomm.connect(url) as sending, agentcomm.connect(url) as receiving:
        sender, worker = await sending.agent("sender"), await receiving.agent("worker")
        for hub_sending in (sending, receiving):  # another hub's receive, then the same hub's
            task = asyncio.ensure_future(worker.receive(timeout=5))
            await waiting(raw, prefix, "worker")
            await (await hub_sending.agent("sender")).send("worker", "later", delay=0.3)
            msg = await task
            assert msg is not None and msg.data == "later"
            await msg.ack()
        assert sender.name == "sender"
