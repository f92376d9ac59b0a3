"""The rules of agent pools, once, over a backend's tables.

A backend that runs Python inside its transactions (memory under its lock, SQLite on its writer
thread) implements `PoolTables`, a handful of primitive reads and writes on its own storage, and
calls the operations here inside one transaction; Redis implements the same rules in Lua
(`redis/pools_lua.py`). Every operation appends its records, updates the state tables (members,
receipts, wakes, counters), enqueues into recipients' mailboxes and triggers matching wakes in
that one transaction, and no operation reads more of the log than it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from .._errors import NotAMember, NotFound, PoolConfigConflict, ValidationError
from .._pool_records import (
    ConfigSpec,
    FilterSpec,
    MemberRecord,
    NewPoolMessage,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from .._records import NewMessage
from .common import pool_channel

__all__ = [
    "KINDS",
    "POOL_WAKES_CHANNEL",
    "TRIGGERING_KINDS",
    "PoolRow",
    "PoolTables",
    "agent_conflict",
    "cancel_wake",
    "config_conflict",
    "emit",
    "expire_due",
    "join",
    "leave",
    "matches",
    "open_pool",
    "pool_metadata",
    "pool_missing",
    "send",
    "wait_for",
    "wake_missing",
]

#: Every kind of record a pool log holds.
KINDS = frozenset(
    {
        "opened", "member_joined", "member_left", "message", "event",
        "wake_registered", "wake_triggered", "wake_timed_out", "wake_cancelled",
    }
)  # fmt: skip
#: The kinds that can trigger a wake (a wake's own records never do).
TRIGGERING_KINDS = frozenset({"member_joined", "member_left", "message", "event"})
#: Notified when a wake with a deadline is registered, for the hubs' expiry loops.
POOL_WAKES_CHANNEL = "pool-wakes"
#: How many log records a replaying wake reads per step.
_REPLAY_PAGE = 500

_config_decoder = msgspec.json.Decoder(ConfigSpec)
_json = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(dict[str, Any])


class PoolRow(msgspec.Struct, gc=False):
    """A pool's own row: its config (encoded `ConfigSpec`), creation time and head sequence."""

    config: bytes
    created_at: float
    head: int


class PoolTables(Protocol):
    """The primitive reads and writes of one backend's pool tables, inside one transaction."""

    def pool(self, name: str) -> PoolRow | None:
        """The pool's row, or None."""

    def create_pool(self, name: str, config: bytes, now: float) -> None:
        """Insert the pool's row with head 0."""

    def set_head(self, name: str, head: int) -> None:
        """Move the pool's head sequence."""

    def bump(self, name: str, counter: str, n: int = 1) -> None:
        """Add `n` to one of the pool's counters."""

    def counters(self, name: str) -> dict[str, int]:
        """The pool's counters."""

    def member(self, pool: str, run: str) -> MemberRecord | None:
        """One member, or None."""

    def members(self, pool: str) -> list[MemberRecord]:
        """Every member, by run."""

    def members_of_agent(self, pool: str, agent: str) -> list[MemberRecord]:
        """The members running as `agent`, by run."""

    def members_of_topic(self, pool: str, topic: str) -> list[MemberRecord]:
        """The members holding `topic`, by run."""

    def put_member(self, pool: str, member: MemberRecord) -> None:
        """Insert or replace a member (and its topic index entries)."""

    def delete_member(self, pool: str, run: str) -> None:
        """Remove a member (and its topic index entries)."""

    def append(self, pool: str, record: StoredPoolRecord) -> None:
        """Store a log record (its seq is the new head)."""

    def page(self, pool: str, after: int, limit: int) -> list[StoredPoolRecord]:
        """Up to `limit` log records with seq > `after`, in order."""

    def receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        """A stored receipt by message id or by idempotency key."""

    def put_receipt(self, pool: str, receipt: ReceiptRecord, now: float) -> None:
        """Store a receipt (indexed by message id and, if any, idempotency key)."""

    def wake(self, pool: str, *, wake_id: str | None, key: str | None) -> WakeRecord | None:
        """A stored wake by id or idempotency key."""

    def put_wake(self, wake: WakeRecord) -> None:
        """Insert or update a wake (indexed by status, run and deadline)."""

    def pending_wakes(self, pool: str, run: str | None = None) -> list[WakeRecord]:
        """Registered wakes of the pool (of one run), oldest first."""

    def due_wakes(self, pool: str | None, now: float) -> list[WakeRecord]:
        """Registered wakes whose deadline is at or before `now` (of one pool, or all)."""

    def next_deadline(self) -> float | None:
        """The earliest deadline of a registered wake in any pool."""

    def deliver(self, messages: Sequence[NewMessage], now: float) -> None:
        """Enqueue messages into their recipients' mailboxes (registering them if needed)."""

    def register_agent(self, name: str, now: float) -> None:
        """Register an agent of the hub (a no-op if it exists)."""

    def notify(self, channel: str) -> None:
        """Notify `channel` once the transaction commits."""


