"""References on SQLite: the reference store, and the helper every feature holds references with.

Tables: `refs` holds one row per stored blob (its metadata and refcount), `ref_chunks` the
blob's stored chunks keyed by `blob << 24 | n` (so a blob's chunks are one rowid range and a
1 GiB blob is never one value in memory), `ref_blobs` the chunk sets, committed or still being
uploaded, `ref_counters` the store's counters, and `ref_holders` (since version 2) the
explicit references each holder has on a blob (`refs.refcount` is the total). Refcount
changes run inside the writer's `BEGIN IMMEDIATE` transaction, so a store racing a release
of the same content in another process either finds the blob (and holds it) or stores it
anew, never half of each.

A stored payload that refers to a blob holds one reference; every feature takes and gives
back such references through `hold_ref`, `drop_ref` and `drop_refs`, inside the transaction
that stores or removes the row.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import msgspec

from ..._errors import RefNotFound, RefNotHeld
from ..._records import ScheduleSpec, StoredReply
from ..._ref_records import (
    LEGACY_HOLDER,
    REF_FLAG,
    Ref,
    RefMeta,
    RefStats,
    merge_expiry,
    ref_id_in,
)
from ..contracts import ReferenceStore
from .access import Access
from .schema import DEAD, DELAYED, IN_FLIGHT, READY, FeatureSchema

_DDL = """
CREATE TABLE IF NOT EXISTS refs (
    id            TEXT PRIMARY KEY,
    blob          INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    stored_size   INTEGER NOT NULL,
    compression   TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL,
    refcount      INTEGER NOT NULL,
    chunks        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_unheld ON refs (expires_at) WHERE refcount = 0;

CREATE TABLE IF NOT EXISTS ref_blobs (
    blob        INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  REAL NOT NULL,
    committed   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ref_blobs_open ON ref_blobs (started_at) WHERE committed = 0;

CREATE TABLE IF NOT EXISTS ref_chunks (
    key   INTEGER PRIMARY KEY,
    data  BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS ref_counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
"""
_HOLDERS_DDL = """
CREATE TABLE IF NOT EXISTS ref_holders (
    ref_id  TEXT NOT NULL,
    holder  TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (ref_id, holder)
) WITHOUT ROWID
"""
# The rows that hold a reference, by table, as versions 1 and 2 store them; the reply slots'
# and schedules' payloads are inside encoded records.
_ROW_HOLDS = {
    "messages": f"SELECT data FROM messages WHERE data_kind & {REF_FLAG}"
    f" AND state IN ({READY}, {IN_FLIGHT}, {DELAYED}, {DEAD})",
    "kv": f"SELECT data FROM kv WHERE data_kind & {REF_FLAG} AND data IS NOT NULL",
    "kv_history": f"SELECT data FROM kv_history WHERE data_kind & {REF_FLAG}",
    "topic_log": f"SELECT data FROM topic_log WHERE data_kind & {REF_FLAG}",
    "requests": "SELECT reply FROM requests WHERE reply IS NOT NULL",
    "schedules": "SELECT spec FROM schedules",
}
_RECORDS: dict[str, type[StoredReply] | type[ScheduleSpec]] = {
    "requests": StoredReply,
    "schedules": ScheduleSpec,
}


def _count_holders(conn: sqlite3.Connection) -> None:
    """Version 2: record explicit references per holder. Those of a store written before (its
    refcount less the references its rows hold) go to `LEGACY_HOLDER`; a row that cannot be
    decoded counts as explicit, so in doubt a blob is kept, never lost."""
    conn.execute(_HOLDERS_DDL)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    held: Counter[str] = Counter()
    for table, query in _ROW_HOLDS.items():
        if table not in tables:
            continue
        record = _RECORDS.get(table)
        for (data,) in conn.execute(query):
            if record is not None:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    got = msgspec.msgpack.decode(data, type=record)
                    data = got.data if got.data_kind & REF_FLAG else None
            if isinstance(data, bytes):
                held[data.decode("ascii", "replace")] += 1
    conn.executemany(
        "INSERT INTO ref_holders (ref_id, holder, count) VALUES (?, ?, ?)",
        [
            (ref_id, LEGACY_HOLDER, refcount - held[ref_id])
            for ref_id, refcount in conn.execute("SELECT id, refcount FROM refs").fetchall()
            if refcount > held[ref_id]
        ],
    )


#: The reference tables and their versions.
SCHEMA = FeatureSchema("references", _DDL, migrations=(_count_holders,))

#: SQL true for a row (with `data_kind`) whose payload refers to a blob.
HOLDS_REF = f"data_kind & {REF_FLAG}"
#: SQL evaluating to a payload's reference id (its data) when its kind says it holds one.
REF_COL = f"CASE WHEN {HOLDS_REF} THEN data END"
#: SQL evaluating to a payload's size: the original size of a blob it refers to.
PAYLOAD_SIZE = (
    f"CASE WHEN {HOLDS_REF} THEN"
    " coalesce((SELECT size FROM refs WHERE id = CAST(data AS TEXT)), 0) ELSE length(data) END"
)
#: An upload not committed after this many seconds was abandoned; `ref_gc` drops it.
ABANDONED_AFTER = 3600.0

_SHIFT = 24  # chunks per blob < 2**24 (16 TiB at 1 MiB chunks)
_COLS = "id, size, stored_size, compression, content_type, created_at, expires_at, refcount"
_STRATEGY_FN = "agentcomm_ref_gc"
_NOW = "(julianday('now') - 2440587.5) * 86400.0"
#: Evict at a release: under `ref_counting`, unless a TTL keeps the blob longer.
_AT_RELEASE = (
    f"AND {_STRATEGY_FN}() = 'ref_counting' AND (expires_at IS NULL OR expires_at <= {_NOW})"
)


def install(conn: sqlite3.Connection, strategy: Callable[[], str]) -> None:
    """Let this connection's SQL read the hub's GC strategy (`strategy()` at call time)."""
    conn.create_function(_STRATEGY_FN, 0, strategy)


def _span(blob: int) -> tuple[int, int]:
    return blob << _SHIFT, ((blob + 1) << _SHIFT) - 1


def _bump(conn: sqlite3.Connection, name: str, n: int = 1) -> None:
    if n:
        conn.execute(
            "INSERT INTO ref_counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )


def _evict(conn: sqlite3.Connection, ref_id: str, where: str = "") -> Ref | None:
    row = conn.execute(
        f"DELETE FROM refs WHERE id = ? AND refcount <= 0 {where} RETURNING blob, {_COLS}",
        (ref_id,),
    ).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM ref_chunks WHERE key BETWEEN ? AND ?", _span(row[0]))
    conn.execute("DELETE FROM ref_blobs WHERE blob = ?", (row[0],))
    conn.execute("DELETE FROM ref_holders WHERE ref_id = ?", (ref_id,))
    _bump(conn, "evictions")
    return Ref(*row[1:])


def hold_ref(conn: sqlite3.Connection, data: bytes | None, kind: int) -> None:
    """Add the reference a payload about to be stored holds (no-op for a value).

    Raises RefNotFound if the blob it refers to is not stored."""
    ref_id = ref_id_in(data, kind)
    if ref_id is None:
        return
    if (
        conn.execute("UPDATE refs SET refcount = refcount + 1 WHERE id = ?", (ref_id,)).rowcount
        != 1
    ):
        raise RefNotFound(f"The payload refers to {ref_id}, which is not stored (evicted?).")


def drop_refs(conn: sqlite3.Connection, held: Iterable[bytes | None]) -> None:
    """Drop one reference per `REF_COL` value given (None entries are values); evict at zero
    under `ref_counting`."""
    for data in held:
        if data is None:
            continue
        ref_id = data.decode("ascii")
        row = conn.execute(
            "UPDATE refs SET refcount = refcount - 1 WHERE id = ? AND refcount > 0"
            " RETURNING refcount",
            (ref_id,),
        ).fetchone()
        if row is not None and row[0] == 0:
            _evict(conn, ref_id, _AT_RELEASE)


def drop_ref(conn: sqlite3.Connection, data: bytes | None, kind: int) -> None:
    """Drop the reference a removed payload held (no-op for a value)."""
    if ref_id_in(data, kind) is not None:
        drop_refs(conn, (data,))


def _hold(conn: sqlite3.Connection, ref_id: str, holder: str, delta: int) -> bool:
    """Change `holder`'s count on `ref_id` by `delta`; False (nothing changed) if that would
    take it below zero."""
    if delta > 0:
        conn.execute(
            "INSERT INTO ref_holders (ref_id, holder, count) VALUES (?, ?, ?)"
            " ON CONFLICT (ref_id, holder) DO UPDATE SET count = count + excluded.count",
            (ref_id, holder, delta),
        )
        return True
    row = conn.execute(
        "UPDATE ref_holders SET count = count + ? WHERE ref_id = ? AND holder = ?"
        " AND count + ? >= 0 RETURNING count",
        (delta, ref_id, holder, delta),
    ).fetchone()
    if row is None:
        return delta == 0
    if row[0] == 0:
        conn.execute("DELETE FROM ref_holders WHERE ref_id = ? AND holder = ?", (ref_id, holder))
    return True


def _existing(conn: sqlite3.Connection, meta: RefMeta) -> Ref | None:
    row = conn.execute("SELECT expires_at FROM refs WHERE id = ?", (meta.id,)).fetchone()
    if row is None:
        return None
    _bump(conn, "dedupe_hits")
    got = conn.execute(
        f"UPDATE refs SET refcount = refcount + 1, expires_at = ? WHERE id = ? RETURNING {_COLS}",
        (merge_expiry(row[0], meta.expires_at), meta.id),
    ).fetchone()
    return Ref(*got)


def _insert(conn: sqlite3.Connection, meta: RefMeta, blob: int, chunks: int, now: float) -> Ref:
    conn.execute("UPDATE ref_blobs SET committed = 1 WHERE blob = ?", (blob,))
    row = conn.execute(
        "INSERT INTO refs (id, blob, size, stored_size, compression, content_type, created_at,"
        f" expires_at, refcount, chunks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING {_COLS}",
        (meta.id, blob, meta.size, meta.stored_size, meta.compression, meta.content_type, now,
         meta.expires_at, chunks),
    ).fetchone()  # fmt: skip
    _bump(conn, "total_refs")
    _bump(conn, "total_bytes", meta.size)
    return Ref(*row)


def _new_blob(conn: sqlite3.Connection, now: float) -> int:
    blob: int = conn.execute(
        "INSERT INTO ref_blobs (started_at) VALUES (?) RETURNING blob", (now,)
    ).fetchone()[0]
    return blob


class SQLiteReferences(ReferenceStore):
    """The reference store on SQLite."""

    def __init__(self, db: Access) -> None:
        self._db = db

    async def ref_put(
        self, meta: RefMeta, chunks: Sequence[bytes], *, holder: str, now: float
    ) -> Ref:
        def op(conn: sqlite3.Connection, touched: set[str]) -> Ref:
            _hold(conn, meta.id, holder, 1)
            found = _existing(conn, meta)
            if found is not None:
                return found
            blob = _new_blob(conn, now)
            base = blob << _SHIFT
            conn.executemany(
                "INSERT INTO ref_chunks (key, data) VALUES (?, ?)",
                ((base + n, c) for n, c in enumerate(chunks)),
            )
            return _insert(conn, meta, blob, len(chunks), now)

        result: Ref = await self._db.do(op)
        return result

    async def ref_stage(self, upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            blob = _new_blob(conn, now) if upload is None else upload
            conn.execute(
                "INSERT OR REPLACE INTO ref_chunks (key, data) VALUES (?, ?)",
                ((blob << _SHIFT) + n, chunk),
            )
            return blob

        result: int = await self._db.do(op)
        return result

    async def ref_commit(self, upload: int, meta: RefMeta, *, holder: str, now: float) -> Ref:
        def op(conn: sqlite3.Connection, touched: set[str]) -> Ref:
            _hold(conn, meta.id, holder, 1)
            found = _existing(conn, meta)
            lo, hi = _span(upload)
            if found is not None:
                conn.execute("DELETE FROM ref_chunks WHERE key BETWEEN ? AND ?", (lo, hi))
                conn.execute("DELETE FROM ref_blobs WHERE blob = ?", (upload,))
                return found
            chunks = conn.execute(
                "SELECT COUNT(*) FROM ref_chunks WHERE key BETWEEN ? AND ?", (lo, hi)
            ).fetchone()[0]
            return _insert(conn, meta, upload, chunks, now)

        result: Ref = await self._db.do(op)
        return result

    async def ref_abort(self, upload: int) -> None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            conn.execute("DELETE FROM ref_chunks WHERE key BETWEEN ? AND ?", _span(upload))
            conn.execute("DELETE FROM ref_blobs WHERE blob = ? AND committed = 0", (upload,))

        await self._db.do(op)

    async def ref_read(self, ref_id: str, start: int, limit: int) -> tuple[Ref | None, list[bytes]]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> tuple[Ref | None, list[bytes]]:
            row = conn.execute(
                f"SELECT blob, chunks, {_COLS} FROM refs WHERE id = ?", (ref_id,)
            ).fetchone()
            if row is None:
                return None, []
            blob, count = row[0], row[1]
            lo = (blob << _SHIFT) + start
            hi = (blob << _SHIFT) + min(start + limit, count) - 1
            chunks = [
                r[0]
                for r in conn.execute(
                    "SELECT data FROM ref_chunks WHERE key BETWEEN ? AND ? ORDER BY key", (lo, hi)
                )
            ]
            return Ref(*row[2:]), chunks

        # on the writer, not the reader connection: a blob read soon after it was written
        # comes from the writer's warm page cache, 5x faster here than the reader's WAL reads;
        # a large blob is read a few chunks per call, so writes interleave
        result: tuple[Ref | None, list[bytes]] = await self._db.do(op)
        return result

    async def ref_adjust(
        self, ref_id: str, delta: int, *, holder: str | None, now: float
    ) -> Ref | None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> Ref | None:
            if conn.execute("SELECT 1 FROM refs WHERE id = ?", (ref_id,)).fetchone() is None:
                return None
            if holder is not None and not _hold(conn, ref_id, holder, delta):
                raise RefNotHeld(ref_id, holder)
            row = conn.execute(
                f"UPDATE refs SET refcount = max(refcount + ?, 0) WHERE id = ? RETURNING {_COLS}",
                (delta, ref_id),
            ).fetchone()
            if row is None:
                return None
            ref = Ref(*row)
            if delta < 0 and ref.refcount == 0:
                _evict(conn, ref_id, _AT_RELEASE)
            return ref

        result: Ref | None = await self._db.do(op)
        return result

    async def ref_list(self) -> list[Ref]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[Ref]:
            return [Ref(*r) for r in conn.execute(f"SELECT {_COLS} FROM refs ORDER BY id")]

        result: list[Ref] = await self._db.read(op)
        return result

    async def ref_gc(self, *, now: float) -> list[Ref]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[Ref]:
            due = conn.execute(
                "SELECT id FROM refs WHERE refcount = 0"
                " AND (expires_at IS NULL OR expires_at <= ?)",
                (now,),
            ).fetchall()
            evicted = [
                ref for (ref_id,) in due
                if (ref := _evict(conn, ref_id)) is not None
            ]  # fmt: skip
            abandoned = conn.execute(
                "SELECT blob FROM ref_blobs WHERE committed = 0 AND started_at <= ?",
                (now - ABANDONED_AFTER,),
            ).fetchall()
            for (blob,) in abandoned:
                conn.execute("DELETE FROM ref_chunks WHERE key BETWEEN ? AND ?", _span(blob))
                conn.execute("DELETE FROM ref_blobs WHERE blob = ?", (blob,))
            _bump(conn, "gc_runs")
            return evicted

        result: list[Ref] = await self._db.do(op)
        return result

    async def ref_stats(self) -> RefStats:
        def op(conn: sqlite3.Connection, touched: set[str]) -> RefStats:
            c = dict(conn.execute("SELECT name, value FROM ref_counters").fetchall())
            entries, active, size, stored = conn.execute(
                "SELECT COUNT(*), coalesce(SUM(refcount > 0), 0), coalesce(SUM(size), 0),"
                " coalesce(SUM(stored_size), 0) FROM refs"
            ).fetchone()
            return RefStats(
                c.get("total_refs", 0), c.get("total_bytes", 0), active, size,
                c.get("gc_runs", 0), c.get("evictions", 0), entries, stored,
                c.get("dedupe_hits", 0),
            )  # fmt: skip

        result: RefStats = await self._db.read(op)
        return result
