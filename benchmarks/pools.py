"""Agent pools (issue 11): op cost against the size of the pool's log, the seed's
"replay the log on every call" design as a reference, and send throughput.

Op cost: two SQLite files open at once, one whose pools hold 100 records and one whose pool
holds `--pool-records` (default 100,000) real records written through the public API (`emit`
from many tasks, so group commit batches them). Each pool has a sender run and 10 member runs
holding topic `code`. The four operations (a send with an idempotency key to `code`, a join of
a new run, a snapshot, a `wait_for` registration) are timed one at a time, in chunks that
alternate between the two files so machine noise hits both alike; each chunk on the small file
gets a fresh 100-record pool (so that pool never holds more than 100 + chunk records), and after
each chunk the joined runs leave and the wakes are cancelled (untimed) so that members and
pending wakes are the same in both cases. A row is the median µs per op.

Reference: `SeedStore` below does what the seed store (`000_3d13934babf7f420.txt`, a Rust
SQLite agent-pool store) does: every record is a JSON row whose seq is `MAX(seq) + 1`, and every
call first replays the pool's whole log to rebuild membership and dedupe state. Its send is
timed a few times at the same number of records.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import agentcomm
from agentcomm import EventFilter, ToTopic

from .core import Config, Ratio, Row, benchmark, fresh_dir, payload
from .mailbox import sqlite_url

MEMBERS = 10  # runs holding the topic every timed send goes to
TOPIC = "code"
SENDER = "lead@r0"
SMALL = 100  # records in the small pools
CHUNK = 20  # ops of one kind timed in a row before switching files
FILL_TASKS = 64  # concurrent emitters filling a pool's log
SENDERS = 8  # concurrent sender tasks in the throughput rows
SEED_CALLS = 5  # sends timed on the reference store
KINDS = ("send", "join", "snapshot", "wait_for")
_LABELS = {
    "send": "send (idempotency key) to a topic of 10",
    "join": "join of a new run",
    "snapshot": "snapshot",
    "wait_for": "wait_for registration",
}
_NEVER = EventFilter(types={"never"})  # a wake that stays registered until cancelled
CRITICS = [f"critic@r{k}" for k in range(MEMBERS)]


async def _setup_pool(hub: agentcomm.Hub, name: str, records: int) -> agentcomm.Pool:
    """A pool with the sender and 10 topic members, its log filled to `records` records by
    emits of 200-byte payloads from FILL_TASKS concurrent tasks."""
    pool = await hub.pool(name)
    await pool.join(SENDER, agent="lead")
    for run in CRITICS:
        await pool.join(run, agent="critic", topics=[TOPIC])
    left = records - (await pool.snapshot()).cursor
    if left > 0:
        tasks = min(FILL_TASKS, left)

        async def emitter(t: int) -> None:
            for i in range(t, left, tasks):
                await pool.emit(SENDER, "tick", payload(i))

        await asyncio.gather(*(emitter(t) for t in range(tasks)))
    head = (await pool.snapshot()).cursor
    if head != max(records, 2 + MEMBERS):  # opened + the joins
        raise RuntimeError(f"pool {name} holds {head} records, expected {records}")
    return pool


async def _chunk(pool: agentcomm.Pool, kind: str, tag: str, n: int) -> list[float]:
    """Time `n` ops of `kind` on `pool` one at a time; then undo joins and wakes (untimed)."""
    times: list[float] = []
    joined: list[str] = []
    wakes: list[agentcomm.Wake] = []
    for i in range(n):
        started = time.perf_counter()
        if kind == "send":
            receipt = await pool.send(
                SENDER, to=ToTopic(TOPIC), data=payload(i), idempotency_key=f"{tag}.{i}"
            )
            times.append(time.perf_counter() - started)
            if receipt.status != "delivered" or len(receipt.delivered_to) != MEMBERS:
                raise RuntimeError(f"a send was not delivered to {MEMBERS} members: {receipt}")
        elif kind == "join":
            run = f"new{tag}x{i}@r"
            await pool.join(run, agent="newcomer", topics=["other"])
            times.append(time.perf_counter() - started)
            joined.append(run)
        elif kind == "snapshot":
            snap = await pool.snapshot()
            times.append(time.perf_counter() - started)
            if len(snap.members) != MEMBERS + 1:
                raise RuntimeError(f"the snapshot has {len(snap.members)} members")
        else:
            wake = await pool.wait_for(SENDER, _NEVER, replay=False)
            times.append(time.perf_counter() - started)
            wakes.append(wake)
    for run in joined:
        await pool.leave(run)
    for wake in wakes:
        await wake.cancel()
    return times


def _plan(config: Config) -> tuple[int, int]:
    """Chunks, and ops per chunk, that time at least `--pool-ops` ops of each kind."""
    return math.ceil(config.pool_ops / CHUNK), min(CHUNK, config.pool_ops)


async def _op_costs(config: Config) -> tuple[dict[tuple[str, int], float], float]:
    """Median seconds per op of each kind on the small and the big pool; and the fill rate."""
    big_n = config.pool_records
    chunks, per_chunk = _plan(config)
    times: dict[tuple[str, int], list[float]] = {(k, s): [] for k in KINDS for s in (0, 1)}
    with fresh_dir(config, "pools-small") as ds, fresh_dir(config, "pools-big") as db:
        async with (
            agentcomm.connect(sqlite_url(str(ds / "agentcomm.db"))) as small_hub,
            agentcomm.connect(sqlite_url(str(db / "agentcomm.db"))) as big_hub,
        ):
            smalls = {
                (c, k): await _setup_pool(small_hub, f"small-{c}-{k}", SMALL)
                for c in range(chunks)
                for k in KINDS
            }
            started = time.perf_counter()
            big = await _setup_pool(big_hub, "big", big_n)
            fill_rate = big_n / (time.perf_counter() - started)
            await asyncio.sleep(0.2)  # let the writers' idle WAL checkpoints run
            for c in range(chunks):
                for kind in KINDS:
                    order = (0, 1) if (c + KINDS.index(kind)) % 2 == 0 else (1, 0)
                    for s in order:
                        pool = smalls[(c, kind)] if s == 0 else big
                        got = await _chunk(pool, kind, f"{c}", per_chunk)
                        times[(kind, s)] += got
    return {key: statistics.median(v) for key, v in times.items()}, fill_rate


@benchmark("pools op cost vs history sqlite", repeat=False)
def op_cost_rows(config: Config) -> list[Row]:
    """Target: each op at `--pool-records` records costs at most 1.2x what it costs at 100."""
    medians, fill_rate = asyncio.run(_op_costs(config))
    big_n = config.pool_records
    chunks, per_chunk = _plan(config)
    ops = chunks * per_chunk
    rows: list[Row] = []
    for kind in KINDS:
        small_key, big_key = f"pools.cost.{kind}.small", f"pools.cost.{kind}.big"
        rows.append(
            Row(small_key, f"pools: SQLite {_LABELS[kind]}, {SMALL} records",
                medians[(kind, 0)] * 1e6, "µs", ops,
                note=f"median of {ops} awaited ops; a fresh {SMALL}-record pool per {CHUNK} ops"),
        )  # fmt: skip
        note = f"median of {ops} awaited ops, alternating with the {SMALL}-record rows"
        if kind == "send":
            note += f"; log filled by {FILL_TASKS} emitting tasks at {fill_rate:,.0f} records/s"
        rows.append(
            Row(big_key, f"pools: SQLite {_LABELS[kind]}, {big_n:,} records",
                medians[(kind, 1)] * 1e6, "µs", ops,
                ratios=[Ratio(small_key, f"at {SMALL} records", at_most=1.2)], note=note),
        )  # fmt: skip
    return rows


# --- the seed's design, as a reference ----------------------------------------------------------


@dataclass
class _SeedState:
    """What a replay of the reference store's log rebuilds."""

    config: dict[str, Any] | None = None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    last: int = 0


