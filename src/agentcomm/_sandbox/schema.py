"""The two files of a sandbox directory, each written by one side only.

`inbound.db` (the host writes it): the messages for the sandbox, with even sequence numbers,
their host-side state, the host's delivery records of the sandbox's messages, and `meta`
(schema version, journal mode). `outbound.db` (the sandbox writes it): the sandbox's messages,
with odd sequence numbers, and its acks (`processing`, `completed`, `failed`) of inbound
messages, keyed by message id and try number.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "HOST_FILE",
    "HOST_SOCKET",
    "HEARTBEAT_FILE",
    "INBOUND_SCHEMA",
    "Journal",
    "OUTBOUND_SCHEMA",
    "SANDBOX_FILE",
    "SANDBOX_SOCKET",
    "SCHEMA_VERSION",
]

Journal = Literal["delete", "wal"]

SCHEMA_VERSION = 1
HOST_FILE = "inbound.db"
SANDBOX_FILE = "outbound.db"
HOST_SOCKET = "host.wake"
SANDBOX_SOCKET = "sandbox.wake"
HEARTBEAT_FILE = "heartbeat"

# role: 'message' (what next_batch returns), 'answer' (to a question), 'result' (of an action)
# state: pending | paused | completed | failed | cancelled (completed / failed mirror the
# sandbox's acks once the host has seen them; until then status() reads the acks directly)
INBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages_in (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    process_after REAL NOT NULL,
    trigger INTEGER NOT NULL,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    in_reply_to TEXT,
    idempotency_key TEXT UNIQUE,
    series_id TEXT,
    recurrence TEXT,
    catch_up TEXT,
    origin TEXT,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS messages_in_due ON messages_in (state, role, process_after);
CREATE INDEX IF NOT EXISTS messages_in_reply ON messages_in (in_reply_to)
    WHERE in_reply_to IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_in_one_answer ON messages_in (in_reply_to)
    WHERE role != 'message';
CREATE UNIQUE INDEX IF NOT EXISTS messages_in_one_live_occurrence ON messages_in (series_id)
    WHERE series_id IS NOT NULL AND state IN ('pending', 'paused');
CREATE INDEX IF NOT EXISTS messages_in_done ON messages_in (done_at) WHERE done_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    out_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (at);
"""

OUTBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages_out (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    to_agent TEXT,
    in_reply_to TEXT,
    created_at REAL NOT NULL,
    deadline REAL
);
CREATE INDEX IF NOT EXISTS messages_out_reply ON messages_out (in_reply_to)
    WHERE in_reply_to IS NOT NULL;
CREATE TABLE IF NOT EXISTS acks (
    message_id TEXT NOT NULL,
    try INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    run TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (message_id, try)
);
CREATE INDEX IF NOT EXISTS acks_status ON acks (status, at);
"""