# --- shared rules ---------------------------------------------------------------------------


def pool_metadata(user: bytes | None, pool: str, seq: int, sender: str, message_id: str) -> bytes:
    """The metadata of a pool message in a recipient's mailbox: the pool's keys, then the
    sender's own (which the feature layer keeps out of the `pool.` namespace)."""
    head = b"".join(
        (
            b'{"pool.name":', _json.encode(pool), b',"pool.seq":', str(seq).encode(),
            b',"pool.sender":', _json.encode(sender), b',"pool.message_id":',
            _json.encode(message_id),
        )
    )  # fmt: skip
    if user is None or user.strip() == b"{}":
        return head + b"}"
    return head + b"," + user.lstrip()[1:]


def _visible(config: ConfigSpec, member: MemberRecord | None) -> bool:
    if member is None or not config.observe_policy_refs:
        return True
    return set(config.observe_policy_refs).issubset(member.policy_refs)


def matches(f: FilterSpec, record: StoredPoolRecord, run: str | None) -> bool:
    """Whether `record` passes filter `f` for the waiting (or watching) `run`: every field that
    is set must hold; a record of a run lacking the pool's observe refs never matches."""
    if not record.visible:
        return False
    kind = record.kind
    if f.kinds is not None and kind not in f.kinds:
        return False
    if f.runs is not None and record.run not in f.runs:
        return False
    if f.senders is not None and (kind != "message" or record.run not in f.senders):
        return False
    if f.agents is not None and record.agent not in f.agents:
        return False
    if f.types is not None and record.type not in f.types:
        return False
    if f.topics is not None and (record.to_kind != "topic" or record.to_value not in f.topics):
        return False
    if f.to_me:
        receipt = record.receipt
        if kind != "message" or receipt is None or run not in receipt.delivered_to:
            return False
    if f.metadata is not None:
        have = _meta_decoder.decode(record.metadata) if record.metadata else {}
        for key, value in f.metadata.items():
            if key not in have or have[key] != value or type(have[key]) is not type(value):
                return False
    return True


# --- operations -----------------------------------------------------------------------------


def pool_missing(pool: str) -> NotFound:
    """The error of an operation on a pool that does not exist."""
    return NotFound(f"Pool {pool!r} does not exist: open it with `await hub.pool({pool!r})`.")


def config_conflict(pool: str, stored: bytes) -> PoolConfigConflict:
    """The error of opening a pool with a config other than its stored one."""
    have = _config_decoder.decode(stored)
    return PoolConfigConflict(
        f"Pool {pool!r} exists with another config ({have}); open it with that config "
        "or config=None, or use another pool name."
    )


def agent_conflict(pool: str, run: str, agent: str) -> ValidationError:
    """The error of joining run `run`, a member as `agent`, as another agent."""
    return ValidationError(
        f"Run {run!r} is a member of pool {pool!r} as agent {agent!r}; a run "
        "belongs to one agent: leave first, or use another run id."
    )


def wake_missing(pool: str, wake_id: str) -> NotFound:
    """The error of cancelling a wake the pool does not have."""
    return NotFound(f"Pool {pool!r} has no wake {wake_id!r}.")


def _require(t: PoolTables, pool: str) -> tuple[PoolRow, ConfigSpec]:
    row = t.pool(pool)
    if row is None:
        raise pool_missing(pool)
    return row, _config_decoder.decode(row.config)


def _append(t: PoolTables, pool: str, row: PoolRow, record: StoredPoolRecord) -> StoredPoolRecord:
    row.head = record.seq = row.head + 1
    t.set_head(pool, row.head)
    t.append(pool, record)
    t.notify(pool_channel(pool))
    return record


def _happened(
    t: PoolTables, pool: str, row: PoolRow, record: StoredPoolRecord, now: float
) -> StoredPoolRecord:
    """Append an event and trigger the registered wakes it matches."""
    _append(t, pool, row, record)
    for wake in t.pending_wakes(pool):
        if wake.registered_seq < record.seq and matches(wake.filter, record, wake.run):
            _finish_wake(t, row, wake, "triggered", now, trigger_seq=record.seq)
    return record


