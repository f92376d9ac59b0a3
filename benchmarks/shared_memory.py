"""Shared memory (issue 4): agentcomm's SQLite key-value store against LangGraph's SqliteStore
and diskcache, one operation at a time, in the same run.

Every row opens a fresh database in a new temp directory and spreads its operations over
`KEYS` keys whose values are the harness's 200-byte JSON objects. Puts are timed on an empty
store; gets are timed after every key has been written once (untimed).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agentcomm

from .core import Config, Ratio, Row, benchmark, fresh_dir, payloads, peer
from .mailbox import sqlite_url

KEYS = 1_000
READERS = 8  # tasks in the concurrent-get row
NAMESPACE = "bench"
LG_NAMESPACE = ("bench",)

Workload = tuple[list[str], list[dict[str, Any]]]


def _workload(n: int) -> Workload:
    """`n` operations: op i uses key `i % KEYS` and the i-th 200-byte value."""
    keys = [f"key-{i:04d}" for i in range(min(n, KEYS))]
    objs, _ = payloads(n)
    return keys, objs


def _key(keys: list[str], i: int) -> str:
    return keys[i % len(keys)]


# --- agentcomm ----------------------------------------------------------------------------------


async def _agentcomm_put(config: Config, n: int) -> float:
    """`n` awaited puts, each with `expected_version` = the version the key's last put returned."""
    keys, objs = _workload(n)
    with fresh_dir(config, "kv-agentcomm-put") as d:
        async with agentcomm.connect(sqlite_url(str(d / "agentcomm.db"))) as hub:
            kv = hub.memory(NAMESPACE)
            versions = dict.fromkeys(keys, 0)  # 0: create only if absent
            started = time.perf_counter()
            for i in range(n):
                key = _key(keys, i)
                entry = await kv.put(key, objs[i], expected_version=versions[key])
                versions[key] = entry.version
            elapsed = time.perf_counter() - started
            expected = (n + len(keys) - 1) // len(keys)
            last = await kv.get(keys[0])
            if last is None or last.version != expected:
                raise RuntimeError(f"{keys[0]} at {last and last.version}, expected {expected}")
    return n / elapsed


