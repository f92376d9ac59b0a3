"""The SQLite backend: the default, an embedded file that several processes may share.

Every operation runs on one writer thread (see `writer.py`) inside `BEGIN IMMEDIATE`
transactions shared by concurrent calls. Other processes on the same file are woken by
datagram pings (see `wake.py`); a slow re-check covers a ping that never arrives.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from ..._codec import decode_metadata, decode_payload
from ..._errors import UnknownAgent
from ..._models import (
    AgentInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
)
from ..._notify import Notifier
from ..._records import (
    PENDING_STATE_NAMES,
    Claimed,
    NewMessage,
    ScheduleSpec,
    Settle,
    SettleKind,
    State,
    StoredMessage,
    StoredReply,
)
from ..._scheduling import next_occurrence, scheduled_message
from ..._settings import Retention
from ..common import REPLY_GRACE, SCHEDULES_CHANNEL, mail_channel, reply_channel
from ..contracts import Backend, MailboxStore, ReferenceStore, SharedMemoryStore, TopicStore
from . import references, schema
from .references import PAYLOAD_SIZE, REF_COL, SQLiteReferences
from .shared_memory import SQLiteSharedMemory
from .topics import SQLiteTopics
from .wake import WakeBus, wake_dir_for
from .writer import INLINE_BUSY, Op, Writer, read_inline

_INSERT = (
    "INSERT INTO messages (id, recipient, sender, type, priority, state, visible_at, expires_at,"
    " max_attempts, enqueued_at, correlation_id, reply_to, data_kind, data, metadata)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RETURNING = (
    "seq, id, sender, recipient, type, priority, data, data_kind, metadata, attempt,"
    " max_attempts, enqueued_at, visible_at, correlation_id, reply_to"
)
_CLAIM = (
    "UPDATE messages SET state = 1, attempt = attempt + 1, visible_at = ?1"
    " WHERE seq IN (SELECT seq FROM messages WHERE recipient = ?2 AND state = 0"
    " AND (expires_at IS NULL OR expires_at > ?3) ORDER BY priority DESC, seq LIMIT ?4)"
    f" RETURNING {_RETURNING}"
)
_IN_JSON = "(SELECT value FROM json_each(?))"
_PRUNE_BATCH = 10_000

_reply_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(StoredReply)
_spec_decoder = msgspec.msgpack.Decoder(ScheduleSpec)


def _bump(conn: sqlite3.Connection, name: str, n: int = 1) -> None:
    if n:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )


def _row_tuple(m: NewMessage, now: float) -> tuple[Any, ...]:
    state = State.DELAYED if m.visible_at > now else State.READY
    return (
        m.id, m.recipient, m.sender, m.type, m.priority, int(state), m.visible_at,
        m.expires_at, m.max_attempts, m.enqueued_at, m.correlation_id, m.reply_to,
        m.data_kind, m.data, m.metadata,
    )  # fmt: skip


class SQLiteBackend(
    SQLiteReferences,
    SQLiteTopics,
    SQLiteSharedMemory,
    MailboxStore,
    TopicStore,
    SharedMemoryStore,
    ReferenceStore,
    Backend,
):
    """Implements the backend contract on one SQLite file."""

    def __init__(
        self,
        path: str,
        retention: Retention,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 10_000,
        recheck_interval: float = 2.0,
    ) -> None:
        self.path = path
        self.retention = retention
        self.recheck_interval = recheck_interval
        self.notifier = Notifier()
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._known_agents: set[str] = set()  # used on the writer thread only
        self._wake = WakeBus(wake_dir_for(path), self.notifier.notify)
        self._writer = Writer(
            self._connect,
            self._wake.ping,
            self.notifier.notify,
            on_rollback=self._known_agents.clear,
        )
        self._reader = Writer(self._connect_reader, _no_op, _no_op, read_only=True)
        self._inline: sqlite3.Connection | None = None  # point reads on the loop thread
        # transitional: this object serves every feature until each has its own module
        self.mailboxes = self
        self.topics = self
        self.shared_memory = self
        self.references = self

    def _connect(self) -> sqlite3.Connection:
        conn = schema.connect(
            self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms
        )
        try:
            schema.migrate(conn)
            references.install(conn, lambda: self.ref_gc_strategy)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        if busy_timeout_ms is None:
            busy_timeout_ms = self._busy_timeout_ms
        conn = schema.connect(
            self.path, synchronous=self._synchronous, busy_timeout_ms=busy_timeout_ms
        )
        conn.execute("PRAGMA query_only = 1")
        return conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._start, loop)
        self._wake.start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._writer.start(loop)  # first: it creates or migrates the schema
        self._reader.start(loop)
        self._inline = self._connect_reader(busy_timeout_ms=0)

    async def close(self) -> None:
        await self._writer.stop()
        await self._reader.stop()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        self._wake.close()
        self.notifier.wake_all()

    async def _do(self, fn: Op) -> Any:
        """Run `fn` in a write transaction on the writer thread."""
        return await self._writer.submit(fn)

    def _read_inline(self, fn: Op) -> Any:
        """Run a one-SELECT point read right here on the loop thread (see `read_inline`)."""
        if self._inline is None:
            return INLINE_BUSY
        return read_inline(self._inline, fn)

    async def _read(self, fn: Op, *, single_statement: bool = False) -> Any:
        """Run a read-only `fn` on the reader connection, beside the writer."""
        return await self._reader.submit(fn, single_statement=single_statement)

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        def op(conn: sqlite3.Connection, touched: set[str]) -> AgentInfo:
            row = conn.execute(
                "INSERT INTO agents (name, created_at, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen"
                " RETURNING name, created_at, last_seen",
                (name, now, now),
            ).fetchone()
            self._known_agents.add(name)
            return AgentInfo(*row)

        result: AgentInfo = await self._do(op)
        return result

    async def list_agents(self) -> list[AgentInfo]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[AgentInfo]:
            rows = conn.execute("SELECT name, created_at, last_seen FROM agents ORDER BY name")
            return [AgentInfo(*r) for r in rows]

        result: list[AgentInfo] = await self._read(op)
        return result

    def _require_agent(
        self, conn: sqlite3.Connection, name: str, auto_register: bool, now: float
    ) -> None:
        if name in self._known_agents:
            return
        if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone() is None:
            if not auto_register:
                raise UnknownAgent(name)
            conn.execute(
                "INSERT INTO agents (name, created_at, last_seen) VALUES (?, ?, ?)",
                (name, now, now),
            )
        self._known_agents.add(name)

    # --- mailboxes -----------------------------------------------------------------------------

    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        rows = [_row_tuple(m, now) for m in messages]  # built here, off the writer thread

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[str]:
            for recipient in {m.recipient for m in messages}:
                self._require_agent(conn, recipient, auto_register, now)
            ids: list[str] = []
            plain: list[tuple[Any, ...]] = []
            deduplicated = 0
            for m, row in zip(messages, rows, strict=True):
                if m.idempotency_key is not None:
                    if plain:  # keep FIFO order: store what came before first
                        conn.executemany(_INSERT, plain)
                        plain = []
                    seen = conn.execute(
                        "SELECT message_id, until FROM dedupe"
                        " WHERE sender = ? AND recipient = ? AND key = ?",
                        (m.sender, m.recipient, m.idempotency_key),
                    ).fetchone()
                    if seen is not None and seen[1] > now:
                        ids.append(seen[0])
                        deduplicated += 1
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO dedupe (sender, recipient, key, message_id, until)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (m.sender, m.recipient, m.idempotency_key, m.id, m.dedupe_until or now),
                    )
                plain.append(row)
                references.hold(conn, m.data, m.data_kind)
                if m.request_deadline is not None and m.correlation_id is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO requests (correlation_id, deadline) VALUES (?, ?)",
                        (m.correlation_id, m.request_deadline),
                    )
                touched.add(mail_channel(m.recipient))
                ids.append(m.id)
            if plain:
                conn.executemany(_INSERT, plain)
            _bump(conn, "deduplicated", deduplicated)
            return ids

        result: list[str] = await self._do(op)
        return result

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        def op(conn: sqlite3.Connection, touched: set[str]) -> tuple[list[Any], float | None]:
            self._fire_timers(conn, agent, now)
            rows = conn.execute(_CLAIM, (now + lease, agent, now, max_messages)).fetchall()
            if rows:  # the caller only needs the next wake-up when it has to wait
                return rows, None
            next_wake = conn.execute(
                "SELECT MIN(visible_at) FROM messages WHERE recipient = ? AND state IN (1, 2)",
                (agent,),
            ).fetchone()[0]
            return rows, next_wake

        rows, next_wake = await self._do(op)
        messages = [StoredMessage(*r) for r in rows]
        if len(messages) > 1:  # RETURNING gives no order guarantee
            messages.sort(key=lambda m: (-m.priority, m.seq))
        return Claimed(messages, next_wake)

    @staticmethod
    def _fire_timers(conn: sqlite3.Connection, agent: str, now: float) -> None:
        due = conn.execute(
            "SELECT seq, state, attempt, max_attempts FROM messages"
            " WHERE recipient = ? AND state IN (1, 2) AND visible_at <= ?",
            (agent, now),
        ).fetchall()
        if not due:
            return
        ready = [seq for seq, state, attempt, most in due if state == 2 or attempt < most]
        if ready:
            conn.execute(
                f"UPDATE messages SET state = 0 WHERE seq IN {_IN_JSON}",
                (msgspec.json.encode(ready),),
            )
        exhausted = [
            (now, f"lease expired on delivery {attempt} of {most}", seq)
            for seq, state, attempt, most in due
            if state == 1 and attempt >= most
        ]
        if exhausted:
            conn.executemany(
                "UPDATE messages SET state = 3, finished_at = ?, dead_reason = ? WHERE seq = ?",
                exhausted,
            )
            _bump(conn, "dead_lettered", len(exhausted))

    def _settle_in(
        self, conn: sqlite3.Connection, op: Settle, now: float, touched: set[str]
    ) -> bool:
        key = (op.seq, op.attempt)
        live = "seq = ? AND attempt = ? AND state IN (0, 1)"
        if op.kind == SettleKind.ACK:
            if self.retention.acked > 0:
                sql = f"UPDATE messages SET state = 5, finished_at = ? WHERE {live}"
                acked = conn.execute(f"{sql} RETURNING {REF_COL}", (now, *key)).fetchone()
            else:
                sql = f"DELETE FROM messages WHERE {live} RETURNING {REF_COL}"
                acked = conn.execute(sql, key).fetchone()
            if acked is not None:  # an acked message no longer holds its payload's reference
                references.drop(conn, acked)
            return acked is not None
        if op.kind == SettleKind.EXTEND:
            sql = "UPDATE messages SET visible_at = ? WHERE seq = ? AND attempt = ? AND state = 1"
            return conn.execute(sql, (op.until, *key)).rowcount == 1
        reason = op.reason
        if op.kind == SettleKind.NACK:
            row = conn.execute(f"SELECT max_attempts FROM messages WHERE {live}", key).fetchone()
            if row is None:
                return False
            touched.add(mail_channel(op.recipient))
            if op.attempt < row[0]:
                state = State.DELAYED if op.until > now else State.READY
                sql = f"UPDATE messages SET state = ?, visible_at = ? WHERE {live}"
                conn.execute(sql, (int(state), op.until, *key))
                return True
            reason = reason or f"nacked on final delivery {op.attempt}"
        sql = f"UPDATE messages SET state = 3, finished_at = ?, dead_reason = ? WHERE {live}"
        if conn.execute(sql, (now, reason, *key)).rowcount != 1:
            return False
        _bump(conn, "dead_lettered")
        return True

    async def settle(self, op: Settle, *, now: float) -> bool:
        result: bool = await self._do(lambda conn, touched: self._settle_in(conn, op, now, touched))
        return result

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        plain_acks = self.retention.acked == 0 and all(o.kind == SettleKind.ACK for o in ops)
        keys = [(o.seq, o.attempt) for o in ops] if plain_acks else []

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[bool]:
            if plain_acks:
                # the common case in one statement; if any lease was lost, find out which
                conn.execute("SAVEPOINT acks")
                held = conn.execute(
                    f"SELECT data FROM messages WHERE seq IN {_IN_JSON} AND data_kind & 2",
                    (msgspec.json.encode([k[0] for k in keys]),),
                ).fetchall()
                cur = conn.executemany(
                    "DELETE FROM messages WHERE seq = ? AND attempt = ? AND state IN (0, 1)", keys
                )
                if cur.rowcount == len(keys):
                    references.drop(conn, (r[0] for r in held))
                    conn.execute("RELEASE acks")
                    return [True] * len(keys)
                conn.execute("ROLLBACK TO acks")
                conn.execute("RELEASE acks")
            return [self._settle_in(conn, o, now, touched) for o in ops]

        result: list[bool] = await self._do(op)
        return result

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        def op(conn: sqlite3.Connection, touched: set[str]) -> MailboxStats:
            one = "SELECT COUNT(*) FROM messages WHERE recipient = ? AND state = ?"
            ready = conn.execute(one, (agent, 0)).fetchone()[0]
            dead = conn.execute(one, (agent, 3)).fetchone()[0]
            timers = dict(
                conn.execute(
                    "SELECT state, COUNT(*) FROM messages WHERE recipient = ? AND state IN (1, 2)"
                    " GROUP BY state",
                    (agent,),
                ).fetchall()
            )
            return MailboxStats(agent, ready, timers.get(2, 0), timers.get(1, 0), dead)

        result: MailboxStats = await self._read(op)
        return result

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        cols = (
            "id, sender, recipient, type, priority, state, attempt, enqueued_at, visible_at,"
            f" expires_at, {PAYLOAD_SIZE}, seq"
        )

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[Any, ...]]:
            ready = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state = 0"
                " ORDER BY priority DESC, seq LIMIT ?",
                (agent, limit),
            ).fetchall()
            timers = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state IN (1, 2)"
                " ORDER BY visible_at LIMIT ?",
                (agent, limit),
            ).fetchall()
            return ready + timers

        rows: list[tuple[Any, ...]] = await self._read(op)
        rows.sort(key=lambda r: (-r[4], r[11]))
        return [
            PendingInfo(
                id=r[0],
                sender=r[1],
                recipient=r[2],
                type=r[3],
                priority=r[4],
                state=PENDING_STATE_NAMES[State(r[5])],
                attempt=r[6],
                enqueued_at=r[7],
                visible_at=r[8],
                expires_at=r[9],
                size=r[10],
            )
            for r in rows[:limit]
        ]

    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT id, sender, recipient, type, dead_reason, attempt, enqueued_at,"
                " finished_at, data, data_kind, metadata FROM messages"
                " WHERE recipient = ? AND state = 3 ORDER BY seq LIMIT ?",
                (agent, limit),
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._read(op)
        return [
            DeadLetter(
                id=r[0],
                sender=r[1],
                recipient=r[2],
                type=r[3],
                reason=r[4] or "",
                attempts=r[5],
                enqueued_at=r[6],
                dead_at=r[7],
                data=decode_payload(r[8], r[9]),
                metadata=decode_metadata(r[10]),
            )
            for r in rows
        ]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            # a requeue is an explicit decision to deliver: clear a passed expiry too
            sql = (
                "UPDATE messages SET state = 0, attempt = 0, finished_at = NULL,"
                " dead_reason = NULL,"
                " expires_at = CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END"
                " WHERE recipient = ? AND state = 3"
            )
            if ids is None:
                count = conn.execute(sql, (now, agent)).rowcount
            else:
                sql += f" AND id IN {_IN_JSON}"
                count = conn.execute(sql, (now, agent, msgspec.json.encode(list(ids)))).rowcount
            if count:
                touched.add(mail_channel(agent))
            return int(count)

        result: int = await self._do(op)
        return result

    # --- request / reply -----------------------------------------------------------------------

    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        blob = _reply_encoder.encode(reply)

        def op(conn: sqlite3.Connection, touched: set[str]) -> bool:
            if ack is not None:
                self._settle_in(conn, ack, now, touched)
            updated = conn.execute(
                "UPDATE requests SET reply = ? WHERE correlation_id = ? AND reply IS NULL",
                (blob, correlation_id),
            ).rowcount
            if updated != 1:
                _bump(conn, "late_replies")
                return False
            references.hold(conn, reply.data, reply.data_kind)
            touched.add(reply_channel(correlation_id))
            return True

        result: bool = await self._do(op)
        return result

    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> bytes | None:
            row = conn.execute(
                "SELECT reply FROM requests WHERE correlation_id = ?", (correlation_id,)
            ).fetchone()
            if row is None:
                return None
            if row[0] is not None or abandon:
                conn.execute("DELETE FROM requests WHERE correlation_id = ?", (correlation_id,))
            blob: bytes | None = row[0]
            return blob

        blob: bytes | None = await self._do(op)
        return None if blob is None else _reply_decoder.decode(blob)

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        blob = msgspec.msgpack.encode(spec)

        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            self._require_agent(conn, spec.recipient, auto_register, spec.created_at)
            conn.execute(
                "INSERT INTO schedules (id, spec, next_run) VALUES (?, ?, ?)",
                (spec.id, blob, spec.next_run),
            )
            references.hold(conn, spec.data, spec.data_kind)
            touched.add(SCHEDULES_CHANNEL)

        await self._do(op)

    async def cancel_schedule(self, schedule_id: str) -> bool:
        def op(conn: sqlite3.Connection, touched: set[str]) -> bool:
            gone = conn.execute(
                "DELETE FROM schedules WHERE id = ? RETURNING spec", (schedule_id,)
            ).fetchone()
            if gone is not None:
                spec = _spec_decoder.decode(gone[0])
                references.drop_payload(conn, spec.data, spec.data_kind)
                touched.add(SCHEDULES_CHANNEL)
            return gone is not None

        result: bool = await self._do(op)
        return result

    async def list_schedules(self) -> list[ScheduleInfo]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[bytes, float, int]]:
            return conn.execute(
                "SELECT spec, next_run, runs FROM schedules ORDER BY next_run"
            ).fetchall()

        rows: list[tuple[bytes, float, int]] = await self._read(op)
        out = []
        for blob, next_run, runs in rows:
            s = _spec_decoder.decode(blob)
            out.append(
                ScheduleInfo(s.id, s.sender, s.recipient, s.type, s.cron, s.every, next_run, runs)
            )
        return out

    async def fire_due(self, now: float) -> float | None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> float | None:
            due = conn.execute(
                "SELECT spec, next_run FROM schedules WHERE next_run <= ? ORDER BY next_run"
                " LIMIT 256",
                (now,),
            ).fetchall()
            for blob, next_run in due:
                spec = _spec_decoder.decode(blob)
                conn.execute(_INSERT, _row_tuple(scheduled_message(spec, now), now))
                references.hold(conn, spec.data, spec.data_kind)
                upcoming = next_occurrence(spec.cron, spec.every, next_run, now)
                conn.execute(
                    "UPDATE schedules SET next_run = ?, runs = runs + 1 WHERE id = ?",
                    (upcoming, spec.id),
                )
                touched.add(mail_channel(spec.recipient))
            _bump(conn, "scheduled_runs", len(due))
            nxt: float | None = conn.execute("SELECT MIN(next_run) FROM schedules").fetchone()[0]
            return nxt

        result: float | None = await self._do(op)
        return result

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> PruneReport:
        r = self.retention

        def op(conn: sqlite3.Connection, touched: set[str]) -> PruneReport:
            exhausted = conn.execute(
                "SELECT seq, attempt, max_attempts, recipient FROM messages"
                " WHERE state IN (1, 2) AND visible_at <= ?",
                (now,),
            ).fetchall()
            dead_rows = [
                (now, f"lease expired on delivery {attempt} of {most}", seq)
                for seq, attempt, most, _ in exhausted
                if attempt >= most
            ]
            conn.executemany(
                "UPDATE messages SET state = 3, finished_at = ?, dead_reason = ?"
                " WHERE seq = ? AND state = 1",
                dead_rows,
            )
            _bump(conn, "dead_lettered", len(dead_rows))
            # expired and acked messages release their payload's reference at once, dead
            # letters (which can be requeued) when they are pruned
            expired_rows = conn.execute(
                "UPDATE messages SET state = 4, finished_at = ?"
                f" WHERE state IN (0, 2) AND expires_at <= ? RETURNING {REF_COL}",
                (now, now),
            ).fetchall()
            expired = len(expired_rows)
            references.drop(conn, (row[0] for row in expired_rows))
            _bump(conn, "expired", expired)
            pruned = 0
            for state, keep in ((5, r.acked), (4, r.expired), (3, r.dead)):
                gone = conn.execute(
                    "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
                    " WHERE state >= 3 AND finished_at <= ? AND state = ? LIMIT ?)"
                    f" RETURNING {REF_COL if state == 3 else 'NULL'}",
                    (now - keep, state, _PRUNE_BATCH),
                ).fetchall()
                pruned += len(gone)
                references.drop(conn, (row[0] for row in gone))
            keys = conn.execute("DELETE FROM dedupe WHERE until <= ?", (now,)).rowcount
            stale = conn.execute(
                "DELETE FROM requests WHERE deadline <= ? RETURNING reply", (now - REPLY_GRACE,)
            ).fetchall()
            requests = len(stale)
            for (blob,) in stale:  # a reply nobody took still held its payload's reference
                if blob is not None:
                    stored = _reply_decoder.decode(blob)
                    references.drop_payload(conn, stored.data, stored.data_kind)
            topic_records = self._prune_topics(conn, now)
            self._kv_prune_in(conn, now, touched)
            return PruneReport(expired, len(dead_rows), pruned, keys, requests, topic_records)

        result: PruneReport = await self._do(op)
        return result

    async def stats(self) -> HubStats:
        def op(conn: sqlite3.Connection, touched: set[str]) -> dict[str, int]:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            # every stored message took the next AUTOINCREMENT sequence number
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
            counters["sent"] = (row.fetchone() or (0,))[0]
            return counters

        counters: dict[str, int] = await self._read(op)
        return HubStats(**{f: counters.get(f, 0) for f in HubStats.__struct_fields__})


def _no_op(_channels: set[str]) -> None:
    """Reads touch no channel: nothing to ping or notify."""