class SeedStore:
    """A pool store built the way the seed builds it: one table of JSON records, each appended
    at `MAX(seq) + 1` of its pool, and every call replaying the pool's whole log into state
    (members, receipts by idempotency key) before it decides and appends."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # agentcomm's durability, not the seed's FULL
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pool_records (pool TEXT NOT NULL, seq INTEGER NOT NULL,"
            " kind TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (pool, seq))"
        )
        self._conn = conn
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(dict[str, Any]).decode

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _append(self, pool: str, kind: str, body: dict[str, Any]) -> int:
        seq: int = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM pool_records WHERE pool = ?", (pool,)
        ).fetchone()[0]
        self._conn.execute(
            "INSERT INTO pool_records (pool, seq, kind, body) VALUES (?, ?, ?, ?)",
            (pool, seq, kind, self._encode(body).decode()),
        )
        return seq

    def _write(self, pool: str, kind: str, body: dict[str, Any]) -> int:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            seq = self._append(pool, kind, body)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return seq

    def replay(self, pool: str) -> _SeedState:
        """Rebuild the pool's state from its whole log."""
        state = _SeedState()
        rows = self._conn.execute(
            "SELECT seq, kind, body FROM pool_records WHERE pool = ? ORDER BY seq", (pool,)
        )
        for seq, kind, body in rows:
            record = self._decode(body)
            state.last = seq
            if kind == "opened":
                state.config = record["config"]
            elif kind == "member_joined":
                state.members[record["run"]] = record
            elif kind == "member_left":
                state.members.pop(record["run"], None)
            elif kind == "message" and record.get("key") is not None:
                state.receipts[record["key"]] = record["receipt"]
        return state

    def open(self, pool: str) -> None:
        """Create the pool unless its log has an `opened` record."""
        if self.replay(pool).config is None:
            self._write(pool, "opened", {"config": {"required_policy_refs": []}})

    def join(self, pool: str, run: str, agent: str, topics: list[str]) -> int:
        """Add a member."""
        self.replay(pool)
        return self._write(pool, "member_joined", {"run": run, "agent": agent, "topics": topics})

    def fill(self, pool: str, run: str, n: int) -> None:
        """Append `n` event records after the pool's last one, in one transaction (the rows
        `_append` would write one by one, numbered here to fill 100,000 of them quickly)."""
        self._conn.execute("BEGIN IMMEDIATE")
        last: int = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM pool_records WHERE pool = ?", (pool,)
        ).fetchone()[0]
        self._conn.executemany(
            "INSERT INTO pool_records (pool, seq, kind, body) VALUES (?, ?, 'event', ?)",
            (
                (
                    pool,
                    last + 1 + i,
                    self._encode({"run": run, "type": "tick", "data": payload(i)}).decode(),
                )
                for i in range(n)
            ),
        )
        self._conn.execute("COMMIT")

    def send(self, pool: str, sender: str, topic: str, data: Any, key: str) -> dict[str, Any]:
        """Replay, dedupe by key, address the topic's members, append the message + receipt."""
        state = self.replay(pool)
        if sender not in state.members:
            raise RuntimeError(f"{sender} is not a member")
        if key in state.receipts:
            return {**state.receipts[key], "duplicate": True}
        to = sorted(run for run, m in state.members.items() if topic in m["topics"])
        receipt: dict[str, Any] = {"status": "delivered" if to else "failed", "delivered_to": to}
        body = {"run": sender, "to": {"topic": topic}, "data": data, "key": key}
        receipt["seq"] = self._write(pool, "message", {**body, "receipt": receipt})
        return receipt