def _finish_wake(
    t: PoolTables,
    row: PoolRow,
    wake: WakeRecord,
    status: str,
    now: float,
    *,
    trigger_seq: int | None = None,
) -> None:
    wake.status = status
    wake.trigger_seq = trigger_seq
    wake.finished_at = now
    t.put_wake(wake)
    kind = {"triggered": "wake_triggered", "timed_out": "wake_timed_out"}.get(
        status, "wake_cancelled"
    )
    _append(
        t, wake.pool, row,
        StoredPoolRecord(0, kind, wake.run, now, wake_id=wake.id, trigger_seq=trigger_seq),
    )  # fmt: skip


def expire_due(t: PoolTables, pool: str | None, now: float) -> int:
    """Time out every registered wake whose deadline passed (of one pool, or of all)."""
    due = t.due_wakes(pool, now)
    rows: dict[str, PoolRow] = {}
    for wake in due:
        row = rows.get(wake.pool) or t.pool(wake.pool)
        if row is None:
            continue
        rows[wake.pool] = row
        _finish_wake(t, row, wake, "timed_out", now)
    return len(due)


def open_pool(t: PoolTables, name: str, config: bytes | None, default: bytes, now: float) -> bytes:
    """Create the pool (writing its `opened` record) or check the config it was created with;
    returns the stored config."""
    row = t.pool(name)
    if row is not None:
        if config is not None and config != row.config:
            raise config_conflict(name, row.config)
        return row.config
    stored = default if config is None else config
    t.create_pool(name, stored, now)
    row = PoolRow(stored, now, 0)
    _append(t, name, row, StoredPoolRecord(0, "opened", None, now, config=stored))
    return stored


def join(t: PoolTables, pool: str, member: MemberRecord, now: float) -> StoredPoolRecord:
    """Add (or update) a member, registering its run as an agent of the hub."""
    row, config = _require(t, pool)
    expire_due(t, pool, now)
    old = t.member(pool, member.run)
    if old is not None and old.agent != member.agent:
        raise agent_conflict(pool, member.run, old.agent)
    t.register_agent(member.run, now)
    t.put_member(pool, member)
    record = StoredPoolRecord(
        0, "member_joined", member.run, now, visible=_visible(config, member),
        agent=member.agent, topics=member.topics, policy_refs=member.policy_refs,
    )  # fmt: skip
    return _happened(t, pool, row, record, now)


def leave(t: PoolTables, pool: str, run: str, now: float) -> StoredPoolRecord:
    """Remove a member, cancelling its registered wakes first."""
    row, config = _require(t, pool)
    expire_due(t, pool, now)
    member = t.member(pool, run)
    if member is None:
        raise NotAMember(pool, run)
    for wake in t.pending_wakes(pool, run):
        _finish_wake(t, row, wake, "cancelled", now)
    t.delete_member(pool, run)
    record = StoredPoolRecord(
        0, "member_left", run, now, visible=_visible(config, member), agent=member.agent
    )
    return _happened(t, pool, row, record, now)


def _recipients(
    t: PoolTables, msg: NewPoolMessage, config: ConfigSpec
) -> tuple[list[MemberRecord], str | None]:
    kind, value = msg.to_kind, msg.to_value
    if kind == "run":
        one = t.member(msg.pool, value)
        found = [] if one is None else [one]
        what = f"run {value!r}"
    elif kind == "agent":
        found = t.members_of_agent(msg.pool, value)
        what = f"agent {value!r}"
    elif kind == "topic":
        found = t.members_of_topic(msg.pool, value)
        what = f"topic {value!r}"
    else:
        found = t.members(msg.pool)
        if not config.include_sender_in_broadcast:
            found = [m for m in found if m.run != msg.sender]
        what = "the pool"
    if not found:
        return [], f"no member matches {what}"
    needed = set(msg.policy_refs)
    allowed = [m for m in found if needed.issubset(m.policy_refs)]
    if not allowed:
        return [], (
            f"no member addressed by {what} holds every policy ref of the message "
            f"({', '.join(sorted(needed))})"
        )
    return allowed, None


