"""Operator calls on every backend: peek, delete, purge, remove an agent, durable consumers with
their lag, shared-memory namespaces, pools, and (Redis) the prefixes that hold data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import agentcomm

BIG = "x" * 20_000  # stored by reference (over the default AutoPromote threshold)


async def test_peek_lists_payloads_without_consuming(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    worker = await hub.agent("worker")
    await planner.send("worker", {"n": 1}, type="task", metadata={"trace": "a"})
    await planner.send("worker", {"n": 2}, type="task", priority=5)
    await planner.send("worker", {"n": 3}, type="later", delay=3600)
    await planner.send("worker", BIG, type="big")
    leased = await worker.receive(timeout=5)
    assert leased is not None and leased.data == {"n": 2}  # priority first

    peeked = await hub.peek("worker")
    by_type = {(p.type, p.state) for p in peeked}
    assert by_type == {("task", "in_flight"), ("task", "ready"), ("later", "delayed"),
                       ("big", "ready")}  # fmt: skip
    one = next(p for p in peeked if p.data == {"n": 1})
    assert one.sender == "planner" and one.recipient == "worker" and one.state == "ready"
    assert one.metadata == {"trace": "a"} and one.attempt == 0 and one.size > 0
    assert one.max_attempts == hub.max_attempts and one.error is None and one.ref is None
    flying = next(p for p in peeked if p.state == "in_flight")
    assert flying.data == {"n": 2} and flying.attempt == 1
    big = next(p for p in peeked if p.type == "big")
    assert big.data == BIG and big.ref is not None and big.ref.startswith("sha256:")
    assert big.size >= len(BIG)
    assert [p.id for p in await hub.peek("worker", limit=2)] == [p.id for p in peeked[:2]]
    # nothing consumed: the same counts, the same message delivered next
    stats = await hub.mailbox_stats("worker")
    assert (stats.ready, stats.delayed, stats.in_flight) == (2, 1, 1)
    again = await worker.receive(timeout=5)
    assert again is not None and again.data == {"n": 1}


async def test_peek_validates(hub: agentcomm.Hub) -> None:
    with pytest.raises(agentcomm.UnknownAgent):
        await hub.peek("nobody")
    await hub.agent("a")
    with pytest.raises(agentcomm.ValidationError):
        await hub.peek("a", limit=0)


async def test_delete_one_message_in_any_state(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    worker = await hub.agent("worker")
    ready = await planner.send("worker", 1)
    delayed = await planner.send("worker", 2, delay=3600)
    flying_id = await planner.send("worker", 3, priority=9)
    dead_id = await planner.send("worker", BIG, max_attempts=1, priority=8)
    flying = await worker.receive(timeout=5)
    assert flying is not None and flying.id == flying_id
    doomed = await worker.receive(timeout=5)
    assert doomed is not None and doomed.id == dead_id
    await doomed.nack()  # its last attempt: dead-lettered
    assert (await hub.mailbox_stats("worker")).dead == 1

    for message_id in (ready, delayed, flying_id, dead_id):
        assert await hub.delete_message("worker", message_id) is True
        assert await hub.delete_message("worker", message_id) is False
    stats = await hub.mailbox_stats("worker")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    with pytest.raises(agentcomm.LeaseLost):  # its lease went with it
        await flying.ack()
    assert all(r.refcount == 0 for r in await hub.refs.list_refs())
    with pytest.raises(agentcomm.UnknownAgent):
        await hub.delete_message("nobody", ready)


async def test_purge_keeps_dead_letters_unless_asked(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    worker = await hub.agent("worker")
    other = await hub.agent("other")
    for i in range(3):
        await planner.send("worker", i)
    await planner.send("worker", "later", delay=3600)
    await planner.send("worker", "doomed", max_attempts=1, priority=9)
    await planner.send("other", "keep")
    msg = await worker.receive(timeout=5)
    assert msg is not None and msg.data == "doomed"
    await msg.nack()
    assert await worker.receive(timeout=5) is not None  # one in flight
    assert await hub.purge("worker") == 4
    stats = await hub.mailbox_stats("worker")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 1)
    assert await hub.purge("worker", dead_letters=True) == 1
    assert (await hub.mailbox_stats("worker")).dead == 0
    assert (await hub.mailbox_stats("other")).ready == 1
    got = await other.receive(timeout=5)
    assert got is not None and got.data == "keep"
    with pytest.raises(agentcomm.ValidationError):
        await hub.purge("worker", dead_letters="yes")  # type: ignore[arg-type]


async def test_remove_agent(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    await hub.agent("gone")
    await planner.send("gone", BIG)
    await planner.send("gone", "x", max_attempts=1)
    await planner.schedule("gone", "tick", every=60)
    kept = await planner.schedule("planner", "tick", every=60)
    assert await hub.remove_agent("gone") is True
    assert await hub.remove_agent("gone") is False
    assert [a.name for a in await hub.agents()] == ["planner"]
    assert [s.id for s in await hub.schedules()] == [kept]
    with pytest.raises(agentcomm.UnknownAgent):
        await hub.mailbox_stats("gone")
    with pytest.raises(agentcomm.UnknownAgent):
        await planner.send("gone", "again")
    assert all(r.refcount == 0 for r in await hub.refs.list_refs())
    # registered again, it starts empty
    await hub.agent("gone")
    stats = await hub.mailbox_stats("gone")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


async def test_consumers_report_position_lag_and_pending(hub: agentcomm.Hub) -> None:
    assert await hub.consumers() == []
    planner = await hub.agent("planner")
    reader = await hub.agent("reader")
    sub = await reader.subscribe("jobs.>", durable="audit", start="all")
    other = await reader.subscribe("other.*", durable="other", types=["t"], start="new")
    for i in range(4):
        await planner.publish("jobs.build", i)
    await planner.publish("other.x", 0, type="t")
    await planner.publish("other.x", 0, type="skip")
    msg = await sub.next(timeout=5)
    assert msg is not None
    infos = {c.name: c for c in await hub.consumers()}
    assert set(infos) == {"audit", "other"}
    audit = infos["audit"]
    assert audit.pattern == "jobs.>" and audit.senders is None and audit.types is None
    assert audit.head >= 6 and audit.position >= 1
    # what is left for it: the records after its position that match (the subscription may
    # have prefetched, so count what it holds as pending or behind)
    assert audit.lag + audit.pending >= 3 and audit.lag <= 3 and audit.pending >= 1
    o = infos["other"]
    assert o.types == ["t"] and o.lag == 1 and o.pending == 0 and o.lost == 0
    await msg.ack()
    await sub.aclose()
    await other.aclose()


async def test_namespaces(hub: agentcomm.Hub) -> None:
    assert await hub.namespaces() == []
    await hub.memory("plans").put("a", {"x": 1})
    await hub.memory("plans").put("b", "yy")
    await hub.memory("plans").put("a", {"x": 2})
    agent = await hub.agent("w")
    await agent.memory().put("k", 1)  # its private namespace
    await agent.memory("notes").put("k", 1)
    spaces = await hub.namespaces()
    assert [(n.namespace, n.owner) for n in spaces] == [("notes", None), ("plans", None), ("", "w")]
    plans = spaces[1]
    assert plans.keys == 2 and plans.writes == 3 and plans.conflicts == 0 and plans.bytes > 0


async def test_pools_listed(hub: agentcomm.Hub) -> None:
    assert await hub.pools() == []
    pool = await hub.pool("crew")
    await pool.join("run-1", agent="coder", topics=["code"])
    await hub.pool("other")
    snaps = await hub.pools()
    assert [s.name for s in snaps] == ["crew", "other"]
    assert [m.run for m in snaps[0].members] == ["run-1"] and snaps[0].counts["members"] == 1


async def test_prefixes(backend_name: str, fresh_url: Callable[[], str]) -> None:
    url = fresh_url()
    async with agentcomm.connect(url) as hub:
        if backend_name != "redis":
            with pytest.raises(agentcomm.ConfigurationError, match="redis"):
                await hub.prefixes()
            return
        own = url.rsplit("prefix=", 1)[1]
        planner = await hub.agent("planner")
        await planner.publish("agents", 1)  # a topic named like a marker key: no prefix
        await planner.send("planner", 1)
        found = await hub.prefixes()
        assert found[own] > 0
        assert not any(p.startswith(own + ":") for p in found)
    # an empty prefix on the same server holds nothing
    async with agentcomm.connect(fresh_url()) as empty:
        found = await empty.prefixes()
        assert own in found


async def test_hub_subscribe_observes_without_an_agent(hub: agentcomm.Hub) -> None:
    async with hub.subscribe("jobs.>", types=["t"]) as sub:
        planner = await hub.agent("planner")
        await planner.publish("jobs.a", 1, type="t")
        await planner.publish("jobs.a", 2, type="other")
        await planner.publish("jobs.b", 3, type="t")
        got = [await sub.next(timeout=5) for _ in range(2)]
    assert [(m.topic, m.data, m.sender) for m in got if m is not None] == [
        ("jobs.a", 1, "planner"),
        ("jobs.b", 3, "planner"),
    ]
    assert [a.name for a in await hub.agents()] == ["planner"]


async def test_topic_stats_count_retained_records(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    for i in range(3):
        await planner.publish("jobs.a", i)
    await planner.publish("jobs.b", 0)
    stats = {t.name: t for t in await hub.topics()}
    assert stats["jobs.a"].retained == 3 and stats["jobs.b"].retained == 1
    assert (await hub.topic_stats("jobs.a")).retained == 3
    assert (await hub.topic_stats("nothing.here")).retained == 0