def _seed_send_cost(config: Config) -> float:
    """Median seconds per send on the reference store holding `--pool-records` records."""
    n = config.pool_records
    with fresh_dir(config, "pools-seed") as d:
        store = SeedStore(d / "seed.db")
        try:
            store.open("big")
            store.join("big", SENDER, "lead", [])
            for run in CRITICS:
                store.join("big", run, "critic", [TOPIC])
            store.fill("big", SENDER, n - 12)
            times: list[float] = []
            for i in range(SEED_CALLS):
                started = time.perf_counter()
                receipt = store.send("big", SENDER, TOPIC, payload(i), f"seed.{i}")
                times.append(time.perf_counter() - started)
                if len(receipt["delivered_to"]) != MEMBERS:
                    raise RuntimeError(f"the reference send reached {receipt['delivered_to']}")
        finally:
            store.close()
    return statistics.median(times)


@benchmark("pools seed design reference", repeat=False)
def seed_rows(config: Config) -> list[Row]:
    """Reference: the seed's replay-every-call design; agentcomm must be >= 100x faster."""
    n = config.pool_records
    cost = _seed_send_cost(config)
    return [
        Row("pools.seed.send", f"pools: seed design send (replay every call), {n:,} records",
            cost * 1e6, "µs", SEED_CALLS,
            ratios=[Ratio("pools.cost.send.big", "agentcomm's send", at_least=100)],
            note="JSON log, MAX(seq)+1, the whole log replayed (msgspec decode) once before each "
            "send, no mailbox delivery; the ratio is agentcomm's speed ÷ the reference's"),
    ]  # fmt: skip


