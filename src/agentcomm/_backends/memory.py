"""The in-memory backend: the whole contract on Python data structures, for tests and one process.

`memory://` gives a private store; `memory://<name>` a store shared by every hub of the process
that uses the same name (for as long as one of them is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from .._codec import decode_metadata, decode_payload
from .._errors import UnknownAgent
from .._models import (
    AgentInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
)
from .._notify import Notifier
from .._records import (
    PENDING_STATE_NAMES,
    Claimed,
    NewMessage,
    ScheduleSpec,
    Settle,
    SettleKind,
    State,
    StoredMessage,
    StoredReply,
)
from .._scheduling import next_occurrence, scheduled_message
from .._settings import Retention
from .common import REPLY_GRACE, SCHEDULES_CHANNEL, mail_channel, reply_channel
from .contracts import Backend, MailboxStore, ReferenceStore, SharedMemoryStore, TopicStore
from .memory_kv import MemorySharedMemory
from .memory_refs import MemoryReferences, ref_table
from .memory_topics import MemoryTopics

T = TypeVar("T")


class _Row:
    """One stored message and its delivery state."""

    __slots__ = ("attempt", "dead_reason", "finished_at", "msg", "seq", "state", "visible_at")

    def __init__(self, seq: int, msg: NewMessage, state: State) -> None:
        self.seq = seq
        self.msg = msg
        self.state = state
        self.attempt = 0
        self.visible_at = msg.visible_at
        self.finished_at = 0.0
        self.dead_reason = ""


class _Mailbox:
    __slots__ = ("ready", "timers")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int]] = []  # (-priority, seq)
        self.timers: list[tuple[float, int]] = []  # (visible_at, seq) of delayed and leased rows


class _Schedule:
    __slots__ = ("runs", "spec")

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.runs = 0


class MemoryStore:
    """The shared state behind one or more memory backends."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.seq = 0
        self.agents: dict[str, AgentInfo] = {}
        self.rows: dict[int, _Row] = {}
        self.mailboxes: dict[str, _Mailbox] = {}
        self.dedupe: dict[tuple[str, str, str], tuple[str, float]] = {}
        # correlation id -> [deadline, reply or None]
        self.requests: dict[str, tuple[float, StoredReply | None]] = {}
        self.schedules: dict[str, _Schedule] = {}
        self.counters: dict[str, int] = dict.fromkeys(HubStats.__struct_fields__, 0)
        self.backends: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


_named_stores: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_named_lock = threading.Lock()


def _store_for(name: str) -> MemoryStore:
    if not name:
        return MemoryStore()
    with _named_lock:
        store = _named_stores.get(name)
        if store is None:
            store = MemoryStore()
            _named_stores[name] = store
        return store


