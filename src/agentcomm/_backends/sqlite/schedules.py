"""Schedules on SQLite: a row per schedule, its spec (`ScheduleSpec`) stored as msgpack.

A stored schedule that cannot be decoded or fired (written by a bug, or by hand) never stops
the others: it is parked (`next_run` set to +inf, so it is never due again), logged once,
counted in `undecodable`, listed with its error, and can still be cancelled.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable

import msgspec

from ..._models import ScheduleInfo
from ..._records import NewMessage, ScheduleSpec
from ..._scheduling import next_occurrence, scheduled_message
from ..common import mail_channel
from .references import drop_ref, hold_ref

logger = logging.getLogger("agentcomm")

_spec_decoder = msgspec.msgpack.Decoder(ScheduleSpec)
_DUE_BATCH = 256
#: Stores one message row: (connection, message, now).
Insert = Callable[[sqlite3.Connection, NewMessage, float], None]
Bump = Callable[[sqlite3.Connection, str, int], None]


def decode_spec(blob: object) -> ScheduleSpec:
    """A stored spec, decoded and checked; raises ValueError (or a msgspec error) if it cannot
    be used."""
    if not isinstance(blob, bytes):
        raise ValueError(f"the stored spec is a {type(blob).__name__}, not bytes")
    spec = _spec_decoder.decode(blob)
    if (spec.cron is None) == (spec.every is None):
        raise ValueError("the stored spec has neither or both of cron and every")
    return spec


def describe(exc: BaseException) -> str:
    """An error as listings show it."""
    return f"cannot be decoded or fired: {type(exc).__name__}: {exc}"


def cancel_in(conn: sqlite3.Connection, schedule_id: str) -> bool:
    """Delete a schedule, dropping the reference its payload holds when it can be decoded."""
    gone = conn.execute(
        "DELETE FROM schedules WHERE id = ? RETURNING spec", (schedule_id,)
    ).fetchone()
    if gone is None:
        return False
    try:
        spec = decode_spec(gone[0])
    except (ValueError, msgspec.DecodeError):
        return True  # what it held is unknown: its blob, if any, is kept
    drop_ref(conn, spec.data, spec.data_kind)
    return True


def infos(rows: list[tuple[str, object, float, int]]) -> list[ScheduleInfo]:
    """Listing rows (id, spec, next_run, runs) as ScheduleInfo, each bad one with its error."""
    out = []
    for sid, blob, next_run, runs in rows:
        try:
            s = decode_spec(blob)
        except (ValueError, msgspec.DecodeError) as exc:
            out.append(ScheduleInfo(sid, "", "", "", None, None, next_run, runs, describe(exc)))
            continue
        out.append(ScheduleInfo(s.id, s.sender, s.recipient, s.type, s.cron, s.every, next_run,
                                runs))  # fmt: skip
    return out


def undecodable_in(conn: sqlite3.Connection) -> list[str]:
    """One line per stored schedule that cannot be decoded."""
    problems = []
    for sid, blob in conn.execute("SELECT id, spec FROM schedules"):
        try:
            decode_spec(blob)
        except (ValueError, msgspec.DecodeError) as exc:
            problems.append(f"schedule {sid} {describe(exc)}; cancel it with cancel_schedule")
    return problems


def fire_due_in(
    conn: sqlite3.Connection, now: float, touched: set[str], insert: Insert, bump: Bump
) -> float | None:
    """Enqueue one message per due schedule and move each to its next run; park the bad ones.
    Returns the next run time of any schedule (None: none is pending)."""
    due = conn.execute(
        "SELECT id, spec, next_run FROM schedules WHERE next_run <= ? ORDER BY next_run LIMIT ?",
        (now, _DUE_BATCH),
    ).fetchall()
    fired = 0
    for sid, blob, next_run in due:
        # one savepoint each: a schedule that fails leaves no trace and stops no other one
        conn.execute("SAVEPOINT fire")
        try:
            spec = decode_spec(blob)
            upcoming = next_occurrence(spec.cron, spec.every, next_run, now)
            if not math.isfinite(upcoming) or upcoming <= now:
                raise ValueError(f"its next run would be {upcoming!r}")
            insert(conn, scheduled_message(spec, now), now)
            hold_ref(conn, spec.data, spec.data_kind)
            conn.execute(
                "UPDATE schedules SET next_run = ?, runs = runs + 1 WHERE id = ?",
                (upcoming, sid),
            )
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise  # the storage failed, not this schedule
            conn.execute("ROLLBACK TO fire")
            conn.execute("RELEASE fire")
            _park(conn, sid, exc, bump)
            continue
        conn.execute("RELEASE fire")
        fired += 1
        touched.add(mail_channel(spec.recipient))
    bump(conn, "scheduled_runs", fired)
    nxt = conn.execute("SELECT MIN(next_run) FROM schedules").fetchone()[0]
    return nxt if nxt is not None and math.isfinite(nxt) else None


def _park(conn: sqlite3.Connection, sid: str, exc: BaseException, bump: Bump) -> None:
    conn.execute("UPDATE schedules SET next_run = ? WHERE id = ?", (math.inf, sid))
    bump(conn, "undecodable", 1)
    logger.error(
        "Schedule %s %s. It is parked (never due again); cancel it with "
        "hub.cancel_schedule(%r) and create it anew.",
        sid,
        describe(exc),
        sid,
    )
