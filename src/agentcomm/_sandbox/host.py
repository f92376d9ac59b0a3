"""The host side: it alone writes inbound.db, and reads the sandbox's outbound.db read-only."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from croniter import croniter

from .._errors import AgentCommError, NotFound, SandboxError, ValidationError
from .._ids import new_id
from .._tasks import TaskRegistry
from .._validation import check_bool, check_int, check_name, check_text, check_timestamp
from .common import SideLock, check_interval, check_kind, decode, encode, next_seq
from .models import CatchUp, Status, SweepReport
from .schema import (
    HEARTBEAT_FILE,
    HOST_FILE,
    HOST_SOCKET,
    INBOUND_SCHEMA,
    SANDBOX_FILE,
    SANDBOX_SOCKET,
    Journal,
)
from .store import Store, directory_of, init_meta
from .sweep import ActionHandler, ActionTx, Sweeper

__all__ = ["Host", "OutboundMessage", "open_host"]

logger = logging.getLogger("agentcomm")
CLOSE_GRACE = 2.0
OUTBOUND_PAGE = 256
#: The shortest time between two background passes of the host.
MIN_PASS = 0.02


class OutboundMessage:
    """A message the sandbox sent, as the host reads it; record its fate with `delivered()` or
    `failed(reason)` (in inbound.db, once: a second record is a no-op)."""

    __slots__ = ("_host", "created_at", "data", "deadline", "id", "in_reply_to", "kind", "seq",
                 "to")  # fmt: skip

    def __init__(
        self,
        host: Host,
        *,
        id: str,
        seq: int,
        kind: str,
        data: Any,
        to: str | None,
        in_reply_to: str | None,
        created_at: float,
        deadline: float | None,
    ) -> None:
        self._host = host
        #: The message's id (unique in the directory).
        self.id = id
        #: Its sequence number (odd: written by the sandbox).
        self.seq = seq
        #: Its kind ("chat", "question", ...).
        self.kind = kind
        #: Its payload.
        self.data = data
        #: The recipient the sandbox named, if any.
        self.to = to
        #: The id of the inbound message it answers, if any.
        self.in_reply_to = in_reply_to
        #: When the sandbox wrote it (epoch seconds).
        self.created_at = created_at
        #: For a question: when the sandbox stops waiting for the answer.
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"<OutboundMessage {self.id} seq={self.seq} kind={self.kind!r} to={self.to!r}>"

    async def delivered(self) -> bool:
        """Record that the host delivered it; False when its fate was already recorded."""
        return await self._host._record(self.id, "delivered", None)

    async def failed(self, reason: str) -> bool:
        """Record that the host could not deliver it, and why; False when already recorded."""
        reason = check_text("reason", reason, empty=False)
        return await self._host._record(self.id, "failed", reason)


def _first_due(recurrence: str, now: float) -> float:
    return float(croniter(recurrence, datetime.fromtimestamp(now, tz=UTC)).get_next(float))


class Host:
    """The host side of a sandbox directory. Open it with `await sandbox.open_host(path)` or
    `async with sandbox.open_host(path) as host`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        journal: Journal = "delete",
        stale_after: float = 60.0,
        retry_base: float = 5.0,
        max_tries: int = 5,
        retention: float = 86400.0,
        prune_every: float = 300.0,
        poll_max: float = 1.0,
        background: bool = True,
    ) -> None:
        if journal not in ("delete", "wal"):
            raise ValidationError(f"journal must be 'delete' or 'wal', not {journal!r}.")
        self._path = os.fspath(path)
        self._journal: Journal = journal
        self._stale_after = check_interval("stale_after", stale_after)
        self._retry_base = check_interval("retry_base", retry_base, allow_zero=True)
        self._max_tries = check_int("max_tries", max_tries, 1, 1000)
        self._retention = check_interval("retention", retention, allow_zero=True)
        self._prune_every = check_interval("prune_every", prune_every)
        self._poll_max = check_interval("poll_max", poll_max)
        self._background = check_bool("background", background)
        self._actions: dict[str, ActionHandler] = {}
        self._store: Store | None = None
        self._lock: SideLock | None = None
        self._waker: Any = None
        self._tasks = TaskRegistry()
        self._seen = 0  # the highest sequence number seen on either side
        self._cursor = 0  # outbound rows up to this seq were handed out by this host object
        self._buffer: collections.deque[OutboundMessage] = collections.deque()
        self._fetching = asyncio.Lock()
        self._opened = False
        self._closed = False
        self._last_prune = 0.0
        self._last_sweep = 0.0
        self._sweeper = Sweeper(self)
        #: The report of the background task's last sweep (None before the first).
        self.last_sweep: SweepReport | None = None

    # --- opening and closing -----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Host]:
        return self._open().__await__()

    async def __aenter__(self) -> Host:
        return await self._open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def path(self) -> str:
        """The shared directory."""
        return self._path

    @property
    def journal(self) -> Journal:
        """The journal mode of inbound.db (the sandbox uses the same for outbound.db)."""
        return self._journal

    async def _open(self) -> Host:
        if self._opened:
            return self
        from .wake import Waker

        directory = directory_of(self._path)
        self._path = directory
        lock = SideLock(directory, "host")
        lock.acquire()
        self._lock = lock
        try:
            self._store = Store(directory, HOST_FILE, SANDBOX_FILE, role="host")
            await self._store.open(self._init)
            self._waker = Waker(directory, HOST_SOCKET, SANDBOX_SOCKET, SANDBOX_FILE)
            self._waker.start()
            self._opened = True
            await self._prune(time.time())
        except BaseException:
            await self.close()
            raise
        if self._background:
            self._tasks.spawn(self._run_background())
        return self

    def _init(self, conn: sqlite3.Connection) -> None:
        store = self._need_store()
        store.set_journal(conn, self._journal)
        conn.executescript(f"BEGIN IMMEDIATE;{INBOUND_SCHEMA}COMMIT;")  # all tables or none
        with store.transaction(conn):
            init_meta(conn, self._journal, "host")
        seen = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM messages_in), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
        ).fetchone()[0]
        if store.attach_peer(conn):
            peer = conn.execute("SELECT max(seq) FROM peer.messages_out").fetchone()[0]
            seen = max(seen, peer or 0)
        self._seen = int(seen)

    async def close(self) -> None:
        """Stop the background task, close the file, remove the wake-up socket; bounded and
        idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._waker is not None:
            self._waker.close()
        await self._tasks.aclose(CLOSE_GRACE, 1.0)
        if self._store is not None:
            await self._store.close()
        if self._lock is not None:
            self._lock.release()

    def _need_store(self) -> Store:
        if self._store is None or self._closed:
            raise SandboxError("The sandbox host is closed (or was never opened); open it again.")
        return self._store

    def _check_open(self) -> Store:
        if not self._opened:
            raise SandboxError("Open the host first: `host = await sandbox.open_host(path)`.")
        return self._need_store()

    def _seq(self) -> int:
        self._seen = next_seq(self._seen, 0)
        return self._seen

    def _saw(self, seq: int | None) -> None:
        if seq is not None and seq > self._seen:
            self._seen = seq

    def _ping(self) -> None:
        if self._waker is not None:
            self._waker.ping()

    # --- sending -----------------------------------------------------------------------------

    async def send(
        self,
        data: Any,
        *,
        kind: str = "chat",
        trigger: bool = True,
        at: datetime | float | None = None,
        recurrence: str | None = None,
        idempotency_key: str | None = None,
        catch_up: CatchUp = "once",
        in_reply_to: str | None = None,
    ) -> str:
        """Write a message for the sandbox into inbound.db and return its id.

        `trigger=False` stores context only: it is handed out with the next batch a trigger
        message starts. `at` (datetime or epoch seconds) holds it back. `recurrence` (a cron
        expression, croniter syntax) makes a recurring task: the id returned is also the
        series id for `cancel_task` / `pause_task` / `resume_task`; the first occurrence is
        due at `at`, else at the next cron time. `catch_up` says what happens to occurrences
        missed while the host was down: `"once"` runs one of them, `"skip"` waits for the next.
        A repeated `idempotency_key` returns the first message's id and stores nothing.
        """
        store = self._check_open()
        kind = check_kind(kind)
        check_bool("trigger", trigger)
        due = None if at is None else check_timestamp("at", at)
        if recurrence is not None:
            recurrence = check_text("recurrence", recurrence, longest=256, empty=False)
            if not croniter.is_valid(recurrence):
                raise ValidationError(
                    f"recurrence {recurrence!r} is not a valid cron expression, e.g. '0 9 * * *'."
                )
        if catch_up not in ("once", "skip"):
            raise ValidationError(f"catch_up must be 'once' or 'skip', not {catch_up!r}.")
        if idempotency_key is not None:
            check_text("idempotency_key", idempotency_key, longest=256, empty=False)
        if in_reply_to is not None:
            check_text("in_reply_to", in_reply_to, longest=256, empty=False)
        raw = encode("data", data)
        now = time.time()
        if due is None:
            due = _first_due(recurrence, now) if recurrence is not None else now
        row = {
            "id": new_id(), "kind": kind, "role": "message", "data": raw, "created_at": now,
            "process_after": due, "trigger": int(trigger), "in_reply_to": in_reply_to,
            "idempotency_key": idempotency_key, "recurrence": recurrence,
            "catch_up": catch_up if recurrence is not None else None, "origin": None,
        }  # fmt: skip
        return await self._insert(store, row)

    async def _insert(self, store: Store, row: dict[str, Any]) -> str:
        got = await store.call(self._insert_op, row)
        self._ping()
        return got

    def _insert_op(self, conn: sqlite3.Connection, row: dict[str, Any]) -> str:
        store = self._need_store()
        with store.transaction(conn):
            key = row["idempotency_key"]
            if key is not None:
                found = conn.execute(
                    "SELECT id FROM messages_in WHERE idempotency_key = ?", (key,)
                ).fetchone()
                if found is not None:
                    return str(found[0])
            self._insert_row(conn, row)
        return str(row["id"])

    def _insert_row(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        """INSERT one messages_in row (inside a transaction); a recurring one starts a series."""
        seq = self._seq()
        series = row.get("series_id") or (row["id"] if row.get("recurrence") else None)
        conn.execute(
            "INSERT INTO messages_in (id, seq, kind, role, data, created_at, process_after,"
            " trigger, state, tries, in_reply_to, idempotency_key, series_id, recurrence,"
            " catch_up, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?)",
            (row["id"], seq, row["kind"], row["role"], row["data"], row["created_at"],
             row["process_after"], row["trigger"], row["in_reply_to"], row["idempotency_key"],
             series, row["recurrence"], row["catch_up"], row["origin"]),
        )  # fmt: skip
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (str(seq),))

    # --- status ------------------------------------------------------------------------------

    async def status(self, message_id: str) -> Status:
        """Where message `message_id` stands (NotFound for an unknown or pruned id).

        It reads the sandbox's acks directly, so a claim, completion or failure shows as soon
        as the sandbox has committed it.
        """
        store = self._check_open()
        check_text("message_id", message_id, longest=256, empty=False)
        got = await store.call(self._statuses_op, [message_id])
        if message_id not in got:
            raise NotFound(f"No message {message_id!r} in {self._path} (never sent, or pruned).")
        return got[message_id]

    async def _statuses(self, ids: list[str]) -> dict[str, Status]:
        return await self._check_open().call(self._statuses_op, ids)

    def _statuses_op(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, Status]:
        store = self._need_store()
        out: dict[str, Status] = {}
        peer = store.attach_peer(conn)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT id, state, tries, reason, series_id, process_after FROM messages_in"
                f" WHERE id IN ({marks})",
                chunk,
            ).fetchall()
            acks: dict[str, list[tuple[int, str, str | None]]] = {}
            if peer:
                for mid, try_, st, reason in conn.execute(
                    f"SELECT message_id, try, status, reason FROM peer.acks"
                    f" WHERE message_id IN ({marks})",
                    chunk,
                ):
                    acks.setdefault(mid, []).append((try_, st, reason))
            for mid, state, tries, reason, series, due in rows:
                out[mid] = _status(mid, state, tries, reason, series, due, acks.get(mid, []))
        return out

    # --- the sandbox's messages --------------------------------------------------------------

    async def next_outbound(self, timeout: float | None = None) -> OutboundMessage | None:
        """The sandbox's next message (in seq order) not yet recorded delivered or failed,
        waiting up to `timeout` seconds (None: as long as it takes); None on timeout.

        Each message is handed out once per host object; after a host restart, messages whose
        fate was never recorded are handed out again. Actions are applied by the host itself
        and not handed out.
        """
        store = self._check_open()
        if timeout is not None:
            timeout = check_interval("timeout", timeout, allow_zero=True)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                return None
            token = self._waker.token()
            async with self._fetching:
                if not self._buffer:
                    got = await store.call(self._outbound_op, self._cursor)
                    for out in got:
                        self._cursor = max(self._cursor, out.seq)
                    self._buffer.extend(got)
            if self._buffer:
                continue
            wait = self._poll_max if end is None else min(self._poll_max, end - loop.time())
            if wait <= 0:
                return None
            await self._waker.wait(token, wait)

    async def outbound(self) -> AsyncIterator[OutboundMessage]:
        """The sandbox's messages, in seq order, waiting for more; ends when the host closes."""
        while not self._closed:
            try:
                out = await self.next_outbound()
            except SandboxError:
                if self._closed:
                    return
                raise
            if out is not None:
                yield out

    def _outbound_op(self, conn: sqlite3.Connection, cursor: int) -> list[OutboundMessage]:
        store = self._need_store()
        if not store.attach_peer(conn):
            return []
        rows = conn.execute(
            "SELECT o.id, o.seq, o.kind, o.data, o.to_agent, o.in_reply_to, o.created_at,"
            " o.deadline FROM peer.messages_out o WHERE o.seq > ? AND o.kind != 'action'"
            " AND NOT EXISTS (SELECT 1 FROM main.deliveries d WHERE d.out_id = o.id)"
            " ORDER BY o.seq LIMIT ?",
            (cursor, OUTBOUND_PAGE),
        ).fetchall()
        out = []
        for mid, seq, kind, data, to, reply, created, deadline in rows:
            self._saw(seq)
            out.append(
                OutboundMessage(
                    self,
                    id=mid,
                    seq=seq,
                    kind=kind,
                    data=decode(data),
                    to=to,
                    in_reply_to=reply,
                    created_at=created,
                    deadline=deadline,
                )
            )
        return out

    async def _record(self, out_id: str, status: Literal["delivered", "failed"],
                      reason: str | None) -> bool:  # fmt: skip
        store = self._check_open()
        done = await store.call(self._record_op, out_id, status, reason)
        if done:
            self._ping()
        return done

    def _record_op(
        self, conn: sqlite3.Connection, out_id: str, status: str, reason: str | None
    ) -> bool:
        with self._need_store().transaction(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO deliveries (out_id, status, reason, at) VALUES (?, ?, ?, ?)",
                (out_id, status, reason, time.time()),
            )
            return cur.rowcount == 1

    async def answer(self, question_id: str, data: Any) -> bool:
        """Answer the sandbox's question `question_id` (a `box.ask()`) and record the question
        delivered, in one step. False when it was already answered (nothing changes);
        NotFound when the sandbox has no such message."""
        store = self._check_open()
        check_text("question_id", question_id, longest=256, empty=False)
        raw = encode("data", data)
        done = await store.call(self._answer_op, question_id, raw)
        if done:
            self._ping()
        return done

    def _answer_op(self, conn: sqlite3.Connection, question_id: str, raw: bytes) -> bool:
        store = self._need_store()
        found = None
        if store.attach_peer(conn):
            found = conn.execute(
                "SELECT seq FROM peer.messages_out WHERE id = ?", (question_id,)
            ).fetchall()
        if not found:
            raise NotFound(f"The sandbox sent no message {question_id!r} (or it was pruned).")
        self._saw(found[0][0])
        now = time.time()
        with store.transaction(conn):
            exists = conn.execute(
                "SELECT 1 FROM messages_in WHERE in_reply_to = ? AND role = 'answer'",
                (question_id,),
            ).fetchone()
            if exists is not None:
                return False
            row = {
                "id": new_id(), "kind": "answer", "role": "answer", "data": raw,
                "created_at": now, "process_after": now, "trigger": 0,
                "in_reply_to": question_id, "idempotency_key": None, "recurrence": None,
                "catch_up": None, "origin": None,
            }  # fmt: skip
            self._insert_row(conn, row)
            conn.execute(
                "INSERT OR IGNORE INTO deliveries (out_id, status, reason, at)"
                " VALUES (?, 'delivered', NULL, ?)",
                (question_id, now),
            )
        return True

    # --- actions -----------------------------------------------------------------------------

    def register_action(self, name: str, handler: ActionHandler) -> None:
        """Let the sandbox request action `name` (`box.request_action(name, args)`).

        `handler(args, tx)` runs on the host's database thread inside the transaction that
        records the request: what it does through `tx` (an `ActionTx`: schedule, cancel,
        pause, resume tasks) commits together with the `applied` answer. Its return value
        (JSON-encodable) is the answer's `result`; raising `ActionRejected(reason)` answers
        `rejected` and undoes its changes. Keep it quick: it holds the write lock.
        """
        check_name("action name", name)
        if not callable(handler):
            raise ValidationError(f"handler for {name!r} must be callable.")
        self._actions[name] = handler

    # --- recurring tasks ---------------------------------------------------------------------

    async def cancel_task(self, series_id: str) -> bool:
        """Cancel a recurring task: its waiting occurrence is cancelled and no more are
        scheduled. False when the series has no waiting occurrence."""
        return await self._series("cancel", series_id)

    async def pause_task(self, series_id: str) -> bool:
        """Pause a recurring task: its waiting occurrence is held until `resume_task`."""
        return await self._series("pause", series_id)

    async def resume_task(self, series_id: str) -> bool:
        """Resume a paused recurring task (an occurrence missed meanwhile is due at once)."""
        return await self._series("resume", series_id)

    async def _series(self, op: Literal["cancel", "pause", "resume"], series_id: str) -> bool:
        store = self._check_open()
        check_text("series_id", series_id, longest=256, empty=False)

        def run(conn: sqlite3.Connection) -> bool:
            with store.transaction(conn):
                return ActionTx(self, conn).series(op, series_id)

        done = await store.call(run)
        if done:
            self._ping()
        return done

    # --- the sweep ---------------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """One recovery pass (the background task runs it too, while the host is open).

        Mirrors the sandbox's final acks, schedules the next occurrence of finished recurring
        tasks (also of failed ones), applies requested actions, and gives stale claims (no
        heartbeat for `stale_after`, or made by a sandbox run that has ended) another try after
        `retry_base * 2**(tries-1)` seconds, or fails them after `max_tries` tries.
        """
        store = self._check_open()
        report = await store.call(self._sweeper.run, time.time(), True)
        self._ping()
        return report

    async def _run_background(self) -> None:
        interval = min(self._poll_max, max(0.05, self._stale_after / 4))
        while not self._closed:
            token = self._waker.token()
            now = time.time()
            full = now - self._last_sweep >= interval
            try:
                store = self._need_store()
                report = await store.call(self._sweeper.run, now, full)
                if full:
                    self._last_sweep = now
                    self.last_sweep = report
                if report.retried or report.failed or report.rescheduled or self._sweeper.wrote:
                    self._ping()
                    self._waker.wake()  # the bridge watches statuses the sweep changed
                if now - self._last_prune >= self._prune_every:
                    await self._prune(now)
            except AgentCommError as exc:
                if self._closed:
                    return
                logger.warning("agentcomm sandbox host: background pass failed: %s", exc)
            if self._closed:
                return
            # at most one pass per MIN_PASS: a busy sandbox must not keep the thread sweeping
            await self._tasks.sleep(MIN_PASS)
            await self._waker.wait(token, interval)

    def _heartbeat(self) -> tuple[str | None, float | None]:
        """The sandbox's current run id and heartbeat age (None, None: never seen)."""
        path = os.path.join(self._path, HEARTBEAT_FILE)
        try:
            with open(path, encoding="ascii") as f:
                run = f.read().strip() or None
            age = max(0.0, time.time() - os.stat(path).st_mtime)
        except (OSError, UnicodeDecodeError):
            return None, None
        return run, age

    # --- pruning -----------------------------------------------------------------------------

    async def _prune(self, now: float) -> None:
        self._last_prune = now
        await self._need_store().call(self._prune_op, now - self._retention)

    def _prune_op(self, conn: sqlite3.Connection, cutoff: float) -> int:
        store = self._need_store()
        gone: list[str] = []
        if store.attach_peer(conn):
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT d.out_id FROM deliveries d WHERE d.at < ? AND NOT EXISTS"
                    " (SELECT 1 FROM peer.messages_out o WHERE o.id = d.out_id) LIMIT 10000",
                    (cutoff,),
                ).fetchall()
            ]
        elif not os.path.exists(store.peer_path):
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT out_id FROM deliveries WHERE at < ? LIMIT 10000", (cutoff,)
                ).fetchall()
            ]
        with store.transaction(conn):
            n = conn.execute(
                "DELETE FROM messages_in WHERE done_at IS NOT NULL AND done_at < ?"
                " AND state IN ('completed', 'failed', 'cancelled')",
                (cutoff,),
            ).rowcount
            conn.executemany("DELETE FROM deliveries WHERE out_id = ?", [(g,) for g in gone])
        return n + len(gone)

    # --- for the bridge ----------------------------------------------------------------------

    async def _send_from_hub(
        self, mid: str, data: Any, kind: str, key: str, origin: dict[str, Any]
    ) -> str:
        """Write a hub message in as `mid` (deduplicated by `key`: then the first one's id)."""
        store = self._check_open()
        now = time.time()
        row = {
            "id": mid, "kind": kind, "role": "message", "data": encode("data", data),
            "created_at": now, "process_after": now, "trigger": 1, "in_reply_to": None,
            "idempotency_key": key, "recurrence": None, "catch_up": None,
            "origin": encode("origin", origin).decode(),
        }  # fmt: skip
        return await self._insert(store, row)

    async def _origin(self, message_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT origin FROM messages_in WHERE id = ?", (message_id,)
            ).fetchone()
            return None if row is None else row[0]

        raw = await self._check_open().call(op)
        if raw is None:
            return None
        got = decode(raw.encode())
        return got if isinstance(got, dict) else None


