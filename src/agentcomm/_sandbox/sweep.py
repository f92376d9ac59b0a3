"""The host's recovery pass, and the system actions it applies for the sandbox.

All of it runs on the host's database thread: first it reads the sandbox's file (acks, action
requests), then, with that file no longer read, one transaction on inbound.db applies
everything: final acks mirrored, the next occurrence of each finished recurring task, action
results, and stale claims given another try or failed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from croniter import croniter

from .._errors import ActionRejected, EncodeError, ValidationError
from .._ids import new_id
from .common import check_kind, decode, encode
from .models import ActionResult, SweepReport

if TYPE_CHECKING:
    from .host import Host

__all__ = ["ActionHandler", "ActionTx", "Sweeper", "next_due", "task_actions"]

logger = logging.getLogger("agentcomm")

ActionHandler = Callable[[Any, "ActionTx"], Any]


def next_due(recurrence: str, previous: float, now: float, catch_up: str) -> float:
    """The next occurrence after one due at `previous`; occurrences missed up to `now` are
    coalesced into one due now (`"once"`) or skipped (`"skip"`)."""
    nxt = float(croniter(recurrence, datetime.fromtimestamp(previous, tz=UTC)).get_next(float))
    if nxt > now:
        return nxt
    if catch_up == "once":
        return now
    return float(croniter(recurrence, datetime.fromtimestamp(now, tz=UTC)).get_next(float))


class ActionTx:
    """What an action handler may do, inside the host's transaction (see
    `Host.register_action`)."""

    def __init__(self, host: Host, conn: sqlite3.Connection) -> None:
        self._host = host
        self._conn = conn

    def schedule(
        self,
        data: Any,
        *,
        kind: str = "task",
        at: float | None = None,
        recurrence: str | None = None,
        trigger: bool = True,
        catch_up: Literal["once", "skip"] = "once",
    ) -> str:
        """Schedule a message for the sandbox (like `Host.send`); returns its id, which is
        also the series id of a recurring task. Raises ActionRejected for bad arguments."""
        try:
            kind = check_kind(kind)
            raw = encode("data", data)
        except (ValidationError, EncodeError) as exc:
            raise ActionRejected(str(exc)) from None
        if recurrence is not None and (
            not isinstance(recurrence, str) or not croniter.is_valid(recurrence)
        ):
            raise ActionRejected(f"{recurrence!r} is not a valid cron expression.")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
            raise ActionRejected(f"at must be epoch seconds, not {at!r}.")
        if catch_up not in ("once", "skip"):
            raise ActionRejected(f"catch_up must be 'once' or 'skip', not {catch_up!r}.")
        now = time.time()
        if at is not None:
            due = float(at)
        elif recurrence is not None:
            due = float(croniter(recurrence, datetime.fromtimestamp(now, tz=UTC)).get_next(float))
        else:
            due = now
        mid = new_id()
        self._host._insert_row(
            self._conn,
            {
                "id": mid, "kind": kind, "role": "message", "data": raw, "created_at": now,
                "process_after": due, "trigger": int(bool(trigger)), "in_reply_to": None,
                "idempotency_key": None, "recurrence": recurrence,
                "catch_up": catch_up if recurrence is not None else None, "origin": None,
            },
        )  # fmt: skip
        return mid

    def cancel_task(self, series_id: str) -> bool:
        """Cancel a recurring task (see `Host.cancel_task`)."""
        return self.series("cancel", series_id)

    def pause_task(self, series_id: str) -> bool:
        """Pause a recurring task (see `Host.pause_task`)."""
        return self.series("pause", series_id)

    def resume_task(self, series_id: str) -> bool:
        """Resume a paused recurring task (see `Host.resume_task`)."""
        return self.series("resume", series_id)

    def series(self, op: Literal["cancel", "pause", "resume"], series_id: str) -> bool:
        """Apply `op` to the live occurrence of `series_id`; False when there is none."""
        now = time.time()
        if op == "cancel":
            sql = (
                "UPDATE messages_in SET state = 'cancelled', reason = 'cancelled by the host',"
                " done_at = ? WHERE series_id = ? AND state IN ('pending', 'paused')"
            )
            args: tuple[Any, ...] = (now, series_id)
        elif op == "pause":
            sql = (
                "UPDATE messages_in SET state = 'paused' WHERE series_id = ? AND state = 'pending'"
            )
            args = (series_id,)
        else:
            # an occurrence that came due while paused is due at once (its time has passed)
            sql = (
                "UPDATE messages_in SET state = 'pending' WHERE series_id = ? AND state = 'paused'"
            )
            args = (series_id,)
        return self._conn.execute(sql, args).rowcount > 0


def task_actions() -> dict[str, ActionHandler]:
    """Ready-made handlers for the usual system actions, to pass to `Host.register_action`:
    `schedule_task` (args: `prompt` or `data`, optional `cron`, `at`, `kind`), `cancel_task`,
    `pause_task`, `resume_task` (args: `series_id`)."""

    def schedule(args: Any, tx: ActionTx) -> dict[str, str]:
        if not isinstance(args, dict):
            raise ActionRejected("schedule_task takes an object of arguments.")
        data = args.get("data", {"prompt": args.get("prompt")})
        mid = tx.schedule(
            data, kind=args.get("kind", "task"), at=args.get("at"), recurrence=args.get("cron")
        )
        return {"id": mid, "series_id": mid}

    def on_series(op: Literal["cancel", "pause", "resume"]) -> ActionHandler:
        def handler(args: Any, tx: ActionTx) -> dict[str, bool]:
            sid = args.get("series_id") if isinstance(args, dict) else None
            if not isinstance(sid, str):
                raise ActionRejected(f"{op}_task needs a series_id.")
            if not tx.series(op, sid):
                raise ActionRejected(f"No live task {sid!r} to {op}.")
            return {"ok": True}

        return handler

    return {
        "schedule_task": schedule,
        "cancel_task": on_series("cancel"),
        "pause_task": on_series("pause"),
        "resume_task": on_series("resume"),
    }


class Sweeper:
    """The host's pass over both files; `run` is called on the host's database thread."""

    def __init__(self, host: Host) -> None:
        self._host = host
        #: Whether the last run wrote anything (the host then wakes the sandbox).
        self.wrote = False

    def run(self, conn: sqlite3.Connection, now: float, full: bool) -> SweepReport:
        """One pass; `full` also looks for stale claims and counts due messages."""
        host = self._host
        store = host._need_store()
        run_id, age = host._heartbeat()
        alive = age is not None and age < host._stale_after
        acked: list[tuple[Any, ...]] = []
        actions: list[tuple[str, int, bytes]] = []
        due = 0
        if store.attach_peer(conn):
            # pending rows the sandbox has acked (claimed, completed or failed)
            acked = conn.execute(
                "SELECT m.id, m.tries, m.recurrence, m.catch_up, m.process_after, m.series_id,"
                " a.try, a.status, a.reason, a.run, a.at FROM messages_in m"
                " JOIN peer.acks a ON a.message_id = m.id WHERE m.state = 'pending'"
                " ORDER BY m.seq, a.try"
            ).fetchall()
            actions = conn.execute(
                "SELECT o.id, o.seq, o.data FROM peer.messages_out o WHERE o.kind = 'action'"
                " AND NOT EXISTS (SELECT 1 FROM main.deliveries d WHERE d.out_id = o.id)"
                " ORDER BY o.seq LIMIT 1000"
            ).fetchall()
            peer_max = conn.execute("SELECT max(seq) FROM peer.messages_out").fetchone()[0]
            host._saw(peer_max)
            if full and not alive:
                due = conn.execute(
                    "SELECT count(*) FROM messages_in m WHERE m.state = 'pending'"
                    " AND m.role = 'message' AND m.trigger = 1 AND m.process_after <= ?"
                    " AND NOT EXISTS (SELECT 1 FROM peer.acks a WHERE a.message_id = m.id"
                    " AND a.try = m.tries)",
                    (now,),
                ).fetchone()[0]
        elif full and not alive:
            due = conn.execute(
                "SELECT count(*) FROM messages_in WHERE state = 'pending' AND role = 'message'"
                " AND trigger = 1 AND process_after <= ?",
                (now,),
            ).fetchone()[0]
        by_id: dict[str, list[tuple[Any, ...]]] = {}
        for row in acked:
            by_id.setdefault(row[0], []).append(row)
        retried: list[str] = []
        failed: list[str] = []
        rescheduled: list[str] = []
        self.wrote = False
        if not by_id and not actions:
            return SweepReport(
                retried=retried, failed=failed, rescheduled=rescheduled, alive=alive,
                heartbeat_age=age, due_while_down=due,
            )  # fmt: skip
        with store.transaction(conn):
            for mid, rows in by_id.items():
                _, tries, recurrence, catch_up, due_at = rows[0][:5]
                current = next((r for r in rows if r[6] == tries), None)
                if any(r[7] == "completed" for r in rows):
                    self._finish(conn, mid, "completed", None, now)
                elif current is not None and current[7] == "failed":
                    self._finish(conn, mid, "failed", current[8], now)
                    failed.append(mid)
                elif (
                    full
                    and current is not None
                    and current[7] == "processing"
                    and (current[9] != run_id or not alive)
                ):
                    claims = tries + 1
                    why = (
                        "the sandbox run that claimed it has ended" if current[9] != run_id
                        else f"no sandbox heartbeat for {age:.1f} s" if age is not None
                        else "no sandbox heartbeat"
                    )  # fmt: skip
                    if claims < host._max_tries:
                        delay = host._retry_base * 2 ** (claims - 1)
                        conn.execute(
                            "UPDATE messages_in SET tries = ?, process_after = ?, reason = ?"
                            " WHERE id = ?",
                            (claims, now + delay, f"retry {claims}: {why}", mid),
                        )
                        retried.append(mid)
                        self.wrote = True
                        continue
                    self._finish(conn, mid, "failed", f"gave up after {claims} tries: {why}", now)
                    failed.append(mid)
                else:
                    continue
                self.wrote = True
                if recurrence is not None:
                    nxt = self._next_occurrence(conn, mid, recurrence, due_at, now, catch_up)
                    if nxt is not None:
                        rescheduled.append(nxt)
            for action_id, seq, raw in actions:
                host._saw(seq)
                self._apply_action(conn, action_id, raw, now)
                self.wrote = True
        return SweepReport(
            retried=retried, failed=failed, rescheduled=rescheduled, alive=alive,
            heartbeat_age=age, due_while_down=due,
        )  # fmt: skip

    def _finish(
        self, conn: sqlite3.Connection, mid: str, state: str, reason: str | None, now: float
    ) -> None:
        conn.execute(
            "UPDATE messages_in SET state = ?, reason = coalesce(?, reason), done_at = ?"
            " WHERE id = ? AND state = 'pending'",
            (state, reason if state == "failed" else None, now, mid),
        )
        if state == "completed":
            conn.execute("UPDATE messages_in SET reason = NULL WHERE id = ?", (mid,))

    def _next_occurrence(
        self,
        conn: sqlite3.Connection,
        mid: str,
        recurrence: str,
        due_at: float,
        now: float,
        catch_up: str | None,
    ) -> str | None:
        row = conn.execute(
            "SELECT kind, data, trigger, series_id, origin FROM messages_in WHERE id = ?", (mid,)
        ).fetchone()
        live = conn.execute(
            "SELECT 1 FROM messages_in WHERE series_id = ? AND state IN ('pending', 'paused')",
            (row[3],),
        ).fetchone()
        if live is not None:  # never two live occurrences of one series
            return None
        nid = new_id()
        self._host._insert_row(
            conn,
            {
                "id": nid, "kind": row[0], "role": "message", "data": row[1], "created_at": now,
                "process_after": next_due(recurrence, due_at, now, catch_up or "once"),
                "trigger": row[2], "in_reply_to": None, "idempotency_key": None,
                "recurrence": recurrence, "catch_up": catch_up, "origin": row[4],
                "series_id": row[3],
            },
        )  # fmt: skip
        return nid

    def _apply_action(
        self, conn: sqlite3.Connection, action_id: str, raw: bytes, now: float
    ) -> None:
        host = self._host
        try:
            request = decode(raw)
            name = request.get("name") if isinstance(request, dict) else None
            args = request.get("args") if isinstance(request, dict) else None
        except (ValueError, TypeError):
            name, args = None, None
        handler = host._actions.get(name) if isinstance(name, str) else None
        if handler is None:
            result = ActionResult(
                status="rejected",
                reason=f"unknown action {name!r}: the host registered no handler for it",
            )
        else:
            conn.execute("SAVEPOINT action")
            try:
                value = handler(args, ActionTx(host, conn))
                encode("result", value)
                result = ActionResult(status="applied", result=value)
            except ActionRejected as exc:
                result = ActionResult(status="rejected", reason=str(exc))
            except Exception as exc:  # a handler's bug must not stop the sweep
                logger.warning("agentcomm sandbox: action %r failed", name, exc_info=True)
                result = ActionResult(status="rejected", reason=f"the handler failed: {exc!r}")
            if result.status == "rejected":
                conn.execute("ROLLBACK TO action")
            conn.execute("RELEASE action")
        host._insert_row(
            conn,
            {
                "id": new_id(), "kind": "action_result", "role": "result",
                "data": encode("result", result), "created_at": now, "process_after": now,
                "trigger": 0, "in_reply_to": action_id, "idempotency_key": None,
                "recurrence": None, "catch_up": None, "origin": None,
            },
        )  # fmt: skip
        conn.execute(
            "INSERT OR IGNORE INTO deliveries (out_id, status, reason, at) VALUES (?, ?, ?, ?)",
            (action_id, "delivered" if result.status == "applied" else "failed", result.reason,
             now),
        )  # fmt: skip
