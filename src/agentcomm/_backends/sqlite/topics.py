"""Topics on SQLite: the topic log, per-topic stats and durable consumers.

The log is one table with a per-store sequence (AUTOINCREMENT, so a sequence is never reused
after pruning). A durable consumer is a row holding its definition and the highest sequence it
has scanned; its leased deliveries are rows of `topic_pending` until acked.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..._errors import BackendUnavailable, NotFound
from ..._models import TopicStats
from ..._records import (
    ConsumerRecord,
    ConsumerSpec,
    NewTopicRecord,
    TopicBatch,
    TopicClaim,
    TopicRecord,
)
from ..._settings import Retention
from ..._subjects import TOPICS_CHANNEL, TopicFilter, consumer_channel, is_literal, topic_channel
from ..common import conflict, consumer_filter, same_definition, same_start
from ..contracts import TopicStore
from .access import Access
from .references import REF_COL, drop_refs, hold_ref
from .schema import FeatureSchema

_DDL = """
CREATE TABLE IF NOT EXISTS topic_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    sender        TEXT NOT NULL,
    type          TEXT NOT NULL,
    data          BLOB NOT NULL,
    data_kind     INTEGER NOT NULL,
    metadata      BLOB,
    published_at  REAL NOT NULL,
    origin        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS topic_log_topic ON topic_log (topic, seq);

