"""Mailboxes on SQLite: agents, messages, request / reply slots and schedules.

A message is one row of `messages` whose `state` (`agentcomm._records.State`) moves from
ready, delayed or in flight to dead, expired or acked; the tables and their indexes are in
`schema.py`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from ..._codec import decode_metadata, decode_payload
from ..._deadline import CALL_DEADLINE
from ..._errors import BackendUnavailable, UnknownAgent
from ..._models import (
    AgentInfo,
    DeadLetter,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
)
from ..._records import (
    PENDING_STATE_NAMES,
    Claimed,
    DataKind,
    NewMessage,
    NewTopicRecord,
    PeekRecord,
    ScheduleSpec,
    Settle,
    SettleKind,
    State,
    StoredMessage,
    StoredReply,
    failed_reply,
)
from ..._settings import Retention
from ..common import (
    DEAD_NOTICE_TYPE,
    REPLY_GRACE,
    SCHEDULES_CHANNEL,
    SYSTEM_ORIGIN,
    dead_notice,
    dead_topic,
    expired_reason,
    final_nack_reason,
    lease_expired_reason,
    log_dead_letter,
    log_lease_expired,
    mail_channel,
    mailbox_log,
    reply_channel,
)
from ..contracts import MailboxStore
from . import schedules
from .access import Access
from .references import HOLDS_REF, PAYLOAD_SIZE, REF_COL, drop_ref, drop_refs, hold_ref
from .schema import (
    ACKED,
    DEAD,
    DELAYED,
    EXPIRED,
    FINISHED,
    IN_FLIGHT,
    READY,
    TIMED,
    UNDELIVERED,
    UNSETTLED,
)
from .topics import append_in

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
    f"UPDATE messages SET state = {IN_FLIGHT}, attempt = attempt + 1, visible_at = ?1"
    f" WHERE seq IN (SELECT seq FROM messages WHERE recipient = ?2 AND state = {READY}"
    " AND (expires_at IS NULL OR expires_at > ?3) ORDER BY priority DESC, seq LIMIT ?4)"
    f" RETURNING {_RETURNING}"
)
_IN_JSON = "(SELECT value FROM json_each(?))"
_NEXT_WAKE = f"SELECT MIN(visible_at) FROM messages WHERE recipient = ? AND state IN {TIMED}"
_DUE = (
    "SELECT seq, state, attempt, max_attempts FROM messages"
    f" WHERE recipient = ? AND state IN {TIMED} AND visible_at <= ?"
)
_MAKE_READY = f"UPDATE messages SET state = {READY} WHERE seq IN {_IN_JSON}"
#: What a dead-lettered row tells `_ended`: (id, sender, recipient, type, correlation_id,
#: attempt, dead_reason).
_ENDED = "id, sender, recipient, type, correlation_id, attempt, dead_reason"
_KILL = (
    f"UPDATE messages SET state = {DEAD}, finished_at = ?, dead_reason = ? WHERE seq = ?"
    f" RETURNING {_ENDED}"
)
_KILL_LEASED = (
    f"UPDATE messages SET state = {DEAD}, finished_at = ?, dead_reason = ?"
    f" WHERE seq = ? AND state = {IN_FLIGHT} RETURNING {_ENDED}"
)
# settling one delivery: its (seq, attempt) while the message is still ready or in flight
_LIVE = f"seq = ? AND attempt = ? AND state IN {UNSETTLED}"
_ACK_KEEP = f"UPDATE messages SET state = {ACKED}, finished_at = ? WHERE {_LIVE}"
_ACK_KEEP_RETURNING = f"{_ACK_KEEP} RETURNING {REF_COL}"
_ACK_DELETE = f"DELETE FROM messages WHERE {_LIVE} RETURNING {REF_COL}"
_ACK_MANY = f"DELETE FROM messages WHERE {_LIVE}"
_HELD = f"SELECT data FROM messages WHERE seq IN {_IN_JSON} AND {HOLDS_REF}"
_EXTEND = (
    f"UPDATE messages SET visible_at = ? WHERE seq = ? AND attempt = ? AND state = {IN_FLIGHT}"
)
# a release: ready again at once, this delivery not counted as an attempt
_RELEASE = (
    f"UPDATE messages SET state = {READY}, attempt = attempt - 1"
    f" WHERE seq = ? AND attempt = ? AND state = {IN_FLIGHT}"
)
_AGENT_COLS = "name, created_at, last_seen, last_active"
_MAX_ATTEMPTS = f"SELECT max_attempts FROM messages WHERE {_LIVE}"
_RETRY = f"UPDATE messages SET state = ?, visible_at = ? WHERE {_LIVE}"
_DEAD_LETTER = (
    f"UPDATE messages SET state = {DEAD}, finished_at = ?, dead_reason = ? WHERE {_LIVE}"
    f" RETURNING {_ENDED}"
)
_FAIL_REQUEST = "UPDATE requests SET reply = ? WHERE correlation_id = ? AND reply IS NULL"
_REQUEST_ATTEMPT = "UPDATE requests SET attempts = ? WHERE correlation_id = ?"
_PRUNE_BATCH = 10_000
_LOCKED = (
    "The SQLite database stayed locked past the call's timeout, so nothing was sent: another "
    "process holds a long write transaction. Retry, or find the process that holds the lock."
)

_reply_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(StoredReply)


def _bump(conn: sqlite3.Connection, name: str, n: int = 1) -> None:
    if n:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )


def _fail_request(
    conn: sqlite3.Connection,
    cid: str,
    message_id: str,
    recipient: str,
    attempts: int,
    reason: str,
    now: float,
    expired: bool,
    touched: set[str],
) -> None:
    """Write the failure reply into the request's slot if its requester still waits."""
    blob = _reply_encoder.encode(
        failed_reply(message_id, recipient, attempts, reason, now, expired)
    )
    if conn.execute(_FAIL_REQUEST, (blob, cid)).rowcount:
        touched.add(reply_channel(cid))


