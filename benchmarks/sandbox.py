"""The sandbox channel: a host here, the sandbox side in a child process on the same kernel.

Round trip: the host writes a message into inbound.db, the sandbox claims it, replies into
outbound.db and completes it, the host reads the reply and records it delivered; one message at
a time, each timed. Throughput: the host writes a burst, the sandbox works through it in
batches (one reply per message), the host drains and records every reply.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from pathlib import Path

from agentcomm import sandbox

from .core import Config, Row, benchmark, fresh_dir, payload

CHILD_TIMEOUT = 60.0
WARMUP = 10


def _echo_main(directory: str) -> None:
    asyncio.run(_echo(directory))


async def _echo(directory: str) -> None:
    async with sandbox.open_sandbox(directory) as box:
        while True:
            batch = await box.next_batch(max_messages=100, timeout=CHILD_TIMEOUT)
            if not batch:
                return
            for m in batch:
                await box.send({"i": m.data.get("i")}, in_reply_to=m.id)
            await box.complete(batch)
            if any(m.data.get("stop") for m in batch):
                return


async def _next(host: sandbox.Host) -> sandbox.OutboundMessage:
    out = await host.next_outbound(timeout=CHILD_TIMEOUT)
    if out is None:
        raise RuntimeError("the sandbox process did not answer in time")
    return out


async def measure(
    directory: Path, journal: str, n_rt: int, n_burst: int
) -> tuple[list[float], float]:
    """Round-trip times in ms of `n_rt` messages, and messages/s of a burst of `n_burst`."""
    ctx = multiprocessing.get_context("spawn")
    async with sandbox.open_host(directory, journal=journal) as host:  # type: ignore[arg-type]
        child = ctx.Process(target=_echo_main, args=(str(directory),), daemon=True)
        child.start()
        try:
            latencies = []
            for i in range(WARMUP + n_rt):
                started = time.perf_counter()
                await host.send(payload(i))
                out = await _next(host)
                await out.delivered()
                if i >= WARMUP:
                    latencies.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            for i in range(n_burst):
                await host.send(payload(i))
            for _ in range(n_burst):
                out = await _next(host)
                await out.delivered()
            rate = n_burst / (time.perf_counter() - started)
            await host.send({"stop": True})
            await _next(host)
            await asyncio.to_thread(child.join, CHILD_TIMEOUT)
        finally:
            if child.is_alive():
                child.terminate()
                child.join(5.0)
    return latencies, rate


def _rows(config: Config, journal: str, n_rt: int, n_burst: int) -> list[Row]:
    with fresh_dir(config, f"sandbox-{journal}") as d:
        latencies, rate = asyncio.run(measure(d, journal, n_rt, n_burst))
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    shape = f"journal={journal}, child process sandbox, one message at a time"
    return [
        Row(f"agentcomm.sandbox.{journal}.roundtrip.p50",
            f"sandbox host->sandbox->host round trip p50 ({journal})",
            statistics.median(latencies), "ms", n_rt, note=shape),
        Row(f"agentcomm.sandbox.{journal}.roundtrip.p99",
            f"sandbox host->sandbox->host round trip p99 ({journal})", qs[98], "ms", n_rt,
            note=f"max {max(latencies):.2f} ms"),
        Row(f"agentcomm.sandbox.{journal}.throughput",
            f"sandbox channel messages/s ({journal})", rate, "msg/s", n_burst,
            note="burst written, replied in batches of <= 100, each reply recorded"),
    ]  # fmt: skip


@benchmark("agentcomm sandbox channel")
def sandbox_channel(config: Config) -> list[Row]:
    """Round trip and throughput of the sandbox channel in both journal modes."""
    n = max(20, min(config.latency_messages, config.messages // 10, 500))
    burst = max(50, min(config.messages // 10, 2000))
    # rollback-journal commits fsync several times each: fewer messages keep the run short
    return [
        *_rows(config, "wal", n, burst),
        *_rows(config, "delete", max(20, n // 5), max(50, burst // 5)),
    ]
