"""Agent pools: the conformance suite, over every backend."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentcomm
from agentcomm import EventFilter, PoolConfig, ToAgent, ToPool, ToRun, ToTopic
from agentcomm._backends import open_backend
from agentcomm._pool_records import ConfigSpec, FilterSpec, MemberRecord, WakeSpec
from processes import finish, spawn


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def depth(hub: agentcomm.Hub, run: str) -> int:
    return await hub.queue_depth(run)


async def board(hub: agentcomm.Hub, config: PoolConfig | None = None) -> agentcomm.Pool:
    """A pool with a lead and three critics of two agents."""
    pool = await hub.pool("review", config=config)
    await pool.join("lead@r0", agent="lead", topics=["plan"], policy_refs=["pii-ok"])
    await pool.join("critic@r1", agent="critic", topics=["code", "style"], policy_refs=["pii-ok"])
    await pool.join("critic@r2", agent="critic", topics=["code"])
    await pool.join("fixer@r3", agent="fixer", topics=["style"], policy_refs=["pii-ok"])
    return pool


# --- opening ----------------------------------------------------------------------------------


async def test_open_is_idempotent_and_a_different_config_conflicts(hub: agentcomm.Hub) -> None:
    config = PoolConfig(required_policy_refs=("b", "a"), include_sender_in_broadcast=True)
    pool = await hub.pool("p", config=config)
    assert pool.config == PoolConfig(
        required_policy_refs=("a", "b"), include_sender_in_broadcast=True
    )
    again = await hub.pool(
        "p",
        config=PoolConfig(required_policy_refs=("a", "b", "a"), include_sender_in_broadcast=True),
    )
    assert again.config == pool.config
    assert (await hub.pool("p")).config == pool.config  # config=None attaches
    with pytest.raises(agentcomm.PoolConfigConflict):
        await hub.pool("p", config=PoolConfig())
    records = await pool.records()
    assert [r.kind for r in records] == ["opened"]  # written once, at creation
    assert records[0].seq == 1 and records[0].config == pool.config
    assert (await hub.pool("q")).config == PoolConfig()


async def test_names_and_arguments_are_checked_before_anything_is_stored(
    hub: agentcomm.Hub,
) -> None:
    with pytest.raises(agentcomm.InvalidName):
        await hub.pool("bad name")
    with pytest.raises(agentcomm.ValidationError):
        await hub.pool("p", config="strict")  # type: ignore[arg-type]
    pool = await hub.pool("p")
    with pytest.raises(agentcomm.InvalidName):
        await pool.join("run 1", agent="a")
    with pytest.raises(agentcomm.InvalidName):
        await pool.join("r1", agent="a", topics=["no spaces"])
    with pytest.raises(agentcomm.ValidationError):
        await pool.join("r1", agent="a", topics="code")
    await pool.join("r1", agent="a")
    bad_sends: list[dict[str, Any]] = [
        {"to": "r1"},
        {"to": ToRun("r 1")},
        {"to": ToPool(), "type": ""},
        {"to": ToPool(), "metadata": {"pool.seq": 3}},
        {"to": ToPool(), "ttl": math.nan},
        {"to": ToPool(), "ttl": "1"},
        {"to": ToPool(), "idempotency_key": ""},
        {"to": ToPool(), "data": float("nan")},
        {"to": ToPool(), "max_attempts": 0},
    ]
    for kwargs in bad_sends:
        with pytest.raises(agentcomm.ValidationError):
            await pool.send("r1", **kwargs)
    with pytest.raises(agentcomm.ValidationError):
        await pool.wait_for("r1", EventFilter(kinds={"nonsense"}))
    with pytest.raises(agentcomm.ValidationError):
        await pool.wait_for("r1", EventFilter(metadata={"k": [1]}))
    with pytest.raises(agentcomm.ValidationError):
        await pool.wait_for("r1", EventFilter(), resume="everything")
    with pytest.raises(agentcomm.ValidationError):
        await pool.wait_for("r1", EventFilter(), timeout=-1)
    with pytest.raises(agentcomm.ValidationError):
        await pool.wait_for("r1", {"kinds": ["message"]})  # type: ignore[arg-type]
    assert [r.kind for r in await pool.records()] == ["opened", "member_joined"]


# --- membership -------------------------------------------------------------------------------


async def test_a_run_is_an_agent_and_gets_exactly_the_data_sent(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    assert {a.name for a in await hub.agents()} >= {"lead@r0", "critic@r1", "critic@r2"}
    receipt = await pool.send(
        "lead@r0", to=ToRun("critic@r1"), data={"diff": [1, 2]}, type="review",
        metadata={"pr": 17},
    )  # fmt: skip
    assert receipt.status == "delivered" and receipt.delivered_to == ("critic@r1",)
    critic = await hub.agent("critic@r1")
    msg = await critic.receive(timeout=5)
    assert msg is not None
    assert msg.data == {"diff": [1, 2]} and msg.type == "review" and msg.sender == "lead@r0"
    assert msg.metadata == {
        "pool.name": "review", "pool.seq": receipt.seq, "pool.sender": "lead@r0",
        "pool.message_id": receipt.message_id, "pr": 17,
    }  # fmt: skip
    await msg.ack()


async def test_join_again_updates_and_leave_removes(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    await pool.join("critic@r2", agent="critic", topics=["docs"])
    snap = await pool.snapshot()
    assert {m.run: m.topics for m in snap.members}["critic@r2"] == ("docs",)
    assert snap.topics == ("code", "docs", "plan", "style")
    with pytest.raises(agentcomm.ValidationError):
        await pool.join("critic@r2", agent="fixer")  # a run belongs to one agent
    await pool.leave("critic@r2")
    with pytest.raises(agentcomm.NotAMember):
        await pool.leave("critic@r2")
    receipt = await pool.send("lead@r0", to=ToTopic("docs"))
    assert receipt.status == "failed" and "topic 'docs'" in (receipt.reason or "")
    with pytest.raises(agentcomm.NotAMember):
        await pool.send("critic@r2", to=ToPool())
    kinds = [r.kind for r in await pool.records(after=5)]
    assert kinds == ["member_joined", "member_left", "message"]


# --- addressing -------------------------------------------------------------------------------


async def test_every_addressing_mode(hub: agentcomm.Hub) -> None:
    pool = await board(hub)

    async def to(address: Any, **kwargs: Any) -> tuple[str, ...]:
        receipt = await pool.send("lead@r0", to=address, **kwargs)
        assert receipt.status == "delivered", receipt
        return receipt.delivered_to

    assert await to(ToRun("critic@r2")) == ("critic@r2",)
    assert await to(ToAgent("critic")) == ("critic@r1", "critic@r2")
    assert await to(ToTopic("code")) == ("critic@r1", "critic@r2")
    assert await to(ToTopic("style")) == ("critic@r1", "fixer@r3")
    assert await to(ToPool()) == ("critic@r1", "critic@r2", "fixer@r3")  # not the sender
    # a recipient must hold every policy ref of the message: the others are not addressed
    assert await to(ToTopic("code"), policy_refs=["pii-ok"]) == ("critic@r1",)
    assert await to(ToPool(), policy_refs=["pii-ok"]) == ("critic@r1", "fixer@r3")
    assert await depth(hub, "critic@r1") == 6
    assert await depth(hub, "critic@r2") == 4
    assert await depth(hub, "fixer@r3") == 3
    assert await depth(hub, "lead@r0") == 0


async def test_broadcast_includes_the_sender_when_configured(hub: agentcomm.Hub) -> None:
    pool = await board(hub, PoolConfig(include_sender_in_broadcast=True))
    receipt = await pool.send("lead@r0", to=ToPool())
    assert receipt.delivered_to == ("critic@r1", "critic@r2", "fixer@r3", "lead@r0")


async def test_receipts_fail_closed(hub: agentcomm.Hub) -> None:
    pool = await board(hub, PoolConfig(required_policy_refs=("pii-ok",)))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": ToRun("ghost@r9"), "policy_refs": ["pii-ok"]}, "run 'ghost@r9'"),
        ({"to": ToAgent("ghost"), "policy_refs": ["pii-ok"]}, "agent 'ghost'"),
        ({"to": ToTopic("nothing"), "policy_refs": ["pii-ok"]}, "topic 'nothing'"),
        ({"to": ToRun("critic@r1")}, "required policy refs: pii-ok"),
        ({"to": ToRun("critic@r2"), "policy_refs": ["pii-ok"]}, "holds every policy ref"),
    ]
    for kwargs, why in cases:
        receipt = await pool.send("lead@r0", data="x", **kwargs)
        assert receipt.status == "failed" and receipt.delivered_to == ()
        assert why in (receipt.reason or ""), receipt.reason
    expired = await pool.send("lead@r0", to=ToPool(), policy_refs=["pii-ok"], ttl=0)
    assert expired.status == "expired" and expired.delivered_to == ()
    assert (await pool.send("lead@r0", to=ToPool(), policy_refs=["pii-ok"], ttl=-5)).status == (
        "expired"
    )
    for run in ("critic@r1", "critic@r2", "fixer@r3"):
        assert await depth(hub, run) == 0  # nothing enqueued by a failed or expired send
    snap = await pool.snapshot()
    assert snap.counts["messages"] == 7 and snap.counts["failed"] == 5
    assert snap.counts["expired"] == 2
    messages = [r for r in await pool.records() if r.kind == "message"]
    assert [r.receipt.status for r in messages if r.receipt] == ["failed"] * 5 + ["expired"] * 2


async def test_an_idempotency_key_returns_the_first_receipt(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    first = await pool.send("lead@r0", to=ToTopic("code"), data=1, idempotency_key="rev-17")
    again = await pool.send("lead@r0", to=ToPool(), data=2, idempotency_key="rev-17")
    assert again.duplicate and not first.duplicate
    assert (again.message_id, again.delivered_to, again.seq) == (
        first.message_id, first.delivered_to, first.seq,
    )  # fmt: skip
    assert await depth(hub, "critic@r1") == 1 and await depth(hub, "fixer@r3") == 0
    assert await pool.receipt("rev-17") == first
    assert await pool.receipt(first.message_id) == first
    assert await pool.receipt("unknown") is None
    assert (await pool.snapshot()).counts["duplicates"] == 1
    # keys are per pool
    other = await hub.pool("other")
    await other.join("lead@r0", agent="lead")
    await other.join("x@r1", agent="x")
    assert not (await other.send("lead@r0", to=ToPool(), idempotency_key="rev-17")).duplicate


async def test_a_sender_must_be_a_member(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    with pytest.raises(agentcomm.NotAMember):
        await pool.send("stranger@r1", to=ToPool())
    with pytest.raises(agentcomm.NotAMember):
        await pool.emit("stranger@r1", "verdict")
    with pytest.raises(agentcomm.NotAMember):
        await pool.wait_for("stranger@r1", EventFilter())


# --- wakes ------------------------------------------------------------------------------------


async def test_a_wake_fires_on_a_later_event_not_on_history(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    await pool.emit("critic@r1", "verdict", {"ok": True})
    wake = await pool.wait_for("lead@r0", EventFilter(types={"verdict"}), timeout=30)
    assert wake.status == "registered"
    assert await pool.wake(wake.id) is not None
    await asyncio.sleep(0)
    await wake.refresh()
    assert wake.status == "registered"  # the earlier verdict does not count
    event = await pool.emit("critic@r2", "verdict", {"ok": False})
    result = await asyncio.wait_for(wake.result(), 10)
    assert result.status == "triggered" and wake.trigger_seq == event.seq
    assert result.record is not None and result.record.seq == event.seq
    assert result.record.data is None  # resume="envelope" withholds the payload
    kinds = [r.kind for r in await pool.records(after=event.seq)]
    assert kinds == ["wake_triggered"]


async def test_replay_fires_on_the_first_matching_record_in_the_log(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    first = await pool.emit("critic@r1", "verdict", {"n": 1})
    await pool.emit("critic@r2", "verdict", {"n": 2})
    wake = await pool.wait_for(
        "lead@r0", EventFilter(types={"verdict"}), replay=True, resume="full"
    )
    assert wake.status == "triggered" and wake.trigger_seq == first.seq
    result = await wake.result()
    assert result.record is not None and result.record.data == {"n": 1}


async def test_a_wake_times_out_with_nobody_watching(url: str) -> None:
    clock = FakeClock()
    async with agentcomm.connect(url, clock=clock) as hub:
        pool = await board(hub)
        wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}), timeout=30)
    clock.now += 31  # the registering hub is gone; another process looks later
    async with agentcomm.connect(url, clock=clock) as hub:
        pool = await hub.pool("review")
        found = await pool.wake(wake.id)
        assert found is not None and found.status == "timed_out"
        assert (await found.result()).status == "timed_out"
        assert (await pool.records())[-1].kind == "wake_timed_out"
        # an event after the deadline does not trigger it
        await pool.emit("critic@r1", "verdict")
        assert (await pool.wake(wake.id)).status == "timed_out"  # type: ignore[union-attr]


async def test_looking_a_wake_up_times_out_the_due_wakes_in_registration_order(url: str) -> None:
    # at the store, with no hub whose pass could time them out first: whether the wake looked
    # up is due or not, the pool's due wakes time out at that call, oldest registration first
    backend = open_backend(url, agentcomm.Retention())
    await backend.open()
    try:
        store = backend.pools
        assert store is not None
        config = msgspec.json.encode(ConfigSpec([], False, []))
        await store.pool_open("pl", config, config, now=100.0)
        for run in ("r1", "r2", "r3"):
            await store.pool_join("pl", MemberRecord(run, "a", [], [], 100.0), now=100.0)
        for wake_id, run, key, deadline in [
            ("w1", "r3", None, 105.0), ("w2", "r1", "k:3 \u00e9", 200.0), ("w3", "r2", None, 105.0)
        ]:  # fmt: skip
            spec = WakeSpec(
                wake_id, "pl", run, FilterSpec(), key, False, "envelope", 100.0, deadline
            )
            await store.pool_wait_for(spec, now=100.0)
        found = await store.pool_wake("pl", wake_id=None, key="k:3 \u00e9", now=110.0)
        assert found is not None and (found.id, found.status) == ("w2", "registered")
        records = (await store.pool_records("pl", 0, limit=100)).records
        timed_out = [(r.wake_id, r.at) for r in records if r.kind == "wake_timed_out"]
        assert timed_out == [("w1", 110.0), ("w3", 110.0)]
    finally:
        await backend.close()


async def test_result_returns_at_the_timeout(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}), timeout=0.2)
    result = await asyncio.wait_for(wake.result(), 10)
    assert result == agentcomm.WakeResult("timed_out", None)
    zero = await pool.wait_for("lead@r0", EventFilter(), timeout=0)
    assert zero.status == "timed_out"


async def test_an_idempotency_key_returns_the_existing_wake(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    wake = await pool.wait_for("lead@r0", EventFilter(), idempotency_key="w-1", timeout=60)
    await pool.emit("critic@r1", "verdict")
    again = await pool.wait_for("lead@r0", EventFilter(kinds={"message"}), idempotency_key="w-1")
    assert again.id == wake.id and again.status == "triggered"
    by_key = await pool.wake("w-1")
    assert by_key is not None and by_key.id == wake.id
    assert await pool.wake("nope") is None


async def test_cancel_and_leave(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}))
    assert await wake.cancel() is True and wake.status == "cancelled"
    assert (await wake.result()).status == "cancelled"
    assert await wake.cancel() is False
    fired = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}))
    await pool.emit("critic@r1", "verdict")
    assert await fired.cancel() is False and fired.status == "triggered"  # never overwritten
    left = await pool.wait_for("critic@r2", EventFilter(kinds={"event"}))
    await pool.leave("critic@r2")
    await left.refresh()
    assert left.status == "cancelled"
    assert (await pool.snapshot()).pending_wakes == ()


async def test_filters(hub: agentcomm.Hub) -> None:
    pool = await board(hub)

    async def fires(f: EventFilter, action: Callable[[], Any], run: str = "lead@r0") -> bool:
        wake = await pool.wait_for(run, f)
        await action()
        status = await wake.refresh()
        if status == "registered":
            await wake.cancel()
        return status == "triggered"

    def send(sender: str, to: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: pool.send(sender, to=to, **kwargs)

    code = send("critic@r1", ToTopic("code"), type="review", metadata={"pr": 7, "draft": False})
    assert await fires(EventFilter(kinds={"message"}), code)
    assert not await fires(EventFilter(kinds={"event"}), code)
    assert await fires(EventFilter(senders={"critic@r1"}), code)
    assert not await fires(EventFilter(senders={"critic@r2"}), code)
    assert await fires(EventFilter(runs={"critic@r1"}), code)
    assert await fires(EventFilter(agents={"critic"}), code)
    assert not await fires(EventFilter(agents={"lead"}), code)
    assert await fires(EventFilter(types={"review"}), code)
    assert await fires(EventFilter(topics={"code"}), code)
    assert not await fires(EventFilter(topics={"style"}), code)
    assert await fires(EventFilter(metadata={"pr": 7}), code)
    assert await fires(EventFilter(metadata={"pr": 7, "draft": False}), code)
    assert not await fires(EventFilter(metadata={"pr": "7"}), code)
    assert not await fires(EventFilter(metadata={"draft": 0}), code)
    assert not await fires(EventFilter(metadata={"missing": None}), code)
    # to_me: a message delivered to the waiting run
    assert await fires(EventFilter(to_me=True), code, run="critic@r2")
    assert not await fires(EventFilter(to_me=True), code, run="fixer@r3")
    assert not await fires(
        EventFilter(to_me=True), lambda: pool.emit("critic@r1", "x"), run="critic@r2"
    )
    # events, joins and leaves
    emit = lambda: pool.emit("fixer@r3", "verdict", metadata={"ok": True})  # noqa: E731
    assert await fires(EventFilter(kinds={"event"}, types={"verdict"}), emit)
    assert await fires(EventFilter(metadata={"ok": True}), emit)
    join = lambda: pool.join("critic@r5", agent="critic")  # noqa: E731
    assert await fires(EventFilter(kinds={"member_joined"}, agents={"critic"}), join)
    leave = lambda: pool.leave("critic@r5")  # noqa: E731
    assert await fires(EventFilter(kinds={"member_left"}, runs={"critic@r5"}), leave)


async def test_observe_policy_refs_hide_runs_from_wakes_and_watch_filters(
    hub: agentcomm.Hub,
) -> None:
    pool = await board(hub, PoolConfig(observe_policy_refs=("pii-ok",)))
    wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}))
    await pool.emit("critic@r2", "verdict")  # critic@r2 lacks pii-ok: invisible
    assert await wake.refresh() == "registered"
    seen = await pool.emit("critic@r1", "verdict")
    assert await wake.refresh() == "triggered" and wake.trigger_seq == seen.seq
    records = []
    async for record in pool.watch(after=0, filter=EventFilter(kinds={"event"})):
        records.append(record)
        if record.seq == seen.seq:
            break
    assert [r.run for r in records] == ["critic@r1"]


# --- reading ----------------------------------------------------------------------------------


async def test_snapshot_and_records(hub: agentcomm.Hub) -> None:
    pool = await board(hub)
    wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}))
    await pool.send("lead@r0", to=ToTopic("code"), data={"secret": 1})
    snap = await pool.snapshot()
    assert [m.run for m in snap.members] == ["critic@r1", "critic@r2", "fixer@r3", "lead@r0"]
    assert snap.topics == ("code", "plan", "style")
    assert [w.id for w in snap.pending_wakes] == [wake.id]
    assert snap.cursor == 7 and snap.counts["records"] == 7 and snap.counts["members"] == 4
    records = await pool.records()
    assert [r.seq for r in records] == list(range(1, 8))
    message = records[-1]
    assert message.kind == "message" and message.to == ToTopic("code")
    assert message.data == {"secret": 1} and message.agent == "lead"
    assert message.receipt is not None and message.receipt.delivered_to == (
        "critic@r1",
        "critic@r2",
    )
    # a run that neither sent nor received it does not see the payload
    assert (await pool.records(after=6, as_run="fixer@r3"))[0].data is None
    assert (await pool.records(after=6, as_run="critic@r2"))[0].data == {"secret": 1}
    assert [r.seq for r in await pool.records(after=2, limit=2)] == [3, 4]


async def test_watch_blocks_for_records_from_another_hub(url: str) -> None:
    async with agentcomm.connect(url) as hub, agentcomm.connect(url) as other:
        pool = await board(hub)
        cursor = (await pool.snapshot()).cursor
        seen: list[agentcomm.PoolRecord] = []

        async def watcher() -> None:
            async for record in pool.watch(after=cursor):
                seen.append(record)
                if len(seen) == 2:
                    return

        task = asyncio.create_task(watcher())
        await asyncio.sleep(0.1)
        assert seen == []
        pool2 = await other.pool("review")
        await pool2.emit("critic@r1", "verdict", 1)
        await pool2.send("critic@r1", to=ToRun("lead@r0"), data=2)
        await asyncio.wait_for(task, 10)
        assert [(r.kind, r.data) for r in seen] == [("event", 1), ("message", 2)]


async def test_watch_reports_a_gap_when_retention_dropped_records(url: str) -> None:
    retention = agentcomm.Retention(pool_max_count=3)
    async with agentcomm.connect(url, retention=retention) as hub:
        pool = await board(hub)
        for n in range(5):
            await pool.emit("critic@r1", "tick", n)
        head = (await pool.snapshot()).cursor
        report = await hub.prune()
        assert report.pruned_pool_records == head - 3
        watched: list[agentcomm.PoolRecord] = []
        async for record in pool.watch(after=1):
            watched.append(record)
            if record.seq == head:
                break
        assert watched[0].kind == "gap" and watched[0].missed == head - 3 - 1
        assert [r.seq for r in watched[1:]] == [head - 2, head - 1, head]


async def test_watch_ends_when_the_hub_closes(url: str) -> None:
    hub = await agentcomm.connect(url)
    pool = await board(hub)

    async def watch() -> None:
        async for _ in pool.watch(after=(await pool.snapshot()).cursor):
            pass

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    await hub.aclose()
    with pytest.raises(agentcomm.HubClosed):
        await asyncio.wait_for(task, 10)


# --- across processes -------------------------------------------------------------------------

SENDER = """
async def main(url, key):
    async with agentcomm.connect(url) as hub:
        pool = await hub.pool("review")
        r = await pool.send("lead@r0", to=agentcomm.ToTopic("code"), data=1, idempotency_key=key)
        print(r.message_id, r.duplicate)