def _ended(conn: sqlite3.Connection, rows: Sequence[Any], now: float, touched: set[str]) -> None:
    """Rows (`_ENDED`) just dead-lettered: fail their requests, announce them, log them."""
    for message_id, sender, recipient, type_, cid, attempt, reason in rows:
        reason = reason or ""
        if cid is not None:
            _fail_request(conn, cid, message_id, recipient, attempt, reason, now, False, touched)
        topic = dead_topic(recipient)
        notice = dead_notice(message_id, sender, recipient, type_, reason, attempt, cid)
        append_in(
            conn,
            NewTopicRecord(topic, recipient, DEAD_NOTICE_TYPE, notice, DataKind.JSON, None, now,
                           SYSTEM_ORIGIN),
            touched,
        )  # fmt: skip
        log_dead_letter(recipient, message_id, reason, attempt)


def _insert(conn: sqlite3.Connection, m: NewMessage, now: float) -> None:
    conn.execute(_INSERT, row_tuple(m, now))


def row_tuple(m: NewMessage, now: float) -> tuple[Any, ...]:
    """The `messages` row of a new message, in `_INSERT`'s column order."""
    state = DELAYED if m.visible_at > now else READY
    return (
        m.id, m.recipient, m.sender, m.type, m.priority, state, m.visible_at,
        m.expires_at, m.max_attempts, m.enqueued_at, m.correlation_id, m.reply_to,
        m.data_kind, m.data, m.metadata,
    )  # fmt: skip


