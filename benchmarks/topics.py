"""Topics (issue 3): live fan-out against a bare asyncio.Queue fan-out, durable publish and
replay on SQLite, and what unrelated subscriptions cost a publish.

Every publish carries one of the harness's 200-byte JSON objects. `--topic-messages` sets the
publishes of the fan-out and SQLite rows (default 100,000); the publish-cost rows time at most
20,000 publishes per case.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import agentcomm

from .core import Config, Ratio, Row, benchmark, fresh_dir, payloads
from .mailbox import sqlite_url

SUBSCRIBERS = 10  # live fan-out: subscriptions reached by every publish
YIELD_EVERY = 100  # every publisher (agentcomm's and the bare queue's) yields this often
PUBLISHERS = 100  # concurrent publisher tasks in the SQLite publish row
RECEIVE_TIMEOUT = 10.0  # a subscriber waiting this long means the run is broken, not slow
FEW_SUBS = 10
MANY_SUBS = 10_000
COST_OPS = 20_000  # timed publishes per case in the publish-cost rows (at most)
COST_CHUNKS = 10  # the two cases alternate in this many chunks, so drift hits both alike


def _retention(n: int) -> agentcomm.Retention:
    """The default retention, but never pruning the `n` records a row publishes."""
    default = agentcomm.Retention()
    return agentcomm.Retention(topic_max_count=max(default.topic_max_count, n))


# --- live fan-out -------------------------------------------------------------------------------


async def _fanout_agentcomm(n: int) -> float:
    """1 publisher, SUBSCRIBERS live subscriptions on `memory://`; deliveries per second from
    the first publish until every subscriber holds all `n` messages."""
    objs, _ = payloads(n)
    async with agentcomm.connect("memory://", retention=_retention(n)) as hub:
        publisher = await hub.agent("publisher")
        subs = []
        for s in range(SUBSCRIBERS):
            agent = await hub.agent(f"subscriber-{s}")
            # a buffer that holds everything: the row measures delivery, not drops
            subs.append(await agent.subscribe("bench.fanout", buffer=n))
        firsts: list[agentcomm.TopicMessage] = []
        lasts: list[agentcomm.TopicMessage] = []

        async def consume(sub: agentcomm.Subscription) -> None:
            got = 0
            first = None
            async for msg in sub:
                if first is None:
                    first = msg
                got += 1
                if got == n:
                    firsts.append(first)
                    lasts.append(msg)
                    return
            raise RuntimeError(f"{sub} ended after {got} of {n} messages")

        async def publish() -> None:
            for i, data in enumerate(objs):
                await publisher.publish("bench.fanout", data)
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)

        consumers = [asyncio.create_task(consume(sub)) for sub in subs]
        await asyncio.sleep(0)  # every consumer is waiting before the clock starts
        started = time.perf_counter()
        try:
            await publish()
            await asyncio.wait_for(asyncio.gather(*consumers), RECEIVE_TIMEOUT)
            elapsed = time.perf_counter() - started
        finally:
            for t in consumers:
                t.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
        dropped = sum(sub.dropped for sub in subs)
        if dropped:
            raise RuntimeError(f"{dropped} deliveries dropped; the buffers should hold all")
        for first, last in zip(firsts, lasts, strict=True):
            if first.data["i"] != 0 or last.data["i"] != n - 1:
                raise RuntimeError("a subscriber got the messages out of order")
            if last.sequence - first.sequence != n - 1:
                raise RuntimeError("a subscriber's sequence numbers do not span the publishes")
    return SUBSCRIBERS * n / elapsed


async def _fanout_queue(n: int) -> float:
    """The baseline: 1 producer `put_nowait`s each payload into SUBSCRIBERS unbounded
    `asyncio.Queue`s, one consumer task per queue `await`s `get()`; same yielding as above."""
    objs, _ = payloads(n)
    queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in range(SUBSCRIBERS)]
    lasts: list[dict[str, Any]] = []

    async def consume(q: asyncio.Queue[dict[str, Any]]) -> None:
        item: dict[str, Any] = {}
        for _ in range(n):
            item = await q.get()
        lasts.append(item)

    async def publish() -> None:
        for i, data in enumerate(objs):
            for q in queues:
                q.put_nowait(data)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)

    consumers = [asyncio.create_task(consume(q)) for q in queues]
    await asyncio.sleep(0)
    started = time.perf_counter()
    try:
        await publish()
        await asyncio.wait_for(asyncio.gather(*consumers), RECEIVE_TIMEOUT)
        elapsed = time.perf_counter() - started
    finally:
        for t in consumers:
            t.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    if any(last["i"] != n - 1 for last in lasts) or len(lasts) != SUBSCRIBERS:
        raise RuntimeError("a queue consumer did not get every message")
    return SUBSCRIBERS * n / elapsed


# --- durable publish and replay on SQLite -------------------------------------------------------


async def _sqlite_publish(config: Config, topics: int, replay: bool) -> tuple[float, float]:
    """PUBLISHERS tasks (one agent each) publish `n` messages, publisher p to topic
    `bench.log.<p % topics>`; then, with `replay`, a new hub on the same file replays them with
    a new durable consumer (`start="all"`, next + ack).
    Returns (publishes per second, replayed messages per second or NaN)."""
    n = config.topic_messages
    objs, _ = payloads(n)
    retention = _retention(n)
    replay_rate = math.nan
    with fresh_dir(config, "topics") as d:
        url = sqlite_url(str(d / "agentcomm.db"))
        async with agentcomm.connect(url, retention=retention) as hub:
            agents = [await hub.agent(f"publisher-{p}") for p in range(PUBLISHERS)]

            async def publish(p: int) -> None:
                agent, topic = agents[p], f"bench.log.{p % topics}"
                for data in objs[p::PUBLISHERS]:
                    await agent.publish(topic, data)

            started = time.perf_counter()
            await asyncio.gather(*(publish(p) for p in range(PUBLISHERS)))
            publish_rate = n / (time.perf_counter() - started)
        if replay:
            replay_rate = await _replay(url, retention, n)
    return publish_rate, replay_rate


async def _replay(url: str, retention: agentcomm.Retention, n: int) -> float:
    """Messages per second a new durable consumer of `bench.>` replays from the start of the
    log, from `subscribe` to `close` (which writes the last acks)."""
    async with agentcomm.connect(url, retention=retention) as hub:
        reader = await hub.agent("reader")
        last_seq = 0
        started = time.perf_counter()
        sub = await reader.subscribe("bench.>", durable="replay", start="all")
        for seen in range(n):
            msg = await sub.next(timeout=RECEIVE_TIMEOUT)
            if msg is None:
                raise RuntimeError(f"replay starved after {seen} of {n} messages")
            if msg.sequence <= last_seq:
                raise RuntimeError("replay went back in the log")
            last_seq = msg.sequence
            await msg.ack()
        await sub.aclose()
        rate = n / (time.perf_counter() - started)
        # untimed: every ack was written, so the consumer resumes with nothing left
        again = await reader.subscribe("bench.>", durable="replay")
        left = await again.next(timeout=0)
        await again.aclose()
        if left is not None:
            raise RuntimeError(f"message #{left.sequence} was delivered again after its ack")
    return rate


# --- publish cost against unrelated subscriptions -----------------------------------------------


async def _publish_cost(config: Config) -> dict[tuple[str, int], float]:
    """µs per publish on `memory://` with FEW_SUBS and with MANY_SUBS live subscriptions on
    `other.<k>.*` (none matching), to one topic and to a new topic name each time.

    Both hubs are open at once and the cases alternate chunk by chunk."""
    ops = min(config.topic_messages, COST_OPS)
    chunk = max(ops // COST_CHUNKS, 1)
    ops = chunk * COST_CHUNKS
    objs, _ = payloads(ops)
    counts = (FEW_SUBS, MANY_SUBS)
    retention = _retention(3 * ops)
    async with (
        agentcomm.connect("memory://", retention=retention) as few,
        agentcomm.connect("memory://", retention=retention) as many,
    ):
        publishers = {}
        for hub, count in zip((few, many), counts, strict=True):
            listener = await hub.agent("listener")
            for k in range(count):
                await listener.subscribe(f"other.{k}.*")
            publishers[count] = await hub.agent("publisher")

        async def run(count: int, topics: list[str]) -> float:
            publish = publishers[count].publish
            started = time.perf_counter()
            for i, topic in enumerate(topics):
                result = await publish(topic, objs[i])
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            elapsed = time.perf_counter() - started
            if result.delivered or result.dropped:
                raise RuntimeError("a publish reached an unrelated subscription")
            return elapsed

        for count in counts:  # warm-up, untimed
            await run(count, [f"bench.warm.{i % 100}" for i in range(chunk)])
        totals: dict[tuple[str, int], float] = {}
        for kind in ("same", "new"):
            for c in range(COST_CHUNKS):
                for count in counts:
                    if kind == "same":
                        topics = ["bench.cost"] * chunk
                    else:  # names no hub has seen: no cached parse, no cached match
                        topics = [f"bench.n{count}.c{c}.{i}" for i in range(chunk)]
                    key = (kind, count)
                    totals[key] = totals.get(key, 0.0) + await run(count, topics)
    return {key: total / ops * 1e6 for key, total in totals.items()}


# --- rows ---------------------------------------------------------------------------------------


@benchmark("topics live fan-out")
def fanout_rows(config: Config) -> list[Row]:
    """Speed targets: >= 500,000 deliveries/s and >= 0.5x the bare asyncio.Queue fan-out."""
    n = config.topic_messages
    queue = asyncio.run(_fanout_queue(n))
    live = asyncio.run(_fanout_agentcomm(n))
    shape = f"1 publisher -> {SUBSCRIBERS} subscribers, yield every {YIELD_EVERY}"
    return [
        Row("topics.fanout.queue", "topics: bare asyncio.Queue fan-out", queue, "deliveries/s",
            n, note=f"baseline; {shape}, put_nowait + await get()"),
        Row("topics.fanout.memory", "topics: agentcomm live fan-out, memory", live,
            "deliveries/s", n, at_least=500_000,
            ratios=[Ratio("topics.fanout.queue", "bare queue", 0.5)],
            note=f"{shape}; buffer holds all, none dropped; msg.data not read"),
    ]  # fmt: skip


@benchmark("topics sqlite publish and replay")
def sqlite_rows(config: Config) -> list[Row]:
    """Speed targets: publish >= 50,000 msg/s; durable replay >= 200,000 msg/s."""
    n = config.topic_messages
    publish, replay = asyncio.run(_sqlite_publish(config, 1, replay=True))
    spread, _ = asyncio.run(_sqlite_publish(config, PUBLISHERS, replay=False))
    shape = f"{PUBLISHERS} tasks, each awaiting one publish at a time"
    return [
        Row("topics.sqlite.publish", "topics: SQLite publish, concurrent, one topic", publish,
            "msg/s", n, at_least=50_000, note=f"{shape}, all to bench.log.0"),
        Row("topics.sqlite.publish.topics",
            f"topics: SQLite publish, concurrent, {PUBLISHERS} topics", spread, "msg/s", n,
            ratios=[Ratio("topics.sqlite.publish", "one topic")],
            note=f"{shape}, each to its own topic"),
        Row("topics.sqlite.replay", "topics: SQLite durable replay from the start", replay,
            "msg/s", n, at_least=200_000,
            note='the one-topic log; new hub, "bench.>", start="all", next + ack, '
                 "buffer 1024; subscribe to close"),
    ]  # fmt: skip


@benchmark("topics publish cost")
def cost_rows(config: Config) -> list[Row]:
    """Target: a publish with 10,000 unrelated subscriptions costs at most 2x one with 10."""
    cost = asyncio.run(_publish_cost(config))
    ops = min(config.topic_messages, COST_OPS)
    rows = []
    for kind, what in (("same", "one topic"), ("new", "a new topic each time")):
        few_key, many_key = f"topics.cost.{kind}.{FEW_SUBS}", f"topics.cost.{kind}.{MANY_SUBS}"
        note = f"memory, subscriptions on other.<k>.*, publishes to {what}"
        rows += [
            Row(few_key, f"topics: publish, {FEW_SUBS} subscriptions, {what}",
                cost[(kind, FEW_SUBS)], "µs", ops, note=note),
            Row(many_key, f"topics: publish, {MANY_SUBS:,} subscriptions, {what}",
                cost[(kind, MANY_SUBS)], "µs", ops,
                ratios=[Ratio(few_key, f"{FEW_SUBS} subscriptions", at_most=2.0)], note=note),
        ]  # fmt: skip
    return rows