def _status(
    mid: str,
    state: str,
    tries: int,
    reason: str | None,
    series: str | None,
    due: float,
    acks: list[tuple[int, str, str | None]],
) -> Status:
    current = next((a for a in acks if a[0] == tries), None)
    claims = tries + (1 if current is not None else 0)
    if state == "pending":
        if any(a[1] == "completed" for a in acks):
            state = "completed"
        elif current is not None:
            state = current[1]
            if state == "failed":
                reason = current[2]
    return Status(
        id=mid, state=state, tries=claims, reason=reason,  # type: ignore[arg-type]
        series_id=series, process_after=due,
    )  # fmt: skip


def open_host(
    path: str | os.PathLike[str],
    *,
    journal: Journal = "delete",
    stale_after: float = 60.0,
    retry_base: float = 5.0,
    max_tries: int = 5,
    retention: float = 86400.0,
    prune_every: float = 300.0,
    poll_max: float = 1.0,
    background: bool = True,
) -> Host:
    """The host side of the sandbox directory `path`: `host = await open_host(path)` or
    `async with open_host(path) as host`.

    It creates `inbound.db` (only it writes it; owner-writable only) and reads the sandbox's
    `outbound.db` read-only. `journal`: `"delete"` (default; works across VM file sharing) or
    `"wal"` (both sides share a kernel, e.g. containers); the sandbox follows. `stale_after`,
    `retry_base`, `max_tries`: the sweep (see `Host.sweep`). Finished rows are pruned after
    `retention` seconds, checked when it opens and every `prune_every` seconds. `poll_max`
    bounds each wait when no wake-up arrives. `background` runs the sweep while it is open.
    Every argument is checked here (ValidationError); nothing is created until it is awaited.
    """
    return Host(
        path, journal=journal, stale_after=stale_after, retry_base=retry_base,
        max_tries=max_tries, retention=retention, prune_every=prune_every, poll_max=poll_max,
        background=background,
    )  # fmt: skip