# --- throughput ---------------------------------------------------------------------------------


async def _throughput(url: str, n: int) -> float:
    """Pool sends per second to a topic of 10 members from SENDERS concurrent sender tasks."""
    async with agentcomm.connect(url) as hub:
        pool = await hub.pool("throughput")
        senders = [f"lead@r{t}" for t in range(SENDERS)]
        for run in senders:
            await pool.join(run, agent="lead")
        for run in CRITICS:
            await pool.join(run, agent="critic", topics=[TOPIC])

        async def sender(t: int) -> None:
            for i in range(t, n, SENDERS):
                receipt = await pool.send(senders[t], to=ToTopic(TOPIC), data=payload(i))
                if len(receipt.delivered_to) != MEMBERS:
                    raise RuntimeError(f"a send was not delivered to {MEMBERS} members")

        started = time.perf_counter()
        await asyncio.gather(*(sender(t) for t in range(SENDERS)))
        elapsed = time.perf_counter() - started
        depth = await hub.queue_depth("critic@r0")
        if depth != n:
            raise RuntimeError(f"critic@r0 holds {depth} messages, expected {n}")
    return n / elapsed


_THROUGHPUT_NOTE = f"{SENDERS} tasks, each awaiting one send at a time (no idempotency key)"


@benchmark("pools throughput sqlite")
def throughput_sqlite(config: Config) -> list[Row]:
    """Informative: pool sends/s to a 10-member topic on SQLite."""
    n = config.pool_sends
    with fresh_dir(config, "pools-throughput") as d:
        rate = asyncio.run(_throughput(sqlite_url(str(d / "agentcomm.db")), n))
    return [
        Row("pools.throughput.sqlite", "pools: SQLite sends to a topic of 10, 8 tasks", rate,
            "msg/s", n, note=f"{_THROUGHPUT_NOTE}; x{MEMBERS} deliveries"),
    ]  # fmt: skip


def _skipped(why: str) -> list[Row]:
    return [
        Row("pools.throughput.redis", "pools: Redis sends to a topic of 10, 8 tasks", math.nan,
            "skipped", note=why),
    ]  # fmt: skip


@benchmark("pools throughput redis")
def throughput_redis(config: Config) -> list[Row]:
    """Informative: pool sends/s to a 10-member topic on Redis (skipped without its backend)."""
    if importlib.util.find_spec("agentcomm._backends.redis.pools") is None:
        return _skipped("skipped: this branch has no Redis pool backend (redis/pools.py) yet")
    from .on_redis import redis_server

    n = config.pool_sends
    with redis_server(config) as url:
        try:
            rate = asyncio.run(_throughput(url, n))
        except agentcomm.ConfigurationError as exc:
            return _skipped(f"skipped: {exc}")
    return [
        Row("pools.throughput.redis", "pools: Redis sends to a topic of 10, 8 tasks", rate,
            "msg/s", n, ratios=[Ratio("pools.throughput.sqlite", "SQLite")],
            note=f"{_THROUGHPUT_NOTE}; x{MEMBERS} deliveries; fresh redis-server"),
    ]  # fmt: skip