-- Publish counts come from the log itself (its topic index) plus `pruned`, so a publish is
-- one INSERT. `last_publish` and `last_seq` here are those of the latest pruned record.
CREATE TABLE IF NOT EXISTS topic_stats (
    name          TEXT PRIMARY KEY,
    pruned        INTEGER NOT NULL DEFAULT 0,
    delivered     INTEGER NOT NULL DEFAULT 0,
    dropped       INTEGER NOT NULL DEFAULT 0,
    last_publish  REAL,
    last_seq      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS topic_consumers (
    name       TEXT PRIMARY KEY,
    spec       BLOB NOT NULL,
    delivered  INTEGER NOT NULL,
    lost       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS topic_pending (
    consumer     TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_until  REAL NOT NULL,
    PRIMARY KEY (consumer, seq)
) WITHOUT ROWID;
"""
#: The topic tables and their versions.
SCHEMA = FeatureSchema("topics", _DDL)

_COLS = "seq, topic, sender, type, data, data_kind, metadata, published_at, origin"
_INSERT = (
    "INSERT INTO topic_log (topic, sender, type, data, data_kind, metadata, published_at, origin)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNT_PRUNED = (
    "INSERT INTO topic_stats (name, pruned, last_publish, last_seq)"
    " SELECT topic, COUNT(*), MAX(published_at), MAX(seq) FROM topic_log WHERE seq <= ?"
    " GROUP BY topic"
    " ON CONFLICT (name) DO UPDATE SET pruned = pruned + excluded.pruned,"
    " last_publish = excluded.last_publish, last_seq = excluded.last_seq"
)
_LOG_COUNTS = "SELECT topic, COUNT(*), MAX(seq) FROM topic_log"
_COUNT_DELIVERY = (
    "INSERT INTO topic_stats (name, delivered, dropped) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET delivered = delivered + excluded.delivered,"
    " dropped = dropped + excluded.dropped"
)
_HEAD = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'topic_log'), 0)"
_SCAN_CHUNK = 512
_IN_JSON = "(SELECT value FROM json_each(?))"
_LOCKED = (
    "The SQLite database stayed locked past the call's timeout: another process holds a long "
    "write transaction. Nothing was claimed; call next() again."
)
_json = msgspec.json.encode
_PRUNE_BATCH = 50_000

_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(ConsumerSpec)


def _record(r: Sequence[Any], attempt: int = 0) -> TopicRecord:
    """A `_COLS` row as a record."""
    return TopicRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], attempt)


def append_in(conn: sqlite3.Connection, r: NewTopicRecord, touched: set[str]) -> int:
    """Append a record to the log in the caller's transaction; its sequence. (The mailboxes
    append dead-letter notices through this.)"""
    row = (r.topic, r.sender, r.type, r.data, r.data_kind, r.metadata, r.published_at, r.origin)
    seq = conn.execute(_INSERT, row).lastrowid
    assert seq is not None
    hold_ref(conn, r.data, r.data_kind)
    touched.add(TOPICS_CHANNEL)
    touched.add(topic_channel(r.topic))
    return seq


def _head(conn: sqlite3.Connection) -> int:
    head: int = conn.execute(_HEAD).fetchone()[0]
    return head


class SQLiteTopics(TopicStore):
    """Topics on SQLite: writes on the writer thread, reads on the reader connection."""

    def __init__(self, db: Access, retention: Retention) -> None:
        self._db = db
        self._retention = retention
        self._filters: dict[bytes, TopicFilter] = {}  # by encoded consumer spec

    def _filter(self, blob: bytes) -> TopicFilter:
        cache = self._filters
        f: TopicFilter | None = cache.get(blob)
        if f is None:
            if len(cache) > 256:
                cache.clear()
            f = cache[blob] = consumer_filter(_spec_decoder.decode(blob))
        return f

    async def publish(self, record: NewTopicRecord, *, now: float) -> TopicRecord:
        r = record
        row = (r.topic, r.sender, r.type, r.data, r.data_kind, r.metadata, r.published_at, r.origin)

        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            return append_in(conn, r, touched)

        seq: int = await self._db.do(op)
        return _record((seq, *row))

    async def topic_head(self) -> int:
        result: int = await self._db.read(lambda conn, touched: _head(conn), single_statement=True)
        return result

    async def read_topics(self, after: int, *, exclude_origin: str, limit: int) -> TopicBatch:
        def op(conn: sqlite3.Connection, touched: set[str]) -> TopicBatch:
            rows = conn.execute(
                f"SELECT {_COLS} FROM topic_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            # the same snapshot as the SELECT (so not single_statement): nothing in between
            through = rows[-1][0] if rows else max(after, _head(conn))
            records = [_record(r) for r in rows if r[8] != exclude_origin]
            return TopicBatch(records, through)

        result: TopicBatch = await self._db.read(op)
        return result

    async def count_topic_deliveries(self, counts: Mapping[str, tuple[int, int]]) -> None:
        rows = [(topic, d, x) for topic, (d, x) in counts.items()]

        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            conn.executemany(_COUNT_DELIVERY, rows)

        await self._db.do(op)

    async def topic_stats(self, name: str | None) -> list[TopicStats]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[TopicStats]:
            cols = "name, pruned, delivered, dropped, last_publish, last_seq"
            if name is None:
                kept = conn.execute(f"{_LOG_COUNTS} GROUP BY topic").fetchall()
                rows = conn.execute(f"SELECT {cols} FROM topic_stats").fetchall()
            else:
                kept = conn.execute(f"{_LOG_COUNTS} WHERE topic = ?", (name,)).fetchall()
                kept = [k for k in kept if k[0] is not None]
                rows = conn.execute(
                    f"SELECT {cols} FROM topic_stats WHERE name = ?", (name,)
                ).fetchall()
            stats = {r[0]: [*r[1:], 0] for r in rows}
            for topic, count, last_seq in kept:
                entry = stats.setdefault(topic, [0, 0, 0, None, 0, 0])
                entry[0] += count
                entry[5] = count
                entry[3] = conn.execute(
                    "SELECT published_at FROM topic_log WHERE seq = ?", (last_seq,)
                ).fetchone()[0]
                entry[4] = last_seq
            if name is not None and not stats:
                stats[name] = [0, 0, 0, None, 0, 0]
            filters = [self._filter(b) for (b,) in conn.execute("SELECT spec FROM topic_consumers")]
            out = []
            for n in sorted(stats):
                pub, dl, dr, last, last_seq, retained = stats[n]
                subscribers = sum(1 for f in filters if f.matches_topic(n))
                out.append(TopicStats(n, pub, dl, dr, subscribers, last, last_seq, retained))
            return out

        result: list[TopicStats] = await self._db.read(op)
        return result

    async def list_consumers(self) -> list[ConsumerRecord]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT c.spec, c.delivered, c.lost,"
                " (SELECT COUNT(*) FROM topic_pending p WHERE p.consumer = c.name)"
                " FROM topic_consumers c ORDER BY c.name"
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._db.read(op)
        return [
            ConsumerRecord(_spec_decoder.decode(blob), position, pending, lost)
            for blob, position, lost, pending in rows
        ]

    async def open_consumer(self, spec: ConsumerSpec, *, now: float) -> None:
        blob = _spec_encoder.encode(spec)

        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            row = conn.execute(
                "SELECT spec FROM topic_consumers WHERE name = ?", (spec.name,)
            ).fetchone()
            if row is not None:
                stored = _spec_decoder.decode(row[0])
                if not same_definition(stored, spec):
                    raise conflict(spec, stored.pattern)
                if spec.start is None or same_start(stored, spec):
                    return
                conn.execute("DELETE FROM topic_pending WHERE consumer = ?", (spec.name,))
                conn.execute(
                    "UPDATE topic_consumers SET spec = ?, delivered = ?, lost = 0 WHERE name = ?",
                    (blob, _position(conn, spec), spec.name),
                )
                touched.add(consumer_channel(spec.name))
                return
            conn.execute(
                "INSERT INTO topic_consumers (name, spec, delivered) VALUES (?, ?, ?)",
                (spec.name, blob, _position(conn, spec)),
            )

        await self._db.do(op)

    async def claim_topic(
        self,
        consumer: str,
        *,
        acks: Sequence[tuple[int, int]],
        releases: Sequence[tuple[int, int]],
        max_messages: int,
        lease: float,
        now: float,
    ) -> TopicClaim:
        def op(conn: sqlite3.Connection, touched: set[str]) -> TopicClaim:
            if acks:
                by_attempt: dict[int, list[int]] = {}
                for seq, attempt in acks:
                    by_attempt.setdefault(attempt, []).append(seq)
                for attempt, seqs in by_attempt.items():  # nearly always one group
                    conn.execute(
                        "DELETE FROM topic_pending WHERE consumer = ? AND attempt = ?"
                        f" AND seq IN {_IN_JSON}",
                        (consumer, attempt, _json(seqs)),
                    )
            if releases:
                released = conn.executemany(
                    "UPDATE topic_pending SET lease_until = ?"
                    " WHERE consumer = ? AND seq = ? AND attempt = ?",
                    [(now, consumer, s, a) for s, a in releases],
                ).rowcount
                if released:
                    touched.add(consumer_channel(consumer))
            if max_messages <= 0:
                return TopicClaim([], 0.0, 0, None)
            row = conn.execute(
                "SELECT spec, delivered, lost FROM topic_consumers WHERE name = ?", (consumer,)
            ).fetchone()
            if row is None:
                raise NotFound(f"Durable consumer {consumer!r} does not exist; subscribe again.")
            filt = self._filter(row[0])
            until = now + lease
            expired = conn.execute(
                f"SELECT p.attempt, l.{_COLS.replace(', ', ', l.')} FROM topic_pending p"
                " JOIN topic_log l ON l.seq = p.seq"
                " WHERE p.consumer = ? AND p.lease_until <= ? ORDER BY p.seq LIMIT ?",
                (consumer, now, max_messages),
            ).fetchall()
            out = [_record(r[1:], r[0] + 1) for r in expired]
            if expired:
                conn.executemany(
                    "UPDATE topic_pending SET attempt = attempt + 1, lease_until = ?"
                    " WHERE consumer = ? AND seq = ?",
                    [(until, consumer, r[1]) for r in expired],
                )
            fresh, delivered = self._scan(conn, filt, row[1], max_messages - len(out))
            if fresh:
                conn.execute(
                    "INSERT INTO topic_pending (consumer, seq, attempt, lease_until)"
                    " SELECT ?, value, 1, ? FROM json_each(?)",
                    (consumer, until, _json([r.seq for r in fresh])),
                )
                out.extend(fresh)
            if delivered != row[1] or row[2]:
                conn.execute(
                    "UPDATE topic_consumers SET delivered = ?, lost = 0 WHERE name = ?",
                    (delivered, consumer),
                )
            if out:
                per_topic = Counter(r.topic for r in out)
                conn.executemany(_COUNT_DELIVERY, [(t, n, 0) for t, n in per_topic.items()])
            next_wake = conn.execute(
                "SELECT MIN(lease_until) FROM topic_pending WHERE consumer = ?", (consumer,)
            ).fetchone()[0]
            return TopicClaim(out, until, row[2], next_wake)

        # past a `next(timeout)` deadline with the file locked: raised (the acks are kept)
        result: TopicClaim = await self._db.do_by_deadline(op, BackendUnavailable(_LOCKED))
        return result

    @staticmethod
    def _scan(
        conn: sqlite3.Connection, filt: TopicFilter, delivered: int, want: int
    ) -> tuple[list[TopicRecord], int]:
        """Up to `want` records after `delivered` that pass `filt`, and the new position.

        SQL narrows the scan by the pattern's literal prefix (the topic index serves a literal
        pattern); Python checks the rest. When SQL alone decides, Python checks nothing.
        """
        out: list[TopicRecord] = []
        tokens = filt.tokens
        literal = is_literal(tokens)
        prefix: list[str] = []
        for token in tokens:
            if token in ("*", ">"):
                break
            prefix.append(token)
        if literal:
            where, args = "topic = ? AND seq > ?", [filt.pattern]
            exact = True
        elif prefix:
            low = ".".join(prefix) + "."
            # unary + keeps the planner on the seq order (no sort of a topic-index range)
            where, args = "+topic >= ? AND +topic < ? AND seq > ?", [low, low[:-1] + "/"]
            exact = len(tokens) == len(prefix) + 1 and tokens[-1] == ">"
        else:
            where, args = "seq > ?", []
            exact = tokens == (">",)
        check = filt.has_filters or not exact
        sql = f"SELECT {_COLS} FROM topic_log WHERE {where} ORDER BY seq LIMIT ?"
        while len(out) < want:
            chunk = max(want - len(out), _SCAN_CHUNK) if check else want - len(out)
            rows = conn.execute(sql, (*args, delivered, chunk)).fetchall()
            if check:
                matches = filt.matches
                for r in rows:
                    delivered = r[0]
                    if matches(r[1], r[2], r[3], r[6]):
                        out.append(_record(r, 1))
                        if len(out) == want:
                            break
            else:
                out.extend([_record(r, 1) for r in rows])
                if rows:
                    delivered = rows[-1][0]
            if len(rows) < chunk:
                if len(out) < want:
                    # nothing else matches the narrowed scan: skip past other topics' records
                    delivered = max(delivered, _head(conn))
                break
        return out, delivered

    def prune_in(self, conn: sqlite3.Connection, now: float) -> int:
        """The prune step: delete log records beyond retention, counting what each durable
        consumer lost; returns how many were deleted."""
        r = self._retention
        lo, hi = conn.execute("SELECT MIN(seq), MAX(seq) FROM topic_log").fetchone()
        cutoff = now - r.topic_max_age
        if lo is not None:
            through = hi - r.topic_max_count  # sequences are contiguous but for pruned prefixes
            after = max(through, lo - 1)
            while after < lo + _PRUNE_BATCH:
                rows = conn.execute(
                    "SELECT seq, published_at FROM topic_log WHERE seq > ? ORDER BY seq LIMIT 1000",
                    (after,),
                ).fetchall()
                old = [seq for seq, at in rows if at <= cutoff]
                if old:
                    after = through = max(through, old[-1])
                if len(old) < len(rows) or len(rows) < 1000:
                    break
            through = min(through, lo + _PRUNE_BATCH - 1)
        else:
            through = 0
        pruned = 0
        if lo is not None and through >= lo:
            consumers = conn.execute("SELECT name, spec, delivered FROM topic_consumers").fetchall()
            for name, blob, delivered in consumers:
                # a record out on a live lease was delivered; one whose lease ended is lost
                lost = conn.execute(
                    "DELETE FROM topic_pending"
                    " WHERE consumer = ? AND seq <= ? AND lease_until <= ?",
                    (name, through, now),
                ).rowcount
                conn.execute(
                    "DELETE FROM topic_pending WHERE consumer = ? AND seq <= ?", (name, through)
                )
                if delivered < through:
                    filt = self._filter(blob)
                    doomed = conn.execute(
                        "SELECT topic, sender, type, metadata FROM topic_log"
                        " WHERE seq > ? AND seq <= ?",
                        (delivered, through),
                    )
                    lost += sum(1 for t, s, ty, m in doomed if filt.matches(t, s, ty, m))
                conn.execute(
                    "UPDATE topic_consumers SET delivered = MAX(delivered, ?), lost = lost + ?"
                    " WHERE name = ?",
                    (through, lost, name),
                )
            conn.execute(_COUNT_PRUNED, (through,))
            gone = conn.execute(
                f"DELETE FROM topic_log WHERE seq <= ? RETURNING {REF_COL}", (through,)
            ).fetchall()
            pruned = len(gone)
            drop_refs(conn, (g[0] for g in gone))  # records stored by reference
        conn.execute(
            "DELETE FROM topic_stats WHERE (last_publish IS NULL OR last_publish <= ?)"
            " AND NOT EXISTS (SELECT 1 FROM topic_log WHERE topic = name)",
            (cutoff,),
        )
        return int(pruned)


def _position(conn: sqlite3.Connection, spec: ConsumerSpec) -> int:
    """The sequence a consumer starting at `spec.start` has already passed."""
    if spec.start == "all":
        return 0
    if spec.start == "seq":
        return max(spec.start_seq - 1, 0)
    if spec.start == "time":
        row = conn.execute(
            "SELECT MIN(seq) FROM topic_log WHERE published_at >= ?", (spec.start_time,)
        ).fetchone()
        if row[0] is not None:
            return int(row[0]) - 1
    return _head(conn)
