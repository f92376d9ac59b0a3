"""agentcomm on Redis against raw redis-py (asyncio) doing the same job on the same server.

Every benchmark starts its own `redis-server` (no persistence) on a free port and stops it
after. The raw baseline is the Streams consumer-group cycle: XADD, XREADGROUP, XACK, one message
at a time (three awaited round trips each) or 100 at a time (a pipeline of 100 XADD, then one
XREADGROUP COUNT 100 and one XACK of 100 ids). agentcomm does the same through its public API:
`send` / `receive` / `ack`, or `send_many` / `receive_many` / `ack_many` by 100. Request/reply
runs between two processes; the raw baseline there is two lists (LPUSH + BRPOP each way).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio as aioredis

import agentcomm

from .core import Config, Ratio, Row, benchmark, payload, payloads

BATCH = 100
RR_WARMUP = 50
CHILD_TIMEOUT = 60.0
STREAM, GROUP = "bench:stream", "bench"


@contextlib.contextmanager
def redis_server(config: Config) -> Iterator[str]:
    """A fresh redis-server on a free port, without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; the Redis rows need it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="agentcomm-bench-redis-", dir=config.tmp_root) as d:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


# --- raw redis-py ---------------------------------------------------------------------------


async def raw_single(url: str, n: int) -> float:
    """XADD, XREADGROUP COUNT 1, XACK per message, each awaited."""
    _, blobs = payloads(n)
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        started = time.perf_counter()
        for blob in blobs:
            await client.xadd(STREAM, {"data": blob})
            got: Any = await client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=1)
            entry_id = got[0][1][0][0]
            await client.xack(STREAM, GROUP, entry_id)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return n / elapsed


async def raw_batched(url: str, n: int) -> float:
    """XADD pipelined by 100 for every message, then XREADGROUP COUNT 100 + one XACK each."""
    _, blobs = payloads(n)
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        started = time.perf_counter()
        for lo in range(0, n, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for blob in blobs[lo : lo + BATCH]:
                    pipe.xadd(STREAM, {"data": blob})
                await pipe.execute()
        done = 0
        while done < n:
            got: Any = await client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=BATCH)
            ids = [entry_id for entry_id, _ in got[0][1]]
            await client.xack(STREAM, GROUP, *ids)
            done += len(ids)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return n / elapsed


# --- agentcomm ----------------------------------------------------------------------------------


async def agentcomm_single(url: str, n: int) -> float:
    """await send, await receive, await ack per message."""
    objs, _ = payloads(n)
    async with agentcomm.connect(url) as hub:
        sender = await hub.agent("producer")
        worker = await hub.agent("worker")
        started = time.perf_counter()
        for data in objs:
            await sender.send("worker", data)
            msg = await worker.receive(timeout=10)
            if msg is None:
                raise RuntimeError("a sent message was not received")
            await msg.ack()
        elapsed = time.perf_counter() - started
    return n / elapsed


async def agentcomm_batched(url: str, n: int) -> float:
    """send_many by 100 for every message, then receive_many(100) + ack_many."""
    objs, _ = payloads(n)
    async with agentcomm.connect(url) as hub:
        sender = await hub.agent("producer")
        worker = await hub.agent("worker")
        started = time.perf_counter()
        for lo in range(0, n, BATCH):
            await sender.send_many(
                [agentcomm.Outgoing(to="worker", data=d) for d in objs[lo : lo + BATCH]]
            )
        done = 0
        while done < n:
            msgs = await worker.receive_many(BATCH, timeout=10)
            if not msgs:
                raise RuntimeError(f"starved after {done} of {n} messages")
            await worker.ack_many(msgs)
            done += len(msgs)
        elapsed = time.perf_counter() - started
    return n / elapsed


# --- request / reply across two processes ---------------------------------------------------


def _responder_main(url: str, kind: str, pipe: Connection) -> None:
    serve = _agentcomm_responder if kind == "agentcomm" else _raw_responder
    asyncio.run(serve(url, pipe))


async def _agentcomm_responder(url: str, pipe: Connection) -> None:
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("responder")
        pipe.send("ready")
        async for msg in me.messages():
            if msg.data == "stop":
                await msg.ack()
                return
            await msg.reply(msg.data)


async def _raw_responder(url: str, pipe: Connection) -> None:
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        pipe.send("ready")
        while True:
            popped: Any = await client.brpop(["rr:requests"])
            _, blob = popped
            if blob == b"stop":
                return
            await client.lpush("rr:replies", blob)
    finally:
        await client.aclose()


