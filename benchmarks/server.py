"""The server on loopback (SQLite behind it) against the Redis backend used directly.

The server runs as `agentcomm serve` in a child process; the clients are hubs of
`connect("http://127.0.0.1:PORT", token=...)` in this process. The same three workloads run on
`redis://` directly: send + receive + ack one at a time, the same with 16 concurrent clients
(each its own hub, agent pair and messages), and request / reply round trips (p50 / p99).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

import agentcomm

from .core import Config, Ratio, Row, benchmark, fresh_dir, payload
from .on_redis import redis_server

CLIENTS = 16


@contextmanager
def served(config: Config) -> Iterator[tuple[str, str]]:
    """A server over a fresh SQLite store; yields (url, admin token)."""
    with fresh_dir(config, "server") as d:
        store = f"sqlite:///{d / 'server.db'}"
        token = asyncio.run(_admin_token(store + "?create=1"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        code = "from agentcomm._entry import main; main()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", store, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.1)
            yield url, token
        finally:
            proc.terminate()
            proc.wait(30)


async def _admin_token(store: str) -> str:
    from agentcomm._server.authz import Principal
    from agentcomm._server.tokens import TokenStore

    async with agentcomm.connect(store, background=False) as hub:
        p = Principal(agents=["*"], publish=[">"], subscribe=[">"], kv={"*": "rw"}, admin=True)
        token, _ = await TokenStore(hub._ctx.backend).create(p)
        return token


async def _cycle(url: str, token: str | None, n: int, tag: str) -> float:
    """Send, receive and ack `n` messages one at a time; returns seconds."""
    async with agentcomm.connect(url, token=token) as hub:
        src, dst = await hub.agent(f"src-{tag}"), await hub.agent(f"dst-{tag}")
        started = time.perf_counter()
        for i in range(n):
            await src.send(dst.name, payload(i))
            msg = await dst.receive(timeout=30)
            assert msg is not None
            await msg.ack()
        return time.perf_counter() - started


async def _concurrent(url: str, token: str | None, n: int) -> float:
    per = max(1, n // CLIENTS)
    started = time.perf_counter()
    await asyncio.gather(*(_cycle(url, token, per, f"c{i}") for i in range(CLIENTS)))
    return per * CLIENTS / (time.perf_counter() - started)


async def _requests(url: str, token: str | None, n: int) -> list[float]:
    async with agentcomm.connect(url, token=token) as hub:
        client, worker = await hub.agent("client"), await hub.agent("worker")

        async def serve() -> None:
            while True:
                msg = await worker.receive()
                if msg is None or msg.data == "stop":
                    if msg is not None:
                        await msg.ack()
                    return
                await msg.reply(msg.data)

        task = asyncio.ensure_future(serve())
        times = []
        for i in range(n + 10):
            started = time.perf_counter()
            await client.request("worker", i, timeout=30)
            if i >= 10:
                times.append((time.perf_counter() - started) * 1000)
        await client.send("worker", "stop")
        await task
        return times


def _measure(url: str, token: str | None, n: int, n_rt: int) -> tuple[float, float, list[float]]:
    single = n / asyncio.run(_cycle(url, token, n, "one"))
    concurrent = asyncio.run(_concurrent(url, token, n))
    return single, concurrent, asyncio.run(_requests(url, token, n_rt))


@benchmark("server over http vs redis direct")
def server_rows(config: Config) -> list[Row]:
    """Through the server on loopback (SQLite behind) beside Redis used directly."""
    n = max(64, min(config.messages // 10, 2000))
    n_rt = max(20, min(config.latency_messages, 500))
    with served(config) as (url, token):
        s1, s16, rt = _measure(url, token, n, n_rt)
    with redis_server(config) as rurl:
        r1, r16, rrt = _measure(rurl, None, n, n_rt)
    rows = []
    for key, name, value, base, unit in (
        ("single", "send+receive+ack one at a time", s1, r1, "msg/s"),
        ("concurrent16", f"send+receive+ack, {CLIENTS} concurrent clients", s16, r16, "msg/s"),
        ("request.p50", "request/reply p50", statistics.median(rt), statistics.median(rrt), "ms"),
        ("request.p99", "request/reply p99", statistics.quantiles(rt, n=100)[98],
         statistics.quantiles(rrt, n=100)[98], "ms"),
    ):  # fmt: skip
        rows.append(Row(f"redis.direct.{key}", f"redis:// directly: {name}", base, unit, n))
        rows.append(Row(
            f"agentcomm.server.{key}", f"server on loopback (SQLite): {name}", value, unit, n,
            ratios=[Ratio(f"redis.direct.{key}", "redis direct")],
            note="agentcomm serve child process; http client hubs in the bench process",
        ))  # fmt: skip
    return rows