"""

OPENER = """
async def main(url, flag):
    async with agentcomm.connect(url) as hub:
        try:
            config = agentcomm.PoolConfig(include_sender_in_broadcast=flag == "1")
            await hub.pool("race", config=config)
            print("opened")
        except agentcomm.PoolConfigConflict:
            print("conflict")
"""

EMITTER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        pool = await hub.pool("review")
        await pool.emit("critic@r1", "verdict", {"from": "child"})
"""


async def test_dedupe_across_processes(url: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    async with agentcomm.connect(url) as hub:
        await board(hub)
        procs = [spawn(SENDER, url, "once") for _ in range(3)]
        outs = [finish(p).split() for p in procs]
        assert len({out[0] for out in outs}) == 1
        assert sorted(out[1] for out in outs) == ["False", "True", "True"]
        assert await depth(hub, "critic@r1") == 1


async def test_config_conflict_raced_by_processes(url: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    procs = [spawn(OPENER, url, str(n % 2)) for n in range(4)]
    outs = sorted(finish(p).strip() for p in procs)
    assert outs == ["conflict", "conflict", "opened", "opened"]
    async with agentcomm.connect(url) as hub:
        assert [r.kind for r in await (await hub.pool("race")).records()] == ["opened"]


async def test_a_wake_and_a_watch_see_another_process(url: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    async with agentcomm.connect(url) as hub:
        pool = await board(hub)
        wake = await pool.wait_for("lead@r0", EventFilter(kinds={"event"}), timeout=60)
        cursor = (await pool.snapshot()).cursor
        proc = spawn(EMITTER, url)
        result = await asyncio.wait_for(wake.result(), 30)
        finish(proc)
        assert result.status == "triggered"
        async for record in pool.watch(after=cursor):
            assert record.kind == "event" and record.data == {"from": "child"}
            break


# --- a model ----------------------------------------------------------------------------------

_RUNS = ["a@1", "a@2", "b@1", "c@1"]
_AGENT_OF = {"a@1": "a", "a@2": "a", "b@1": "b", "c@1": "c"}
_op = st.one_of(
    st.tuples(
        st.just("join"), st.sampled_from(_RUNS),
        st.frozensets(st.sampled_from(["t1", "t2"])), st.frozensets(st.sampled_from(["p"])),
    ),
    st.tuples(st.just("leave"), st.sampled_from(_RUNS)),
    st.tuples(
        st.just("send"), st.sampled_from(_RUNS),
        st.one_of(
            st.builds(ToRun, st.sampled_from(_RUNS)), st.builds(ToAgent, st.sampled_from("abcz")),
            st.builds(ToTopic, st.sampled_from(["t1", "t2", "t3"])), st.just(ToPool()),
        ),
        st.frozensets(st.sampled_from(["p"])), st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    ),
)  # fmt: skip


class PoolModel:
    """Membership, addressing and dedupe in plain Python."""

    def __init__(self, include_sender: bool) -> None:
        self.include_sender = include_sender
        self.members: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self.receipts: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.inbox: dict[str, int] = dict.fromkeys(_RUNS, 0)

    def send(
        self, sender: str, to: Any, refs: frozenset[str], key: str | None
    ) -> tuple[str, tuple[str, ...], bool] | None:
        if sender not in self.members:
            return None
        if key is not None and key in self.receipts:
            return (*self.receipts[key], True)
        if isinstance(to, ToRun):
            found = [to.run] if to.run in self.members else []
        elif isinstance(to, ToAgent):
            found = [r for r in self.members if _AGENT_OF[r] == to.agent]
        elif isinstance(to, ToTopic):
            found = [r for r, (topics, _) in self.members.items() if to.topic in topics]
        else:
            found = [r for r in self.members if self.include_sender or r != sender]
        allowed = tuple(sorted(r for r in found if refs <= self.members[r][1]))
        status = "delivered" if allowed else "failed"
        for run in allowed:
            self.inbox[run] += 1
        if key is not None:
            self.receipts[key] = (status, allowed)
        return status, allowed, False


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, max_size=25), include_sender=st.booleans())
def test_membership_addressing_and_dedupe_match_a_model(
    fresh_url: Callable[[], str], ops: list[tuple[Any, ...]], include_sender: bool
) -> None:
    model = PoolModel(include_sender)

    async def scenario(url: str) -> None:
        async with agentcomm.connect(url) as hub:
            config = PoolConfig(include_sender_in_broadcast=include_sender)
            pool = await hub.pool("m", config=config)
            for op in ops:
                if op[0] == "join":
                    _, run, topics, refs = op
                    await pool.join(run, agent=_AGENT_OF[run], topics=topics, policy_refs=refs)
                    model.members[run] = (topics, refs)
                elif op[0] == "leave":
                    if op[1] in model.members:
                        await pool.leave(op[1])
                        del model.members[op[1]]
                    else:
                        with pytest.raises(agentcomm.NotAMember):
                            await pool.leave(op[1])
                else:
                    _, sender, to, refs, key = op
                    expected = model.send(sender, to, refs, key)
                    if expected is None:
                        with pytest.raises(agentcomm.NotAMember):
                            await pool.send(sender, to=to, policy_refs=refs, idempotency_key=key)
                        continue
                    got = await pool.send(sender, to=to, policy_refs=refs, idempotency_key=key)
                    assert (got.status, got.delivered_to, got.duplicate) == expected
            for run, count in model.inbox.items():
                if count:
                    assert await hub.queue_depth(run) == count
            records = await pool.records(limit=1000)
            assert [r.seq for r in records] == list(range(1, len(records) + 1))

    asyncio.run(scenario(fresh_url()))
