"""The sandbox side: it alone writes outbound.db, and reads the host's inbound.db read-only."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Generator, Iterable
from types import TracebackType
from typing import Any

from .._errors import AgentCommError, RequestTimeout, SandboxError, ValidationError
from .._ids import new_id
from .._tasks import TaskRegistry
from .._validation import check_int, check_name, check_text
from .common import SideLock, check_interval, check_kind, decode, encode, next_seq
from .models import ActionResult, InboundMessage
from .schema import (
    HEARTBEAT_FILE,
    HOST_FILE,
    HOST_SOCKET,
    OUTBOUND_SCHEMA,
    SANDBOX_FILE,
    SANDBOX_SOCKET,
    Journal,
)
from .store import Store, directory_of, init_meta, read_meta

__all__ = ["Sandbox", "open_sandbox"]

logger = logging.getLogger("agentcomm")
CLOSE_GRACE = 2.0
#: Kinds the sandbox writes only through ask() and request_action().
_RESERVED = ("question", "action")


class Sandbox:
    """The sandbox side of a shared directory. Open it with `await sandbox.open_sandbox(path)`
    or `async with sandbox.open_sandbox(path) as box`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        heartbeat_every: float = 5.0,
        retention: float = 86400.0,
        prune_every: float = 300.0,
        poll_max: float = 1.0,
    ) -> None:
        self._path = os.fspath(path)
        self._heartbeat_every = check_interval("heartbeat_every", heartbeat_every)
        self._retention = check_interval("retention", retention, allow_zero=True)
        self._prune_every = check_interval("prune_every", prune_every)
        self._poll_max = check_interval("poll_max", poll_max)
        self._store: Store | None = None
        self._lock: SideLock | None = None
        self._waker: Any = None
        self._tasks = TaskRegistry()
        self._seen = 0
        self._run = new_id()
        self._waiting: set[str] = set()  # questions / actions a call is waiting on right now
        self._opened = False
        self._closed = False
        self._last_prune = 0.0
        self._journal: Journal = "delete"

    # --- opening and closing -----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Sandbox]:
        return self._open().__await__()

    async def __aenter__(self) -> Sandbox:
        return await self._open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def journal(self) -> Journal:
        """The journal mode, as the host chose it in inbound.db."""
        return self._journal

    @property
    def run_id(self) -> str:
        """This process's run id (written to the heartbeat file; claims carry it)."""
        return self._run

    async def _open(self) -> Sandbox:
        if self._opened:
            return self
        from .wake import Waker

        directory = directory_of(self._path)
        self._path = directory
        _check_host_file(directory)
        lock = SideLock(directory, "sandbox")
        lock.acquire()
        self._lock = lock
        try:
            self._store = Store(directory, SANDBOX_FILE, HOST_FILE, role="sandbox")
            await self._store.open(self._init)
            self._waker = Waker(directory, SANDBOX_SOCKET, HOST_SOCKET, HOST_FILE)
            self._waker.start()
            self._write_heartbeat()
            self._opened = True
            await self._prune(time.time())
        except BaseException:
            await self.close()
            raise
        self._tasks.spawn(self._run_background())
        self._waker.ping()  # a host waiting for the sandbox learns it is up
        return self

    def _init(self, conn: sqlite3.Connection) -> None:
        store = self._need_store()
        if not store.attach_peer(conn):
            raise SandboxError(
                f"Cannot read {store.peer_path} (read-only): the host has not finished creating "
                "it, or this process cannot read it, or every directory above it is not "
                "searchable by this user."
            )
        meta = read_meta(conn, "peer")
        seen = conn.execute("SELECT max(seq) FROM peer.messages_in").fetchone()[0] or 0
        store._detach(conn)
        journal = meta.get("journal", "delete")
        self._journal = "wal" if journal == "wal" else "delete"
        store.set_journal(conn, self._journal)
        conn.executescript(f"BEGIN IMMEDIATE;{OUTBOUND_SCHEMA}COMMIT;")  # all tables or none
        with store.transaction(conn):
            init_meta(conn, self._journal, "sandbox")
        own = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM messages_out), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
        ).fetchone()[0]
        self._seen = max(int(seen), int(own))

    def _write_heartbeat(self) -> None:
        path = os.path.join(self._path, HEARTBEAT_FILE)
        tmp = f"{path}.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(self._run)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise SandboxError(f"Cannot write the heartbeat file {path}: {exc}.") from None

    async def close(self) -> None:
        """Stop the heartbeat, close the file, remove the wake-up socket; bounded, idempotent.

        The heartbeat file stays: the host sees it age and, past `stale_after`, retries what
        this run had claimed but not finished.
        """
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
            raise SandboxError("The sandbox side is closed (or was never opened); open it again.")
        return self._store

    def _check_open(self) -> Store:
        if not self._opened:
            raise SandboxError("Open the sandbox first: `box = await sandbox.open_sandbox(path)`.")
        return self._need_store()

    def _seq(self) -> int:
        self._seen = next_seq(self._seen, 1)
        return self._seen

    def _saw(self, seq: int | None) -> None:
        if seq is not None and seq > self._seen:
            self._seen = seq

    def heartbeat(self) -> None:
        """Tell the host this sandbox is alive: touches the heartbeat file (no database
        write). The sandbox does it by itself every `heartbeat_every` seconds while its event
        loop runs; call it during long blocking work."""
        path = os.path.join(self._path, HEARTBEAT_FILE)
        try:
            os.utime(path)
        except FileNotFoundError:
            self._write_heartbeat()
        except OSError as exc:
            raise SandboxError(f"Cannot touch the heartbeat file {path}: {exc}.") from None

    async def _run_background(self) -> None:
        while not self._closed:
            now = time.time()
            try:
                self.heartbeat()
                await self._need_store().call(self._late_op)
                if now - self._last_prune >= self._prune_every:
                    await self._prune(now)
            except AgentCommError as exc:
                if self._closed:
                    return
                logger.warning("agentcomm sandbox: background pass failed: %s", exc)
            if not await self._tasks.sleep(self._heartbeat_every):
                return

    # --- receiving ---------------------------------------------------------------------------

    async def next_batch(
        self, max_messages: int = 10, timeout: float | None = None
    ) -> list[InboundMessage]:
        """Claim and return up to `max_messages` due messages, in seq order, once at least one
        due trigger message is unclaimed; waits up to `timeout` seconds (None: as long as it
        takes), then returns []. Context-only messages come along with a batch.

        Claims are `processing` acks in outbound.db; finish each message with `complete` or
        `fail`. A message claimed by a run that ended is given back by the host's sweep.
        """
        store = self._check_open()
        check_int("max_messages", max_messages, 1, 10_000)
        if timeout is not None:
            timeout = check_interval("timeout", timeout, allow_zero=True)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            token = self._waker.token()
            batch, next_due = await store.call(self._claim_op, max_messages, time.time())
            if batch:
                self._waker.ping()
                return batch
            wait = self._poll_max
            if next_due is not None:
                wait = min(wait, max(0.0, next_due - time.time()) + 0.001)
            if end is not None:
                wait = min(wait, end - loop.time())
                if wait <= 0:
                    return []
            if self._closed:
                raise SandboxError("The sandbox side closed while waiting for messages.")
            await self._waker.wait(token, wait)

    def _claim_op(
        self, conn: sqlite3.Connection, limit: int, now: float
    ) -> tuple[list[InboundMessage], float | None]:
        store = self._need_store()
        if not store.attach_peer(conn):
            return [], None
        unclaimed = (
            "m.state = 'pending' AND m.role = 'message' AND NOT EXISTS (SELECT 1 FROM main.acks a"
            " WHERE a.message_id = m.id AND (a.try = m.tries OR a.status = 'completed'))"
        )
        self._saw(conn.execute("SELECT max(seq) FROM peer.messages_in").fetchone()[0])
        trigger = conn.execute(
            f"SELECT min(m.process_after) FROM peer.messages_in m WHERE {unclaimed}"
            " AND m.trigger = 1",
        ).fetchone()[0]
        late = self._late_rows(conn)
        rows: list[tuple[Any, ...]] = []
        if trigger is not None and trigger <= now:
            # claimed rows are filtered out before the limit: stale rows cannot starve work
            rows = conn.execute(
                "SELECT m.id, m.seq, m.kind, m.data, m.tries, m.trigger, m.created_at,"
                f" m.in_reply_to, m.series_id FROM peer.messages_in m WHERE {unclaimed}"
                " AND m.process_after <= ? ORDER BY m.seq LIMIT ?",
                (now, limit),
            ).fetchall()
        if rows or late:
            with store.transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO acks (message_id, try, status, reason, run, at)"
                    " VALUES (?, ?, 'processing', NULL, ?, ?)",
                    [(r[0], r[4], self._run, now) for r in rows],
                )
                self._ack_late(conn, late, now)
        batch = [
            InboundMessage(
                id=r[0],
                seq=r[1],
                kind=r[2],
                data=decode(r[3]),
                tries=r[4] + 1,
                trigger=bool(r[5]),
                created_at=r[6],
                in_reply_to=r[7],
                series_id=r[8],
            )
            for r in rows
        ]
        return batch, (None if trigger is None or trigger <= now else float(trigger))

    def _late_rows(self, conn: sqlite3.Connection) -> list[tuple[str, int]]:
        """Answers and action results nobody waits for any more (their call timed out)."""
        rows = conn.execute(
            "SELECT m.id, m.tries, m.in_reply_to FROM peer.messages_in m"
            " WHERE m.role != 'message' AND m.state = 'pending' AND NOT EXISTS"
            " (SELECT 1 FROM main.acks a WHERE a.message_id = m.id)"
        ).fetchall()
        return [(r[0], r[1]) for r in rows if r[2] not in self._waiting]

    def _ack_late(self, conn: sqlite3.Connection, late: list[tuple[str, int]], now: float) -> None:
        if not late:
            return
        conn.executemany(
            "INSERT OR IGNORE INTO acks (message_id, try, status, reason, run, at)"
            " VALUES (?, ?, 'completed', 'late: nobody was waiting any more', ?, ?)",
            [(mid, tries, self._run, now) for mid, tries in late],
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('late_answers', ?) ON CONFLICT (key) DO"
            " UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (str(len(late)),),
        )

    def _late_op(self, conn: sqlite3.Connection) -> int:
        store = self._need_store()
        if not store.attach_peer(conn):
            return 0
        late = self._late_rows(conn)
        if late:
            with store.transaction(conn):
                self._ack_late(conn, late, time.time())
        return len(late)

    async def late_answers(self) -> int:
        """How many answers (and action results) arrived after their call had timed out; each
        was acked, never returned and never left pending."""
        store = self._check_open()
        await store.call(self._late_op)

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = 'late_answers'").fetchone()
            return 0 if row is None else int(row[0])

        return await store.call(op)

    async def complete(self, messages: InboundMessage | Iterable[InboundMessage]) -> None:
        """Mark messages completed (one transaction); the host sees it at once."""
        batch = self._batch(messages)
        await self._ack([(m.id, m.tries - 1, "completed", None) for m in batch])

    async def fail(self, message: InboundMessage, reason: str) -> None:
        """Mark a message failed with `reason` (not completed, and not retried: the host reports
        it failed; a recurring task's next occurrence is still scheduled)."""
        if not isinstance(message, InboundMessage):
            raise ValidationError("fail() takes a message returned by next_batch().")
        reason = check_text("reason", reason, empty=False)
        await self._ack([(message.id, message.tries - 1, "failed", reason)])

    def _batch(self, messages: InboundMessage | Iterable[InboundMessage]) -> list[InboundMessage]:
        if isinstance(messages, InboundMessage):
            return [messages]
        try:
            batch = list(messages)
        except TypeError:
            raise ValidationError("complete() takes messages returned by next_batch().") from None
        if not all(isinstance(m, InboundMessage) for m in batch):
            raise ValidationError("complete() takes messages returned by next_batch().")
        return batch

    async def _ack(self, acks: list[tuple[str, int, str, str | None]]) -> None:
        store = self._check_open()
        if not acks:
            return
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            with store.transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO acks (message_id, try, status, reason, run, at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(mid, t, st, reason, self._run, now) for mid, t, st, reason in acks],
                )

        await store.call(op)
        self._waker.ping()

    # --- sending -----------------------------------------------------------------------------

    async def send(
        self,
        data: Any,
        *,
        kind: str = "chat",
        to: str | None = None,
        in_reply_to: str | None = None,
    ) -> str:
        """Write a message for the host into outbound.db; returns its id.

        `to` names a recipient the host (or the bridge: an agent of the hub) routes it to;
        `in_reply_to` names the inbound message it answers (through the bridge, a reply to a
        hub request answers that request).
        """
        kind = check_kind(kind)
        if kind in _RESERVED:
            raise ValidationError(f"kind {kind!r} is reserved: use ask() or request_action().")
        return await self._send(data, kind, to, in_reply_to, None)

    async def _send(
        self,
        data: Any,
        kind: str,
        to: str | None,
        in_reply_to: str | None,
        deadline: float | None,
        mid: str | None = None,
    ) -> str:
        store = self._check_open()
        if to is not None:
            check_name("to", to)
        if in_reply_to is not None:
            check_text("in_reply_to", in_reply_to, longest=256, empty=False)
        raw = encode("data", data)
        mid = mid or new_id()
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            with store.transaction(conn):
                seq = self._seq()
                conn.execute(
                    "INSERT INTO messages_out (id, seq, kind, data, to_agent, in_reply_to,"
                    " created_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (mid, seq, kind, raw, to, in_reply_to, now, deadline),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (str(seq),)
                )

        await store.call(op)
        self._waker.ping()
        return mid

    async def ask(self, data: Any, *, to: str | None = None, timeout: float = 300.0) -> Any:
        """Ask the host a question (sent as kind `"question"`) and wait up to `timeout` seconds
        for `host.answer()`; returns the answer's data, or None on timeout. An answer that
        arrives later is acked and counted (`late_answers()`), never returned by next_batch."""
        timeout = check_interval("timeout", timeout)
        qid = new_id()
        _, got = await self._call(data, "question", to, qid, timeout, "answer")
        return got

    async def request_action(
        self, name: str, args: Any = None, *, timeout: float = 60.0
    ) -> ActionResult:
        """Ask the host to apply system action `name` with `args` (e.g. `"schedule_task"`);
        returns `applied` (with the handler's result) or `rejected` with a reason. Raises
        RequestTimeout when the host does not answer within `timeout` seconds (is it
        running?)."""
        check_name("action name", name)
        timeout = check_interval("timeout", timeout)
        aid = new_id()
        found, got = await self._call(
            {"name": name, "args": args}, "action", None, aid, timeout, "result"
        )
        if not found:
            raise RequestTimeout(
                f"The host did not answer action {name!r} within {timeout:g} s; it applies "
                "actions while it is open. A later answer is acked and counted."
            )
        try:
            return ActionResult(
                status=got["status"], reason=got.get("reason"), result=got.get("result")
            )
        except (KeyError, TypeError, AttributeError):
            raise SandboxError(f"The host answered action {name!r} with {got!r}.") from None

    async def _call(
        self, data: Any, kind: str, to: str | None, mid: str, timeout: float, role: str
    ) -> tuple[bool, Any]:
        store = self._check_open()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        self._waiting.add(mid)
        try:
            await self._send(data, kind, to, None, time.time() + timeout, mid=mid)
            while True:
                token = self._waker.token()
                found, value = await store.call(self._take_op, mid, role)
                if found:
                    return True, value
                remaining = end - loop.time()
                if remaining <= 0 or self._closed:
                    return False, None
                await self._waker.wait(token, min(self._poll_max, remaining))
        finally:
            self._waiting.discard(mid)

    def _take_op(self, conn: sqlite3.Connection, mid: str, role: str) -> tuple[bool, Any]:
        store = self._need_store()
        if not store.attach_peer(conn):
            return False, None
        rows = conn.execute(
            "SELECT m.id, m.tries, m.data FROM peer.messages_in m"
            " WHERE m.in_reply_to = ? AND m.role = ? AND NOT EXISTS"
            " (SELECT 1 FROM main.acks a WHERE a.message_id = m.id)",
            (mid, role),
        ).fetchall()
        if not rows:
            return False, None
        aid, tries, raw = rows[0]
        with store.transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO acks (message_id, try, status, reason, run, at)"
                " VALUES (?, ?, 'completed', NULL, ?, ?)",
                (aid, tries, self._run, time.time()),
            )
        self._waker.ping()
        return True, decode(raw)

    # --- pruning -----------------------------------------------------------------------------

    async def _prune(self, now: float) -> None:
        self._last_prune = now
        await self._need_store().call(self._prune_op, now - self._retention)

    def _prune_op(self, conn: sqlite3.Connection, cutoff: float) -> int:
        store = self._need_store()
        if not store.attach_peer(conn):
            return 0
        done = conn.execute(
            "SELECT o.id FROM messages_out o JOIN peer.deliveries d ON d.out_id = o.id"
            " WHERE d.at < ? LIMIT 10000",
            (cutoff,),
        ).fetchall()
        acks = conn.execute(
            "SELECT a.message_id, a.try FROM acks a WHERE a.at < ? AND NOT EXISTS"
            " (SELECT 1 FROM peer.messages_in m WHERE m.id = a.message_id) LIMIT 10000",
            (cutoff,),
        ).fetchall()
        if not done and not acks:
            return 0
        with store.transaction(conn):
            conn.executemany("DELETE FROM messages_out WHERE id = ?", done)
            conn.executemany("DELETE FROM acks WHERE message_id = ? AND try = ?", acks)
        return len(done) + len(acks)


def _check_host_file(directory: str) -> None:
    if not os.path.exists(os.path.join(directory, HOST_FILE)):
        raise SandboxError(
            f"{directory} has no {HOST_FILE}: open the host side first "
            "(`sandbox.open_host(path)`), then start the sandbox."
        )


def open_sandbox(
    path: str | os.PathLike[str],
    *,
    heartbeat_every: float = 5.0,
    retention: float = 86400.0,
    prune_every: float = 300.0,
    poll_max: float = 1.0,
) -> Sandbox:
    """The sandbox side of the shared directory `path`: `box = await open_sandbox(path)` or
    `async with open_sandbox(path) as box`.

    The host must have created `inbound.db` there; the journal mode follows the host's. It
    creates `outbound.db` (only it writes it) and reads `inbound.db` read-only. The heartbeat
    file is touched every `heartbeat_every` seconds while the event loop runs; finished rows
    are pruned after `retention` seconds (checked at open and every `prune_every` seconds);
    `poll_max` bounds each wait when no wake-up arrives.
    """
    return Sandbox(
        path, heartbeat_every=heartbeat_every, retention=retention, prune_every=prune_every,
        poll_max=poll_max,
    )  # fmt: skip
