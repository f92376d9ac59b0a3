"""Mailbox semantics, on every backend: delivery, leases, retries, dead letters, TTL, dedupe."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import agentcomm
from agentcomm import Hub

# also on SQLite with loop writes off (see conftest.py)
ALSO_THREAD_WRITES = True


async def _pair(hub: Hub) -> tuple[agentcomm.Agent, agentcomm.Agent]:
    return await hub.agent("planner"), await hub.agent("coder")


async def test_message_fields_round_trip(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    before = time.time()
    msg_id = await planner.send(
        "coder", {"goal": "write tests", "n": [1, 2.5, None]}, type="task", priority=5,
        metadata={"run": "r1"},
    )  # fmt: skip
    msg = await coder.receive(timeout=5)
    assert msg is not None
    assert msg.id == msg_id
    assert (msg.sender, msg.recipient, msg.type, msg.priority) == ("planner", "coder", "task", 5)
    assert msg.data == {"goal": "write tests", "n": [1, 2.5, None]}
    assert msg.metadata == {"run": "r1"}
    assert msg.attempt == 1
    assert msg.correlation_id is None
    assert before <= msg.enqueued_at <= time.time()
    await msg.ack()
    assert msg.settled


async def test_bytes_payload_is_returned_as_bytes(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    blob = bytes(range(256)) * 4
    await planner.send("coder", blob)
    msg = await coder.receive(timeout=5)
    assert msg is not None and msg.data == blob


async def test_unencodable_payload_raises_and_stores_nothing(hub: Hub) -> None:
    planner, _ = await _pair(hub)
    with pytest.raises(agentcomm.EncodeError):
        await planner.send("coder", {"bad": object()})
    with pytest.raises(agentcomm.EncodeError):
        await planner.send("coder", {"ok": 1}, metadata={"bad": object()})
    assert await hub.queue_depth("coder") == 0
    assert (await hub.stats()).sent == 0


async def test_unknown_recipient_raises(hub: Hub) -> None:
    planner = await hub.agent("planner")
    with pytest.raises(agentcomm.UnknownAgent, match="nobody"):
        await planner.send("nobody", {})


async def test_auto_register_creates_the_recipient(make_hub: Callable[..., Hub]) -> None:
    async with make_hub(auto_register=True) as hub:
        planner = await hub.agent("planner")
        await planner.send("newcomer", {"hi": 1})
        assert "newcomer" in [a.name for a in await hub.agents()]
        msg = await (await hub.agent("newcomer")).receive(timeout=5)
        assert msg is not None and msg.data == {"hi": 1}


async def test_priority_first_then_fifo(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    sent = [(0, "a"), (5, "b"), (0, "c"), (9, "d"), (5, "e"), (-3, "f"), (0, "g")]
    for priority, label in sent:
        await planner.send("coder", label, priority=priority)
    got = []
    while (msg := await coder.receive(timeout=0)) is not None:
        got.append(msg.data)
        await msg.ack()
    assert got == ["d", "b", "e", "a", "c", "g", "f"]


async def test_receive_times_out_with_none(hub: Hub) -> None:
    _, coder = await _pair(hub)
    assert await coder.receive(timeout=0) is None
    assert await coder.receive(timeout=0.05) is None


async def test_waiting_receiver_wakes_on_send(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    waiter = asyncio.create_task(coder.receive(timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await planner.send("coder", "wake")
    msg = await asyncio.wait_for(waiter, 5)
    assert msg is not None and msg.data == "wake"


async def test_unacked_message_is_redelivered_after_lease(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "x")
    first = await coder.receive(timeout=5, lease=0.2)
    assert first is not None and first.attempt == 1
    assert await coder.receive(timeout=0) is None  # invisible while leased
    second = await coder.receive(timeout=5)
    assert second is not None
    assert (second.id, second.attempt) == (first.id, 2)
    with pytest.raises(agentcomm.LeaseLost):
        await first.ack()
    await second.ack()
    assert (await hub.mailbox_stats("coder")).in_flight == 0


async def test_ack_after_lease_ended_but_not_redelivered_still_counts(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "x")
    msg = await coder.receive(timeout=5, lease=0.05)
    assert msg is not None
    await asyncio.sleep(0.1)
    await msg.ack()
    assert await coder.receive(timeout=0.2) is None


async def test_max_attempts_then_dead_letter_with_reason(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    msg_id = await planner.send("coder", {"job": 1}, max_attempts=2)
    for attempt in (1, 2):
        msg = await coder.receive(timeout=5, lease=0.1)
        assert msg is not None and msg.attempt == attempt
    assert await coder.receive(timeout=0.4) is None
    dead = await hub.dead_letters("coder")
    assert [d.id for d in dead] == [msg_id]
    assert dead[0].attempts == 2
    assert "lease expired" in dead[0].reason
    assert dead[0].data == {"job": 1}
    assert (await hub.stats()).dead_lettered == 1


async def test_nack_retries_after_delay_and_dead_letters_on_last_attempt(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "flaky", max_attempts=3)
    for attempt in (1, 2, 3):
        msg = await coder.receive(timeout=5)
        assert msg is not None and msg.attempt == attempt
        await msg.nack(delay=0.05)
    assert await coder.receive(timeout=0.2) is None
    (dead,) = await hub.dead_letters("coder")
    assert dead.attempts == 3 and "nacked" in dead.reason


async def test_nack_delay_holds_the_message_back(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "later")
    msg = await coder.receive(timeout=5)
    assert msg is not None
    await msg.nack(delay=0.3)
    assert await coder.receive(timeout=0) is None
    assert (await hub.mailbox_stats("coder")).delayed == 1
    again = await coder.receive(timeout=5)
    assert again is not None and again.attempt == 2


async def test_nack_without_delay_uses_exponential_backoff(make_hub: Callable[..., Hub]) -> None:
    backoff = agentcomm.Backoff(base=0.05, factor=4.0, max=10.0)
    assert [backoff.delay(n) for n in (1, 2, 3)] == [0.05, 0.2, 0.8]
    async with make_hub(backoff=backoff) as hub:
        planner, coder = await _pair(hub)
        await planner.send("coder", "x", max_attempts=5)
        msg = await coder.receive(timeout=5)
        assert msg is not None
        before = time.time()
        await msg.nack()
        after = time.time()
        (info,) = await hub.pending("coder")
        assert info.state == "delayed"
        assert before + 0.05 <= info.visible_at <= after + 0.05  # first retry waits `base`


async def test_explicit_dead_letter_and_requeue(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "poison")
    msg = await coder.receive(timeout=5)
    assert msg is not None
    await msg.dead_letter("cannot parse")
    (dead,) = await hub.dead_letters("coder")
    assert (dead.reason, dead.attempts) == ("cannot parse", 1)
    assert await hub.requeue_dead_letters("coder", [dead.id]) == 1
    assert await hub.dead_letters("coder") == []
    again = await coder.receive(timeout=5)
    assert again is not None and again.id == msg.id and again.attempt == 1


async def test_settling_twice_raises(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "x")
    msg = await coder.receive(timeout=5)
    assert msg is not None
    await msg.ack()
    with pytest.raises(agentcomm.AlreadySettled):
        await msg.ack()
    with pytest.raises(agentcomm.AlreadySettled):
        await msg.nack()


async def test_extend_keeps_the_lease(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "long job")
    msg = await coder.receive(timeout=5, lease=0.2)
    assert msg is not None
    for _ in range(3):
        await asyncio.sleep(0.1)
        await msg.extend(0.2)
    assert await coder.receive(timeout=0) is None
    await msg.ack()


async def test_ttl_expired_message_is_never_delivered_and_counted(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "stale", ttl=0.05)
    await planner.send("coder", "fresh")
    await asyncio.sleep(0.1)
    msg = await coder.receive(timeout=0)
    assert msg is not None and msg.data == "fresh"
    await msg.ack()
    assert await coder.receive(timeout=0) is None
    await hub.prune()
    assert (await hub.stats()).expired == 1
    assert await hub.queue_depth("coder") == 0


async def test_default_ttl_is_a_day(hub: Hub) -> None:
    planner, _ = await _pair(hub)
    await planner.send("coder", "x")
    await planner.send("coder", "forever", ttl=math.inf)
    infos = await hub.pending("coder")
    assert infos[0].expires_at == pytest.approx(time.time() + 86400, abs=5)
    assert infos[1].expires_at is None


async def test_delay_and_at_hold_delivery(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "delayed", delay=0.2)
    await planner.send("coder", "at", at=datetime.now(UTC) + timedelta(seconds=0.3))
    assert await coder.receive(timeout=0) is None
    assert await hub.queue_depth("coder") == 2
    first = await coder.receive(timeout=5)
    second = await coder.receive(timeout=5)
    assert first is not None and second is not None
    assert [first.data, second.data] == ["delayed", "at"]
    with pytest.raises(agentcomm.ValidationError):
        await planner.send("coder", "x", delay=1, at=time.time())


async def test_idempotency_key_returns_first_id_and_stores_once(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    first = await planner.send("coder", {"v": 1}, idempotency_key="task-17")
    again = await planner.send("coder", {"v": 2}, idempotency_key="task-17")
    assert again == first
    assert await hub.queue_depth("coder") == 1
    msg = await coder.receive(timeout=5)
    assert msg is not None and msg.data == {"v": 1}
    await msg.ack()
    # still deduplicated after the first one was acked
    assert await planner.send("coder", {"v": 3}, idempotency_key="task-17") == first
    assert await hub.queue_depth("coder") == 0
    # the key is per (sender, recipient)
    other = await hub.agent("other")
    assert await other.send("coder", {"v": 4}, idempotency_key="task-17") != first
    assert (await hub.stats()).deduplicated == 2


async def test_idempotency_window_ends(make_hub: Callable[..., Hub]) -> None:
    async with make_hub(retention=agentcomm.Retention(dedupe_window=0.1)) as hub:
        planner, _ = await _pair(hub)
        first = await planner.send("coder", 1, idempotency_key="k")
        await asyncio.sleep(0.15)
        assert await planner.send("coder", 2, idempotency_key="k") != first


async def test_send_many_is_ordered_and_deduplicates_within_batch(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    ids = await planner.send_many(
        [
            agentcomm.Outgoing(to="coder", data=1),
            agentcomm.Outgoing(to="coder", data=2, idempotency_key="k"),
            agentcomm.Outgoing(to="coder", data=3, idempotency_key="k"),
            agentcomm.Outgoing(to="coder", data=4),
        ]
    )
    assert ids[1] == ids[2] and len(set(ids)) == 3
    msgs = await coder.receive_many(10, timeout=5)
    assert [m.data for m in msgs] == [1, 2, 4]
    await coder.ack_many(msgs)
    assert (await hub.mailbox_stats("coder")).in_flight == 0


async def test_send_many_is_atomic_on_unknown_recipient(hub: Hub) -> None:
    planner, _ = await _pair(hub)
    with pytest.raises(agentcomm.UnknownAgent):
        await planner.send_many(
            [agentcomm.Outgoing(to="coder", data=1), agentcomm.Outgoing(to="ghost", data=2)]
        )
    assert await hub.queue_depth("coder") == 0


async def test_ack_many_reports_lost_leases(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send_many([agentcomm.Outgoing(to="coder", data=i) for i in range(3)])
    msgs = await coder.receive_many(3, timeout=5, lease=0.1)
    await asyncio.sleep(0.15)
    redelivered = await coder.receive_many(1, timeout=5)
    with pytest.raises(agentcomm.LeaseLost, match="1 message"):
        await coder.ack_many(msgs)
    await coder.ack_many(redelivered)
    assert (await hub.mailbox_stats("coder")).ready == 0


async def test_queue_depth_pending_and_stats(hub: Hub) -> None:
    planner, coder = await _pair(hub)
    await planner.send("coder", "a", priority=1)
    await planner.send("coder", "b", delay=60)
    await planner.send("coder", "c")
    msg = await coder.receive(timeout=5)
    assert msg is not None and msg.data == "a"
    stats = await hub.mailbox_stats("coder")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (1, 1, 1, 0)
    assert await hub.queue_depth("coder") == 2
    infos = await hub.pending("coder")
    assert sorted(i.state for i in infos) == ["delayed", "in_flight", "ready"]
    assert all(i.size > 0 for i in infos)


async def test_retention_prunes_acked_and_dead_rows(make_hub: Callable[..., Hub]) -> None:
    retention = agentcomm.Retention(acked=0.05, dead=0.05, expired=0.05)
    async with make_hub(retention=retention) as hub:
        planner, coder = await _pair(hub)
        await planner.send_many([agentcomm.Outgoing(to="coder", data=i) for i in range(3)])
        await planner.send("coder", "expires", ttl=0.01)
        a, b, c = await coder.receive_many(3, timeout=5)
        await a.ack()
        await b.dead_letter("no")
        await asyncio.sleep(0.1)
        first = await hub.prune()
        assert first.expired == 1
        await asyncio.sleep(0.1)
        second = await hub.prune()
        assert first.pruned_messages + second.pruned_messages == 3  # acked, dead, expired
        assert await hub.dead_letters("coder") == []
        await c.ack()


async def test_messages_iterator_waits_and_ends_on_close(make_hub: Callable[..., Hub]) -> None:
    hub = await make_hub()
    planner, coder = await _pair(hub)
    seen: list[int] = []

    async def consume() -> None:
        async for msg in coder.messages():
            seen.append(msg.data)
            await msg.ack()

    task = asyncio.create_task(consume())
    for i in range(5):
        await planner.send("coder", i)
    for _ in range(200):
        if len(seen) == 5:
            break
        await asyncio.sleep(0.01)
    await hub.aclose()
    await asyncio.wait_for(task, 5)
    assert seen == [0, 1, 2, 3, 4]


async def test_closed_hub_raises(make_hub: Callable[..., Hub]) -> None:
    hub = await make_hub()
    planner = await hub.agent("planner")
    await hub.aclose()
    await hub.aclose()  # idempotent
    with pytest.raises(agentcomm.HubClosed):
        await planner.send("planner", 1)
    with pytest.raises(agentcomm.HubClosed):
        await hub.open()


@pytest.mark.parametrize(
    "name", ["time-reporter", "wf:role", "a.b.c", "agent@host", "_x", "A1"]
)  # fmt: skip
async def test_agent_names_with_punctuation(hub: Hub, name: str) -> None:
    agent = await hub.agent(name)
    await agent.send(name, "self")
    msg = await agent.receive(timeout=5)
    assert msg is not None and msg.sender == name


@pytest.mark.parametrize("name", ["", "-x", "has space", "a/b", "x" * 129, 5])
async def test_invalid_agent_names(hub: Hub, name: object) -> None:
    with pytest.raises(agentcomm.InvalidName):
        await hub.agent(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"priority": 2**40},
        {"priority": 1.5},
        {"ttl": 0},
        {"ttl": -1},
        {"max_attempts": 0},
        {"delay": -1},
        {"idempotency_key": ""},
        {"type": "bad type"},
    ],
)
async def test_invalid_send_arguments(hub: Hub, kwargs: dict[str, object]) -> None:
    planner, _ = await _pair(hub)
    with pytest.raises(agentcomm.ValidationError):
        await planner.send("coder", 1, **kwargs)  # type: ignore[arg-type]
    assert await hub.queue_depth("coder") == 0


async def test_housekeeping_survives_an_unexpected_error(
    make_hub: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_hub(retention=agentcomm.Retention(interval=0.01)) as hub:
        calls = 0
        passed = asyncio.Event()
        real_prune = hub._backend.prune

        async def flaky_prune(now: float) -> agentcomm.PruneReport:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug in a prune pass")
            passed.set()
            return await real_prune(now)

        monkeypatch.setattr(hub._backend, "prune", flaky_prune)
        await asyncio.wait_for(passed.wait(), 5)
    assert "retention pass failed" in caplog.text