def send(t: PoolTables, msg: NewPoolMessage, now: float) -> ReceiptRecord:
    """Address, deliver and record one pool message; a repeated idempotency key returns the
    first receipt (duplicate=True) and changes nothing but a counter."""
    pool = msg.pool
    row, config = _require(t, pool)
    expire_due(t, pool, now)
    sender = t.member(pool, msg.sender)
    if sender is None:
        raise NotAMember(pool, msg.sender)
    if msg.idempotency_key is not None:
        first = t.receipt(pool, message_id=None, key=msg.idempotency_key)
        if first is not None:
            t.bump(pool, "duplicates")
            first.duplicate = True
            return first
    recipients: list[MemberRecord] = []
    reason: str | None
    missing = sorted(set(config.required_policy_refs).difference(msg.policy_refs))
    if msg.expires_at is not None and msg.expires_at <= now:
        status, reason = "expired", "the message's ttl had passed when it was sent"
    elif missing:
        status, reason = "failed", f"the message lacks required policy refs: {', '.join(missing)}"
    else:
        recipients, reason = _recipients(t, msg, config)
        status = "failed" if reason is not None else "delivered"
    seq = row.head + 1
    runs = [m.run for m in recipients]
    if recipients:
        t.deliver(
            [
                NewMessage(
                    id=f"{msg.message_id}.{i}",
                    sender=msg.sender,
                    recipient=m.run,
                    type=msg.type,
                    priority=msg.priority,
                    data=msg.data,
                    data_kind=msg.data_kind,
                    metadata=pool_metadata(msg.metadata, pool, seq, msg.sender, msg.message_id),
                    enqueued_at=now,
                    visible_at=now,
                    expires_at=msg.expires_at,
                    max_attempts=msg.max_attempts,
                )
                for i, m in enumerate(recipients)
            ],
            now,
        )
    receipt = ReceiptRecord(msg.message_id, status, runs, seq, reason, msg.idempotency_key)
    t.put_receipt(pool, receipt, now)
    t.bump(pool, "messages")
    if status != "delivered":
        t.bump(pool, status)
    record = StoredPoolRecord(
        0, "message", msg.sender, now, visible=_visible(config, sender), agent=sender.agent,
        policy_refs=msg.policy_refs, message_id=msg.message_id, to_kind=msg.to_kind,
        to_value=msg.to_value, type=msg.type, data=msg.data, data_kind=msg.data_kind,
        metadata=msg.metadata, receipt=receipt,
    )  # fmt: skip
    _happened(t, pool, row, record, now)
    return receipt


def emit(
    t: PoolTables,
    pool: str,
    run: str,
    type: str,
    data: bytes,
    data_kind: int,
    metadata: bytes | None,
    now: float,
) -> StoredPoolRecord:
    """Record a custom event of a member run."""
    row, config = _require(t, pool)
    expire_due(t, pool, now)
    member = t.member(pool, run)
    if member is None:
        raise NotAMember(pool, run)
    t.bump(pool, "events")
    record = StoredPoolRecord(
        0, "event", run, now, visible=_visible(config, member), agent=member.agent, type=type,
        data=data, data_kind=data_kind, metadata=metadata,
    )  # fmt: skip
    return _happened(t, pool, row, record, now)


def wait_for(t: PoolTables, spec: WakeSpec, now: float) -> WakeRecord:
    """Register a wake (or return the one registered under the same idempotency key)."""
    pool = spec.pool
    row, _ = _require(t, pool)
    expire_due(t, pool, now)
    if spec.idempotency_key is not None:
        existing = t.wake(pool, wake_id=None, key=spec.idempotency_key)
        if existing is not None:
            return existing
    if t.member(pool, spec.run) is None:
        raise NotAMember(pool, spec.run)
    registered = _append(
        t, pool, row, StoredPoolRecord(0, "wake_registered", spec.run, now, wake_id=spec.id)
    )
    wake = WakeRecord(
        spec.id, pool, spec.run, spec.filter, spec.idempotency_key, spec.resume, "registered",
        spec.registered_at, spec.deadline, registered.seq,
    )  # fmt: skip
    t.put_wake(wake)
    if spec.replay:
        after = 0
        while wake.status == "registered":
            records = t.page(pool, after, _REPLAY_PAGE)
            for record in records:
                if record.seq >= registered.seq:
                    break
                if record.kind in TRIGGERING_KINDS and matches(spec.filter, record, spec.run):
                    _finish_wake(t, row, wake, "triggered", now, trigger_seq=record.seq)
                    break
            else:
                if len(records) == _REPLAY_PAGE:
                    after = records[-1].seq
                    continue
            break
    if wake.status == "registered" and wake.deadline is not None:
        if wake.deadline <= now:
            _finish_wake(t, row, wake, "timed_out", now)
        else:
            t.notify(POOL_WAKES_CHANNEL)
    return wake


def cancel_wake(t: PoolTables, pool: str, wake_id: str, now: float) -> bool:
    """Cancel a registered wake; False if it finished already (a trigger is never undone)."""
    row, _ = _require(t, pool)
    expire_due(t, pool, now)
    wake = t.wake(pool, wake_id=wake_id, key=None)
    if wake is None:
        raise wake_missing(pool, wake_id)
    if wake.status != "registered":
        return False
    _finish_wake(t, row, wake, "cancelled", now)
    return True
