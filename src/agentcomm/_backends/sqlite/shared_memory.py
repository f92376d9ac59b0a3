"""Shared memory on SQLite: versioned key-value spaces with a change log.

Tables: `kv` holds each key's current version (a row with `data IS NULL` is a tombstone of a
deleted or expired key, kept so versions keep counting), `kv_history` older versions,
`kv_changes` each space's change log, `kv_spaces` each space's log position, settings and
counters. All of a write happens in the writer's `BEGIN IMMEDIATE` transaction, so a version
check and the write it guards are atomic, also across processes.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..._kv_records import (
    DEFAULT_CHANGE_LOG,
    DEFAULT_HISTORY,
    TOMBSTONE_KEEP,
    ChangeKind,
    KVChangeRecord,
    KVChanges,
    KVCounts,
    KVOutcome,
    KVRecord,
    KVSnapshot,
    KVWrite,
    Space,
)
from ..contracts import SharedMemoryStore
from .access import Access
from .references import REF_COL, drop_ref, drop_refs, hold_ref
from .schema import FeatureSchema
from .writer import INLINE_BUSY

_DDL = """
CREATE TABLE IF NOT EXISTS kv_spaces (
    owner         TEXT NOT NULL,
    namespace     TEXT NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    floor         INTEGER NOT NULL DEFAULT 0,
    history       INTEGER NOT NULL,
    change_log    INTEGER NOT NULL,
    writes        INTEGER NOT NULL DEFAULT 0,
    conflicts     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, namespace)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS kv (
    owner       TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    data        BLOB,
    data_kind   INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    updated_by  TEXT,
    expires_at  REAL,
    PRIMARY KEY (owner, namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry
    ON kv (owner, namespace, expires_at) WHERE data IS NOT NULL AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS kv_tombstones ON kv (updated_at) WHERE data IS NULL;

CREATE TABLE IF NOT EXISTS kv_history (
    owner       TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    data        BLOB NOT NULL,
    data_kind   INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    updated_by  TEXT,
    expires_at  REAL,
    PRIMARY KEY (owner, namespace, key, version)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS kv_changes (
    owner       TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    key         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    data        BLOB,
    data_kind   INTEGER NOT NULL,
    at          REAL NOT NULL,
    by          TEXT,
    PRIMARY KEY (owner, namespace, seq)
) WITHOUT ROWID;
"""
#: The shared-memory tables and their versions.
SCHEMA = FeatureSchema("shared_memory", _DDL)

_COLS = "version, data, data_kind, created_at, updated_at, updated_by, expires_at"
_PK = "owner = ? AND namespace = ? AND key = ?"
_LIVE = "data IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)"
_PRUNE_BATCH = 10_000


class _Cfg:
    """A space's log position and settings while one operation runs."""

    __slots__ = ("change_log", "floor", "history", "last_seq")

    def __init__(self, last_seq: int, floor: int, history: int, change_log: int) -> None:
        self.last_seq = last_seq
        self.floor = floor
        self.history = history
        self.change_log = change_log


def _config(
    conn: sqlite3.Connection, space: Space, history: int | None, change_log: int | None
) -> _Cfg:
    if history is None and change_log is None:  # the usual case: read, do not rewrite
        found = conn.execute(
            "SELECT last_seq, floor, history, change_log FROM kv_spaces"
            " WHERE owner = ? AND namespace = ?",
            (space.owner, space.namespace),
        ).fetchone()
        if found is not None:
            return _Cfg(*found)
    row = conn.execute(
        "INSERT INTO kv_spaces (owner, namespace, history, change_log)"
        " VALUES (?1, ?2, coalesce(?3, ?5), coalesce(?4, ?6))"
        " ON CONFLICT (owner, namespace) DO UPDATE SET"
        " history = coalesce(?3, history), change_log = coalesce(?4, change_log)"
        " RETURNING last_seq, floor, history, change_log",
        (space.owner, space.namespace, history, change_log, DEFAULT_HISTORY, DEFAULT_CHANGE_LOG),
    ).fetchone()
    return _Cfg(*row)


def _record(key: str, row: tuple[Any, ...]) -> KVRecord:
    return KVRecord(key, row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def _append(
    conn: sqlite3.Connection,
    space: Space,
    cfg: _Cfg,
    kind: ChangeKind,
    key: str,
    version: int,
    data: bytes | None,
    data_kind: int,
    now: float,
    by: str | None,
    touched: set[str],
) -> None:
    cfg.last_seq += 1
    conn.execute(
        "INSERT INTO kv_changes (owner, namespace, seq, kind, key, version, data, data_kind, at,"
        " by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (space.owner, space.namespace, cfg.last_seq, int(kind), key, version, data, data_kind,
         now, by),
    )  # fmt: skip
    # trim in steps rather than one row per write; the log keeps at least `change_log` entries
    if cfg.last_seq - cfg.floor > cfg.change_log + cfg.change_log // 16:
        cfg.floor = cfg.last_seq - cfg.change_log
        conn.execute(
            "DELETE FROM kv_changes WHERE owner = ? AND namespace = ? AND seq <= ?",
            (space.owner, space.namespace, cfg.floor),
        )
    conn.execute(
        "UPDATE kv_spaces SET last_seq = ?, floor = ?, writes = writes + 1"
        " WHERE owner = ? AND namespace = ?",
        (cfg.last_seq, cfg.floor, space.owner, space.namespace),
    )
    touched.add(space.channel)


def _keep_history(
    conn: sqlite3.Connection, space: Space, cfg: _Cfg, key: str, old: tuple[Any, ...] | None,
    new_version: int,
) -> None:  # fmt: skip
    if cfg.history <= 1:
        return
    if old is not None:
        conn.execute(
            f"INSERT OR REPLACE INTO kv_history (owner, namespace, key, {_COLS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (space.owner, space.namespace, key, *old),
        )
        hold_ref(conn, old[1], old[2])
    trimmed = conn.execute(
        f"DELETE FROM kv_history WHERE {_PK} AND version <= ? RETURNING {REF_COL}",
        (space.owner, space.namespace, key, new_version - cfg.history),
    ).fetchall()
    drop_refs(conn, (r[0] for r in trimmed))


def _end(
    conn: sqlite3.Connection,
    space: Space,
    cfg: _Cfg,
    key: str,
    row: tuple[Any, ...],
    kind: ChangeKind,
    now: float,
    by: str | None,
    touched: set[str],
) -> int:
    """Turn the live `row` of `key` into a tombstone and log it; returns the new version."""
    version: int = row[0] + 1
    _keep_history(conn, space, cfg, key, row, version)
    conn.execute(
        "UPDATE kv SET version = ?, data = NULL, updated_at = ?, updated_by = ?,"
        f" expires_at = NULL WHERE {_PK}",
        (version, now, by, space.owner, space.namespace, key),
    )
    drop_ref(conn, row[1], row[2])
    _append(conn, space, cfg, kind, key, version, None, 0, now, by, touched)
    return version


def _expire_due(
    conn: sqlite3.Connection, space: Space, now: float, touched: set[str]
) -> float | None:
    """Record the space's due expiries; returns when the next live key expires."""
    due = conn.execute(
        f"SELECT key, {_COLS} FROM kv WHERE owner = ? AND namespace = ?"
        " AND data IS NOT NULL AND expires_at IS NOT NULL AND expires_at <= ?"
        " ORDER BY expires_at",
        (space.owner, space.namespace, now),
    ).fetchall()
    if due:
        cfg = _config(conn, space, None, None)
        for key, *row in due:
            _end(conn, space, cfg, key, tuple(row), ChangeKind.EXPIRE, now, None, touched)
    nxt: float | None = conn.execute(
        "SELECT MIN(expires_at) FROM kv WHERE owner = ? AND namespace = ?"
        " AND data IS NOT NULL AND expires_at IS NOT NULL",
        (space.owner, space.namespace),
    ).fetchone()[0]
    return nxt


def _current(
    conn: sqlite3.Connection, space: Space, cfg: _Cfg | None, key: str, now: float,
    touched: set[str],
) -> tuple[tuple[Any, ...] | None, int]:  # fmt: skip
    """The live row of `key` (recording its expiry if due) and the key's latest version."""
    row = conn.execute(
        f"SELECT {_COLS} FROM kv WHERE {_PK}", (space.owner, space.namespace, key)
    ).fetchone()
    if row is None:
        return None, 0
    if row[1] is None:
        return None, row[0]
    if row[6] is not None and row[6] <= now:
        cfg = cfg or _config(conn, space, None, None)
        return None, _end(conn, space, cfg, key, row, ChangeKind.EXPIRE, now, None, touched)
    return row, row[0]


def _count_conflict(conn: sqlite3.Connection, space: Space) -> None:
    conn.execute(
        "UPDATE kv_spaces SET conflicts = conflicts + 1 WHERE owner = ? AND namespace = ?",
        (space.owner, space.namespace),
    )


def _prefix_range(prefix: str) -> tuple[str, str]:
    # keys are ASCII (validated), so the next code point bounds the prefix in BINARY order
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class SQLiteSharedMemory(SharedMemoryStore):
    """Shared memory on SQLite; every write runs in the writer's `BEGIN IMMEDIATE` transaction."""

    def __init__(self, db: Access) -> None:
        self._db = db

    async def kv_get(self, space: Space, key: str, *, now: float) -> KVRecord | None:
        def peek(conn: sqlite3.Connection, touched: set[str]) -> KVRecord | bool | None:
            # fetchall: run the statement to its end, so no read transaction stays open
            rows = conn.execute(
                f"SELECT {_COLS} FROM kv WHERE {_PK}", (space.owner, space.namespace, key)
            ).fetchall()
            row = rows[0] if rows else None
            if row is None or row[1] is None:
                return None
            if row[6] is not None and row[6] <= now:
                return True  # expired: recording that takes the writer
            return _record(key, row)

        seen: KVRecord | bool | None = self._db.read_inline(peek)
        if seen is INLINE_BUSY:
            seen = await self._db.read(peek, single_statement=True)
        if seen is not True:
            return seen if isinstance(seen, KVRecord) else None

        def op(conn: sqlite3.Connection, touched: set[str]) -> KVRecord | None:
            row, _ = _current(conn, space, None, key, now, touched)
            return None if row is None else _record(key, row)

        result: KVRecord | None = await self._db.do(op)
        return result

    async def kv_put(self, space: Space, write: KVWrite, *, now: float) -> KVOutcome:
        w = write

        def op(conn: sqlite3.Connection, touched: set[str]) -> KVOutcome:
            cfg = _config(conn, space, w.history, w.change_log)
            row, version = _current(conn, space, cfg, w.key, now, touched)
            actual = 0 if row is None else version
            if w.expected_version is not None and w.expected_version != actual:
                _count_conflict(conn, space)
                return KVOutcome(True, actual)
            version += 1
            # hold the new value first: an overwrite with the same content must not evict it
            hold_ref(conn, w.data, w.data_kind)
            _keep_history(conn, space, cfg, w.key, row, version)
            record = KVRecord(
                w.key, version, w.data, w.data_kind, now if row is None else row[3], now, w.by,
                w.expires_at,
            )  # fmt: skip
            conn.execute(
                f"INSERT INTO kv (owner, namespace, key, {_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, namespace, key)"
                " DO UPDATE SET version = excluded.version, data = excluded.data,"
                " data_kind = excluded.data_kind, created_at = excluded.created_at,"
                " updated_at = excluded.updated_at, updated_by = excluded.updated_by,"
                " expires_at = excluded.expires_at",
                (space.owner, space.namespace, w.key, version, w.data, w.data_kind,
                 record.created_at, now, w.by, w.expires_at),
            )  # fmt: skip
            if row is not None:
                drop_ref(conn, row[1], row[2])
            _append(conn, space, cfg, ChangeKind.PUT, w.key, version, w.data, w.data_kind, now,
                    w.by, touched)  # fmt: skip
            return KVOutcome(False, version, record)

        result: KVOutcome = await self._db.do(op)
        return result

    async def kv_delete(
        self, space: Space, key: str, *, expected_version: int | None, by: str | None, now: float
    ) -> KVOutcome:
        def op(conn: sqlite3.Connection, touched: set[str]) -> KVOutcome:
            row, version = _current(conn, space, None, key, now, touched)
            actual = 0 if row is None else version
            if expected_version is not None and expected_version != actual:
                _count_conflict(conn, space)
                return KVOutcome(True, actual)
            if row is None:
                return KVOutcome(False, 0)
            cfg = _config(conn, space, None, None)
            return KVOutcome(
                False, _end(conn, space, cfg, key, row, ChangeKind.DELETE, now, by, touched)
            )

        result: KVOutcome = await self._db.do(op)
        return result

    async def kv_scan(self, space: Space, prefix: str | None, *, now: float) -> KVSnapshot:
        def op(conn: sqlite3.Connection, touched: set[str]) -> KVSnapshot:
            _expire_due(conn, space, now, touched)
            records: list[KVRecord] = []
            if prefix is not None:
                sql = f"SELECT key, {_COLS} FROM kv WHERE owner = ? AND namespace = ? AND {_LIVE}"
                args: tuple[Any, ...] = (space.owner, space.namespace, now)
                if prefix:
                    sql += " AND key >= ? AND key < ?"
                    args += _prefix_range(prefix)
                rows = conn.execute(sql + " ORDER BY key", args).fetchall()
                records = [_record(r[0], r[1:]) for r in rows]
            last = conn.execute(
                "SELECT last_seq FROM kv_spaces WHERE owner = ? AND namespace = ?",
                (space.owner, space.namespace),
            ).fetchone()
            return KVSnapshot(records, 0 if last is None else last[0])

        result: KVSnapshot = await self._db.do(op)
        return result

    async def kv_changes(self, space: Space, after: int, *, limit: int, now: float) -> KVChanges:
        def op(conn: sqlite3.Connection, touched: set[str]) -> KVChanges:
            next_expiry = _expire_due(conn, space, now, touched)
            pos = conn.execute(
                "SELECT last_seq, floor FROM kv_spaces WHERE owner = ? AND namespace = ?",
                (space.owner, space.namespace),
            ).fetchone()
            last_seq, floor = pos if pos is not None else (0, 0)
            rows = []
            if floor <= after < last_seq:
                rows = conn.execute(
                    "SELECT seq, kind, key, version, data, data_kind, at, by FROM kv_changes"
                    " WHERE owner = ? AND namespace = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (space.owner, space.namespace, after, limit),
                ).fetchall()
            return KVChanges([KVChangeRecord(*r) for r in rows], floor, last_seq, next_expiry)

        result: KVChanges = await self._db.do(op)
        return result

    async def kv_history(self, space: Space, key: str, *, limit: int, now: float) -> list[KVRecord]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[KVRecord]:
            row, _ = _current(conn, space, None, key, now, touched)
            out = [] if row is None else [_record(key, row)]
            past = conn.execute(
                f"SELECT {_COLS} FROM kv_history WHERE {_PK} ORDER BY version DESC LIMIT ?",
                (space.owner, space.namespace, key, limit - len(out)),
            ).fetchall()
            return out + [_record(key, r) for r in past]

        result: list[KVRecord] = await self._db.do(op)
        return result

    async def kv_counts(self, space: Space, *, now: float) -> KVCounts:
        def op(conn: sqlite3.Connection, touched: set[str]) -> KVCounts:
            keys, size = conn.execute(
                "SELECT COUNT(*), coalesce(SUM(length(data)), 0) FROM kv"
                f" WHERE owner = ? AND namespace = ? AND {_LIVE}",
                (space.owner, space.namespace, now),
            ).fetchone()
            counters = conn.execute(
                "SELECT writes, conflicts FROM kv_spaces WHERE owner = ? AND namespace = ?",
                (space.owner, space.namespace),
            ).fetchone()
            return KVCounts(keys, size, *(counters or (0, 0)))

        result: KVCounts = await self._db.do(op)
        return result

    async def kv_spaces(self) -> list[Space]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[Space]:
            rows = conn.execute("SELECT owner, namespace FROM kv_spaces ORDER BY owner, namespace")
            return [Space(owner, namespace) for owner, namespace in rows]

        result: list[Space] = await self._db.read(op)
        return result

    @staticmethod
    def prune_in(conn: sqlite3.Connection, now: float, touched: set[str]) -> None:
        """The prune step: record due expiries in every space, drop tombstones older than
        TOMBSTONE_KEEP."""
        due = conn.execute(
            "SELECT DISTINCT owner, namespace FROM kv"
            " WHERE data IS NOT NULL AND expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
            (now, _PRUNE_BATCH),
        ).fetchall()
        for owner, namespace in due:
            _expire_due(conn, Space(owner, namespace), now, touched)
        stale = conn.execute(
            "SELECT owner, namespace, key FROM kv WHERE data IS NULL AND updated_at <= ? LIMIT ?",
            (now - TOMBSTONE_KEEP, _PRUNE_BATCH),
        ).fetchall()
        for pk in stale:
            conn.execute(f"DELETE FROM kv WHERE {_PK}", pk)
            past = conn.execute(f"DELETE FROM kv_history WHERE {_PK} RETURNING {REF_COL}", pk)
            drop_refs(conn, [r[0] for r in past.fetchall()])
