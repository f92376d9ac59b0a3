"""One side's SQLite: its own file (written only here) and the peer's file (read-only).

Every database call of a side runs on one dedicated thread, so commits and fsyncs never block
the event loop and the connection is used by one thread only. The peer's file is attached with
SQLite's read-only URI mode (`mode=ro`): a write through it fails inside SQLite. In `delete`
journal mode it is attached afresh for every look (a file shared across a VM mount must be
reopened to be seen current); in `wal` mode it stays attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from .._errors import AgentCommError, BackendError, BackendUnavailable, SandboxError
from .schema import SCHEMA_VERSION, Journal

__all__ = ["PEER", "Store", "readonly_uri"]

_T = TypeVar("_T")
PEER = "peer"
BUSY_TIMEOUT_MS = 5000
#: Files of a side are writable by their owner only.
FILE_MODE = 0o644
CLOSE_WAIT = 5.0


def readonly_uri(path: str) -> str:
    """The `file:` URI that opens `path` read-only."""
    return f"file:{quote(os.path.abspath(path))}?mode=ro"


def _map_error(exc: sqlite3.Error, what: str) -> AgentCommError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_READONLY"):
        return SandboxError(
            f"{what}: {exc}. A side never writes the other side's file (it is opened "
            "read-only); and its own file must be writable by the user it runs as."
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return BackendUnavailable(f"{what}: the file stayed locked ({exc}); try again.")
    return BackendError(f"{what}: {exc}")


class Store:
    """The SQLite thread of one side."""

    def __init__(self, directory: str, own: str, peer: str, *, role: str) -> None:
        self.directory = directory
        self.own_path = os.path.join(directory, own)
        self.peer_path = os.path.join(directory, peer)
        self.role = role
        self.journal: Journal = "delete"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"agentcomm-sandbox-{role}")
        self._conn: sqlite3.Connection | None = None
        self._attached = False
        self._closed = False
        self._lock = threading.Lock()

    # --- the thread --------------------------------------------------------------------------

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(conn, *args)` on the side's thread; sqlite errors come back typed."""
        if self._closed:
            raise SandboxError(f"The sandbox {self.role} side is closed; open it again.")
        try:
            fut: Future[_T] = self._executor.submit(self._run, fn, *args)
        except RuntimeError:  # the executor was shut down meanwhile
            raise SandboxError(f"The sandbox {self.role} side is closed; open it again.") from None
        return await asyncio.wrap_future(fut)

    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        conn = self._conn
        if conn is None:
            raise SandboxError(f"The sandbox {self.role} side is not open.")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise _map_error(exc, f"sandbox {self.role} ({self.own_path})") from exc
        finally:
            if self._attached and self.journal == "delete":
                self._detach(conn)

    async def open(self, init: Callable[[sqlite3.Connection], _T]) -> _T:
        """Open (creating it owner-writable if needed) the side's own file, then run `init`."""
        fut = self._executor.submit(self._open, init)
        try:
            return await asyncio.wrap_future(fut)
        except BaseException:
            await self.close()
            raise

    def _open(self, init: Callable[[sqlite3.Connection], _T]) -> _T:
        path = self.own_path
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        except FileExistsError:
            info = os.stat(path)
            if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != FILE_MODE:
                os.chmod(path, FILE_MODE)
        except OSError as exc:
            raise SandboxError(
                f"Cannot create {path}: {exc}. The directory must exist and be writable by "
                f"the user the {self.role} side runs as."
            ) from None
        else:
            os.close(fd)
        if not os.access(path, os.W_OK):
            raise SandboxError(
                f"{path} is not writable by this process (uid {os.geteuid()}); it belongs to "
                f"the side that created it. Run the {self.role} side as its owner."
            )
        try:
            # a URI connection: ATTACH of the peer's `file:...?mode=ro` URI needs URI filenames
            conn = sqlite3.connect(
                f"file:{quote(path)}", isolation_level=None, check_same_thread=False, uri=True,
                timeout=5.0,
            )  # fmt: skip
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise _map_error(exc, f"Cannot open {path}") from exc
        self._conn = conn
        return self._run(init)

    def set_journal(self, conn: sqlite3.Connection, journal: Journal) -> None:
        """Put the own file in `journal` mode (and the matching durability)."""
        self.journal = journal
        got = conn.execute(f"PRAGMA journal_mode = {journal.upper()}").fetchone()[0]
        if str(got).lower() != journal:
            raise SandboxError(f"{self.own_path} could not be put in {journal} mode ({got}).")
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if journal == 'wal' else 'FULL'}")

    async def close(self) -> None:
        """Close the connection (a WAL file is turned back to rollback mode first, so no
        `-wal` / `-shm` file is left for a reader of another uid to trip on); bounded."""
        if self._closed:
            return
        self._closed = True
        fut = self._executor.submit(self._close)
        self._executor.shutdown(wait=False)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(fut), CLOSE_WAIT)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            if self._attached:
                self._detach(conn)
            if self.journal == "wal":
                conn.execute("PRAGMA journal_mode = DELETE")
        conn.close()

    # --- the peer's file ---------------------------------------------------------------------

    def attach_peer(self, conn: sqlite3.Connection) -> bool:
        """Attach the peer's file read-only as `peer`; False while it does not exist yet (or
        cannot be read right now, e.g. it has a hot journal its owner must roll back)."""
        if self._attached:
            return True
        if not os.path.exists(self.peer_path):
            return False
        try:
            conn.execute("ATTACH DATABASE ? AS peer", (readonly_uri(self.peer_path),))
        except sqlite3.Error:
            return False
        self._attached = True
        try:
            ready = conn.execute(
                "SELECT count(*) FROM peer.sqlite_master WHERE name = 'meta'"
            ).fetchone()[0]
        except sqlite3.Error:
            ready = 0
        if not ready:
            self._detach(conn)
            return False
        return True

    def _detach(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("DETACH DATABASE peer")
        self._attached = False

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the own file (rolled back on error). A transaction
        never reads the peer's file, so the two sides can never wait for each other."""
        if self._attached and self.journal == "delete":
            self._detach(conn)  # a rollback-journal reader would hold the peer's file locked
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def read_meta(conn: sqlite3.Connection, schema: str) -> dict[str, str]:
    """The `meta` table of `schema` ('main' or 'peer') as a dict."""
    return dict(conn.execute(f"SELECT key, value FROM {schema}.meta").fetchall())


def init_meta(conn: sqlite3.Connection, journal: Journal, role: str) -> None:
    """Check or write the schema version of the own file."""
    meta = read_meta(conn, "main")
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise SandboxError(
            f"This file was written by a newer agentcomm (sandbox schema {version}); "
            "upgrade agentcomm on this side."
        )
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", str(SCHEMA_VERSION)), ("journal", journal), ("writer", role)],
    )


def directory_of(path: str) -> str:
    """`path` as an absolute directory that exists, else SandboxError."""
    p = Path(path)
    if not p.is_dir():
        raise SandboxError(
            f"{path} is not a directory. Create the shared directory first (the host side "
            "makes inbound.db there; the sandbox side mounts the same directory)."
        )
    return str(p.resolve())
