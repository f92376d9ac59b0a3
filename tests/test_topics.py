"""Topics: wildcards, filters, live fan-out with drops, durable consumers, on every backend."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentcomm
from agentcomm._subjects import SubjectTree, TopicFilter, parse_pattern, parse_topic

# --- names, patterns and matching --------------------------------------------------------

WILDCARDS = [
    ("workflow.*", "workflow.started", True),
    ("workflow.*", "workflow.step.1", False),
    ("workflow.*", "workflow", False),
    ("workflow.>", "workflow.started", True),
    ("workflow.>", "workflow.step.1", True),
    ("workflow.>", "workflow", False),
    ("workflow.*.started", "workflow.build.started", True),
    ("workflow.*.started", "workflow.build.test.started", False),
    ("*.*.started", "workflow.build.started", True),
    ("*", "workflow", True),
    ("*", "workflow.started", False),
    (">", "workflow", True),
    (">", "workflow.build.started", True),
    ("workflow.build.started", "workflow.build.started", True),
    ("workflow.build.started", "workflow.build.finished", False),
    ("workflow.*.>", "workflow.build.started", True),
    ("workflow.*.>", "workflow.build", False),
    ("work*", "workflow", None),  # invalid pattern: wildcards are whole tokens
]


def _reference(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head = pattern[0]
    if head == ">":
        return len(topic) >= 1
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _reference(pattern[1:], topic[1:])


async def test_wildcard_table(hub: agentcomm.Hub) -> None:
    agent = await hub.agent("listener")
    publisher = await hub.agent("publisher")
    subs: list[agentcomm.Subscription | None] = []
    for pattern, _, expected in WILDCARDS:
        if expected is None:
            with pytest.raises(agentcomm.InvalidTopic):
                await agent.subscribe(pattern)
            subs.append(None)
        else:
            subs.append(await agent.subscribe(pattern))
    topics = sorted({topic for _, topic, _ in WILDCARDS} | {"workflowx.a", "work-flow.a"})
    for topic in topics:
        await publisher.publish(topic, topic)
    for i, ((pattern, topic, expected), sub) in enumerate(zip(WILDCARDS, subs, strict=True)):
        if sub is None:
            continue
        durable = await agent.subscribe(pattern, durable=f"d{i}", start="all")
        wanted = {t for t in topics if _reference(pattern.split("."), t.split("."))}
        for s in (sub, durable):  # the subject tree, and the backend's durable scan
            got = set()
            while (msg := await s.next(timeout=0)) is not None:
                got.add(msg.data)
                await msg.ack()
            assert (topic in got) == expected, (pattern, topic)
            assert got == wanted, pattern
            await s.aclose()


_token = st.sampled_from(["a", "b", "c", "wf", "x-1"])
_pattern_token = st.sampled_from(["a", "b", "c", "wf", "x-1", "*"])


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(
        st.tuples(st.lists(_pattern_token, min_size=0, max_size=4), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    topic=st.lists(_token, min_size=1, max_size=5),
)
def test_tree_and_filter_agree_with_reference(
    patterns: list[tuple[list[str], bool]], topic: list[str]
) -> None:
    tree: SubjectTree[int] = SubjectTree()
    parsed = []
    for i, (tokens, tail) in enumerate(patterns):
        tokens = [*tokens, ">"] if tail or not tokens else tokens
        text = ".".join(tokens)
        assert parse_pattern(text) == tuple(tokens)
        parsed.append((text, tokens))
        tree.insert(parse_pattern(text), i)
    name = ".".join(topic)
    assert parse_topic(name) == tuple(topic)
    expected = {i for i, (_, tokens) in enumerate(parsed) if _reference(tokens, topic)}
    assert set(tree.match(name, parse_topic(name))) == expected
    for i, (text, _) in enumerate(parsed):
        assert TopicFilter(text).matches_topic(name) == (i in expected)
    for i, (text, _) in enumerate(parsed):
        assert tree.remove(parse_pattern(text), i)
    assert len(tree) == 0 and tree.match(name, tuple(topic)) == ()
    assert tree.items() == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab.*> \t-_é"), max_size=12))
def test_token_splitting_accepts_exactly_well_formed_text(text: str) -> None:
    tokens = text.split(".")
    well_formed = bool(text) and all(t and not any(c in t for c in " \t*>") for t in tokens)
    if well_formed:
        assert parse_topic(text) == tuple(tokens)
    else:
        with pytest.raises(agentcomm.InvalidTopic):
            parse_topic(text)
    pattern_ok = (
        bool(text)
        and all(t in ("*", ">") or (t and not any(c in t for c in " \t*>")) for t in tokens)
        and ">" not in tokens[:-1]
    )
    if pattern_ok:
        assert parse_pattern(text) == tuple(tokens)
    else:
        with pytest.raises(agentcomm.InvalidTopic):
            parse_pattern(text)


@pytest.mark.parametrize(
    "name", ["", ".a", "a.", "a..b", "a.*", "a.>", "a b", "*", ">", "a.b*", 7, None]
)
async def test_invalid_topic_names(hub: agentcomm.Hub, name: object) -> None:
    planner = await hub.agent("planner")
    with pytest.raises(agentcomm.InvalidTopic):
        await planner.publish(name, {})  # type: ignore[arg-type]
    with pytest.raises(agentcomm.InvalidTopic):
        await hub.topic_stats(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["", "a..b", ">.a", "a.>.b", "a.*b", "a b", "a.>>", 3])
async def test_invalid_patterns(hub: agentcomm.Hub, pattern: object) -> None:
    coder = await hub.agent("coder")
    with pytest.raises(agentcomm.InvalidTopic):
        await coder.subscribe(pattern)  # type: ignore[arg-type]
    with pytest.raises(agentcomm.InvalidTopic):
        await coder.subscribe(pattern, durable="d")  # type: ignore[arg-type]


async def test_invalid_subscribe_arguments(hub: agentcomm.Hub) -> None:
    coder = await hub.agent("coder")
    cases: tuple[dict[str, Any], ...] = (
        {"buffer": 0},
        {"senders": []},
        {"start": "all"},
        {"durable": "d", "start": "yesterday"},
        {"durable": "d", "start": -1},
        {"durable": "bad name"},
        {"senders": 5},
        {"types": ["bad type"]},
        {"metadata": {1: "a", "b": 2}},
        {"metadata": [("k", "v")]},
    )
    for kwargs in cases:
        with pytest.raises(agentcomm.ValidationError):
            await coder.subscribe("a.>", **kwargs)
    await coder.subscribe("a.>", durable="d")
    with pytest.raises(agentcomm.ValidationError, match="same pattern"):
        await coder.subscribe("b.>", durable="d")
    with pytest.raises(agentcomm.ValidationError, match="same pattern"):
        await coder.subscribe("a.>", durable="d", types=["event"])


# --- live subscriptions --------------------------------------------------------------------


async def test_invalid_publish_arguments(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    cases: tuple[dict[str, Any], ...] = (
        {"type": "bad type"},
        {"metadata": {1: 2}},
        {"metadata": 5},
    )
    for kwargs in cases:
        with pytest.raises(agentcomm.ValidationError):
            await planner.publish("a.b", 1, **kwargs)
    with pytest.raises(agentcomm.EncodeError):
        await planner.publish("a.b", object())
    assert (await hub.topic_stats("a.b")).published == 0


async def test_publish_subscribe_round_trip(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    async with coder.subscribe("workflow.*.started") as sub:
        result = await planner.publish(
            "workflow.build.started", {"id": 7}, type="started", metadata={"run": "r1"}
        )
        assert (result.delivered, result.dropped) == (1, 0)
        msg = await sub.next(timeout=5)
        assert msg is not None
        assert (msg.topic, msg.sender, msg.type) == ("workflow.build.started", "planner", "started")
        assert (msg.data, msg.metadata, msg.sequence) == ({"id": 7}, {"run": "r1"}, result.sequence)
        await msg.ack()  # a no-op when live
        assert await sub.next(timeout=0) is None
    assert sub.closed and await sub.next(timeout=0) is None


async def test_filters_and_together(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    other = await hub.agent("other")
    coder = await hub.agent("coder")
    sub = await coder.subscribe(
        "wf.>", senders=["planner"], types=["event"], metadata={"run": "r1", "env": "ci"}
    )
    good = {"run": "r1", "env": "ci", "extra": 1}
    await planner.publish("wf.a", 1, metadata=good)
    await other.publish("wf.a", 2, metadata=good)  # wrong sender
    await planner.publish("wf.a", 3, type="log", metadata=good)  # wrong type
    await planner.publish("wf.a", 4, metadata={"run": "r1"})  # missing key
    await planner.publish("wf.a", 5, metadata={"run": "r2", "env": "ci"})  # wrong value
    await planner.publish("wf.a", 6)  # no metadata
    await planner.publish("other.a", 7, metadata=good)  # wrong topic
    await planner.publish("wf.b.c", 8, metadata=good)
    got = []
    while (msg := await sub.next(timeout=0.05)) is not None:
        got.append(msg.data)
    assert got == [1, 8]
    await sub.aclose()


async def test_drops_are_counted_with_a_tiny_buffer(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    sub = await coder.subscribe("events.>", buffer=1)
    results = [await planner.publish("events.x", i) for i in range(5)]
    assert [(r.delivered, r.dropped) for r in results] == [(1, 0)] + [(0, 1)] * 4
    assert [r.sequence for r in results] == sorted({r.sequence for r in results})
    assert sub.dropped == 4 and sub.missed == 4
    first = await sub.next(timeout=1)
    assert first is not None and first.data == 0
    assert await sub.next(timeout=0) is None
    stats = await hub.topic_stats("events.x")
    assert (stats.published, stats.delivered, stats.dropped) == (5, 1, 4)
    assert stats.subscribers == 1 and stats.last_sequence == results[-1].sequence
    assert stats.last_publish is not None
    await sub.aclose()
    assert (await hub.topic_stats("events.x")).subscribers == 0


async def test_topics_lists_stats(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    await planner.publish("b.topic", 1)
    await planner.publish("a.topic", 1)
    await planner.publish("a.topic", 2)
    listed = await hub.topics()
    assert [(t.name, t.published) for t in listed] == [("a.topic", 2), ("b.topic", 1)]
    never = await hub.topic_stats("never.published")
    assert (never.published, never.delivered, never.last_publish) == (0, 0, None)


async def test_iteration_ends_when_the_hub_closes(make_hub: Callable[..., agentcomm.Hub]) -> None:
    hub = await make_hub()
    coder = await hub.agent("coder")
    planner = await hub.agent("planner")
    sub = await coder.subscribe("x.>")
    durable = await coder.subscribe("x.>", durable="dx")
    await planner.publish("x.y", 1)
    got = []
    both = asyncio.Event()

    async def consume(s: agentcomm.Subscription) -> None:
        async for msg in s:
            got.append(msg.data)
            await msg.ack()
            if len(got) == 2:
                both.set()

    tasks = [asyncio.create_task(consume(sub)), asyncio.create_task(consume(durable))]
    await asyncio.wait_for(both.wait(), 5)
    await hub.aclose()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert got == [1, 1] and sub.closed and durable.closed
    with pytest.raises(agentcomm.HubClosed):
        await planner.publish("x.y", 2)


async def test_other_hubs_on_the_store_receive_once(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    async with make_hub() as other:
        planner = await hub.agent("planner")
        remote = await (await other.agent("remote")).subscribe("a.>")
        local = await (await hub.agent("local")).subscribe("a.>")
        other_publisher = await other.agent("other-publisher")
        for i in range(20):
            await planner.publish("a.b", i)
            await other_publisher.publish("a.c", 100 + i)
        expected = set(range(20)) | set(range(100, 120))
        for sub in (remote, local):
            got: list[int] = []
            while len(got) < 40:
                msg = await sub.next(timeout=5)
                assert msg is not None, f"stalled after {len(got)}"
                got.append(msg.data)
            assert set(got) == expected and len(got) == 40
            assert await sub.next(timeout=0.1) is None  # nothing twice
            # each publisher's messages arrive in publish order
            assert [x for x in got if x < 100] == list(range(20))
            assert [x for x in got if x >= 100] == list(range(100, 120))


async def test_concurrent_publish_and_close_leaks_nothing(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    stop = asyncio.Event()

    async def publish() -> int:
        n = 0
        while not stop.is_set():
            await planner.publish("load.x", n)
            n += 1
            await asyncio.sleep(0)
        return n

    async def churn(k: int) -> None:
        for _ in range(20):
            sub = await coder.subscribe("load.>" if k % 2 else "load.*", buffer=2)
            await sub.next(timeout=0.001)
            if k % 3 == 0:
                async with sub:
                    pass
            else:
                await asyncio.gather(sub.aclose(), planner.publish("load.x", -1))

    publishers = [asyncio.create_task(publish()) for _ in range(3)]
    await asyncio.gather(*(churn(k) for k in range(8)))
    stop.set()
    assert sum(await asyncio.gather(*publishers)) > 0
    stats = await hub.topic_stats("load.x")
    assert stats.subscribers == 0
    assert hub._topic_bus is not None and len(hub._topic_bus._tree) == 0


# --- several processes -------------------------------------------------------------------


def _child_publish(url: str, count: int) -> None:
    async def main() -> None:
        async with agentcomm.connect(url) as hub:
            me = await hub.agent("child")
            for i in range(count):
                await me.publish(f"proc.{i % 2}", i)

    asyncio.run(main())


def _child_consume(url: str, results: Any) -> None:
    async def main() -> list[int]:
        async with agentcomm.connect(url) as hub:
            me = await hub.agent("worker")
            got = []
            async with me.subscribe("jobs.>", durable="shared", start="all", buffer=10) as sub:
                while (msg := await sub.next(timeout=1.0)) is not None:
                    got.append(msg.data)
                    await msg.ack()
            return got

    results.put(asyncio.run(main()))


@pytest.mark.slow
async def test_processes_sharing_a_durable_name_split_the_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with agentcomm.connect(url) as hub:
        planner = await hub.agent("planner")
        for i in range(300):
            await planner.publish(f"jobs.{i % 3}", i)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        children = [ctx.Process(target=_child_consume, args=(url, results)) for _ in range(2)]
        for child in children:
            child.start()
        got = [await asyncio.to_thread(results.get, True, 60) for _ in children]
        for child in children:
            await asyncio.to_thread(child.join, 30)
            assert child.exitcode == 0
        assert sorted(got[0] + got[1]) == list(range(300))  # each message to one process


@pytest.mark.slow
async def test_cross_process_publish_subscribe(tmp_path: Path) -> None:
    # recheck=60: a subscriber that gets everything in time was woken by pings, not polling
    url = f"sqlite:///{tmp_path / 'shared.db'}?recheck=60"
    async with agentcomm.connect(url) as hub:
        parent = await hub.agent("parent")
        live = await parent.subscribe("proc.>", buffer=10_000)
        durable = await parent.subscribe("proc.1", durable="odd")
        child = multiprocessing.get_context("spawn").Process(target=_child_publish, args=(url, 200))
        child.start()
        got: list[Any] = []
        while len(got) < 200:
            msg = await live.next(timeout=30)
            assert msg is not None, f"stalled after {len(got)}"
            assert msg.sender == "child"
            got.append(msg.data)
        assert got == list(range(200))
        odd: list[Any] = []
        while len(odd) < 100:
            msg = await durable.next(timeout=30)
            assert msg is not None
            odd.append(msg.data)
            await msg.ack()
        assert odd == list(range(1, 200, 2))
        await asyncio.to_thread(child.join, 30)
        assert child.exitcode == 0
        stats = await hub.topic_stats("proc.0")
        assert stats.published == 100


async def test_concurrent_next_calls_share_a_live_subscription(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    sub = await (await hub.agent("coder")).subscribe("many.>")
    waiting = [asyncio.create_task(sub.next(timeout=10)) for _ in range(3)]
    cancelled = asyncio.create_task(sub.next(timeout=10))
    await asyncio.sleep(0)
    cancelled.cancel()
    for i in range(3):
        await planner.publish("many.x", i)
    got = await asyncio.gather(*waiting)
    assert sorted(m.data for m in got if m is not None) == [0, 1, 2]
    assert await sub.next(timeout=0) is None
    late = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    await sub.aclose()
    assert await late is None


async def test_pruned_after_lease_ended_counts_as_lost(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    planner = await hub.agent("planner")
    async with make_hub(lease=0.2) as short:
        sub = await (await short.agent("w")).subscribe("t.>", durable="w", start="new")
        await planner.publish("t.a", 1)
        await planner.publish("t.a", 2)
        first = await sub.next(timeout=5)
        assert first is not None and first.data == 1
        await sub.aclose()  # releases what it fetched but did not hand out (2)
        await asyncio.sleep(0.3)  # the lease of 1 ends unacked
        retention = agentcomm.Retention(topic_max_count=0)
        async with make_hub(retention=retention, background=False) as pruner:
            assert (await pruner.prune()).pruned_topic_records == 2
        stats = await short.topic_stats("t.a")  # nothing left in the log, the counts remain
        assert stats.published == 2 and stats.last_publish is not None
        sub = await (await short.agent("w")).subscribe("t.>", durable="w")
        assert await sub.next(timeout=0.05) is None
        assert sub.lost == 2
        await first.ack()  # its record is gone: ignored
        await sub.aclose()


async def test_live_subscriptions_of_a_hub_share_the_decoded_message(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    one = await coder.subscribe("s.>")
    two = await coder.subscribe("s.*")
    await planner.publish("s.x", {"k": [1, 2]})
    a, b = await one.next(timeout=1), await two.next(timeout=1)
    assert a is not None and b is not None
    assert a is b and a.data is b.data and a.data == {"k": [1, 2]}


async def test_publish_racing_hub_close_raises_only_hub_closed(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    hub = await make_hub()
    planner = await hub.agent("planner")
    sub = await (await hub.agent("coder")).subscribe("race.>", buffer=4)
    durable = await (await hub.agent("coder")).subscribe("race.>", durable="race")
    published = asyncio.Event()

    async def publish() -> None:
        n = 0
        while True:
            await planner.publish("race.x", n)
            n += 1
            if n == 10:
                published.set()
            await asyncio.sleep(0)

    async def consume() -> None:
        async for msg in durable:  # ends quietly when the hub closes
            await msg.ack()

    tasks = [asyncio.create_task(publish()) for _ in range(4)]
    consumer = asyncio.create_task(consume())
    await published.wait()
    await hub.aclose()
    for task in tasks:
        with pytest.raises(agentcomm.HubClosed):
            await task
    await asyncio.wait_for(consumer, 5)
    assert sub.closed and durable.closed
    with pytest.raises(agentcomm.HubClosed):  # a single call after the close
        await sub.next()


async def test_a_waiting_durable_wakes_on_release_and_rewind(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    planner = await hub.agent("planner")
    for i in range(3):
        await planner.publish("rel.x", i)
    waiter_agent = await hub.agent("waiter")
    async with make_hub() as other:
        holder = await (await other.agent("holder")).subscribe(
            "rel.>", durable="rel", start="all", buffer=3
        )
        first = await holder.next(timeout=5)  # leases all three, hands out one
        assert first is not None and first.data == 0
        await first.ack()
        waiter = await waiter_agent.subscribe("rel.>", durable="rel", start="all")
        waiting = asyncio.create_task(waiter.next(timeout=5))
        await asyncio.sleep(0.05)
        await holder.aclose()  # releases 1 and 2 to the waiting subscriber
        got = [await waiting, await waiter.next(timeout=5)]
        assert [m.data for m in got if m is not None] == [1, 2]
        for m in got:
            assert m is not None
            await m.ack()
        rewinding = asyncio.create_task(waiter.next(timeout=10))
        await asyncio.sleep(0.05)
        await (await other.agent("holder")).subscribe("rel.>", durable="rel", start=0)
        again = await rewinding
        assert again is not None and again.data == 0


async def test_subscribe_racing_hub_close_leaves_nothing_open(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    hub = await make_hub()
    coder = await hub.agent("coder")
    pending = [
        asyncio.create_task(coder.subscribe("r.>", **kwargs))  # type: ignore[arg-type]
        for kwargs in ({}, {}, {"durable": "d1"}, {"durable": "d2", "start": "all"})
    ]
    await asyncio.sleep(0)
    await hub.aclose()
    for task in pending:
        try:
            sub = await task
        except agentcomm.HubClosed:
            continue
        assert sub.closed  # opened before the close: closed with the hub
