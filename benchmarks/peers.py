"""Peers doing the same job in this process: put every message, then get + ack every message.

Each peer is used as its documentation shows, with its own defaults (both run SQLite in WAL).
The drain also gives each peer's backlog ratio (last 10% of the get + ack phase over the first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .core import Config, Row, benchmark, drain_ratio, fresh_dir, payloads, peer

Put = Callable[[Any], object]
GetAck = Callable[[], None]


def _measure(
    config: Config,
    label: str,
    setup: Callable[[str], tuple[Put, GetAck, Callable[[], None]]],
    items: list[Any],
) -> tuple[float, float, float, tuple[float, float, float]]:
    """End-to-end, put and get+ack rates, and the drain's (first, last, ratio)."""
    n = len(items)
    with fresh_dir(config, label) as d:
        put, get_ack, close = setup(str(d))
        try:
            started = time.perf_counter()
            for item in items:
                put(item)
            drain_start = time.perf_counter()
            stamps: list[float] = []
            for _ in range(n):
                get_ack()
                stamps.append(time.perf_counter())
        finally:
            close()
    put_time = drain_start - started
    drain_time = stamps[-1] - drain_start
    return (
        n / (put_time + drain_time),
        n / put_time,
        n / drain_time,
        drain_ratio(stamps, drain_start),
    )


def _persistqueue(directory: str) -> tuple[Put, GetAck, Callable[[], None]]:
    q = peer("persistqueue").SQLiteAckQueue(directory)

    def get_ack() -> None:
        item = q.get(block=False, raw=True)
        q.ack(id=item["pqid"])

    return q.put, get_ack, q.close


def _litequeue(directory: str) -> tuple[Put, GetAck, Callable[[], None]]:
    q = peer("litequeue").LiteQueue(f"{directory}/litequeue.db")

    def get_ack() -> None:
        msg = q.pop()
        if msg is None:
            raise RuntimeError("litequeue returned nothing from a non-empty queue")
        q.done(msg.message_id)

    return q.put, get_ack, q.close


def _rows(
    key: str, name: str, n: int, result: tuple[float, float, float, tuple[float, float, float]]
) -> list[Row]:
    total, put_rate, drain_rate, (first, last, ratio) = result
    return [
        Row(f"peer.{key}", name, total, "msg/s", n,
            note=f"put {put_rate:,.0f}/s, then get+ack {drain_rate:,.0f}/s"),
        Row(f"peer.{key}.backlog", f"{name} backlog, last/first 10%", ratio, "x", n,
            note=f"get + ack: first {first:,.0f}/s, last {last:,.0f}/s"),
    ]  # fmt: skip


@benchmark("persist-queue", repeat=False)
def persist_queue(config: Config) -> list[Row]:
    """persist-queue's SQLiteAckQueue: put(obj) (pickled), get(), ack()."""
    objs, _ = payloads(config.peer_messages)
    result = _measure(config, "persistqueue", _persistqueue, list(objs))
    return _rows("persistqueue", "persist-queue SQLiteAckQueue", config.peer_messages, result)


@benchmark("litequeue", repeat=False)
def lite_queue(config: Config) -> list[Row]:
    """litequeue: put(str) of the JSON text, pop(), done()."""
    _, encoded = payloads(config.peer_messages)
    texts = [e.decode() for e in encoded]
    result = _measure(config, "litequeue", _litequeue, texts)
    return _rows("litequeue", "litequeue", config.peer_messages, result)