async def round_trips(url: str, n: int, kind: str) -> list[float]:
    """Round-trip times in ms of `n` requests to a responder in a child process."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_responder_main, args=(url, kind, theirs), daemon=True)
    child.start()
    times: list[float] = []
    try:
        if not await asyncio.to_thread(ours.poll, CHILD_TIMEOUT):
            raise RuntimeError("the responder process did not start")
        ours.recv()
        if kind == "agentcomm":
            async with agentcomm.connect(url) as hub:
                me = await hub.agent("requester")
                for i in range(RR_WARMUP + n):
                    body = payload(i)
                    started = time.perf_counter()
                    reply = await me.request("responder", body, timeout=10)
                    times.append(time.perf_counter() - started)
                    assert reply.data == body
                await me.send("responder", "stop")
        else:
            client = aioredis.Redis.from_url(url, protocol=2)
            try:
                for _, blob in zip(range(RR_WARMUP + n), payloads(RR_WARMUP + n)[1], strict=False):
                    started = time.perf_counter()
                    await client.lpush("rr:requests", blob)
                    await client.brpop(["rr:replies"])
                    times.append(time.perf_counter() - started)
                await client.lpush("rr:requests", b"stop")
            finally:
                await client.aclose()
        await asyncio.to_thread(child.join, CHILD_TIMEOUT)
    finally:
        if child.is_alive():
            child.terminate()
            child.join(5.0)
        ours.close()
    return [t * 1000 for t in times[RR_WARMUP:]]


# --- rows ---------------------------------------------------------------------------------------


@benchmark("redis raw redis-py")
def raw(config: Config) -> list[Row]:
    """Baselines: the Streams cycle with redis-py asyncio, one at a time and by 100."""
    n = config.messages
    with redis_server(config) as url:
        single = asyncio.run(raw_single(url, n))
    with redis_server(config) as url:
        batched = asyncio.run(raw_batched(url, n))
    return [
        Row("redis.raw.single", "raw redis-py Streams, one at a time", single, "msg/s", n,
            note="await XADD, XREADGROUP, XACK per message"),
        Row("redis.raw.batched", "raw redis-py Streams, by 100", batched, "msg/s", n,
            note="pipelined XADD x100, then XREADGROUP COUNT 100 + XACK"),
    ]  # fmt: skip


@benchmark("redis agentcomm")
def agentcomm_rows(config: Config) -> list[Row]:
    """Speed targets: >= 0.8x raw one at a time and by 100 (issue 14)."""
    n = config.messages
    with redis_server(config) as url:
        single = asyncio.run(agentcomm_single(url, n))
    with redis_server(config) as url:
        batched = asyncio.run(agentcomm_batched(url, n))
    return [
        Row("redis.agentcomm.single", "agentcomm Redis, one at a time", single, "msg/s", n,
            ratios=[Ratio("redis.raw.single", "raw redis-py single", 0.8)],
            note="await send, receive, ack per message"),
        Row("redis.agentcomm.batched", "agentcomm Redis, by 100", batched, "msg/s", n,
            ratios=[Ratio("redis.raw.batched", "raw redis-py by 100", 0.8)],
            note="send_many(100), then receive_many(100) + ack_many"),
    ]  # fmt: skip


@benchmark("redis request-reply")
def request_reply(config: Config) -> list[Row]:
    """Speed target: agentcomm's round trip p50 <= 0.5 ms between two processes."""
    n = min(config.latency_messages, config.messages)
    with redis_server(config) as url:
        raw_times = asyncio.run(round_trips(url, n, "raw"))
    with redis_server(config) as url:
        ours = asyncio.run(round_trips(url, n, "agentcomm"))
    raw_p50 = statistics.median(raw_times)
    p50, p99 = statistics.median(ours), statistics.quantiles(ours, n=100, method="inclusive")[98]
    return [
        Row("redis.raw.rr.p50", "raw redis-py lists request/reply p50", raw_p50, "ms", n,
            note="LPUSH + BRPOP each way, responder in a child process"),
        Row("redis.agentcomm.rr.p50", "agentcomm Redis request/reply p50", p50, "ms", n,
            at_most=0.5, note=f"request() to a responder in a child process; p99 {p99:.3f} ms"),
    ]  # fmt: skip
