"""The SQLite backend: the default, an embedded file that several processes may share.

Every operation runs on one writer thread (see `writer.py`) inside `BEGIN IMMEDIATE`
transactions shared by concurrent calls. Other processes on the same file are woken by
datagram pings (see `wake.py`); a slow re-check covers a ping that never arrives.

The backend owns the connections, threads and wake-ups; each feature is an object of its own
module (`mailbox.py`, `topics.py`, `shared_memory.py`, `references.py`) reaching the database
through one shared `Access`.
"""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec

from ..._models import CheckReport, HubStats, PruneReport
from ..._notify import Notifier
from ..._settings import Retention
from ..contracts import Backend
from . import files, leases, pools, references, schema, shared_memory, topics
from .access import Access
from .leases import SQLiteLeases
from .mailbox import SQLiteMailboxes
from .pools import SQLitePools
from .references import SQLiteReferences
from .shared_memory import SQLiteSharedMemory
from .topics import SQLiteTopics
from .wake import WakeBus, wake_dir_for
from .writer import Writer, map_sqlite_error

#: Every feature's tables, in the order they are created.
SCHEMAS = (
    schema.MAILBOXES, shared_memory.SCHEMA, topics.SCHEMA, references.SCHEMA, pools.SCHEMA,
    leases.SCHEMA,
)  # fmt: skip


class SQLiteBackend(Backend):
    """Implements the backend contract on one SQLite file."""

    mailboxes: SQLiteMailboxes
    topics: SQLiteTopics
    shared_memory: SQLiteSharedMemory
    references: SQLiteReferences
    pools: SQLitePools
    leases: SQLiteLeases

    def __init__(
        self,
        path: str,
        retention: Retention,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 10_000,
        recheck_interval: float = 2.0,
        create: bool = False,
    ) -> None:
        self.path = path
        self._create = create
        self.retention = retention
        self.recheck_interval = recheck_interval
        self.notifier = Notifier()
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._wake_dir = wake_dir_for(path)
        self._wake = WakeBus(self._wake_dir, self.notifier.notify)
        self._writer = Writer(
            self._connect,
            self._wake.ping,
            self.notifier.notify,
            on_rollback=self._rolled_back,
        )
        self._reader = Writer(self._connect_reader, _no_op, _no_op, read_only=True)
        self._db = Access(self._writer, self._reader)
        self.mailboxes = SQLiteMailboxes(self._db, retention)
        self.topics = SQLiteTopics(self._db, retention)
        self.shared_memory = SQLiteSharedMemory(self._db)
        self.references = SQLiteReferences(self._db)
        self.pools = SQLitePools(self._db, self.mailboxes, retention)
        self.leases = SQLiteLeases(self._db)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = schema.connect(
                self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms
            )
        except sqlite3.Error as exc:
            raise _on_open(self.path, exc) from exc
        try:
            schema.migrate(conn, SCHEMAS)
            references.install(conn, lambda: self.ref_gc_strategy)
        except sqlite3.Error as exc:
            conn.close()
            raise _on_open(self.path, exc) from exc
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

    def _rolled_back(self) -> None:
        # on the writer thread: forget caches that rolled-back work may have filled
        self.mailboxes.forget_known_agents()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._start, loop)
            try:
                self._wake.start(loop)
            except OSError as exc:
                raise files.location_error(self._wake_dir, exc) from exc
        except BaseException:
            await self.close()
            raise

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        files.check_location(self.path, create=self._create)
        self._writer.start(loop)  # first: it creates or migrates the schema
        self._reader.start(loop)
        try:
            self._db.inline = self._connect_reader(busy_timeout_ms=0)
        except sqlite3.Error as exc:
            raise map_sqlite_error(exc) from exc

    async def close(self) -> None:
        await self._writer.stop()
        await self._reader.stop()
        if self._db.inline is not None:
            self._db.inline.close()
            self._db.inline = None
        self._wake.close()
        self.notifier.wake_all()

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> PruneReport:
        def op(conn: sqlite3.Connection, touched: set[str]) -> PruneReport:
            report = self.mailboxes.prune_in(conn, now, touched)
            topic_records = self.topics.prune_in(conn, now)
            self.shared_memory.prune_in(conn, now, touched)
            pool_records = self.pools.prune_in(conn, now)
            return msgspec.structs.replace(
                report, pruned_topic_records=topic_records, pruned_pool_records=pool_records
            )

        result: PruneReport = await self._db.do(op)
        return result

    async def check(self) -> CheckReport:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[str]:
            try:
                problems = files.integrity_problems(conn)
                if problems:
                    return [*problems, files.REMEDY]
                return self.mailboxes.undecodable_in(conn)
            except sqlite3.DatabaseError as exc:  # too damaged to be checked
                return [f"The check itself failed: {exc}. {files.REMEDY}"]

        problems: list[str] = await self._db.read(op)
        return CheckReport("sqlite", "PRAGMA integrity_check; stored schedules decode", problems)

    async def stats(self) -> HubStats:
        def op(conn: sqlite3.Connection, touched: set[str]) -> dict[str, int]:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            # every stored message took the next AUTOINCREMENT sequence number
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
            counters["sent"] = (row.fetchone() or (0,))[0]
            return counters

        counters: dict[str, int] = await self._db.read(op)
        return HubStats(**{f: counters.get(f, 0) for f in HubStats.__struct_fields__})


def _on_open(path: str, exc: sqlite3.Error) -> BaseException:
    return files.open_error(path, exc) or map_sqlite_error(exc)


def _no_op(_channels: set[str]) -> None:
    """Reads touch no channel: nothing to ping or notify."""
