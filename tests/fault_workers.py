"""The child processes of the crash-and-fault campaign (tests/test_faults_*.py).

Run as `python fault_workers.py ROLE URL LOG NAME [options]`. Each child appends one line per
event to its own LOG, with one `os.write` per event, so a kill -9 leaves whole lines only
(`--tasks N` runs the role in N tasks of one hub, their lines interleaved):

    ready                       the hub is open; from now on the child may be killed
    S <id>                      `send` (or the `send_many` of the last B line) returned <id>
    B <tag> <n>                 a `send_many` of n messages tagged <tag> is about to be called
    R <id> <t0> <attempt> <pos> `receive_many` (called at monotonic time t0) delivered <id>;
                                <pos> is `<tag>/<k>`, its place in a batch ("-": a single send)
    a <id>                      `ack` of <id> is about to be called
    A <id> <t1>                 the ack of <id> returned at monotonic time t1
    L <id>                      the ack raised LeaseLost
    U <id>                      the ack raised BackendUnavailable, then LeaseLost: outcome unknown
    X <call>                    <call> raised BackendUnavailable (Redis outages; retried)

`time.monotonic()` is one clock for every process of the machine, so the parent can order a
delivery after another process's ack. Payloads are 200-byte JSON objects naming the sender,
its counter and (for `send_many`) the batch tag and the index in the batch.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import agentcomm

T = TypeVar("T")

PAYLOAD_BYTES = 200
CONSUMER = "consumer"


def payload(name: str, i: int, tag: str = "", k: int = 0) -> dict[str, Any]:
    """A JSON object of exactly PAYLOAD_BYTES bytes (compact encoding)."""
    body: dict[str, Any] = {"p": name, "i": i, "b": tag, "k": k, "pad": ""}
    size = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * max(PAYLOAD_BYTES - size, 0)
    return body


def _tag(data: Any) -> str:
    return f"{data['b']}/{data['k']}" if isinstance(data, dict) and data.get("b") else "-"


class Log:
    """Append-only event log; every `write` is one system call."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, *lines: str) -> None:
        if lines:
            os.write(self._fd, ("\n".join(lines) + "\n").encode())


class Worker:
    """One child: its hub's agent, its log, and how it meets an unavailable backend."""

    def __init__(self, args: argparse.Namespace, hub: agentcomm.Hub, me: agentcomm.Agent) -> None:
        self.args = args
        self.hub = hub
        self.me = me
        self.log = Log(args.log)

    async def call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """`await make()`; with --retry, BackendUnavailable is logged and the call made again
        (a Redis outage; with --idempotent a send is retried with the same key); without it,
        it escapes and the child dies (a SQLite failure)."""
        while True:
            try:
                return await make()
            except agentcomm.BackendUnavailable:
                if not self.args.retry:
                    raise
                self.log.write(f"X {what}")
                await asyncio.sleep(0.05)

    async def throttle(self) -> None:
        """Keep the consumer's backlog bounded, so a long soak drains in bounded time."""
        while True:
            depth = await self.call("queue_depth", lambda: self.hub.queue_depth(CONSUMER))
            if depth <= self.args.max_backlog:
                return
            await asyncio.sleep(0.05)

    async def produce(self, task: int = 0) -> None:
        name = self.me.name if task == 0 else f"{self.me.name}.{task}"
        for i in range(1 << 62):
            if i % 50 == 0:
                await self.throttle()
            data = payload(name, i)
            key = f"{name}.{os.getpid()}.{i}" if self.args.idempotent else None
            send = functools.partial(
                self.me.send, CONSUMER, data, max_attempts=1000, idempotency_key=key
            )
            sent = await self.call("send", send)
            self.log.write(f"S {sent}")

    async def produce_batches(self, task: int = 0) -> None:
        for b in range(1 << 62):
            await self.throttle()
            n = random.randint(1, self.args.batch)
            tag = f"{self.me.name}.{task}.{os.getpid()}.{b}"
            batch = [
                agentcomm.Outgoing(
                    to=CONSUMER,
                    data=payload(self.me.name, b, tag, k),
                    max_attempts=1000,
                    idempotency_key=f"{tag}/{k}" if self.args.idempotent else None,
                )
                for k in range(n)
            ]
            self.log.write(f"B {tag} {n}")
            ids = await self.call("send_many", functools.partial(self.me.send_many, batch))
            self.log.write(*(f"S {i}" for i in ids))

    async def consume(self, task: int = 0) -> None:
        lease = self.args.lease
        while True:
            t0 = time.monotonic()
            msgs = await self.call(
                "receive", lambda: self.me.receive_many(self.args.batch, timeout=1.0, lease=lease)
            )
            self.log.write(*(f"R {m.id} {t0!r} {m.attempt} {_tag(m.data)}" for m in msgs))
            if len(msgs) > 1 and random.random() < 0.3:
                # LeaseLost from ack_many names up to 10 ids: chunks of 10 keep the log exact
                for i in range(0, len(msgs), 10):
                    chunk = msgs[i : i + 10]
                    await self.ack(chunk, functools.partial(self.me.ack_many, chunk))
            else:
                for m in msgs:
                    await self.ack([m], m.ack)

    async def ack(self, msgs: list[agentcomm.Message], ack: Callable[[], Awaitable[None]]) -> None:
        """Ack, logging intent before and the outcome after; retried while unavailable."""
        ids = [m.id for m in msgs]
        self.log.write(*(f"a {i}" for i in ids))
        unavailable = False
        while True:
            try:
                await ack()
            except agentcomm.LeaseLost as exc:
                # ack_many acks the others; its message names the ones it could not ack
                lost = [i for i in ids if i in str(exc)] if len(ids) > 1 else ids
                done = time.monotonic()
                mark = "U" if unavailable else "L"
                self.log.write(*(f"{mark} {i}" if i in lost else f"A {i} {done!r}" for i in ids))
                return
            except agentcomm.BackendUnavailable:
                if not self.args.retry:
                    raise
                unavailable = True
                self.log.write("X ack")
                await asyncio.sleep(0.05)
                continue
            done = time.monotonic()
            self.log.write(*(f"A {i} {done!r}" for i in ids))
            return


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["producer", "batcher", "consumer"])
    parser.add_argument("url")
    parser.add_argument("log")
    parser.add_argument("name")
    parser.add_argument("--retry", action="store_true", help="retry on BackendUnavailable")
    parser.add_argument("--idempotent", action="store_true", help="send with idempotency keys")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--max-backlog", type=int, default=3000)
    parser.add_argument(
        "--tasks", type=int, default=1, help="tasks doing the role at once on the one hub (W1)"
    )
    args = parser.parse_args()
    hub = agentcomm.connect(args.url)
    while True:  # a Redis outage may last through this child's start
        try:
            await hub.open()
            me = await hub.agent(CONSUMER if args.role == "consumer" else args.name)
            break
        except agentcomm.BackendUnavailable:
            if not args.retry:
                raise
            await hub.aclose()
            hub = agentcomm.connect(args.url)
            await asyncio.sleep(0.1)
    worker = Worker(args, hub, me)
    worker.log.write("ready")
    async with hub:
        role = {
            "producer": worker.produce,
            "batcher": worker.produce_batches,
            "consumer": worker.consume,
        }
        await asyncio.gather(*(role[args.role](t) for t in range(args.tasks)))


if __name__ == "__main__":
    asyncio.run(main())
