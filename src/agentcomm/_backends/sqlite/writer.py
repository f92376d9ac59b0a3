"""The SQLite writer: a thread that group-commits, and small transactions on the loop thread.

The thread takes everything queued, runs it in one `BEGIN IMMEDIATE` transaction, commits once,
then resolves all the waiting futures with a single hop back to the loop (group commit): the
busier the writer, the bigger its batches. If one
operation of a batch raises, the batch is rolled back and each operation is re-run in a
transaction of its own, so one bad call cannot fail its neighbours.

**Loop writes.** A hand-off to the thread and back costs more than a small transaction itself
(two thread wake-ups, futures, the self-pipe), so an operation marked small (one message sent,
claimed or settled) runs right on the event-loop thread, on the writer's own connection, when
all of these hold (`Writer.run_small`):
- nothing is queued for or running on the thread (`_outstanding == 0`), so operations still
  commit in the order they were issued, and the thread does not hold the connection;
- `synchronous` is NORMAL or OFF (FULL would fsync on the loop) and the URL did not turn loop
  writes off (`?loop_writes=0`);
- it gets the write lock at once: `BEGIN IMMEDIATE` with `busy_timeout = 0`; if another process
  holds it, the operation goes to the thread, which waits for the lock as usual;
- the loop has not already spent `LOOP_BUDGET` on loop writes since it last ran other
  callbacks, and no other task wrote in this burst (nor, `_crowded`, in the last one). Else
  the operation joins a batch that commits as one transaction (at most `LOOP_BATCH_MAX`
  operations) once the loop has run the other ready callbacks: a task issuing writes back to
  back cannot starve the others, and many tasks writing at once share commits as they do on
  the thread (one commit costs far more than one more write in it);
- the breaker is closed: when `BREAKER_STRIKES` of a window of `BREAKER_WINDOW` loop
  transactions took longer than `SLOW_LOOP_TXN` (plus as much again per 8 writes of a batch;
  the disk is slow, not the odd preemption), every write goes to the thread for a cool-down
  (doubling while it keeps tripping).
The statements used there allocate no large buffers (see `mailbox.py`), and no checkpoint runs
inside a commit: automatic checkpoints are off on the writing connection and a checkpointer
thread of its own runs `wal_checkpoint(PASSIVE)` on its own connection once writes pause
(`IDLE_CHECKPOINT_AFTER`), or every `CHECKPOINT_EVERY` commits or `CHECKPOINT_INTERVAL`
seconds under load that never pauses, beside the writers rather than in their way; past
`CHECKPOINT_RESTART_FRAMES` it finishes with RESTART so that the WAL starts over, and the first
commit into a WAL that started over (which fsyncs it) runs on the writer thread, not the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..._errors import AgentCommError, BackendError, BackendUnavailable, HubClosed
from .files import REMEDY, is_damaged

T = TypeVar("T")

try:  # POSIX only; the burst diagnostics count preemptions where the OS reports them per thread
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # pragma: no cover - Windows
    _RUSAGE_THREAD = None

#: An operation: runs on the writer's connection inside a transaction, adds the notification
#: channels it touched to the set, and returns its result.
Op = Callable[[sqlite3.Connection, set[str]], Any]

_MAX_BATCH = 1024
#: Checkpoint the WAL once no commit came for this long (SQLite's auto-checkpoint would run
#: inside a COMMIT and fsync, stalling the caller for milliseconds)...
IDLE_CHECKPOINT_AFTER = 0.02
#: ... and, under steady load that never pauses, after this many commits or this long
#: (seconds) since the last checkpoint, whichever comes first (a commit may hold many writes).
CHECKPOINT_EVERY = 256
CHECKPOINT_INTERVAL = 0.5
#: The WAL starts over from its beginning only when a write transaction begins after a
#: checkpoint copied every frame; under load that never pauses, frames arrive during each
#: PASSIVE pass, so it never does: the WAL grew by ~15 KB a message (300-420 MB in a
#: 20,000-message W1). Past this many frames (4 KB pages), a pass is followed by RESTART, which
#: holds writers off while it copies the rest and waits for readers, so that the next write
#: starts the WAL over (loop writes find the lock taken and go to the thread meanwhile).
CHECKPOINT_RESTART_FRAMES = 16384
#: Loop writes issued back to back (no other callback ran between) get this much loop time
#: (seconds); the next ones wait for the loop to run its other callbacks, then commit together.
LOOP_BUDGET = 0.0005
#: At most this many operations in one loop-thread transaction; the rest wait one more turn.
LOOP_BATCH_MAX = 16
#: A loop batch stops taking operations once they used this much of the thread's CPU time
#: (seconds), and commits; the rest wait one more turn. Operations cost from ~25 µs (an idle
#: machine) to twice that and more (a busy one, or bigger payloads), so a cap by count alone
#: let a batch of 16 hold the loop past a millisecond. CPU time, not wall time: a batch whose
#: process was preempted has stalled the loop already, and cutting it short then only shrank
#: batches (and throughput) on a loaded machine.
LOOP_BATCH_TIME = 0.0004
#: A loop write slower than this (seconds, wall time) counts as a strike against the breaker.
#: Wall time also counts the process being preempted on a busy machine, so a few slow writes
#: prove little: only when a good part of a window is slow (a slow or stalling disk, a
#: database much bigger than the page cache) does the breaker open.
SLOW_LOOP_TXN = 0.001
#: This many strikes within a window of BREAKER_WINDOW loop writes open the breaker...
BREAKER_STRIKES = 12
BREAKER_WINDOW = 32
#: ... for this long (seconds) at first, doubling up to BREAKER_MAX_COOLDOWN while it keeps
#: tripping.
BREAKER_COOLDOWN = 1.0
BREAKER_MAX_COOLDOWN = 16.0


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
        loop_writes: bool = False,
        busy_timeout_ms: int = 0,
        connect_checkpointer: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        self._on_rollback = on_rollback  # forget caches filled by rolled-back work
        self._connect = connect
        self._busy_timeout_ms = busy_timeout_ms
        self._busy_now = busy_timeout_ms  # the connection's busy timeout at the moment
        self.loop_writes = loop_writes and not read_only
        self._conn: sqlite3.Connection | None = None
        # held by whichever thread uses the connection: the writer thread for a batch, the loop
        # for a loop write (which only tries it), the checkpointer never (own connection)
        self._conn_lock = threading.Lock()
        self._outstanding = 0  # jobs submitted and not yet delivered (loop thread only)
        self._spent = 0.0  # loop-write time since the loop last ran other callbacks
        self._burst_end_pending = False
        self._burst_task: asyncio.Task[Any] | None = None  # whose loop writes run at once
        self._crowded = False  # the last burst held writes of several tasks
        self._burst_tasks = 0  # 1: one task wrote in this burst; 2: several did
        self._batch: list[_Job] | None = None  # small jobs waiting for the burst's end
        self._strikes = 0
        self._window = 0
        self._tripped_until = 0.0
        self._cooldown = BREAKER_COOLDOWN
        #: What happened to writes, for diagnostics and benchmarks: transactions committed on
        #: the loop and on the thread, loop writes sent to the thread because another process
        #: held the lock, operations committed in loop batches, breaker trips.
        self.counts = {"loop": 0, "thread": 0, "contended": 0, "batched": 0, "tripped": 0}
        #: If a list, the loop time (s) each burst of back-to-back loop writes took is appended,
        #: as (wall time, this thread's CPU time, times the thread was preempted meanwhile): the
        #: benchmarks' measure of the stalls loop writes cause (CPU time and the preemptions
        #: tell a slow write from the process being descheduled on a busy machine).
        self.bursts: list[tuple[float, float, int]] | None = None
        self._spent_cpu = 0.0  # the same in CPU time, while `bursts` is measured
        self._preempted = 0  # ... and the involuntary context switches
        self._checkpointer = (
            None
            if read_only or connect_checkpointer is None
            else _Checkpointer(connect_checkpointer)
        )
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
        self._guard = threading.Lock()  # a job's start against its caller giving up on it

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; raises what opening the connection raised."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="agentcomm-sqlite", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise map_sqlite_error(self._start_error)
        if self._checkpointer is not None:
            self._checkpointer.start()

    def submit(self, fn: Op, *, single_statement: bool = False) -> asyncio.Future[Any]:
        """Queue `fn` for the next transaction; must be called on the loop thread.

        `single_statement` (read-only instances): `fn` runs one SELECT, which is its own
        snapshot, so alone in a batch it needs no BEGIN/COMMIT around it.
        """
        loop = self._loop
        if loop is None or self._stopped:
            raise HubClosed("The SQLite connection is closed; open a new hub.")
        if self._batch:  # small jobs issued earlier commit first
            self._to_thread([])
        fut: asyncio.Future[Any] = loop.create_future()
        # Straight onto the queue: while the thread works on one transaction, later jobs
        # pile up and it takes them all for the next one, so batches grow with load.
        self._outstanding += 1
        self._queue.put(_Job(fn, fut, single_statement))
        return fut

    async def run_small(self, fn: Op) -> Any:
        """Run a small `fn` (a few rows) on this (the loop) thread when the guards of the
        module docstring allow, else like `submit`."""
        return await self._small(fn, None, None)

    async def run_small_until(self, fn: Op, when: float, expired: Any) -> Any:
        """`run_small` for `run_until`: given up (result `expired`) if it has not started by
        loop time `when`."""
        return await self._small(fn, when, expired)

    async def _small(self, fn: Op, when: float | None, expired: Any) -> Any:
        if not self._loop_writes_allowed():
            return await (self.submit(fn) if when is None else self.run_until(fn, when, expired))
        task = asyncio.current_task()
        if (
            self._batch is None
            and self._spent < LOOP_BUDGET
            and not self._crowded
            and (not self._burst_end_pending or task is self._burst_task)
        ):
            # alone: a transaction of its own, right now. A task writing again in the same
            # burst (send, then receive, then ack) goes on; another task's write joins the
            # batch instead, and while bursts hold several tasks' writes (`_crowded`) every
            # write does: one commit for many writes costs far less than many commits.
            self._burst_task = task
            self._burst_tasks = self._burst_tasks or 1
            result = self._try_loop_write(fn)
            if result is not _NOT_RUN:
                return result
            return await (self.submit(fn) if when is None else self.run_until(fn, when, expired))
        # The loop's budget is spent (or others wait already): join the batch that commits
        # as one transaction once the loop has run its other callbacks (`_end_of_burst`).
        loop = self._loop
        assert loop is not None  # _loop_writes_allowed checked it
        job = _Job(fn, loop.create_future(), False)
        timer = None
        if when is not None:
            job.state = _QUEUED
            timer = loop.call_at(when, self._abandon, job, expired)
        if self._batch is None:
            self._batch = []
        self._batch.append(job)
        if task is not self._burst_task:
            self._burst_tasks = 2 if self._burst_tasks else 1
            self._burst_task = task
        if not self._burst_end_pending:
            self._burst_end_pending = True
            loop.call_soon(self._end_of_burst)
        try:
            return await job.future
        finally:
            if timer is not None:
                timer.cancel()

    def _loop_writes_allowed(self) -> bool:
        return (
            self.loop_writes
            and not self._outstanding
            and not self._stopped
            and self._loop is not None
            and (not self._tripped_until or self._breaker_closed())
            and not (self._checkpointer is not None and self._checkpointer.wal_restarts)
        )

    def _try_loop_write(self, fn: Op) -> Any:
        """`fn`'s result after its own transaction here, or _NOT_RUN (use the thread)."""
        if not self._conn_lock.acquire(blocking=False):
            return _NOT_RUN  # the thread is closing the connection
        touched: set[str] = set()
        clock = time.perf_counter
        started = clock()
        probe = _probe() if self.bursts is not None else _NO_PROBE
        try:
            conn = self._conn
            if conn is None or not self._begin_here(conn):
                return _NOT_RUN
            try:
                result = fn(conn, touched)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rolled_back(conn)
                if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                    return _NOT_RUN
                raise map_sqlite_error(exc) from exc
        finally:
            self._conn_lock.release()
        self.counts["loop"] += 1
        self._after_loop_commit(clock() - started, probe, touched)
        return result

    def _begin_here(self, conn: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE without waiting; False if another process holds the write lock."""
        if self._busy_now:
            conn.execute("PRAGMA busy_timeout = 0")
            self._busy_now = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):  # another process writes: wait for it on the thread
                self.counts["contended"] += 1
                return False
            raise map_sqlite_error(exc) from exc
        return True

    def _after_loop_commit(
        self, elapsed: float, probe: tuple[float, int], touched: set[str], ops: int = 1
    ) -> None:
        if self.bursts is not None:
            cpu, preempted = _probe()
            self._spent_cpu += cpu - probe[0]
            self._preempted += preempted - probe[1]
        if self._checkpointer is not None:
            self._checkpointer.committed()
        self._account(elapsed, ops)
        if touched:
            with contextlib.suppress(Exception):
                self._ping(touched)
            self._notify(touched)

    def _account(self, elapsed: float, ops: int = 1) -> None:
        """Charge a loop transaction of `ops` writes to the budget and to the breaker."""
        self._spent += elapsed
        if not self._burst_end_pending and self._loop is not None:
            self._burst_end_pending = True
            self._loop.call_soon(self._end_of_burst)
        self._window += 1
        if elapsed > SLOW_LOOP_TXN * (1 + ops // 8):  # a batch may take a little longer
            self._strikes += 1
        if self._window < BREAKER_WINDOW:
            return
        if self._strikes >= BREAKER_STRIKES:
            self.counts["tripped"] += 1
            self._tripped_until = time.monotonic() + self._cooldown
            self._cooldown = min(self._cooldown * 2, BREAKER_MAX_COOLDOWN)
        elif self._strikes < BREAKER_STRIKES // 4:  # a calm window: forget past trips
            self._cooldown = BREAKER_COOLDOWN
        self._strikes = self._window = 0

    def _end_of_burst(self) -> None:
        """The loop ran other callbacks since the burst of loop writes began: a new budget,
        and the batch that waited for it is committed (at most LOOP_BATCH_MAX of it)."""
        if self.bursts is not None:
            self.bursts.append((self._spent, self._spent_cpu, self._preempted))
            self._spent_cpu, self._preempted = 0.0, 0
        self._spent = 0.0
        self._burst_end_pending = False
        self._burst_task = None
        batch, self._batch = self._batch, None
        if self._burst_tasks:  # a burst of only the flush below's commit tells nothing
            self._crowded, self._burst_tasks = self._burst_tasks > 1, 0
        if not batch:
            return
        if len(batch) > LOOP_BATCH_MAX:
            batch, self._batch = batch[:LOOP_BATCH_MAX], batch[LOOP_BATCH_MAX:]
        self._flush(batch)

    def _flush(self, batch: list[_Job]) -> None:
        """Commit `batch` as one transaction here; on contention or any error, hand it (and
        whatever queued behind it) to the thread, which runs it again (one by one if one of
        them fails)."""
        if not self._loop_writes_allowed() or not self._conn_lock.acquire(blocking=False):
            self._to_thread(batch)
            return
        touched: set[str] = set()
        clock = time.perf_counter
        started = clock()
        probe = _probe() if self.bursts is not None else _NO_PROBE
        try:
            conn = self._conn
            if conn is None or not self._begin_here(conn):
                self._to_thread(batch)
                return
            try:
                cpu_started = time.thread_time()
                for i, job in enumerate(batch):
                    if i and time.thread_time() - cpu_started > LOOP_BATCH_TIME:
                        # the rest go first next turn, before anything issued since
                        batch, rest = batch[:i], batch[i:]
                        self._batch = rest + self._batch if self._batch else rest
                        break
                    if self._may_start(job):
                        job.result = job.fn(conn, touched)
                conn.execute("COMMIT")
            except BaseException:
                self._rolled_back(conn)
                for job in batch:  # not run after all: a deadline may give it up again
                    job.result = None
                    if job.state == _STARTED:
                        job.state = _QUEUED
                self._to_thread(batch)
                return
        finally:
            self._conn_lock.release()
        self.counts["loop"] += 1
        self.counts["batched"] += len(batch)
        self._after_loop_commit(clock() - started, probe, touched, len(batch))
        for job in batch:
            if not job.future.done():
                job.future.set_result(job.result)

    def _to_thread(self, jobs: list[_Job]) -> None:
        """Queue `jobs` for the thread, after any batch still waiting on the loop (order)."""
        waiting, self._batch = self._batch, None
        for job in [*jobs, *(waiting or ())]:
            self._outstanding += 1
            self._queue.put(job)

    def _breaker_closed(self) -> bool:
        if time.monotonic() < self._tripped_until:
            return False
        self._tripped_until = 0.0
        return True

    async def run_until(self, fn: Op, when: float, expired: Any) -> Any:
        """Like `submit`, awaited; but if `fn` has not started by loop time `when` (the
        database stayed locked), it never runs and the result is `expired` (raised if an
        exception)."""
        loop = self._loop
        if loop is None or self._stopped:
            raise HubClosed("The SQLite connection is closed; open a new hub.")
        if self._batch:  # small jobs issued earlier commit first
            self._to_thread([])
        job = _Job(fn, loop.create_future(), False)
        job.state = _QUEUED
        self._outstanding += 1
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
        if self._batch:
            self._to_thread([])
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)

    # --- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._conn = conn
        self._ready.set()
        try:
            stop = False
            while not stop:
                first = self._queue.get()
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
                with self._conn_lock:
                    self._run_batch(conn, jobs)
        finally:
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _run_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        touched: set[str] = set()
        wrap = not (self._read_only and len(jobs) == 1 and jobs[0].single)
        if self._busy_now != self._busy_timeout_ms:  # a loop write set it to 0
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                self._busy_now = self._busy_timeout_ms
        try:
            if wrap:
                conn.execute(self._begin)
            for job in jobs:
                if self._may_start(job):
                    job.result = job.fn(conn, touched)
            if wrap:
                conn.execute("COMMIT")
            self._committed()
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

    def _committed(self) -> None:
        self.counts["thread"] += 1
        if self._checkpointer is not None:
            self._checkpointer.wal_restarts = False  # this commit took the WAL's fsync
            self._checkpointer.committed()

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
                self._committed()
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
    writer._outstanding -= len(jobs)
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


_NOT_RUN: Any = object()  # a loop write did not run: use the thread
_NO_PROBE = (0.0, 0)


def _probe() -> tuple[float, int]:
    """This thread's CPU time and involuntary context switches (-1 where not reported)."""
    if _RUSAGE_THREAD is None:
        return time.thread_time(), -1
    return time.thread_time(), resource.getrusage(_RUSAGE_THREAD).ru_nivcsw


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class _Checkpointer:
    """A thread with its own connection that checkpoints the WAL (PASSIVE) once commits pause
    for IDLE_CHECKPOINT_AFTER, or every CHECKPOINT_EVERY commits or CHECKPOINT_INTERVAL seconds
    under steady load.

    A PASSIVE checkpoint takes no write lock, so writers go on beside it: the copy into the
    database file and its fsync happen off the hot path, not inside somebody's COMMIT."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._commits = 0  # bumped by whoever committed (under the writer's connection lock)
        self._kick = threading.Event()  # set: commits since the last checkpoint
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0
        self.restarts = 0  # checkpoints finished with RESTART (the WAL kept growing)
        #: Set once a checkpoint copied the whole WAL: the next commit starts the WAL over,
        #: and with `synchronous` NORMAL each connection's first commit into a new WAL fsyncs
        #: it. The writer keeps its next commit on its thread, not the loop, and clears this.
        self.wal_restarts = False

    def start(self) -> None:
        """Start the thread (it opens its connection there; failures only skip checkpoints)."""
        self._thread = threading.Thread(
            target=self._run, name="agentcomm-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """Count a commit (any thread)."""
        self._commits += 1
        if not self._kick.is_set():
            self._kick.set()

    def stop(self) -> None:
        """Stop the thread (blocking, bounded by one checkpoint)."""
        self._stopped = True
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            conn = self._connect()
        except Exception:  # the writer reports open failures; without us the WAL just grows
            return
        try:
            last = 0
            while True:
                self._kick.wait()
                if self._stopped:
                    break
                # wait for a pause in the commits, or for enough of them
                since = time.monotonic()
                while (
                    not self._stopped
                    and self._commits - last < CHECKPOINT_EVERY
                    and time.monotonic() - since < CHECKPOINT_INTERVAL
                ):
                    seen = self._commits
                    time.sleep(IDLE_CHECKPOINT_AFTER)
                    if self._commits == seen:
                        break
                if self._stopped:
                    break
                self._kick.clear()
                last = self._commits
                with contextlib.suppress(sqlite3.Error):  # best effort: the next spell retries
                    self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        if log > CHECKPOINT_RESTART_FRAMES:  # the WAL never started over since it grew
            # busy_timeout: waits for the write lock as long as the connection allows
            _, log, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += 1
        if 0 < log == done:
            self.wal_restarts = True


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
