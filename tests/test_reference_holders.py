"""References held by what stores them: messages, replies, schedules, shared memory, topics;
and the tier policy that decides what is stored by reference."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest

import agentcomm
from agentcomm import AutoPromote, ValidationError


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- lifetime: holders release -------------------------------------------------------------------


async def test_ack_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", "one")
        await a.send("b", "one")
        refs = await hub.refs.list_refs()
        assert len(refs) == 1 and refs[0].refcount == 2
        first, second = await b.receive_many(2, timeout=5)
        await first.ack()
        assert (await hub.refs.list_refs())[0].refcount == 1
        await b.ack_many([second])
        assert await hub.refs.list_refs() == []


async def test_ack_releases_when_acked_rows_are_kept(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    retention = agentcomm.Retention(acked=3600)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", "payload")
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.ack()
        assert await hub.refs.list_refs() == []


async def test_expiry_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        await hub.agent("b")
        await a.send("b", "short-lived", ttl=0.01)
        assert len(await hub.refs.list_refs()) == 1
        await asyncio.sleep(0.05)
        assert (await hub.prune()).expired == 1
        assert await hub.refs.list_refs() == []


async def test_dead_letters_hold_until_pruned(make_hub: Callable[..., agentcomm.Hub]) -> None:
    retention = agentcomm.Retention(dead=0.01)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", {"doomed": True})
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("no")
        [dead] = await hub.dead_letters("b")
        assert dead.data == {"doomed": True}
        assert len(await hub.refs.list_refs()) == 1
        await asyncio.sleep(0.05)
        assert (await hub.prune()).pruned_messages == 1
        assert await hub.refs.list_refs() == []


async def test_requeued_dead_letter_still_resolves(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", [1, 2, 3])
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("later")
        assert await hub.requeue_dead_letters("b") == 1
        again = await b.receive(timeout=5)
        assert again is not None and again.data == [1, 2, 3]
        await again.ack()
        assert await hub.refs.list_refs() == []


async def test_shared_memory_holds_and_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        kv = hub.memory("ns")
        entry = await kv.put("plan", {"v": 1})
        assert entry.payload_ref is not None and entry.value == {"v": 1}
        got = await kv.get("plan")
        assert got is not None and got.value == {"v": 1} and got.payload_ref is not None
        await kv.put("plan", {"v": 1})  # same content: still held, by the new version
        assert [r.refcount for r in await hub.refs.list_refs()] == [1]
        await kv.put("plan", {"v": 2})  # overwrite releases the old value
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'{"v":2}')]
        await kv.delete("plan")
        assert await hub.refs.list_refs() == []
        await kv.put("tmp", "x", ttl=0.01)
        await asyncio.sleep(0.05)
        assert await kv.get("tmp") is None  # expiry releases
        assert await hub.refs.list_refs() == []


async def test_shared_memory_history_holds_past_versions(hub: agentcomm.Hub) -> None:
    kv = hub.memory("hist", history=2)
    big = ["x" * 20_000]
    await kv.put("k", big)
    await kv.put("k", "small")
    [now, before] = await kv.history("k")
    assert (now.value, before.value) == ("small", big)
    await kv.put("k", "smaller")  # the big version leaves the kept history
    assert await hub.refs.list_refs() == []


async def test_watch_sees_values_stored_by_reference(hub: agentcomm.Hub) -> None:
    kv = hub.memory("watched")
    big = {"blob": "y" * 20_000}
    # include_initial: the put is seen whether it lands before or after the watch starts
    watch = kv.watch("*", include_initial=True)
    first = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0.05)
    await kv.put("k", big)
    change = await asyncio.wait_for(first, 10)
    assert (change.kind, change.value) == ("put", big)
    await watch.aclose()


# --- the tier policy -----------------------------------------------------------------------------


async def _tier(hub: agentcomm.Hub, type: str, data: Any) -> agentcomm.Ref | None:
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", data, type=type)
    msg = await b.receive(timeout=5)
    assert msg is not None and msg.data == data and msg.type == type
    await msg.ack()
    return msg.payload_ref


async def test_policy_table(make_hub: Callable[..., agentcomm.Hub]) -> None:
    policies = {
        "session_state": "reference",
        "control": "value",
        "tool_result": AutoPromote(threshold=100),
    }
    async with make_hub(policies=policies, default_policy=AutoPromote(enabled=False)) as hub:
        tiny, big = "s", "b" * 50_000
        state = await _tier(hub, "session_state", tiny)
        assert state is not None and state.size == len(b'"s"')
        assert await _tier(hub, "control", big) is None
        assert await _tier(hub, "tool_result", "x" * 90) is None  # 92 bytes encoded
        assert await _tier(hub, "tool_result", "x" * 99) is not None  # 101 bytes
        assert await _tier(hub, "other", big) is None  # auto-promotion disabled: by value
        assert await hub.refs.list_refs() == []  # and nothing was stored for it
        assert (await hub.refs.stats()).total_refs == 2


async def test_default_policy_promotes_above_10_kib(hub: agentcomm.Hub) -> None:
    assert await _tier(hub, "message", "x" * (10_240 - 2)) is None  # exactly 10 KiB encoded
    ref = await _tier(hub, "message", "x" * (10_240 - 1))
    assert ref is not None and ref.size == 10_241


async def test_value_default_never_promotes(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="value") as hub:
        assert await _tier(hub, "message", "x" * 1_000_000) is None
        assert (await hub.refs.stats()).total_refs == 0


async def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValidationError):
        agentcomm.connect("memory://", policies={"t": "sometimes"})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        agentcomm.connect("memory://", default_policy="by-value")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AutoPromote(threshold=-1)


# --- transparent application ---------------------------------------------------------------------


async def test_five_megabytes_sent_and_received_transparently(hub: agentcomm.Hub) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    blob = os.urandom(5 * 1024 * 1024)
    doc = {"rows": [{"i": i, "text": "lorem ipsum " * 8} for i in range(40_000)]}
    await a.send("b", blob, type="dataset")
    await a.send("b", doc, type="dataset")
    first, second = await b.receive_many(2, timeout=10)
    assert first.data == blob and second.data == doc
    assert first.payload_ref is not None and first.payload_ref.size == len(blob)
    assert second.payload_ref is not None and second.payload_ref.compression == "zstd"
    await b.ack_many([first, second])
    assert await hub.refs.list_refs() == []


async def test_one_payload_to_ten_recipients_is_stored_once(hub: agentcomm.Hub) -> None:
    sender = await hub.agent("sender")
    names = [f"r{i}" for i in range(10)]
    for name in names:
        await hub.agent(name)
    payload = os.urandom(1_000_000)
    await sender.send_many([agentcomm.Outgoing(to=n, data=payload) for n in names])
    stats = await hub.refs.stats()
    assert (stats.total_refs, stats.stored_bytes, stats.dedupe_hits) == (1, len(payload), 0)
    assert [p.size for p in await hub.pending("r0")] == [len(payload)]
    assert [r.refcount for r in await hub.refs.list_refs()] == [10]
    for name in names:
        agent = await hub.agent(name)
        msg = await agent.receive(timeout=5)
        assert msg is not None and msg.data == payload
        await msg.ack()
    assert await hub.refs.list_refs() == []


async def test_send_many_from_a_generator_keeps_values_apart(hub: agentcomm.Hub) -> None:
    a = await hub.agent("a")
    b = await hub.agent("b")
    await a.send_many(
        agentcomm.Outgoing(to="b", data={"n": n, "pad": "x" * 20_000}) for n in range(20)
    )
    got = await b.receive_many(20, timeout=5)
    assert sorted(m.data["n"] for m in got) == list(range(20))
    assert all(m.payload_ref is not None for m in got)


async def test_request_and_reply_by_reference(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")

        async def answer() -> None:
            msg = await answerer.receive(timeout=5)
            assert msg is not None and msg.payload_ref is not None
            assert await msg.reply({"answer": msg.data["q"] * 2})

        task = asyncio.create_task(answer())
        reply = await asker.request("answerer", {"q": 21}, timeout=10)
        await task
        assert reply.data == {"answer": 42}
        assert await hub.refs.list_refs() == []


async def test_cancelled_request_leaves_no_reference(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")
        request = asyncio.create_task(asker.request("answerer", "q?", timeout=30))
        msg = await answerer.receive(timeout=5)
        assert msg is not None
        assert await msg.reply("an answer nobody may read")
        request.cancel()  # whether it took the reply first or not, nothing stays referenced
        with contextlib.suppress(asyncio.CancelledError):
            await request
        closing = [t for t in hub._ctx.tasks if "close_slot" in repr(t.get_coro())]
        await asyncio.gather(*closing)
        assert await hub.refs.list_refs() == []


async def test_cancelled_send_leaves_no_reference(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        await hub.agent("b")
        sending = asyncio.create_task(a.send("b", os.urandom(3_000_000)))
        await asyncio.sleep(0)  # let it start hashing and storing
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        assert sending.cancelled()
        # the store finishes in the background, then its reference is released: an empty
        # list only counts once the store has happened
        for _ in range(500):
            stored = (await hub.refs.stats()).total_refs >= 1
            if stored and not await hub.refs.list_refs():
                break
            await asyncio.sleep(0.01)
        assert (await hub.refs.stats()).total_refs == 1
        assert await hub.refs.list_refs() == []
        assert await hub.queue_depth("b") == 0


async def test_late_reply_by_reference_is_not_kept(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")
        with pytest.raises(agentcomm.RequestTimeout):
            await asker.request("answerer", "q?", timeout=0.05)
        msg = await answerer.receive(timeout=0)
        assert msg is None  # the request expired with its timeout
        await hub.prune()
        assert await hub.refs.list_refs() == []


async def test_schedule_by_reference(make_hub: Callable[..., agentcomm.Hub]) -> None:
    fast = agentcomm.Limits(min_schedule_period=0.01)
    async with make_hub(default_policy="reference", limits=fast) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        sched = await a.schedule("b", {"tick": True}, every=0.05)
        assert [r.refcount for r in await hub.refs.list_refs()] == [1]  # the schedule holds it
        msg = await b.receive(timeout=10)
        assert msg is not None and msg.data == {"tick": True} and msg.payload_ref is not None
        await msg.ack()
        assert await hub.cancel_schedule(sched)
        for m in await b.receive_many(100, timeout=0):
            await m.ack()
        assert await hub.refs.list_refs() == []


async def test_put_that_conflicts_keeps_nothing(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        kv = hub.memory("ns")
        await kv.put("k", "first")
        with pytest.raises(agentcomm.VersionConflict):
            await kv.put("k", "second", expected_version=0)
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'"first"')]


async def test_unknown_recipient_keeps_nothing(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        with pytest.raises(agentcomm.UnknownAgent):
            await a.send("nobody", "payload")
        assert await hub.refs.list_refs() == []


# --- topics ------------------------------------------------------------------------------------


async def test_publish_by_reference_reaches_every_kind_of_subscriber(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    big = {"table": ["row " * 10] * 2_000}  # ~100 KB: promoted by the default policy
    async with make_hub() as hub, make_hub() as other:
        pub = await hub.agent("pub")
        live = await (await hub.agent("here")).subscribe("data.>")
        remote = await (await other.agent("there")).subscribe("data.>")
        durable = await (await hub.agent("keeper")).subscribe("data.>", durable="d", start="all")
        result = await pub.publish("data.tables", big)
        refs = await hub.refs.list_refs()
        assert len(refs) == 1 and refs[0].refcount == 1  # one store, held by the log record
        for sub in (live, remote, durable):
            msg = await sub.next(timeout=10)
            assert msg is not None and msg.data == big and msg.sequence == result.sequence
            await msg.ack()
        for sub in (live, remote, durable):
            await sub.aclose()


async def test_pruned_topic_records_release_their_payloads(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    retention = agentcomm.Retention(topic_max_count=1)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        pub = await hub.agent("pub")
        for n in range(3):
            await pub.publish("t", {"n": n})
        await hub.prune()
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'{"n":2}')]