class SQLiteMailboxes(MailboxStore):
    """Agents, mailboxes, replies and schedules on SQLite."""

    def __init__(self, db: Access, retention: Retention) -> None:
        self._db = db
        self._retention = retention
        self._known_agents: set[str] = set()  # used on the writer thread only

    def forget_known_agents(self) -> None:
        """Drop the cache of registered agents: a rollback may have undone a registration."""
        self._known_agents.clear()

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        def op(conn: sqlite3.Connection, touched: set[str]) -> AgentInfo:
            row = conn.execute(
                "INSERT INTO agents (name, created_at, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen"
                f" RETURNING {_AGENT_COLS}",
                (name, now, now),
            ).fetchone()
            self._known_agents.add(name)
            return AgentInfo(*row)

        result: AgentInfo = await self._db.do(op)
        return result

    async def list_agents(self) -> list[AgentInfo]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[AgentInfo]:
            rows = conn.execute(f"SELECT {_AGENT_COLS} FROM agents ORDER BY name")
            return [AgentInfo(*r) for r in rows]

        result: list[AgentInfo] = await self._db.read(op)
        return result

    async def get_agent(self, name: str) -> AgentInfo | None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> AgentInfo | None:
            row = conn.execute(f"SELECT {_AGENT_COLS} FROM agents WHERE name = ?", (name,))
            found = row.fetchone()
            return None if found is None else AgentInfo(*found)

        result: AgentInfo | None = await self._db.read(op)
        return result

    async def touch_agent(self, name: str, *, seen: float, active: float | None) -> None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            conn.execute(
                "UPDATE agents SET last_seen = ?, last_active = coalesce(?, last_active)"
                " WHERE name = ?",
                (seen, active, name),
            )

        await self._db.do(op)

    def require_agent(
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
        rows = [row_tuple(m, now) for m in messages]  # built here, off the writer thread

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[str]:
            return self.enqueue_in(conn, messages, rows, auto_register, now, touched)

        if CALL_DEADLINE.get() is None:
            result: list[str] = await self._db.do(op)
        else:  # a request's send: give up, storing nothing, if the file stays locked
            result = await self._db.do_by_deadline(op, BackendUnavailable(_LOCKED))
        return result

    def enqueue_in(
        self,
        conn: sqlite3.Connection,
        messages: Sequence[NewMessage],
        rows: Sequence[tuple[Any, ...]],
        auto_register: bool,
        now: float,
        touched: set[str],
    ) -> list[str]:
        """Store messages (`rows` from `row_tuple`) in the caller's write transaction."""
        for recipient in {m.recipient for m in messages}:
            self.require_agent(conn, recipient, auto_register, now)
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
            hold_ref(conn, m.data, m.data_kind)
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

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        def op(conn: sqlite3.Connection, touched: set[str]) -> tuple[list[Any], float | None]:
            _fire_timers(conn, agent, now, touched)
            rows = conn.execute(_CLAIM, (now + lease, agent, now, max_messages)).fetchall()
            if rows:  # the caller only needs the next wake-up when it has to wait
                requests = [(r[9], r[13]) for r in rows if r[13] is not None]
                if requests:  # a request's slot records that it was received
                    conn.executemany(_REQUEST_ATTEMPT, requests)
                return rows, None
            next_wake = conn.execute(_NEXT_WAKE, (agent,)).fetchone()[0]
            return rows, next_wake

        # past the caller's deadline with the file locked: nothing claimed, nothing changed
        rows, next_wake = await self._db.do_by_deadline(op, ([], None))
        messages = [StoredMessage(*r) for r in rows]
        if len(messages) > 1:  # RETURNING gives no order guarantee
            messages.sort(key=lambda m: (-m.priority, m.seq))
        return Claimed(messages, next_wake)

    def _settle_in(
        self, conn: sqlite3.Connection, op: Settle, now: float, touched: set[str]
    ) -> bool:
        key = (op.seq, op.attempt)
        if op.kind == SettleKind.ACK:
            if self._retention.acked > 0:
                acked = conn.execute(_ACK_KEEP_RETURNING, (now, *key)).fetchone()
            else:
                acked = conn.execute(_ACK_DELETE, key).fetchone()
            if acked is not None:  # an acked message no longer holds its payload's reference
                drop_refs(conn, acked)
            return acked is not None
        if op.kind == SettleKind.EXTEND:
            return conn.execute(_EXTEND, (op.until, *key)).rowcount == 1
        reason = op.reason
        if op.kind == SettleKind.NACK:
            row = conn.execute(_MAX_ATTEMPTS, key).fetchone()
            if row is None:
                return False
            touched.add(mail_channel(op.recipient))
            if op.attempt < row[0]:
                state = DELAYED if op.until > now else READY
                conn.execute(_RETRY, (state, op.until, *key))
                return True
            reason = reason or final_nack_reason(op.attempt)
        dead = conn.execute(_DEAD_LETTER, (now, reason, *key)).fetchone()
        if dead is None:
            return False
        _bump(conn, "dead_lettered")
        _ended(conn, (dead,), now, touched)
        return True

    async def settle(self, op: Settle, *, now: float) -> bool:
        result: bool = await self._db.do(
            lambda conn, touched: self._settle_in(conn, op, now, touched)
        )
        return result

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        plain_acks = self._retention.acked == 0 and all(o.kind == SettleKind.ACK for o in ops)
        keys = [(o.seq, o.attempt) for o in ops] if plain_acks else []

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[bool]:
            if plain_acks:
                # the common case in one statement; if any lease was lost, find out which
                conn.execute("SAVEPOINT acks")
                held = conn.execute(_HELD, (msgspec.json.encode([k[0] for k in keys]),)).fetchall()
                cur = conn.executemany(_ACK_MANY, keys)
                if cur.rowcount == len(keys):
                    drop_refs(conn, (r[0] for r in held))
                    conn.execute("RELEASE acks")
                    return [True] * len(keys)
                conn.execute("ROLLBACK TO acks")
                conn.execute("RELEASE acks")
            return [self._settle_in(conn, o, now, touched) for o in ops]

        result: list[bool] = await self._db.do(op)
        return result

    async def release(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[bool]:
            out = []
            for o in ops:
                done = conn.execute(_RELEASE, (o.seq, o.attempt)).rowcount == 1
                if done:
                    touched.add(mail_channel(o.recipient))
                out.append(done)
            return out

        result: list[bool] = await self._db.do(op)
        return result

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        def op(conn: sqlite3.Connection, touched: set[str]) -> MailboxStats:
            one = "SELECT COUNT(*) FROM messages WHERE recipient = ? AND state = ?"
            ready = conn.execute(one, (agent, READY)).fetchone()[0]
            dead = conn.execute(one, (agent, DEAD)).fetchone()[0]
            timers = dict(
                conn.execute(
                    "SELECT state, COUNT(*) FROM messages"
                    f" WHERE recipient = ? AND state IN {TIMED} GROUP BY state",
                    (agent,),
                ).fetchall()
            )
            return MailboxStats(
                agent, ready, timers.get(DELAYED, 0), timers.get(IN_FLIGHT, 0), dead
            )

        result: MailboxStats = await self._db.read(op)
        return result

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        cols = (
            "id, sender, recipient, type, priority, state, attempt, enqueued_at, visible_at,"
            f" expires_at, {PAYLOAD_SIZE}, seq"
        )

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[Any, ...]]:
            ready = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state = {READY}"
                " ORDER BY priority DESC, seq LIMIT ?",
                (agent, limit),
            ).fetchall()
            timers = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state IN {TIMED}"
                " ORDER BY visible_at LIMIT ?",
                (agent, limit),
            ).fetchall()
            return ready + timers

        rows: list[tuple[Any, ...]] = await self._db.read(op)
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
                f" WHERE recipient = ? AND state = {DEAD} ORDER BY seq LIMIT ?",
                (agent, limit),
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._db.read(op)
        return [_dead_letter(r) for r in rows]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            # a requeue is an explicit decision to deliver: clear a passed expiry too
            sql = (
                f"UPDATE messages SET state = {READY}, attempt = 0, finished_at = NULL,"
                " dead_reason = NULL,"
                " expires_at = CASE WHEN expires_at <= ? THEN NULL ELSE expires_at END"
                f" WHERE recipient = ? AND state = {DEAD}"
            )
            if ids is None:
                count = conn.execute(sql, (now, agent)).rowcount
            else:
                sql += f" AND id IN {_IN_JSON}"
                count = conn.execute(sql, (now, agent, msgspec.json.encode(list(ids)))).rowcount
            if count:
                touched.add(mail_channel(agent))
            return int(count)

        result: int = await self._db.do(op)
        return result

    # --- operators -----------------------------------------------------------------------------

    async def peek(self, agent: str, *, limit: int) -> list[PeekRecord]:
        cols = (
            "id, sender, recipient, type, priority, state, attempt, enqueued_at, visible_at,"
            f" expires_at, {PAYLOAD_SIZE}, seq, max_attempts, correlation_id, data, data_kind,"
            " metadata"
        )

        def op(conn: sqlite3.Connection, touched: set[str]) -> list[tuple[Any, ...]]:
            ready = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state = {READY}"
                " ORDER BY priority DESC, seq LIMIT ?",
                (agent, limit),
            ).fetchall()
            timers = conn.execute(
                f"SELECT {cols} FROM messages WHERE recipient = ? AND state IN {TIMED}"
                " ORDER BY visible_at LIMIT ?",
                (agent, limit),
            ).fetchall()
            return ready + timers

        rows: list[tuple[Any, ...]] = await self._db.read(op)
        rows.sort(key=lambda r: (-r[4], r[11]))
        return [
            PeekRecord(
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
                ),
                r[12],
                r[13],
                r[14],
                r[15],
                r[16],
            )
            for r in rows[:limit]
        ]

    async def delete_message(self, agent: str, message_id: str, *, now: float) -> bool:
        def op(conn: sqlite3.Connection, touched: set[str]) -> bool:
            gone = conn.execute(
                f"DELETE FROM messages WHERE recipient = ? AND id = ? AND state <= {DEAD}"
                f" RETURNING {REF_COL}",
                (agent, message_id),
            ).fetchall()
            drop_refs(conn, (row[0] for row in gone))
            if gone:
                touched.add(mail_channel(agent))
            return bool(gone)

        result: bool = await self._db.do(op)
        return result

    async def purge(self, agent: str, *, dead: bool, now: float) -> int:
        last = DEAD if dead else DELAYED  # the states a purge removes: READY up to `last`

        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            gone = conn.execute(
                f"DELETE FROM messages WHERE recipient = ? AND state <= ? RETURNING {REF_COL}",
                (agent, last),
            ).fetchall()
            drop_refs(conn, (row[0] for row in gone))
            if gone:
                touched.add(mail_channel(agent))
            return len(gone)

        result: int = await self._db.do(op)
        return result

    async def remove_agent(self, name: str, *, now: float) -> bool:
        def op(conn: sqlite3.Connection, touched: set[str]) -> bool:
            self._known_agents.discard(name)
            if conn.execute("DELETE FROM agents WHERE name = ?", (name,)).rowcount == 0:
                return False
            # acked and expired messages released their payload's reference when they finished
            gone = conn.execute(
                f"DELETE FROM messages WHERE recipient = ?"
                f" RETURNING CASE WHEN state <= {DEAD} THEN {REF_COL} END",
                (name,),
            ).fetchall()
            drop_refs(conn, (row[0] for row in gone))
            for sched_id, blob in conn.execute("SELECT id, spec FROM schedules").fetchall():
                try:
                    recipient = schedules.decode_spec(blob).recipient
                except (ValueError, msgspec.DecodeError):
                    continue  # kept, listed with its error, cancellable
                if recipient == name and schedules.cancel_in(conn, sched_id):
                    touched.add(SCHEDULES_CHANNEL)
            touched.add(mail_channel(name))
            return True

        result: bool = await self._db.do(op)
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
            hold_ref(conn, reply.data, reply.data_kind)
            touched.add(reply_channel(correlation_id))
            return True

        result: bool = await self._db.do(op)
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

        blob: bytes | None = await self._db.do_by_deadline(op, None)
        return None if blob is None else _reply_decoder.decode(blob)

    async def request_attempts(self, correlation_id: str) -> int:
        def op(conn: sqlite3.Connection, touched: set[str]) -> int:
            row = conn.execute(
                "SELECT attempts FROM requests WHERE correlation_id = ?", (correlation_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        result: int = await self._db.read(op, single_statement=True)
        return result

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        blob = msgspec.msgpack.encode(spec)

        def op(conn: sqlite3.Connection, touched: set[str]) -> None:
            self.require_agent(conn, spec.recipient, auto_register, spec.created_at)
            conn.execute(
                "INSERT INTO schedules (id, spec, next_run) VALUES (?, ?, ?)",
                (spec.id, blob, spec.next_run),
            )
            hold_ref(conn, spec.data, spec.data_kind)
            touched.add(SCHEDULES_CHANNEL)

        await self._db.do(op)

    async def cancel_schedule(self, schedule_id: str) -> bool:
        def op(conn: sqlite3.Connection, touched: set[str]) -> bool:
            gone = schedules.cancel_in(conn, schedule_id)
            if gone:
                touched.add(SCHEDULES_CHANNEL)
            return gone

        result: bool = await self._db.do(op)
        return result

    async def list_schedules(self) -> list[ScheduleInfo]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[Any]:
            return conn.execute(
                "SELECT id, spec, next_run, runs FROM schedules ORDER BY next_run"
            ).fetchall()

        return schedules.infos(await self._db.read(op))

    def undecodable_in(self, conn: sqlite3.Connection) -> list[str]:
        """One line per stored record that cannot be decoded (for `Backend.check`)."""
        return schedules.undecodable_in(conn)

    async def fire_due(self, now: float) -> float | None:
        def op(conn: sqlite3.Connection, touched: set[str]) -> float | None:
            return schedules.fire_due_in(conn, now, touched, _insert, _bump)

        result: float | None = await self._db.do(op)
        return result

    # --- housekeeping --------------------------------------------------------------------------

    def prune_in(self, conn: sqlite3.Connection, now: float, touched: set[str]) -> PruneReport:
        """The prune step: expire and dead-letter what is due, delete finished messages, dedupe
        keys and abandoned reply slots past retention (topic records are not counted here)."""
        r = self._retention
        exhausted = conn.execute(
            "SELECT seq, attempt, max_attempts, recipient FROM messages"
            f" WHERE state IN {TIMED} AND visible_at <= ?",
            (now,),
        ).fetchall()
        dead_rows = [
            (now, lease_expired_reason(attempt, most), seq)
            for seq, attempt, most, _ in exhausted
            if attempt >= most
        ]
        killed = [conn.execute(_KILL_LEASED, args).fetchone() for args in dead_rows]
        killed = [row for row in killed if row is not None]
        _bump(conn, "dead_lettered", len(killed))
        _ended(conn, killed, now, touched)
        # expired and acked messages release their payload's reference at once, dead
        # letters (which can be requeued) when they are pruned
        expired_rows = conn.execute(
            f"UPDATE messages SET state = {EXPIRED}, finished_at = ?"
            f" WHERE state IN {UNDELIVERED} AND expires_at <= ?"
            f" RETURNING {REF_COL}, correlation_id, id, recipient, attempt",
            (now, now),
        ).fetchall()
        expired = len(expired_rows)
        drop_refs(conn, (row[0] for row in expired_rows))
        for _, cid, message_id, recipient, attempt in expired_rows:
            if cid is not None:  # a request that expired unanswered fails at once
                why = expired_reason(attempt)
                _fail_request(conn, cid, message_id, recipient, attempt, why, now, True, touched)
        _bump(conn, "expired", expired)
        pruned = 0
        for state, keep in ((ACKED, r.acked), (EXPIRED, r.expired), (DEAD, r.dead)):
            gone = conn.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
                f" WHERE state {FINISHED} AND finished_at <= ? AND state = ? LIMIT ?)"
                f" RETURNING {REF_COL if state == DEAD else 'NULL'}",
                (now - keep, state, _PRUNE_BATCH),
            ).fetchall()
            pruned += len(gone)
            drop_refs(conn, (row[0] for row in gone))
        keys = conn.execute("DELETE FROM dedupe WHERE until <= ?", (now,)).rowcount
        stale = conn.execute(
            "DELETE FROM requests WHERE deadline <= ? RETURNING reply", (now - REPLY_GRACE,)
        ).fetchall()
        for (blob,) in stale:  # a reply nobody took still held its payload's reference
            if blob is not None:
                stored = _reply_decoder.decode(blob)
                drop_ref(conn, stored.data, stored.data_kind)
        return PruneReport(expired, len(dead_rows), pruned, keys, len(stale))


def _dead_letter(r: tuple[Any, ...]) -> DeadLetter:
    try:
        data, metadata, error = decode_payload(r[8], r[9]), decode_metadata(r[10]), None
    except Exception as exc:  # one bad row must not fail the listing
        data, metadata, error = None, {}, f"cannot be decoded: {type(exc).__name__}: {exc}"
    return DeadLetter(
        id=r[0],
        sender=r[1],
        recipient=r[2],
        type=r[3],
        reason=r[4] or "",
        attempts=r[5],
        enqueued_at=r[6],
        dead_at=r[7],
        data=data,
        metadata=metadata,
        error=error,
    )


def _fire_timers(conn: sqlite3.Connection, agent: str, now: float, touched: set[str]) -> None:
    """Make `agent`'s due delayed messages and expired leases ready again, or dead when their
    attempts are used up."""
    due = conn.execute(_DUE, (agent, now)).fetchall()
    if not due:
        return
    ready = [seq for seq, state, attempt, most in due if state == DELAYED or attempt < most]
    if ready:
        conn.execute(_MAKE_READY, (msgspec.json.encode(ready),))
        if mailbox_log.isEnabledFor(logging.INFO):
            for seq, state, attempt, most in due:
                if state == IN_FLIGHT and attempt < most:
                    log_lease_expired(agent, _message_id(conn, seq), attempt, most)
    exhausted = [
        (now, lease_expired_reason(attempt, most), seq)
        for seq, state, attempt, most in due
        if state == IN_FLIGHT and attempt >= most
    ]
    if exhausted:
        killed = [conn.execute(_KILL, args).fetchone() for args in exhausted]
        _bump(conn, "dead_lettered", len(exhausted))
        _ended(conn, killed, now, touched)


def _message_id(conn: sqlite3.Connection, seq: int) -> str:
    row = conn.execute("SELECT id FROM messages WHERE seq = ?", (seq,)).fetchone()
    return "?" if row is None else str(row[0])
