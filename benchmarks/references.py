"""References on SQLite: store + resolve throughput of 1 MB blobs, and one large payload sent by
reference to many recipients (one store, not one per recipient)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import agentcomm
from agentcomm._references import Policy

from .core import Config, Row, benchmark, fresh_dir
from .mailbox import sqlite_url

BLOBS = 64
BLOB_BYTES = 1_000_000
FANOUT = 10
FANOUT_BYTES = 10_000_000
MB = 1_000_000


def _json_like(n: int, seed: int) -> bytes:
    """`n` bytes of a JSON tool result: repetitive structure, varying values (compresses ~3x)."""
    noise = os.urandom(n // 4).hex()
    rows = []
    size = i = 0
    while size < n:
        row = f'{{"row":{seed}{i},"name":"item-{i}","value":"{noise[i * 40 : i * 40 + 40]}"}},'
        rows.append(row)
        size += len(row)
        i += 1
    return ("[" + "".join(rows))[:n].encode()


async def _store_resolve(config: Config, kind: str) -> tuple[float, float, int]:
    if kind == "random":
        blobs = [os.urandom(BLOB_BYTES) for _ in range(BLOBS)]
    else:
        blobs = [_json_like(BLOB_BYTES, i) for i in range(BLOBS)]
    with fresh_dir(config, "refs") as d:
        async with agentcomm.connect(sqlite_url(str(d / "refs.db"))) as hub:
            started = time.perf_counter()
            refs = [await hub.refs.store(b) for b in blobs]
            stored = time.perf_counter() - started
            started = time.perf_counter()
            for ref, blob in zip(refs, blobs, strict=True):
                if len(await hub.refs.resolve(ref)) != len(blob):
                    raise RuntimeError("a resolved blob differs in size")
            resolved = time.perf_counter() - started
            stored_bytes = (await hub.refs.stats()).stored_bytes
    total = BLOBS * BLOB_BYTES / MB
    return total / stored, total / resolved, stored_bytes


async def _fanout(config: Config, recipients: int, policy: Policy) -> tuple[float, int]:
    """Seconds to send one 10 MB payload to `recipients` agents (one `send_many`), and the
    bytes the database holds for it afterwards (message payloads + blob chunks)."""
    payload = os.urandom(FANOUT_BYTES)
    with fresh_dir(config, "fanout") as d:
        path = d / "fanout.db"
        # by value, the 10 MB payload is above the default Limits.max_payload (4 MiB)
        limits = agentcomm.Limits(max_payload=2 * FANOUT_BYTES)
        url = sqlite_url(str(path))
        async with agentcomm.connect(url, default_policy=policy, limits=limits) as hub:
            sender = await hub.agent("sender")
            names = [f"r{i}" for i in range(recipients)]
            for name in names:
                await hub.agent(name)
            started = time.perf_counter()
            await sender.send_many([agentcomm.Outgoing(to=n, data=payload) for n in names])
            elapsed = time.perf_counter() - started
            with sqlite3.connect(path) as conn:  # what the file holds for it, read directly
                stored = sum(
                    conn.execute(f"SELECT coalesce(SUM(length(data)), 0) FROM {table}").fetchone()[
                        0
                    ]
                    for table in ("messages", "ref_chunks")
                )
            for name in names:  # the payload arrives whole
                msg = await (await hub.agent(name)).receive(timeout=10)
                if msg is None or len(msg.data) != FANOUT_BYTES:
                    raise RuntimeError("a recipient did not get the payload")
    return elapsed, stored


@benchmark("references sqlite store/resolve")
def store_resolve(config: Config) -> list[Row]:
    """Speed target: >= 200 MB/s each way for 1 MB payloads."""
    rows = []
    for kind, label in (("random", "random bytes"), ("json", "JSON-like, compressible")):
        put, get, stored = asyncio.run(_store_resolve(config, kind))
        ratio = stored / (BLOBS * BLOB_BYTES)
        note = f"{BLOBS} x 1 MB {label}; stored {ratio:.2f}x the original"
        rows += [
            Row(f"refs.store.{kind}", f"refs store 1 MB, {label}", put, "MB/s", BLOBS,
                at_least=200, note=note + "; hash + compress (kept if smaller) + insert"),
            Row(f"refs.resolve.{kind}", f"refs resolve 1 MB, {label}", get, "MB/s", BLOBS,
                at_least=200, note=note + "; read + decompress + SHA-256 check"),
        ]  # fmt: skip
    return rows


@benchmark("references fan-out")
def fanout(config: Config) -> list[Row]:
    """A 10 MB payload to 10 recipients by reference costs about one store (time and bytes)."""
    one, one_bytes = asyncio.run(_fanout(config, 1, "reference"))
    ten, ten_bytes = asyncio.run(_fanout(config, FANOUT, "reference"))
    by_value, value_bytes = asyncio.run(_fanout(config, FANOUT, "value"))
    shape = f"one send_many of a 10 MB random payload to {FANOUT} recipients"
    return [
        Row("refs.fanout.time", f"refs fan-out x{FANOUT}: time vs 1 recipient", ten / one, "x",
            FANOUT, at_most=1.5,
            note=f"{shape}: {ten * 1000:.0f} ms; to 1: {one * 1000:.0f} ms; "
                 f"by value: {by_value * 1000:.0f} ms"),
        Row("refs.fanout.bytes", f"refs fan-out x{FANOUT}: bytes stored vs payload",
            ten_bytes / FANOUT_BYTES, "x", FANOUT, at_most=1.01,
            note=f"{ten_bytes / MB:.2f} MB stored (to 1: {one_bytes / MB:.2f} MB; "
                 f"by value: {value_bytes / MB:.1f} MB)"),
    ]  # fmt: skip