class MemoryBackend(
    MemoryReferences,
    MemoryTopics,
    MemorySharedMemory,
    MailboxStore,
    TopicStore,
    SharedMemoryStore,
    ReferenceStore,
    Backend,
):
    """Implements the backend contract in memory."""

    recheck_interval = 3600.0  # every change notifies every hub of the store directly

    def __init__(self, name: str, retention: Retention) -> None:
        self.retention = retention
        self.notifier = Notifier()
        self._store = _store_for(name)
        self._loop: asyncio.AbstractEventLoop | None = None
        # transitional: this object serves every feature until each has its own module
        self.mailboxes = self
        self.topics = self
        self.shared_memory = self
        self.references = self

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._store.backends.add(self)
        ref_table(self._store).strategy = self.ref_gc_strategy

    async def close(self) -> None:
        self._store.backends.discard(self)
        self.notifier.wake_all()

    # --- helpers -------------------------------------------------------------------------------

    def _run(self, fn: Callable[[MemoryStore, set[str]], T]) -> T:
        touched: set[str] = set()
        with self._store.lock:
            result = fn(self._store, touched)
        if touched:
            self._broadcast(touched)
        return result

    def _broadcast(self, channels: set[str]) -> None:
        current = self._loop
        for backend in list(self._store.backends):
            loop = backend._loop
            if loop is None or loop.is_closed():
                continue
            if loop is current:
                backend.notifier.notify(channels)
            else:
                # RuntimeError: that loop closed after the check; its hub is gone
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(backend.notifier.notify, set(channels))

    @staticmethod
    def _mailbox(store: MemoryStore, agent: str) -> _Mailbox:
        box = store.mailboxes.get(agent)
        if box is None:
            box = store.mailboxes[agent] = _Mailbox()
        return box

    @staticmethod
    def _make_ready(store: MemoryStore, row: _Row) -> None:
        row.state = State.READY
        box = MemoryBackend._mailbox(store, row.msg.recipient)
        heapq.heappush(box.ready, (-row.msg.priority, row.seq))

    @staticmethod
    def _set_timer(store: MemoryStore, row: _Row, state: State, at: float) -> None:
        row.state = state
        row.visible_at = at
        box = MemoryBackend._mailbox(store, row.msg.recipient)
        heapq.heappush(box.timers, (at, row.seq))

    @staticmethod
    def _finish(store: MemoryStore, row: _Row, state: State, now: float, reason: str = "") -> None:
        row.state = state
        row.finished_at = now
        row.dead_reason = reason
        if state == State.DEAD:
            store.counters["dead_lettered"] += 1
            return  # a dead letter can be requeued: it holds its payload until pruned
        if state == State.EXPIRED:
            store.counters["expired"] += 1
        ref_table(store).drop(row.msg.data, row.msg.data_kind)

    def _fire_timers(self, store: MemoryStore, box: _Mailbox, now: float) -> None:
        timers = box.timers
        while timers and timers[0][0] <= now:
            at, seq = heapq.heappop(timers)
            row = store.rows.get(seq)
            if row is None or row.visible_at != at:
                continue
            if row.state == State.DELAYED:
                self._make_ready(store, row)
            elif row.state == State.IN_FLIGHT:
                if row.attempt >= row.msg.max_attempts:
                    self._finish(
                        store,
                        row,
                        State.DEAD,
                        now,
                        f"lease expired on delivery {row.attempt} of {row.msg.max_attempts}",
                    )
                else:
                    self._make_ready(store, row)

    @staticmethod
    def _next_wake(store: MemoryStore, box: _Mailbox) -> float | None:
        timers = box.timers
        while timers:
            at, seq = timers[0]
            row = store.rows.get(seq)
            if (
                row is not None
                and row.visible_at == at
                and row.state
                in (
                    State.DELAYED,
                    State.IN_FLIGHT,
                )
            ):
                return at
            heapq.heappop(timers)
        return None

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        def op(store: MemoryStore, touched: set[str]) -> AgentInfo:
            old = store.agents.get(name)
            info = AgentInfo(name, old.created_at if old else now, now)
            store.agents[name] = info
            return info

        return self._run(op)

    async def list_agents(self) -> list[AgentInfo]:
        with self._store.lock:
            return sorted(self._store.agents.values(), key=lambda a: a.name)

    # --- mailboxes -----------------------------------------------------------------------------

    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        def op(store: MemoryStore, touched: set[str]) -> list[str]:
            for recipient in {m.recipient for m in messages}:
                if recipient not in store.agents:
                    if not auto_register:
                        raise UnknownAgent(recipient)
                    store.agents[recipient] = AgentInfo(recipient, now, now)
            ids: list[str] = []
            for m in messages:
                if m.idempotency_key is not None:
                    key = (m.sender, m.recipient, m.idempotency_key)
                    seen = store.dedupe.get(key)
                    if seen is not None and seen[1] > now:
                        ids.append(seen[0])
                        store.counters["deduplicated"] += 1
                        continue
                    store.dedupe[key] = (m.id, m.dedupe_until or now)
                store.seq += 1
                row = _Row(store.seq, m, State.READY)
                store.rows[row.seq] = row
                ref_table(store).hold(m.data, m.data_kind)
                if m.visible_at > now:
                    self._set_timer(store, row, State.DELAYED, m.visible_at)
                else:
                    self._make_ready(store, row)
                if m.request_deadline is not None and m.correlation_id is not None:
                    store.requests[m.correlation_id] = (m.request_deadline, None)
                store.counters["sent"] += 1
                touched.add(mail_channel(m.recipient))
                ids.append(m.id)
            return ids

        return self._run(op)

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        def op(store: MemoryStore, touched: set[str]) -> Claimed:
            box = store.mailboxes.get(agent)
            if box is None:
                return Claimed([], None)
            self._fire_timers(store, box, now)
            out: list[StoredMessage] = []
            ready = box.ready
            while ready and len(out) < max_messages:
                _, seq = heapq.heappop(ready)
                row = store.rows.get(seq)
                if row is None or row.state != State.READY:
                    continue
                m = row.msg
                if m.expires_at is not None and m.expires_at <= now:
                    self._finish(store, row, State.EXPIRED, now)
                    continue
                row.attempt += 1
                self._set_timer(store, row, State.IN_FLIGHT, now + lease)
                out.append(
                    StoredMessage(
                        seq=seq,
                        id=m.id,
                        sender=m.sender,
                        recipient=m.recipient,
                        type=m.type,
                        priority=m.priority,
                        data=m.data,
                        data_kind=m.data_kind,
                        metadata=m.metadata,
                        attempt=row.attempt,
                        max_attempts=m.max_attempts,
                        enqueued_at=m.enqueued_at,
                        lease_until=row.visible_at,
                        correlation_id=m.correlation_id,
                        reply_to=m.reply_to,
                    )
                )
            return Claimed(out, self._next_wake(store, box))

        return self._run(op)

    def _settle(self, store: MemoryStore, op: Settle, now: float, touched: set[str]) -> bool:
        row = store.rows.get(op.seq)
        if row is None or row.attempt != op.attempt:
            return False
        if row.state not in (State.IN_FLIGHT, State.READY):
            return False
        if op.kind == SettleKind.ACK:
            if self.retention.acked > 0:
                self._finish(store, row, State.ACKED, now)
            else:
                del store.rows[op.seq]
                ref_table(store).drop(row.msg.data, row.msg.data_kind)
        elif op.kind == SettleKind.EXTEND:
            if row.state != State.IN_FLIGHT:
                return False
            self._set_timer(store, row, State.IN_FLIGHT, op.until)
        elif op.kind == SettleKind.DEAD:
            self._finish(store, row, State.DEAD, now, op.reason)
        elif row.attempt >= row.msg.max_attempts:  # NACK with attempts used up
            self._finish(
                store, row, State.DEAD, now, op.reason or f"nacked on final delivery {row.attempt}"
            )
        elif op.until > now:
            self._set_timer(store, row, State.DELAYED, op.until)
        else:
            self._make_ready(store, row)
            touched.add(mail_channel(row.msg.recipient))
        if op.kind == SettleKind.NACK:
            # the waiter may need to re-arm its timer for the retry
            touched.add(mail_channel(row.msg.recipient))
        return True

    async def settle(self, op: Settle, *, now: float) -> bool:
        return self._run(lambda store, touched: self._settle(store, op, now, touched))

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        return self._run(lambda store, touched: [self._settle(store, o, now, touched) for o in ops])

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        counts = dict.fromkeys(State, 0)
        with self._store.lock:
            for row in self._store.rows.values():
                if row.msg.recipient == agent:
                    counts[row.state] += 1
        return MailboxStats(
            agent, counts[State.READY], counts[State.DELAYED], counts[State.IN_FLIGHT],
            counts[State.DEAD],
        )  # fmt: skip

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        with self._store.lock:
            rows = [
                r
                for r in self._store.rows.values()
                if r.msg.recipient == agent and r.state in PENDING_STATE_NAMES
            ]
        rows.sort(key=lambda r: (-r.msg.priority, r.seq))
        refs = ref_table(self._store)
        with self._store.lock:
            sizes = [refs.size_of(r.msg.data, r.msg.data_kind) for r in rows[:limit]]
        return [_pending_info(r, size) for r, size in zip(rows, sizes, strict=False)]

    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        with self._store.lock:
            rows = [
                r
                for r in self._store.rows.values()
                if r.msg.recipient == agent and r.state == State.DEAD
            ]
        rows.sort(key=lambda r: r.seq)
        return [_dead_letter(r) for r in rows[:limit]]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        wanted = None if ids is None else set(ids)

        def op(store: MemoryStore, touched: set[str]) -> int:
            count = 0
            for row in list(store.rows.values()):
                if row.msg.recipient != agent or row.state != State.DEAD:
                    continue
                if wanted is not None and row.msg.id not in wanted:
                    continue
                row.attempt = 0
                row.dead_reason = ""
                if row.msg.expires_at is not None and row.msg.expires_at <= now:
                    row.msg.expires_at = None  # a requeue is an explicit decision to deliver
                self._make_ready(store, row)
                count += 1
            if count:
                touched.add(mail_channel(agent))
            return count

        return self._run(op)

    # --- request / reply -----------------------------------------------------------------------

    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        def op(store: MemoryStore, touched: set[str]) -> bool:
            if ack is not None:
                self._settle(store, ack, now, touched)
            slot = store.requests.get(correlation_id)
            if slot is None or slot[1] is not None:
                store.counters["late_replies"] += 1
                return False
            store.requests[correlation_id] = (slot[0], reply)
            ref_table(store).hold(reply.data, reply.data_kind)
            touched.add(reply_channel(correlation_id))
            return True

        return self._run(op)

    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        def op(store: MemoryStore, touched: set[str]) -> StoredReply | None:
            slot = store.requests.get(correlation_id)
            if slot is None:
                return None
            if slot[1] is not None or abandon:
                del store.requests[correlation_id]
            return slot[1]

        return self._run(op)

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        def op(store: MemoryStore, touched: set[str]) -> None:
            if spec.recipient not in store.agents:
                if not auto_register:
                    raise UnknownAgent(spec.recipient)
                store.agents[spec.recipient] = AgentInfo(
                    spec.recipient, spec.created_at, spec.created_at
                )
            store.schedules[spec.id] = _Schedule(spec)
            ref_table(store).hold(spec.data, spec.data_kind)
            touched.add(SCHEDULES_CHANNEL)

        self._run(op)

    async def cancel_schedule(self, schedule_id: str) -> bool:
        def op(store: MemoryStore, touched: set[str]) -> bool:
            gone = store.schedules.pop(schedule_id, None)
            if gone is not None:
                ref_table(store).drop(gone.spec.data, gone.spec.data_kind)
                touched.add(SCHEDULES_CHANNEL)
            return gone is not None

        return self._run(op)

    async def list_schedules(self) -> list[ScheduleInfo]:
        with self._store.lock:
            items = [
                ScheduleInfo(
                    s.spec.id,
                    s.spec.sender,
                    s.spec.recipient,
                    s.spec.type,
                    s.spec.cron,
                    s.spec.every,
                    s.spec.next_run,
                    s.runs,
                )
                for s in self._store.schedules.values()
            ]
        return sorted(items, key=lambda s: s.next_run)

    async def fire_due(self, now: float) -> float | None:
        def op(store: MemoryStore, touched: set[str]) -> float | None:
            for sched in list(store.schedules.values()):
                spec = sched.spec
                if spec.next_run > now:
                    continue
                store.seq += 1
                msg = scheduled_message(spec, now)
                row = _Row(store.seq, msg, State.READY)
                store.rows[row.seq] = row
                ref_table(store).hold(msg.data, msg.data_kind)
                self._make_ready(store, row)
                spec.next_run = next_occurrence(spec.cron, spec.every, spec.next_run, now)
                sched.runs += 1
                store.counters["scheduled_runs"] += 1
                store.counters["sent"] += 1
                touched.add(mail_channel(spec.recipient))
            return min((s.spec.next_run for s in store.schedules.values()), default=None)

        return self._run(op)

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> PruneReport:
        retention = self.retention

        def op(store: MemoryStore, touched: set[str]) -> PruneReport:
            expired = dead = pruned = 0
            for box in store.mailboxes.values():
                before = store.counters["dead_lettered"]
                self._fire_timers(store, box, now)
                dead += store.counters["dead_lettered"] - before
            keep = {
                State.ACKED: retention.acked,
                State.EXPIRED: retention.expired,
                State.DEAD: retention.dead,
            }
            for seq, row in list(store.rows.items()):
                if row.state in (State.READY, State.DELAYED):
                    exp = row.msg.expires_at
                    if exp is not None and exp <= now:
                        self._finish(store, row, State.EXPIRED, now)
                        expired += 1
                elif row.state in keep and row.finished_at + keep[row.state] <= now:
                    del store.rows[seq]
                    pruned += 1
                    if row.state == State.DEAD:
                        ref_table(store).drop(row.msg.data, row.msg.data_kind)
            stale_keys = [k for k, (_, until) in store.dedupe.items() if until <= now]
            for k in stale_keys:
                del store.dedupe[k]
            stale_requests = [
                c for c, (deadline, _) in store.requests.items() if deadline + REPLY_GRACE <= now
            ]
            for c in stale_requests:
                reply = store.requests.pop(c)[1]
                if reply is not None:  # a reply nobody took still held its payload's reference
                    ref_table(store).drop(reply.data, reply.data_kind)
            topic_records = self._prune_topics(store, now)
            self._kv_prune_in(store, now, touched)
            return PruneReport(
                expired, dead, pruned, len(stale_keys), len(stale_requests), topic_records
            )

        return self._run(op)

    async def stats(self) -> HubStats:
        with self._store.lock:
            return HubStats(**self._store.counters)


def _pending_info(row: _Row, size: int) -> PendingInfo:
    m = row.msg
    return PendingInfo(
        id=m.id,
        sender=m.sender,
        recipient=m.recipient,
        type=m.type,
        priority=m.priority,
        state=PENDING_STATE_NAMES[row.state],
        attempt=row.attempt,
        enqueued_at=m.enqueued_at,
        visible_at=row.visible_at,
        expires_at=m.expires_at,
        size=size,
    )


def _dead_letter(row: _Row) -> DeadLetter:
    m = row.msg
    return DeadLetter(
        id=m.id,
        sender=m.sender,
        recipient=m.recipient,
        type=m.type,
        reason=row.dead_reason,
        attempts=row.attempt,
        enqueued_at=m.enqueued_at,
        dead_at=row.finished_at,
        data=decode_payload(m.data, m.data_kind),
        metadata=decode_metadata(m.metadata),
    )
