"""The SQLite writer thread: every operation runs here, and concurrent ones share a commit.

The thread takes everything queued, runs it in one `BEGIN IMMEDIATE` transaction, commits once,
then resolves all the waiting futures with a single hop back to the loop (group commit): the
busier the writer, the bigger its batches. If one
operation of a batch raises, the batch is rolled back and each operation is re-run in a
transaction of its own, so one bad call cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..._errors import AgentCommError, BackendError, BackendUnavailable, HubClosed
from .files import REMEDY, is_damaged

T = TypeVar("T")

#: An operation: runs on the writer's connection inside a transaction, adds the notification
#: channels it touched to the set, and returns its result.
Op = Callable[[sqlite3.Connection, set[str]], Any]

_MAX_BATCH = 1024
# Checkpoint the WAL once the writer has been idle this long, instead of inside a commit
# (SQLite's auto-checkpoint runs inside COMMIT and fsyncs, stalling the caller for ms).
_IDLE_CHECKPOINT_AFTER = 0.02


class _Job:
    __slots__ = ("error", "fn", "future", "result", "single", "state")

    def __init__(self, fn: Op, future: asyncio.Future[Any], single: bool) -> None:
        self.fn = fn
        self.future = future
        self.single = single
        self.result: Any = None
        self.error: BaseException | None = None
        # None: runs whatever happens; else _QUEUED until it _STARTED or was _ABANDONED
        self.state: int | None = None


_QUEUED, _STARTED, _ABANDONED = 0, 1, 2


def map_sqlite_error(exc: BaseException) -> BaseException:
    """Our own errors pass through; driver errors become BackendError / BackendUnavailable."""
    if isinstance(exc, AgentCommError):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        mapped: BackendError = BackendUnavailable(
            f"The SQLite database stayed locked past the busy timeout ({exc}). "
            "Another process holds a long write transaction; raise busy_timeout in the URL."
        )
    elif is_damaged(exc):
        mapped = BackendError(
            f"SQLite reports the file is damaged or not a database ({exc}). {REMEDY}"
        )
    elif isinstance(exc, sqlite3.OperationalError) and (
        "readonly" in str(exc) or "unable to open" in str(exc)
    ):
        mapped = BackendError(
            f"SQLite cannot write to the store ({exc}): the file or its directory became "
            "read-only or was removed. Make it writable again, or open the hub on another file."
        )
    elif isinstance(exc, sqlite3.Error):
        mapped = BackendError(f"SQLite failed: {exc}")
    else:
        return exc
    mapped.__cause__ = exc
    return mapped


class Writer:
    """Owns the write connection and the thread that uses it."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        ping: Callable[[set[str]], None],
        notify: Callable[[set[str]], None],
        *,
        read_only: bool = False,
        on_rollback: Callable[[], None] | None = None,
    ) -> None:
        self._on_rollback = on_rollback  # forget caches filled by rolled-back work
        self._connect = connect
        # A read-only instance serves SELECTs on its own connection, beside the writer: WAL
        # lets readers and the writer proceed at once, so reads never queue behind writes.
        self._begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        self._read_only = read_only
        self._stopped = False
        self._ping = ping  # on the writer thread after a commit: tell other processes
        self._notify = notify  # on the loop thread after a commit: wake local waiters
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._dirty = False  # committed since the last checkpoint
        self._guard = threading.Lock()  # a job's start against its caller giving up on it

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; raises what opening the connection raised."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="agentcomm-sqlite", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise map_sqlite_error(self._start_error)

    def submit(self, fn: Op, *, single_statement: bool = False) -> asyncio.Future[Any]:
        """Queue `fn` for the next transaction; must be called on the loop thread.

        `single_statement` (read-only instances): `fn` runs one SELECT, which is its own
        snapshot, so alone in a batch it needs no BEGIN/COMMIT around it.
        """
        loop = self._loop
        if loop is None or self._stopped:
            raise HubClosed("The SQLite connection is closed; open a new hub.")
        fut: asyncio.Future[Any] = loop.create_future()
        # Straight onto the queue: while the thread works on one transaction, later jobs
        # pile up and it takes them all for the next one, so batches grow with load.
        self._queue.put(_Job(fn, fut, single_statement))
        return fut

    async def run_until(self, fn: Op, when: float, expired: Any) -> Any:
        """Like `submit`, awaited; but if `fn` has not started by loop time `when` (the
        database stayed locked), it never runs and the result is `expired` (raised if an
        exception)."""
        loop = self._loop
        if loop is None or self._stopped:
            raise HubClosed("The SQLite connection is closed; open a new hub.")
        job = _Job(fn, loop.create_future(), False)
        job.state = _QUEUED
        self._queue.put(job)
        timer = loop.call_at(when, self._abandon, job, expired)
        try:
            return await job.future
        finally:
            timer.cancel()

    def _abandon(self, job: _Job, expired: Any) -> None:
        with self._guard:
            if job.state != _QUEUED:
                return  # running or done: its own result comes
            job.state = _ABANDONED
        if job.future.done():
            return
        if isinstance(expired, BaseException):
            job.future.set_exception(expired)
        else:
            job.future.set_result(expired)

    def _may_start(self, job: _Job) -> bool:
        """On the writer thread, before running `job`: False if its caller gave up on it."""
        if job.state is None:
            return True
        with self._guard:
            if job.state == _ABANDONED:
                return False
            job.state = _STARTED
            return True

    async def stop(self) -> None:
        """Run what is queued, then stop the thread and close the connection."""
        self._stopped = True
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # --- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stop = False
            while not stop:
                try:
                    first = self._queue.get(timeout=_IDLE_CHECKPOINT_AFTER if self._dirty else None)
                except queue.Empty:
                    self._checkpoint(conn)
                    continue
                if first is None:
                    break
                jobs = [first]
                while len(jobs) < _MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    jobs.append(more)
                self._run_batch(conn, jobs)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        touched: set[str] = set()
        wrap = not (self._read_only and len(jobs) == 1 and jobs[0].single)
        try:
            if wrap:
                conn.execute(self._begin)
            for job in jobs:
                if self._may_start(job):
                    job.result = job.fn(conn, touched)
            if wrap:
                conn.execute("COMMIT")
            self._dirty = not self._read_only
        except BaseException as exc:
            self._rolled_back(conn)
            if len(jobs) == 1:
                jobs[0].error = map_sqlite_error(exc)
                touched.clear()
            else:
                touched = self._run_one_by_one(conn, jobs)
        if touched:
            with contextlib.suppress(Exception):
                self._ping(touched)
        self._resolve(jobs, touched)

    def _rolled_back(self, conn: sqlite3.Connection) -> None:
        _rollback(conn)
        if self._on_rollback is not None:
            self._on_rollback()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        self._dirty = False
        with contextlib.suppress(sqlite3.Error):  # best effort: the next idle spell retries
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _run_one_by_one(self, conn: sqlite3.Connection, jobs: list[_Job]) -> set[str]:
        all_touched: set[str] = set()
        for job in jobs:
            touched: set[str] = set()
            job.result, job.error = None, None
            if not self._may_start(job):
                continue
            try:
                conn.execute(self._begin)
                job.result = job.fn(conn, touched)
                conn.execute("COMMIT")
                self._dirty = not self._read_only
                all_touched |= touched
            except BaseException as exc:
                self._rolled_back(conn)
                job.error = map_sqlite_error(exc)
        return all_touched

    def _resolve(self, jobs: list[_Job], touched: set[str]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed meanwhile, so nobody waits for these results
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, jobs, touched, self)


def _deliver(jobs: list[_Job], touched: set[str], writer: Writer) -> None:
    for job in jobs:
        fut = job.future
        if fut.done():
            continue
        if job.error is not None:
            fut.set_exception(job.error)
        else:
            fut.set_result(job.result)
    if touched:
        writer._notify(touched)


#: What `read_inline` returns when the database is momentarily locked.
INLINE_BUSY: Any = object()


def read_inline(conn: sqlite3.Connection, fn: Op) -> Any:
    """Run a one-SELECT read on the calling (event loop) thread.

    Only for point reads that cost microseconds: the connection has busy_timeout=0, so instead
    of waiting on a lock it returns INLINE_BUSY and the caller goes through the reader thread.
    In WAL mode that happens only during recovery or a truncating checkpoint.
    """
    try:
        return fn(conn, set())
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return INLINE_BUSY
        raise map_sqlite_error(exc) from exc
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc) from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
