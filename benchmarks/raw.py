"""Baselines: stdlib sqlite3 doing the queue cycle itself, with nothing around it.

Insert, claim (`UPDATE ... RETURNING`) and ack (`DELETE`), each in its own transaction, for one
message or for 100 at a time; WAL with synchronous=NORMAL, as agentcomm's default. The table is
the least the same job needs: an id, delivery order by priority then sequence, a lease and an
attempt counter that fences stale acks. Ids and payloads are made before the clock starts.

A third, informative row runs agentcomm's own schema and statements the same way (no library
around them), which splits agentcomm's gap to the baseline into schema cost and library cost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from .core import Config, Row, benchmark, fresh_dir, payloads

BATCH = 100

_SCHEMA = """
CREATE TABLE q (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    attempt    INTEGER NOT NULL DEFAULT 0,
    data       BLOB NOT NULL
);
CREATE INDEX q_ready ON q (recipient, priority DESC, seq) WHERE state = 0;
"""
_INSERT = (
    "INSERT INTO q (id, recipient, priority, state, visible_at, data) VALUES (?, ?, 0, 0, ?, ?)"
)
_CLAIM = (
    "UPDATE q SET state = 1, attempt = attempt + 1, visible_at = ?1 WHERE seq IN"
    " (SELECT seq FROM q WHERE recipient = ?2 AND state = 0 ORDER BY priority DESC, seq LIMIT ?3)"
    " RETURNING seq, attempt, id, data"
)
_ACK = "DELETE FROM q WHERE seq = ? AND attempt = ? AND state = 1"

# setup(conn); insert(conn, [(id, payload)], now); claim(conn, n, now) -> [(seq, attempt, ...)];
# the ack statement, run with (seq, attempt) of each claimed row
Cycle = tuple[
    Callable[[sqlite3.Connection], None],
    Callable[[sqlite3.Connection, list[tuple[str, bytes]], float], None],
    Callable[[sqlite3.Connection, int, float], list[Any]],
    str,
]


def _open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _minimal() -> Cycle:
    def setup(conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)

    def insert(conn: sqlite3.Connection, chunk: list[tuple[str, bytes]], now: float) -> None:
        conn.executemany(_INSERT, [(i, "worker", now, blob) for i, blob in chunk])

    def claim(conn: sqlite3.Connection, n: int, now: float) -> list[Any]:
        return conn.execute(_CLAIM, (now + 30.0, "worker", n)).fetchall()

    return setup, insert, claim, _ACK


def _agentcomm_schema() -> Cycle:
    # Private names on purpose: this row follows whatever agentcomm's schema currently is.
    from agentcomm._backends.sqlite import backend, mailbox, schema
    from agentcomm._records import NewMessage

    def setup(conn: sqlite3.Connection) -> None:
        schema.migrate(conn, backend.SCHEMAS)

    def insert(conn: sqlite3.Connection, chunk: list[tuple[str, bytes]], now: float) -> None:
        rows = [
            mailbox.row_tuple(
                NewMessage(id=i, sender="producer", recipient="worker", type="message",
                           priority=0, data=blob, data_kind=1, metadata=None, enqueued_at=now,
                           visible_at=now, expires_at=now + 86400.0, max_attempts=3),
                now,
            )
            for i, blob in chunk
        ]  # fmt: skip
        conn.executemany(mailbox._INSERT, rows)

    def claim(conn: sqlite3.Connection, n: int, now: float) -> list[Any]:
        rows = conn.execute(mailbox._CLAIM, (now + 30.0, "worker", now, n)).fetchall()
        return [(r[0], r[9]) for r in rows]  # (seq, attempt)

    return setup, insert, claim, mailbox._ACK_MANY


def _cycle(config: Config, batch: int, make: Callable[[], Cycle]) -> float:
    """Messages per second through insert -> claim -> ack, `batch` messages per transaction."""
    n = config.messages
    _, data = payloads(n)
    items = [(uuid4().hex, blob) for blob in data]
    setup, insert, claim, ack = make()
    with fresh_dir(config, "raw") as d:
        conn = _open(str(d / "raw.db"))
        try:
            setup(conn)
            started = time.perf_counter()
            done = 0
            for lo in range(0, n, batch):
                chunk = items[lo : lo + batch]
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                insert(conn, chunk, now)
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                claimed = claim(conn, len(chunk), now)
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(ack, [(r[0], r[1]) for r in claimed])
                conn.execute("COMMIT")
                done += len(claimed)
            elapsed = time.perf_counter() - started
        finally:
            conn.close()
    if done != n:
        raise RuntimeError(f"the raw cycle moved {done} of {n} messages")
    return n / elapsed


@benchmark("raw sqlite3 batched")
def raw_batched(config: Config) -> list[Row]:
    """The physical limit: the cycle in batches of 100 per transaction."""
    rate = _cycle(config, BATCH, _minimal)
    return [
        Row("raw.batched", "raw sqlite3, batches of 100", rate, "msg/s", config.messages,
            note="baseline; 3 transactions per 100 messages")
    ]  # fmt: skip


@benchmark("raw sqlite3 single")
def raw_single(config: Config) -> list[Row]:
    """The cycle one message per transaction: what one awaited call at a time can approach."""
    rate = _cycle(config, 1, _minimal)
    return [
        Row("raw.single", "raw sqlite3, one message per txn", rate, "msg/s",
            config.messages, note="baseline; 3 transactions per message")
    ]  # fmt: skip


@benchmark("raw sqlite3 on the library schema")
def raw_agentcomm_schema(config: Config) -> list[Row]:
    """Informative: both cycles on agentcomm's own tables and statements."""
    note = "diagnostic: agentcomm's tables and statements, no library"
    batched = _cycle(config, BATCH, _agentcomm_schema)
    single = _cycle(config, 1, _agentcomm_schema)
    return [
        Row("raw.batched.agentcomm_schema", "raw sqlite3 on agentcomm schema, batches of 100",
            batched, "msg/s", config.messages, note=note),
        Row("raw.single.agentcomm_schema", "raw sqlite3 on agentcomm schema, one per txn",
            single, "msg/s", config.messages, note=note),
    ]  # fmt: skip
