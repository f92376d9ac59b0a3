"""Cross-process wake-up: a consumer in a child process on the same SQLite file.

The parent sends messages one at a time with a short gap, each carrying `time.time_ns()` (a
clock both processes read); the child records receive time minus send time. Then the child
sits idle in `receive()` and reports the CPU time it used meanwhile (all threads).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import statistics
import time
from multiprocessing.connection import Connection

import agentcomm

from .core import Config, Row, benchmark, fresh_dir, payload
from .mailbox import sqlite_url

GAP = 0.002  # seconds between sends, so each message finds the consumer waiting
WARMUP = 20  # first deliveries, not counted
CHILD_TIMEOUT = 60.0


def _consumer_main(url: str, expected: int, pipe: Connection) -> None:
    """The child process: receive `expected` messages, report latencies, idle until told."""
    asyncio.run(_consume(url, expected, pipe))


async def _consume(url: str, expected: int, pipe: Connection) -> None:
    async with agentcomm.connect(url) as hub:
        agent = await hub.agent("consumer")
        pipe.send("ready")
        latencies_ns: list[int] = []
        while len(latencies_ns) < expected:
            msg = await agent.receive(timeout=CHILD_TIMEOUT)
            got = time.time_ns()
            if msg is None:
                raise RuntimeError("the latency consumer timed out")
            latencies_ns.append(got - msg.data["t"])
            await msg.ack()
        pipe.send(latencies_ns)
        # now idle until the parent's stop message; CPU of every thread of this process
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        msg = await agent.receive(timeout=CHILD_TIMEOUT)
        cpu1, wall1 = _cpu_seconds(), time.perf_counter()
        pipe.send((cpu1 - cpu0, wall1 - wall0))
        if msg is not None:
            await msg.ack()


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (microsecond resolution)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _recv(pipe: Connection, timeout: float) -> object:
    if not await asyncio.to_thread(pipe.poll, timeout):
        raise RuntimeError("the latency consumer process did not answer in time")
    return pipe.recv()


async def measure(config: Config, n: int) -> tuple[list[float], float]:
    """Latencies in ms of `n` messages, and the idle consumer's CPU use in percent."""
    ctx = multiprocessing.get_context("spawn")
    with fresh_dir(config, "latency") as d:
        url = sqlite_url(str(d / "agentcomm.db"))
        async with agentcomm.connect(url) as hub:
            sender = await hub.agent("producer")
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_consumer_main, args=(url, WARMUP + n, theirs), daemon=True)
            child.start()
            try:
                await _recv(ours, CHILD_TIMEOUT)  # "ready": the consumer is registered
                for i in range(WARMUP + n):
                    await sender.send("consumer", payload(i, t=time.time_ns()))
                    await asyncio.sleep(GAP)
                latencies_ns = await _recv(ours, CHILD_TIMEOUT)
                assert isinstance(latencies_ns, list)
                await asyncio.sleep(config.idle_seconds)
                await sender.send("consumer", {"stop": True})
                idle = await _recv(ours, CHILD_TIMEOUT)
                assert isinstance(idle, tuple)
                await asyncio.to_thread(child.join, CHILD_TIMEOUT)
            finally:
                if child.is_alive():
                    child.terminate()
                    child.join(5.0)
                ours.close()
    cpu, wall = idle
    return [ns / 1e6 for ns in latencies_ns[WARMUP:]], 100.0 * cpu / wall


@benchmark("agentcomm sqlite cross-process")
def cross_process(config: Config) -> list[Row]:
    """Speed targets: p50 <= 0.5 ms, p99 <= 2 ms; an idle consumer under 1% CPU."""
    n = min(config.latency_messages, config.messages)
    latencies, idle = asyncio.run(measure(config, n))
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = statistics.median(latencies), qs[98]
    shape = f"child process consumer, sends {GAP * 1000:g} ms apart"
    idle_note = f"child waiting in receive() for {config.idle_seconds:g} s; getrusage"
    return [
        Row("agentcomm.sqlite.latency.p50", "agentcomm SQLite cross-process latency p50", p50,
            "ms", n, at_most=0.5, note=shape),
        Row("agentcomm.sqlite.latency.p99", "agentcomm SQLite cross-process latency p99", p99,
            "ms", n, at_most=2.0, note=f"max {max(latencies):.2f} ms"),
        Row("agentcomm.sqlite.idle_cpu", "agentcomm SQLite idle consumer CPU", idle, "%",
            at_most=1.0, note=idle_note),
    ]  # fmt: skip
