"""A populated store and a snapshot of everything in it, for "a rejected call changes nothing"."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec

import agentcomm

#: Small limits, so that the size checks are reached with small values.
LIMITS = agentcomm.Limits(max_payload=2000, max_metadata=500, max_depth=16)
#: Message type whose payloads always travel by value (so the payload limit applies).
INLINE = "inline"
NAMESPACE = "ns"


@dataclass
class Env:
    """The hub under test and what was set up in it."""

    hub: agentcomm.Hub
    a: agentcomm.Agent
    b: agentcomm.Agent
    msg: agentcomm.Message  # a delivery leased to b (to nack / extend / reply)
    ref: agentcomm.Ref  # a blob held by the test


def connect(url: str) -> agentcomm.Hub:
    """A hub without background passes (they would change the store between snapshots)."""
    return agentcomm.connect(
        url, background=False, limits=LIMITS, policies={INLINE: "value"}, default_ttl=math.inf
    )


async def populate(hub: agentcomm.Hub) -> Env:
    """One of everything: agents, a leased and a waiting message, a dead letter, a schedule,
    keys (shared and private), a blob, a topic with a durable consumer."""
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", {"n": 1})
    msg = await b.receive(timeout=0, lease=3600)
    assert msg is not None
    await a.send("b", {"n": 2}, delay=60)
    await a.send("a", "poison", max_attempts=1)
    poison = await a.receive(timeout=0)
    assert poison is not None
    await poison.dead_letter("test")
    await a.schedule("b", {"tick": True}, every=3600)
    await hub.memory(NAMESPACE).put("k", {"v": 1})
    await a.memory().put("mine", [1, 2])
    ref = await hub.refs.store(b"blob" * 100)
    sub = await a.subscribe("t.>", durable="d")
    await sub.aclose()
    await a.publish("t.x", {"e": 1})
    return Env(hub, a, b, msg, ref)


async def snapshot(hub: agentcomm.Hub) -> Any:
    """Everything the public API can list about the store."""
    names = [info.name for info in await hub.agents()]
    memories = [hub.memory(NAMESPACE)] + [(await hub.agent(n)).memory() for n in names]
    entries: list[Any] = []
    for kv in memories:
        for key in await kv.keys():
            entries.append(await kv.history(key))
        stats = await kv.stats()
        entries.append((stats.keys, stats.bytes, stats.writes, stats.conflicts))
    return (
        names,
        await hub.stats(),
        [await hub.mailbox_stats(n) for n in names],
        [await hub.pending(n) for n in names],
        [await hub.dead_letters(n) for n in names],
        await hub.schedules(),
        entries,
        # gc_runs counts passes, not what is stored (over the server its own passes run)
        msgspec.structs.replace(await hub.refs.stats(), gc_runs=0),
        await hub.refs.list_refs(),
        await hub.topics(),
    )
