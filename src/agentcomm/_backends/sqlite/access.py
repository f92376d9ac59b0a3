"""What a feature object of the SQLite backend gets: its ways into the database.

The backend owns the connections and threads; each feature object (`SQLiteMailboxes`,
`SQLiteTopics`, ...) holds one shared `Access` and nothing else of the backend's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from typing import Any

from ..._deadline import CALL_DEADLINE, DEADLINE_GRACE
from .writer import INLINE_BUSY, Op, Writer, read_inline


class Access:
    """Write transactions on the writer thread (small ones on the loop when it is idle), reads
    beside it, point reads on the loop."""

    def __init__(self, writer: Writer, reader: Writer) -> None:
        self._writer = writer
        self._reader = reader
        #: The loop thread's read-only connection (busy_timeout 0) while the backend is open.
        self.inline: sqlite3.Connection | None = None

    def do(self, fn: Op, *, small: bool = False) -> Awaitable[Any]:
        """Run `fn` in a write transaction on the writer thread; await the result.

        `small`: `fn` touches a few rows with statements that allocate no large buffers (see
        `writer.py`), so it may run on the loop thread when the writer is idle."""
        if small:
            return self._writer.run_small(fn)
        return self._writer.submit(fn)

    def do_by_deadline(self, fn: Op, expired: Any, *, small: bool = False) -> Awaitable[Any]:
        """Like `do`, for the storage look of a blocking call: past the call's deadline (see
        `agentcomm._deadline`) plus a grace, `fn` is given up if it has not started (the file is
        locked) and the result is `expired`. Without a deadline, exactly `do`."""
        deadline = CALL_DEADLINE.get()
        if deadline is None:
            return self.do(fn, small=small)
        if small:
            return self._writer.run_small_until(fn, deadline + DEADLINE_GRACE, expired)
        return self._writer.run_until(fn, deadline + DEADLINE_GRACE, expired)

    def read(self, fn: Op, *, single_statement: bool = False) -> asyncio.Future[Any]:
        """Run a read-only `fn` on the reader connection, beside the writer; await the result."""
        return self._reader.submit(fn, single_statement=single_statement)

    def read_inline(self, fn: Op) -> Any:
        """Run a one-SELECT point read right here on the loop thread (see `read_inline`);
        INLINE_BUSY if the database is momentarily locked or the backend is not open."""
        if self.inline is None:
            return INLINE_BUSY
        return read_inline(self.inline, fn)
