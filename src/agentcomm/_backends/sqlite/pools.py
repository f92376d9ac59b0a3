"""Agent pools on SQLite: the pool engine's tables, each operation one write transaction.

The state tables (pools, members and their topic index, receipts by message id and key, wakes
by status, run and deadline) are kept current as records are appended, so every operation is a
handful of index lookups; the log (`pool_records`, keyed by pool and seq) is read only by
`pool_records` pages and by a wake registered with `replay=True`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from ..._pool_records import (
    MemberRecord,
    NewPoolMessage,
    PoolPage,
    PoolSnapshotRecord,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from ..._records import NewMessage
from ..._settings import Retention
from .. import pool_engine as engine
from ..contracts import PoolStore
from ..pool_engine import PoolRow
from .access import Access
from .mailbox import SQLiteMailboxes, row_tuple
from .schema import FeatureSchema

_T = TypeVar("_T")

_DDL = """
CREATE TABLE IF NOT EXISTS pools (
    name        TEXT PRIMARY KEY,
    config      BLOB NOT NULL,
    created_at  REAL NOT NULL,
    head        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS pool_counters (
    pool   TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (pool, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS pool_members (
    pool    TEXT NOT NULL,
    run     TEXT NOT NULL,
    agent   TEXT NOT NULL,
    body    BLOB NOT NULL,
    PRIMARY KEY (pool, run)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pool_members_agent ON pool_members (pool, agent, run);

CREATE TABLE IF NOT EXISTS pool_topics (
    pool   TEXT NOT NULL,
    topic  TEXT NOT NULL,
    run    TEXT NOT NULL,
    PRIMARY KEY (pool, topic, run)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS pool_records (
    pool  TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    at    REAL NOT NULL,
    body  BLOB NOT NULL,
    PRIMARY KEY (pool, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS pool_receipts (
    pool        TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    key         TEXT,
    at          REAL NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (pool, message_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS pool_receipts_key
    ON pool_receipts (pool, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS pool_receipts_at ON pool_receipts (at);

CREATE TABLE IF NOT EXISTS pool_wakes (
    id           TEXT PRIMARY KEY,
    pool         TEXT NOT NULL,
    run          TEXT NOT NULL,
    key          TEXT,
    registered   INTEGER NOT NULL,
    deadline     REAL,
    finished_at  REAL,
    body         BLOB NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS pool_wakes_key ON pool_wakes (pool, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS pool_wakes_pending ON pool_wakes (pool, run) WHERE registered = 1;
CREATE INDEX IF NOT EXISTS pool_wakes_deadline
    ON pool_wakes (deadline) WHERE registered = 1 AND deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS pool_wakes_finished
    ON pool_wakes (finished_at) WHERE finished_at IS NOT NULL
"""
#: The pool tables and their versions.
SCHEMA = FeatureSchema("pools", _DDL)

_enc = msgspec.msgpack.Encoder()
_record = msgspec.msgpack.Decoder(StoredPoolRecord)
_member = msgspec.msgpack.Decoder(MemberRecord)
_receipt = msgspec.msgpack.Decoder(ReceiptRecord)
_wake = msgspec.msgpack.Decoder(WakeRecord)
#: Log records a prune pass looks at per pool for the age limit.
_PRUNE_SCAN = 10_000


class _Tables:
    """`pool_engine.PoolTables` over one write (or read) transaction's connection."""

    def __init__(
        self, conn: sqlite3.Connection, mailboxes: SQLiteMailboxes, touched: set[str]
    ) -> None:
        self._conn = conn
        self._mailboxes = mailboxes
        self._touched = touched

    def pool(self, name: str) -> PoolRow | None:
        row = self._conn.execute(
            "SELECT config, created_at, head FROM pools WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else PoolRow(row[0], row[1], row[2])

    def create_pool(self, name: str, config: bytes, now: float) -> None:
        self._conn.execute(
            "INSERT INTO pools (name, config, created_at, head) VALUES (?, ?, ?, 0)",
            (name, config, now),
        )

    def set_head(self, name: str, head: int) -> None:
        self._conn.execute("UPDATE pools SET head = ? WHERE name = ?", (head, name))

    def bump(self, name: str, counter: str, n: int = 1) -> None:
        self._conn.execute(
            "INSERT INTO pool_counters (pool, name, value) VALUES (?, ?, ?)"
            " ON CONFLICT (pool, name) DO UPDATE SET value = value + excluded.value",
            (name, counter, n),
        )

    def counters(self, name: str) -> dict[str, int]:
        rows = self._conn.execute("SELECT name, value FROM pool_counters WHERE pool = ?", (name,))
        return dict(rows.fetchall())

    def member(self, pool: str, run: str) -> MemberRecord | None:
        row = self._conn.execute(
            "SELECT body FROM pool_members WHERE pool = ? AND run = ?", (pool, run)
        ).fetchone()
        return None if row is None else _member.decode(row[0])

    def members(self, pool: str) -> list[MemberRecord]:
        rows = self._conn.execute(
            "SELECT body FROM pool_members WHERE pool = ? ORDER BY run", (pool,)
        )
        return [_member.decode(r[0]) for r in rows]

    def members_of_agent(self, pool: str, agent: str) -> list[MemberRecord]:
        rows = self._conn.execute(
            "SELECT body FROM pool_members WHERE pool = ? AND agent = ? ORDER BY run",
            (pool, agent),
        )
        return [_member.decode(r[0]) for r in rows]

    def members_of_topic(self, pool: str, topic: str) -> list[MemberRecord]:
        rows = self._conn.execute(
            "SELECT m.body FROM pool_topics t JOIN pool_members m"
            " ON m.pool = t.pool AND m.run = t.run"
            " WHERE t.pool = ? AND t.topic = ? ORDER BY t.run",
            (pool, topic),
        )
        return [_member.decode(r[0]) for r in rows]

    def put_member(self, pool: str, member: MemberRecord) -> None:
        self.delete_member(pool, member.run)
        conn = self._conn
        conn.execute(
            "INSERT INTO pool_members (pool, run, agent, body) VALUES (?, ?, ?, ?)",
            (pool, member.run, member.agent, _enc.encode(member)),
        )
        conn.executemany(
            "INSERT INTO pool_topics (pool, topic, run) VALUES (?, ?, ?)",
            [(pool, topic, member.run) for topic in member.topics],
        )

    def delete_member(self, pool: str, run: str) -> None:
        old = self.member(pool, run)
        if old is None:
            return
        conn = self._conn
        conn.execute("DELETE FROM pool_members WHERE pool = ? AND run = ?", (pool, run))
        conn.executemany(
            "DELETE FROM pool_topics WHERE pool = ? AND topic = ? AND run = ?",
            [(pool, topic, run) for topic in old.topics],
        )

    def append(self, pool: str, record: StoredPoolRecord) -> None:
        self._conn.execute(
            "INSERT INTO pool_records (pool, seq, at, body) VALUES (?, ?, ?, ?)",
            (pool, record.seq, record.at, _enc.encode(record)),
        )

    def page(self, pool: str, after: int, limit: int) -> list[StoredPoolRecord]:
        rows = self._conn.execute(
            "SELECT body FROM pool_records WHERE pool = ? AND seq > ? ORDER BY seq LIMIT ?",
            (pool, after, limit),
        )
        return [_record.decode(r[0]) for r in rows]

    def oldest(self, pool: str) -> int | None:
        """The lowest seq still in the pool's log."""
        row = self._conn.execute(
            "SELECT seq FROM pool_records WHERE pool = ? ORDER BY seq LIMIT 1", (pool,)
        ).fetchone()
        return None if row is None else int(row[0])

    def receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        if key is not None:
            row = self._conn.execute(
                "SELECT body FROM pool_receipts WHERE pool = ? AND key = ?", (pool, key)
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT body FROM pool_receipts WHERE pool = ? AND message_id = ?",
                (pool, message_id),
            ).fetchone()
        return None if row is None else _receipt.decode(row[0])

    def put_receipt(self, pool: str, receipt: ReceiptRecord, now: float) -> None:
        self._conn.execute(
            "INSERT INTO pool_receipts (pool, message_id, key, at, body) VALUES (?, ?, ?, ?, ?)",
            (pool, receipt.message_id, receipt.idempotency_key, now, _enc.encode(receipt)),
        )

    def wake(self, pool: str, *, wake_id: str | None, key: str | None) -> WakeRecord | None:
        if key is not None:
            row = self._conn.execute(
                "SELECT body FROM pool_wakes WHERE pool = ? AND key = ?", (pool, key)
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT body FROM pool_wakes WHERE id = ? AND pool = ?", (wake_id, pool)
            ).fetchone()
        return None if row is None else _wake.decode(row[0])

    def put_wake(self, wake: WakeRecord) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO pool_wakes"
            " (id, pool, run, key, registered, deadline, finished_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                wake.id, wake.pool, wake.run, wake.idempotency_key,
                1 if wake.status == "registered" else 0, wake.deadline, wake.finished_at,
                _enc.encode(wake),
            ),
        )  # fmt: skip

    def pending_wakes(self, pool: str, run: str | None = None) -> list[WakeRecord]:
        if run is None:
            rows = self._conn.execute(
                "SELECT body FROM pool_wakes WHERE pool = ? AND registered = 1", (pool,)
            )
        else:
            rows = self._conn.execute(
                "SELECT body FROM pool_wakes WHERE pool = ? AND run = ? AND registered = 1",
                (pool, run),
            )
        wakes = [_wake.decode(r[0]) for r in rows]
        wakes.sort(key=lambda w: w.registered_seq)
        return wakes

    def due_wakes(self, pool: str | None, now: float) -> list[WakeRecord]:
        if pool is None:
            rows = self._conn.execute(
                "SELECT body FROM pool_wakes WHERE registered = 1 AND deadline IS NOT NULL"
                " AND deadline <= ? ORDER BY deadline, id",
                (now,),
            )
            return [_wake.decode(r[0]) for r in rows]
        rows = self._conn.execute(
            "SELECT body FROM pool_wakes WHERE pool = ? AND registered = 1"
            " AND deadline IS NOT NULL AND deadline <= ?",
            (pool, now),
        )
        # a pool's due wakes time out in registration order (the row order is the index's)
        wakes = [_wake.decode(r[0]) for r in rows]
        wakes.sort(key=lambda w: w.registered_seq)
        return wakes

    def next_deadline(self) -> float | None:
        row = self._conn.execute(
            "SELECT MIN(deadline) FROM pool_wakes WHERE registered = 1 AND deadline IS NOT NULL"
        ).fetchone()
        return None if row is None else row[0]

    def deliver(self, messages: Sequence[NewMessage], now: float) -> None:
        rows = [row_tuple(m, now) for m in messages]
        self._mailboxes.enqueue_in(self._conn, messages, rows, True, now, self._touched)

    def register_agent(self, name: str, now: float) -> None:
        self._mailboxes.require_agent(self._conn, name, True, now)

    def notify(self, channel: str) -> None:
        self._touched.add(channel)


class SQLitePools(PoolStore):
    """The pool part of the backend contract on SQLite."""

    def __init__(self, db: Access, mailboxes: SQLiteMailboxes, retention: Retention) -> None:
        self._db = db
        self._mailboxes = mailboxes
        self._retention = retention

    async def _write(self, fn: Callable[[_Tables], _T]) -> _T:
        def op(conn: sqlite3.Connection, touched: set[str]) -> _T:
            return fn(_Tables(conn, self._mailboxes, touched))

        result: _T = await self._db.do(op)
        return result

    async def _read(self, fn: Callable[[_Tables], _T]) -> _T:
        def op(conn: sqlite3.Connection, touched: set[str]) -> _T:
            return fn(_Tables(conn, self._mailboxes, touched))

        result: _T = await self._db.read(op)
        return result

    async def pool_open(
        self, name: str, config: bytes | None, default: bytes, *, now: float
    ) -> bytes:
        return await self._write(lambda t: engine.open_pool(t, name, config, default, now))

    async def pool_join(self, pool: str, member: MemberRecord, *, now: float) -> StoredPoolRecord:
        return await self._write(lambda t: engine.join(t, pool, member, now))

    async def pool_leave(self, pool: str, run: str, *, now: float) -> StoredPoolRecord:
        return await self._write(lambda t: engine.leave(t, pool, run, now))

    async def pool_send(self, message: NewPoolMessage, *, now: float) -> ReceiptRecord:
        return await self._write(lambda t: engine.send(t, message, now))

    async def pool_emit(
        self,
        pool: str,
        run: str,
        type: str,
        data: bytes,
        data_kind: int,
        metadata: bytes | None,
        *,
        now: float,
    ) -> StoredPoolRecord:
        return await self._write(
            lambda t: engine.emit(t, pool, run, type, data, data_kind, metadata, now)
        )

    async def pool_receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        return await self._read(lambda t: t.receipt(pool, message_id=message_id, key=key))

    async def pool_wait_for(self, spec: WakeSpec, *, now: float) -> WakeRecord:
        return await self._write(lambda t: engine.wait_for(t, spec, now))

    async def pool_wake(
        self, pool: str, *, wake_id: str | None, key: str | None, now: float
    ) -> WakeRecord | None:
        if wake_id is None and key is None:
            return None

        def op(t: _Tables) -> tuple[bool, WakeRecord | None]:
            # any due wake of the pool (not only this one) times out first, in a write
            if t.due_wakes(pool, now):
                return False, None
            return True, t.wake(pool, wake_id=wake_id, key=key)

        done, found = await self._read(op)
        if done:
            return found

        def expire(t: _Tables) -> WakeRecord | None:
            engine.expire_due(t, pool, now)
            return t.wake(pool, wake_id=wake_id, key=key)

        return await self._write(expire)

    async def pool_cancel_wake(self, pool: str, wake_id: str, *, now: float) -> bool:
        return await self._write(lambda t: engine.cancel_wake(t, pool, wake_id, now))

    async def pool_snapshot(self, pool: str, *, now: float) -> PoolSnapshotRecord:
        def op(t: _Tables) -> PoolSnapshotRecord:
            engine.expire_due(t, pool, now)
            row = t.pool(pool)
            if row is None:
                raise engine.pool_missing(pool)
            return PoolSnapshotRecord(
                row.config, row.created_at, t.members(pool), t.pending_wakes(pool), row.head,
                t.counters(pool),
            )  # fmt: skip

        return await self._write(op)

    async def pool_records(self, pool: str, after: int, *, limit: int) -> PoolPage:
        def op(t: _Tables) -> PoolPage:
            row = t.pool(pool)
            if row is None:
                raise engine.pool_missing(pool)
            records = t.page(pool, after, limit)
            first = t.oldest(pool)
            return PoolPage(records, row.head, row.head + 1 if first is None else first)

        return await self._read(op)

    async def pool_expire_wakes(self, *, now: float) -> float | None:
        def op(t: _Tables) -> float | None:
            engine.expire_due(t, None, now)
            return t.next_deadline()

        return await self._write(op)

    async def pool_names(self) -> list[str]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[str]:
            return [name for (name,) in conn.execute("SELECT name FROM pools ORDER BY name")]

        result: list[str] = await self._db.read(op)
        return result

    def prune_in(self, conn: sqlite3.Connection, now: float) -> int:
        """Drop log records beyond the retention policy, and receipts and finished wakes older
        than the dedupe window, in the caller's transaction. Returns the records dropped."""
        keep = self._retention
        dropped = 0
        for name, head in conn.execute("SELECT name, head FROM pools").fetchall():
            # records are appended in time order: the aged ones are at the front
            aged = conn.execute(
                "SELECT MAX(seq) FROM (SELECT seq, at FROM pool_records WHERE pool = ?"
                " ORDER BY seq LIMIT ?) WHERE at < ?",
                (name, _PRUNE_SCAN, now - keep.pool_max_age),
            ).fetchone()[0]
            cut = max(head - keep.pool_max_count, aged or 0)
            if cut > 0:
                cur = conn.execute(
                    "DELETE FROM pool_records WHERE pool = ? AND seq <= ?", (name, cut)
                )
                dropped += max(cur.rowcount, 0)
        horizon = now - keep.dedupe_window
        conn.execute("DELETE FROM pool_receipts WHERE at < ?", (horizon,))
        conn.execute("DELETE FROM pool_wakes WHERE finished_at < ?", (horizon,))
        return dropped
