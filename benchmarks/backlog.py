"""Does draining slow down as a backlog is consumed? agentcomm here; the peers in peers.py."""

from __future__ import annotations

import asyncio
import time

import agentcomm

from .core import Config, Row, benchmark, drain_ratio, fresh_dir, payloads
from .mailbox import BATCH, RECEIVE_TIMEOUT, sqlite_url


async def drain(config: Config) -> tuple[float, float, float]:
    """Fill a mailbox with the whole backlog, then receive + ack it one message at a time;
    the rates over the first and last 10% of the drain, and last / first."""
    n = config.messages
    objs, _ = payloads(n)
    with fresh_dir(config, "backlog") as d:
        async with agentcomm.connect(sqlite_url(str(d / "agentcomm.db"))) as hub:
            sender = await hub.agent("producer")
            worker = await hub.agent("worker")
            for lo in range(0, n, BATCH):
                await sender.send_many(
                    [agentcomm.Outgoing(to="worker", data=x) for x in objs[lo : lo + BATCH]]
                )
            stamps: list[float] = []
            started = time.perf_counter()
            for _ in range(n):
                msg = await worker.receive(timeout=RECEIVE_TIMEOUT)
                if msg is None:
                    raise RuntimeError(f"backlog drain stalled after {len(stamps)} of {n}")
                await msg.ack()
                stamps.append(time.perf_counter())
    return drain_ratio(stamps, started)


@benchmark("agentcomm sqlite backlog")
def sqlite_backlog(config: Config) -> list[Row]:
    """Speed target: the last 10% of the drain at >= 0.8x the rate of the first 10%."""
    first, last, ratio = asyncio.run(drain(config))
    return [
        Row("agentcomm.sqlite.backlog", "agentcomm SQLite backlog, last/first 10%", ratio,
            "x", config.messages, at_least=0.8,
            note=f"one at a time (receive + ack): first {first:,.0f}/s, last {last:,.0f}/s")
    ]  # fmt: skip
