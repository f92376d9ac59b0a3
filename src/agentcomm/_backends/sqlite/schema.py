"""The SQLite schema and connection settings.

Indexes are exactly what the hot queries need, so a claim costs O(log n) whatever the backlog:
ready messages per recipient in delivery order; timers (delayed messages and leases) per
recipient; expiry times of undelivered messages; finish times of rows awaiting pruning.
"""

from __future__ import annotations

import sqlite3

from .references import REFS_SCHEMA
from .shared_memory import KV_SCHEMA
from .topics import TOPICS_SCHEMA

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    last_seen   REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    sender         TEXT NOT NULL,
    type           TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    state          INTEGER NOT NULL,
    visible_at     REAL NOT NULL,
    expires_at     REAL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    enqueued_at    REAL NOT NULL,
    correlation_id TEXT,
    reply_to       TEXT,
    data_kind      INTEGER NOT NULL,
    data           BLOB NOT NULL,
    metadata       BLOB,
    finished_at    REAL,
    dead_reason    TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages (recipient, priority DESC, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS messages_timers
    ON messages (recipient, visible_at) WHERE state IN (1, 2);
CREATE INDEX IF NOT EXISTS messages_expiry
    ON messages (expires_at) WHERE state IN (0, 2);
CREATE INDEX IF NOT EXISTS messages_finished
    ON messages (finished_at) WHERE state >= 3;
CREATE INDEX IF NOT EXISTS messages_dead
    ON messages (recipient, seq) WHERE state = 3;

CREATE TABLE IF NOT EXISTS dedupe (
    sender      TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    key         TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    until       REAL NOT NULL,
    PRIMARY KEY (sender, recipient, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_until ON dedupe (until);

CREATE TABLE IF NOT EXISTS requests (
    correlation_id TEXT PRIMARY KEY,
    deadline       REAL NOT NULL,
    reply          BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_deadline ON requests (deadline);

CREATE TABLE IF NOT EXISTS schedules (
    id         TEXT PRIMARY KEY,
    spec       BLOB NOT NULL,
    next_run   REAL NOT NULL,
    runs       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedules_next_run ON schedules (next_run);

CREATE TABLE IF NOT EXISTS counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
"""


def connect(path: str, *, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open a connection in autocommit mode (we issue BEGIN ourselves), WAL, with a busy timeout."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
        cached_statements=256,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # The writer checkpoints when idle (see writer.py); this only bounds the WAL under
        # sustained load.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema if missing; refuse a database written by a newer agentcomm."""
    from ..._errors import ConfigurationError

    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"The database uses schema {version}, newer than this agentcomm "
                f"({SCHEMA_VERSION}). Upgrade agentcomm to open it."
            )
        if version < SCHEMA_VERSION:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # feature tables: idempotent, so a database of this schema version gains them on open
        for statement in (KV_SCHEMA + ";" + TOPICS_SCHEMA + ";" + REFS_SCHEMA).split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
