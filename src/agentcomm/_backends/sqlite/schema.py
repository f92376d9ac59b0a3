"""SQLite connection settings and schema versions.

Each feature declares its tables as a `FeatureSchema` (the mailbox tables below, the others in
their feature modules): the DDL they were first created with (version 1) and the migrations
since, in order. The `schema_versions` table records each
feature's version; opening a store creates what is missing, runs the migrations a feature is
behind on, and refuses a store that a newer agentcomm wrote. `PRAGMA user_version` is the
version of this layout itself: 1 was feature tables without version rows, 2 adds
`schema_versions` (so an agentcomm that predates it, and would skip migrations, refuses it).

The mailbox tables are defined here; their indexes are exactly what the hot queries need, so a
claim costs O(log n) whatever the backlog: ready messages per recipient in delivery order;
timers (delayed messages and leases) per recipient; expiry times of undelivered messages;
finish times of rows awaiting pruning.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..._errors import ConfigurationError
from ..._records import State

#: `PRAGMA user_version` of a store whose features carry version rows.
LAYOUT_VERSION = 2

_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_versions (
    feature  TEXT PRIMARY KEY,
    version  INTEGER NOT NULL
) WITHOUT ROWID
"""

#: One step from a version to the next: an SQL script, or a function for data rewrites.
Migration = str | Callable[[sqlite3.Connection], None]


class FeatureSchema(NamedTuple):
    """One feature's tables: the DDL of version 1 and the migrations since, in order."""

    #: The feature's name in `schema_versions` (the backend attribute, e.g. "topics").
    name: str
    #: Version 1's statements, idempotent (`IF NOT EXISTS`), separated by `;`.
    ddl: str
    #: `migrations[i]` brings the tables from version i + 1 to i + 2.
    migrations: tuple[Migration, ...] = ()

    @property
    def version(self) -> int:
        """The version this code writes."""
        return 1 + len(self.migrations)


# The message states as stored (`State`): SQL takes every state from these.
READY = State.READY.value
IN_FLIGHT = State.IN_FLIGHT.value
DELAYED = State.DELAYED.value
DEAD = State.DEAD.value
EXPIRED = State.EXPIRED.value
ACKED = State.ACKED.value
UNSETTLED = f"({READY}, {IN_FLIGHT})"  # a delivery that can still be settled
TIMED = f"({IN_FLIGHT}, {DELAYED})"  # a timer runs: a lease or a delay
UNDELIVERED = f"({READY}, {DELAYED})"  # may still expire
FINISHED = f">= {DEAD}"  # dead, expired or acked: awaiting pruning

_MAILBOX_DDL = f"""
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
    ON messages (recipient, priority DESC, seq) WHERE state = {READY};
CREATE INDEX IF NOT EXISTS messages_timers
    ON messages (recipient, visible_at) WHERE state IN {TIMED};
CREATE INDEX IF NOT EXISTS messages_expiry
    ON messages (expires_at) WHERE state IN {UNDELIVERED};
CREATE INDEX IF NOT EXISTS messages_finished
    ON messages (finished_at) WHERE state {FINISHED};
CREATE INDEX IF NOT EXISTS messages_dead
    ON messages (recipient, seq) WHERE state = {DEAD};

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
#: The mailbox tables (and the event counters) and their versions: 2 adds the agents'
#: `last_active` (presence); 3 has a reply slot record the attempt of its request's latest
#: delivery (`RequestTimeout.received`).
MAILBOXES = FeatureSchema(
    "mailboxes",
    _MAILBOX_DDL,
    migrations=(
        "ALTER TABLE agents ADD COLUMN last_active REAL",
        "ALTER TABLE requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    ),
)


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
        _wal(conn, busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # The writer checkpoints when idle (see writer.py); this only bounds the WAL under
        # sustained load.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. Processes opening a new file at once can find it locked here without
    SQLite waiting out the busy timeout (the switch itself takes the lock), so this retries,
    for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def migrate(conn: sqlite3.Connection, features: Iterable[FeatureSchema]) -> None:
    """Bring every feature's tables to this code's version, in one transaction; refuse a store
    written by a newer agentcomm."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        layout = conn.execute("PRAGMA user_version").fetchone()[0]
        if layout > LAYOUT_VERSION:
            raise ConfigurationError(
                f"The database uses schema {layout}, newer than this agentcomm "
                f"({LAYOUT_VERSION}). Upgrade agentcomm to open it."
            )
        if layout < LAYOUT_VERSION:
            _refuse_foreign(conn)
            conn.execute(_VERSIONS)
        versions = dict(conn.execute("SELECT feature, version FROM schema_versions").fetchall())
        for feature in features:
            _upgrade(conn, feature, versions.get(feature.name, 0))
        if layout < LAYOUT_VERSION:
            conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _refuse_foreign(conn: sqlite3.Connection) -> None:
    """Refuse a database that holds tables but none of agentcomm's (another program's file)."""
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if tables and not {"messages", "schema_versions"} & tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigurationError(
            f"The SQLite file holds tables that are not agentcomm's ({shown}); it belongs to "
            "another program. Point the URL at a new file or at an agentcomm store."
        )


def _upgrade(conn: sqlite3.Connection, feature: FeatureSchema, have: int) -> None:
    if have > feature.version:
        raise ConfigurationError(
            f"The database's {feature.name} tables use schema version {have}, newer than this "
            f"agentcomm supports ({feature.version}). Upgrade agentcomm to open it."
        )
    if have == feature.version:
        return
    if have == 0:
        # a new store, or one of layout 1, whose tables (if any) are those of version 1
        _run(conn, feature.ddl)
        have = 1
    for step in feature.migrations[have - 1 :]:
        if isinstance(step, str):
            _run(conn, step)
        else:
            step(conn)
    conn.execute(
        "INSERT OR REPLACE INTO schema_versions (feature, version) VALUES (?, ?)",
        (feature.name, feature.version),
    )


def _run(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