async def _agentcomm_get(config: Config, n: int, tasks: int) -> float:
    """`n` awaited gets spread over `tasks` concurrent tasks, after every key was put once."""
    keys, objs = _workload(n)
    with fresh_dir(config, "kv-agentcomm-get") as d:
        async with agentcomm.connect(sqlite_url(str(d / "agentcomm.db"))) as hub:
            kv = hub.memory(NAMESPACE)
            for i, key in enumerate(keys):
                await kv.put(key, objs[i])

            async def read(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    if await kv.get(_key(keys, i)) is None:
                        raise RuntimeError(f"{_key(keys, i)} is missing")

            bounds = [n * t // tasks for t in range(tasks + 1)]
            started = time.perf_counter()
            if tasks == 1:
                await read(0, n)
            else:
                await asyncio.gather(*(read(bounds[t], bounds[t + 1]) for t in range(tasks)))
            elapsed = time.perf_counter() - started
    return n / elapsed


# --- peers (synchronous APIs) -------------------------------------------------------------------

Put = Callable[[str, dict[str, Any]], object]
Get = Callable[[str], object]


Opener = Callable[[Path], tuple[Put, Get, Callable[[], None]]]


def _sync_put(config: Config, label: str, n: int, open_: Opener) -> float:
    keys, objs = _workload(n)
    with fresh_dir(config, label) as d:
        put, _, close = open_(d)
        try:
            started = time.perf_counter()
            for i in range(n):
                put(_key(keys, i), objs[i])
            elapsed = time.perf_counter() - started
        finally:
            close()
    return n / elapsed


def _sync_get(config: Config, label: str, n: int, open_: Opener) -> float:
    keys, objs = _workload(n)
    with fresh_dir(config, label) as d:
        put, get, close = open_(d)
        try:
            for i, key in enumerate(keys):
                put(key, objs[i])
            started = time.perf_counter()
            for i in range(n):
                if get(_key(keys, i)) is None:
                    raise RuntimeError(f"{label}: {_key(keys, i)} is missing")
            elapsed = time.perf_counter() - started
        finally:
            close()
    return n / elapsed


def _langgraph(d: Path) -> tuple[Put, Get, Callable[[], None]]:
    """LangGraph's SqliteStore as its docs show (`from_conn_string` + `setup`), on a file, with
    agentcomm's pragmas (WAL, synchronous=NORMAL) so both pay the same durability cost."""
    conn = sqlite3.connect(str(d / "langgraph.db"), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    store = peer("langgraph.store.sqlite").SqliteStore(conn)
    store.setup()

    def put(key: str, value: dict[str, Any]) -> None:
        store.put(LG_NAMESPACE, key, value)

    def get(key: str) -> object:
        return store.get(LG_NAMESPACE, key)

    return put, get, conn.close


def _diskcache(d: Path) -> tuple[Put, Get, Callable[[], None]]:
    """diskcache's Cache on a directory, its defaults (WAL, synchronous=NORMAL, pickled values)."""
    cache = peer("diskcache").Cache(str(d / "diskcache"))
    return cache.set, cache.get, cache.close


# --- rows ---------------------------------------------------------------------------------------

_SHAPE = f"{KEYS:,} keys, one op at a time"


@benchmark("shared memory agentcomm sqlite")
def agentcomm_rows(config: Config) -> list[Row]:
    """Speed targets: put with expected_version >= 10,000/s, get >= 50,000/s."""
    n = config.kv_ops
    put = asyncio.run(_agentcomm_put(config, n))
    get = asyncio.run(_agentcomm_get(config, n, 1))
    many = asyncio.run(_agentcomm_get(config, n, READERS))
    put_ratios = [Ratio("kv.langgraph.put", "LangGraph"), Ratio("kv.diskcache.put", "diskcache")]
    get_ratios = [Ratio("kv.langgraph.get", "LangGraph"), Ratio("kv.diskcache.get", "diskcache")]
    return [
        Row("kv.agentcomm.put", "shared memory: agentcomm SQLite put (expected_version)", put,
            "ops/s", n, at_least=10_000, ratios=put_ratios,
            note=f"await put(key, v, expected_version=last); {_SHAPE}"),
        Row("kv.agentcomm.get", "shared memory: agentcomm SQLite get", get, "ops/s", n,
            at_least=50_000, ratios=get_ratios, note=f"await get(key); {_SHAPE}"),
        Row("kv.agentcomm.get.concurrent", f"shared memory: agentcomm SQLite get, {READERS} tasks",
            many, "ops/s", n, ratios=[Ratio("kv.agentcomm.get", "one at a time")],
            note=f"{READERS} tasks, each awaiting get one at a time"),
    ]  # fmt: skip


@benchmark("shared memory langgraph SqliteStore")
def langgraph_rows(config: Config) -> list[Row]:
    """Peer: LangGraph's SqliteStore, its sync put/get."""
    n = config.kv_ops
    put = _sync_put(config, "kv-langgraph-put", n, _langgraph)
    get = _sync_get(config, "kv-langgraph-get", n, _langgraph)
    note = "sync put/get; WAL + synchronous=NORMAL set as agentcomm's"
    return [
        Row("kv.langgraph.put", "shared memory: LangGraph SqliteStore put", put, "ops/s", n,
            note=note),
        Row("kv.langgraph.get", "shared memory: LangGraph SqliteStore get", get, "ops/s", n,
            note=note),
    ]  # fmt: skip


@benchmark("shared memory diskcache")
def diskcache_rows(config: Config) -> list[Row]:
    """Peer: diskcache's Cache, set/get."""
    n = config.kv_ops
    put = _sync_put(config, "kv-diskcache-put", n, _diskcache)
    get = _sync_get(config, "kv-diskcache-get", n, _diskcache)
    note = "defaults (WAL, synchronous=NORMAL, values pickled)"
    return [
        Row("kv.diskcache.put", "shared memory: diskcache Cache set", put, "ops/s", n, note=note),
        Row("kv.diskcache.get", "shared memory: diskcache Cache get", get, "ops/s", n, note=note),
    ]  # fmt: skip
