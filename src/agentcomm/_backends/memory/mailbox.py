"""Mailboxes in memory: agents, messages, request / reply slots and schedules.

Each mailbox keeps a heap of ready messages and a heap of timers (delayed messages and
leases); a heap entry whose row moved on since is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence

from ..._codec import decode_metadata, decode_payload
from ..._errors import UnknownAgent
from ..._models import (
    AgentInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
)
from ..._records import (
    PENDING_STATE_NAMES,
    Claimed,
    DataKind,
    NewMessage,
    NewTopicRecord,
    PeekRecord,
    ScheduleSpec,
    Settle,
    SettleKind,
    State,
    StoredMessage,
    StoredReply,
    TopicRecord,
    failed_reply,
)
from ..._scheduling import next_occurrence, scheduled_message
from ..._settings import Retention
from ..._subjects import TOPICS_CHANNEL, topic_channel
from ..common import (
    DEAD_NOTICE_TYPE,
    REPLY_GRACE,
    SCHEDULES_CHANNEL,
    SYSTEM_ORIGIN,
    dead_notice,
    dead_topic,
    expired_reason,
    final_nack_reason,
    lease_expired_reason,
    log_dead_letter,
    log_lease_expired,
    mail_channel,
    reply_channel,
)
from ..contracts import MailboxStore
from .references import RefHolds
from .transactions import Transactions

logger = logging.getLogger("agentcomm")


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


class _Slot:
    """A request's reply slot: until when it lives, the reply once posted, and the attempt
    of the request's latest delivery."""

    __slots__ = ("attempts", "deadline", "reply")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reply: StoredReply | None = None
        self.attempts = 0


class _Schedule:
    __slots__ = ("error", "runs", "spec")

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.runs = 0
        self.error: str | None = None  # set when it cannot be fired: parked until cancelled


class MailboxState:
    """The agents, messages, reply slots, schedules and event counters of one memory store."""

    __slots__ = ("agents", "boxes", "counters", "dedupe", "requests", "rows", "schedules", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.agents: dict[str, AgentInfo] = {}
        self.rows: dict[int, _Row] = {}
        self.boxes: dict[str, _Mailbox] = {}
        self.dedupe: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.requests: dict[str, _Slot] = {}  # by correlation id
        self.schedules: dict[str, _Schedule] = {}
        self.counters: dict[str, int] = dict.fromkeys(HubStats.__struct_fields__, 0)


class MemoryMailboxes(MailboxStore):
    """The mailbox part of the backend contract in memory."""

    def __init__(
        self, state: MailboxState, txn: Transactions, holds: RefHolds, retention: Retention
    ) -> None:
        self._state = state
        self._txn = txn
        self._holds = holds
        self._retention = retention
        #: Appends a record to the topic log under the store's lock (set by the backend).
        self.announce: Callable[[NewTopicRecord, float], TopicRecord] | None = None

    # --- row states (the caller holds the store's lock) ------------------------------------------

    def _mailbox(self, agent: str) -> _Mailbox:
        boxes = self._state.boxes
        box = boxes.get(agent)
        if box is None:
            box = boxes[agent] = _Mailbox()
        return box

    def _make_ready(self, row: _Row) -> None:
        row.state = State.READY
        heapq.heappush(self._mailbox(row.msg.recipient).ready, (-row.msg.priority, row.seq))

    def _set_timer(self, row: _Row, state: State, at: float) -> None:
        row.state = state
        row.visible_at = at
        heapq.heappush(self._mailbox(row.msg.recipient).timers, (at, row.seq))

    def _finish(
        self, row: _Row, state: State, now: float, touched: set[str], reason: str = ""
    ) -> None:
        row.state = state
        row.finished_at = now
        row.dead_reason = reason
        counters = self._state.counters
        if state == State.DEAD:
            counters["dead_lettered"] += 1
            self._ended(row, now, touched, reason)
            return  # a dead letter can be requeued: it holds its payload until pruned
        if state == State.EXPIRED:
            counters["expired"] += 1
            if row.msg.correlation_id is not None:
                self._fail_request(row, now, touched, expired_reason(row.attempt), True)
        self._holds.drop(row.msg.data, row.msg.data_kind)

    def _ended(self, row: _Row, now: float, touched: set[str], reason: str) -> None:
        """A message was dead-lettered: fail its request, announce it, log it."""
        m = row.msg
        if m.correlation_id is not None:
            self._fail_request(row, now, touched, reason, False)
        if self.announce is not None:
            notice = dead_notice(
                m.id, m.sender, m.recipient, m.type, reason, row.attempt, m.correlation_id
            )
            topic = dead_topic(m.recipient)
            self.announce(
                NewTopicRecord(topic, m.recipient, DEAD_NOTICE_TYPE, notice, DataKind.JSON,
                               None, now, SYSTEM_ORIGIN),
                now,
            )  # fmt: skip
            touched.add(TOPICS_CHANNEL)
            touched.add(topic_channel(topic))
        log_dead_letter(m.recipient, m.id, reason, row.attempt)

    def _fail_request(
        self, row: _Row, now: float, touched: set[str], reason: str, expired: bool
    ) -> None:
        cid = row.msg.correlation_id
        assert cid is not None
        slot = self._state.requests.get(cid)
        if slot is not None and slot.reply is None:
            m = row.msg
            slot.reply = failed_reply(m.id, m.recipient, row.attempt, reason, now, expired)
            touched.add(reply_channel(cid))

    def _fire_timers(self, box: _Mailbox, now: float, touched: set[str]) -> None:
        rows = self._state.rows
        timers = box.timers
        while timers and timers[0][0] <= now:
            at, seq = heapq.heappop(timers)
            row = rows.get(seq)
            if row is None or row.visible_at != at:
                continue
            if row.state == State.DELAYED:
                self._make_ready(row)
            elif row.state == State.IN_FLIGHT:
                if row.attempt >= row.msg.max_attempts:
                    reason = lease_expired_reason(row.attempt, row.msg.max_attempts)
                    self._finish(row, State.DEAD, now, touched, reason)
                else:
                    log_lease_expired(
                        row.msg.recipient, row.msg.id, row.attempt, row.msg.max_attempts
                    )
                    self._make_ready(row)

    def _next_wake(self, box: _Mailbox) -> float | None:
        rows = self._state.rows
        timers = box.timers
        while timers:
            at, seq = timers[0]
            row = rows.get(seq)
            if (
                row is not None
                and row.visible_at == at
                and row.state in (State.DELAYED, State.IN_FLIGHT)
            ):
                return at
            heapq.heappop(timers)
        return None

    def register_missing(self, recipient: str, auto_register: bool, now: float) -> None:
        """Register `recipient` if unknown, or raise UnknownAgent unless `auto_register`."""
        agents = self._state.agents
        if recipient not in agents:
            if not auto_register:
                raise UnknownAgent(recipient)
            agents[recipient] = AgentInfo(recipient, now, now)

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        def op(touched: set[str]) -> AgentInfo:
            agents = self._state.agents
            old = agents.get(name)
            if old is None:
                info = AgentInfo(name, now, now)
            else:
                info = AgentInfo(name, old.created_at, now, old.last_active)
            agents[name] = info
            return info

        return self._txn.run(op)

    async def list_agents(self) -> list[AgentInfo]:
        with self._txn.lock:
            return sorted(self._state.agents.values(), key=lambda a: a.name)

    async def get_agent(self, name: str) -> AgentInfo | None:
        with self._txn.lock:
            return self._state.agents.get(name)

    async def touch_agent(self, name: str, *, seen: float, active: float | None) -> None:
        with self._txn.lock:
            agents = self._state.agents
            old = agents.get(name)
            if old is not None:
                last_active = old.last_active if active is None else active
                agents[name] = AgentInfo(name, old.created_at, seen, last_active)

    # --- mailboxes -----------------------------------------------------------------------------

    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        return self._txn.run(lambda touched: self.enqueue_in(messages, auto_register, now, touched))

    def enqueue_in(
        self, messages: Sequence[NewMessage], auto_register: bool, now: float, touched: set[str]
    ) -> list[str]:
        """Store messages; the caller holds the store's lock (`enqueue`, pool sends)."""
        st = self._state
        for recipient in {m.recipient for m in messages}:
            self.register_missing(recipient, auto_register, now)
        ids: list[str] = []
        for m in messages:
            if m.idempotency_key is not None:
                key = (m.sender, m.recipient, m.idempotency_key)
                seen = st.dedupe.get(key)
                if seen is not None and seen[1] > now:
                    ids.append(seen[0])
                    st.counters["deduplicated"] += 1
                    continue
                st.dedupe[key] = (m.id, m.dedupe_until or now)
            st.seq += 1
            row = _Row(st.seq, m, State.READY)
            st.rows[row.seq] = row
            self._holds.hold(m.data, m.data_kind)
            if m.visible_at > now:
                self._set_timer(row, State.DELAYED, m.visible_at)
            else:
                self._make_ready(row)
            if m.request_deadline is not None and m.correlation_id is not None:
                st.requests[m.correlation_id] = _Slot(m.request_deadline)
            st.counters["sent"] += 1
            touched.add(mail_channel(m.recipient))
            ids.append(m.id)
        return ids

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        def op(touched: set[str]) -> Claimed:
            rows = self._state.rows
            box = self._state.boxes.get(agent)
            if box is None:
                return Claimed([], None)
            self._fire_timers(box, now, touched)
            out: list[StoredMessage] = []
            ready = box.ready
            while ready and len(out) < max_messages:
                _, seq = heapq.heappop(ready)
                row = rows.get(seq)
                if row is None or row.state != State.READY:
                    continue
                m = row.msg
                if m.expires_at is not None and m.expires_at <= now:
                    self._finish(row, State.EXPIRED, now, touched)
                    continue
                row.attempt += 1
                self._set_timer(row, State.IN_FLIGHT, now + lease)
                if m.correlation_id is not None:
                    slot = self._state.requests.get(m.correlation_id)
                    if slot is not None:
                        slot.attempts = row.attempt
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
            return Claimed(out, self._next_wake(box))

        return self._txn.run(op)

    def _settle(self, op: Settle, now: float, touched: set[str]) -> bool:
        rows = self._state.rows
        row = rows.get(op.seq)
        if row is None or row.attempt != op.attempt:
            return False
        if row.state not in (State.IN_FLIGHT, State.READY):
            return False
        if op.kind == SettleKind.ACK:
            if self._retention.acked > 0:
                self._finish(row, State.ACKED, now, touched)
            else:
                del rows[op.seq]
                self._holds.drop(row.msg.data, row.msg.data_kind)
        elif op.kind == SettleKind.EXTEND:
            if row.state != State.IN_FLIGHT:
                return False
            self._set_timer(row, State.IN_FLIGHT, op.until)
        elif op.kind == SettleKind.DEAD:
            self._finish(row, State.DEAD, now, touched, op.reason)
        elif row.attempt >= row.msg.max_attempts:  # NACK with attempts used up
            reason = op.reason or final_nack_reason(row.attempt)
            self._finish(row, State.DEAD, now, touched, reason)
        elif op.until > now:
            self._set_timer(row, State.DELAYED, op.until)
        else:
            self._make_ready(row)
            touched.add(mail_channel(row.msg.recipient))
        if op.kind == SettleKind.NACK:
            # the waiter may need to re-arm its timer for the retry
            touched.add(mail_channel(row.msg.recipient))
        return True

    async def settle(self, op: Settle, *, now: float) -> bool:
        return self._txn.run(lambda touched: self._settle(op, now, touched))

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        return self._txn.run(lambda touched: [self._settle(o, now, touched) for o in ops])

    async def release(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        def op(touched: set[str]) -> list[bool]:
            rows = self._state.rows
            out = []
            for o in ops:
                row = rows.get(o.seq)
                if row is None or row.attempt != o.attempt or row.state != State.IN_FLIGHT:
                    out.append(False)
                    continue
                row.attempt -= 1  # this delivery does not count
                self._make_ready(row)
                touched.add(mail_channel(row.msg.recipient))
                out.append(True)
            return out

        return self._txn.run(op)

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        counts = dict.fromkeys(State, 0)
        with self._txn.lock:
            for row in self._state.rows.values():
                if row.msg.recipient == agent:
                    counts[row.state] += 1
        return MailboxStats(
            agent, counts[State.READY], counts[State.DELAYED], counts[State.IN_FLIGHT],
            counts[State.DEAD],
        )  # fmt: skip

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        with self._txn.lock:
            rows = [
                r
                for r in self._state.rows.values()
                if r.msg.recipient == agent and r.state in PENDING_STATE_NAMES
            ]
        rows.sort(key=lambda r: (-r.msg.priority, r.seq))
        with self._txn.lock:
            sizes = [self._holds.size_of(r.msg.data, r.msg.data_kind) for r in rows[:limit]]
        return [_pending_info(r, size) for r, size in zip(rows, sizes, strict=False)]

    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        with self._txn.lock:
            rows = [
                r
                for r in self._state.rows.values()
                if r.msg.recipient == agent and r.state == State.DEAD
            ]
        rows.sort(key=lambda r: r.seq)
        return [_dead_letter(r) for r in rows[:limit]]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        wanted = None if ids is None else set(ids)

        def op(touched: set[str]) -> int:
            count = 0
            for row in list(self._state.rows.values()):
                if row.msg.recipient != agent or row.state != State.DEAD:
                    continue
                if wanted is not None and row.msg.id not in wanted:
                    continue
                row.attempt = 0
                row.dead_reason = ""
                if row.msg.expires_at is not None and row.msg.expires_at <= now:
                    row.msg.expires_at = None  # a requeue is an explicit decision to deliver
                self._make_ready(row)
                count += 1
            if count:
                touched.add(mail_channel(agent))
            return count

        return self._txn.run(op)

    # --- operators -----------------------------------------------------------------------------

    async def peek(self, agent: str, *, limit: int) -> list[PeekRecord]:
        with self._txn.lock:
            rows = [
                r
                for r in self._state.rows.values()
                if r.msg.recipient == agent and r.state in PENDING_STATE_NAMES
            ]
            rows.sort(key=lambda r: (-r.msg.priority, r.seq))
            rows = rows[:limit]
            sizes = [self._holds.size_of(r.msg.data, r.msg.data_kind) for r in rows]
        return [
            PeekRecord(
                _pending_info(r, size),
                r.msg.max_attempts,
                r.msg.correlation_id,
                r.msg.data,
                r.msg.data_kind,
                r.msg.metadata,
            )
            for r, size in zip(rows, sizes, strict=True)
        ]

    def _remove(self, rows: list[_Row], touched: set[str]) -> int:
        """Remove rows still holding their payload (ready, delayed, in flight or dead); the
        caller holds the store's lock."""
        for row in rows:
            del self._state.rows[row.seq]
            self._holds.drop(row.msg.data, row.msg.data_kind)
            touched.add(mail_channel(row.msg.recipient))
        return len(rows)

    def _held_rows(self, agent: str, dead: bool) -> list[_Row]:
        states = {State.READY, State.DELAYED, State.IN_FLIGHT}
        if dead:
            states.add(State.DEAD)
        return [
            r for r in self._state.rows.values() if r.msg.recipient == agent and r.state in states
        ]

    async def delete_message(self, agent: str, message_id: str, *, now: float) -> bool:
        def op(touched: set[str]) -> bool:
            rows = [r for r in self._held_rows(agent, True) if r.msg.id == message_id]
            return self._remove(rows, touched) > 0

        return self._txn.run(op)

    async def purge(self, agent: str, *, dead: bool, now: float) -> int:
        return self._txn.run(lambda touched: self._remove(self._held_rows(agent, dead), touched))

    async def remove_agent(self, name: str, *, now: float) -> bool:
        def op(touched: set[str]) -> bool:
            st = self._state
            if st.agents.pop(name, None) is None:
                return False
            self._remove(self._held_rows(name, True), touched)
            for seq in [s for s, r in st.rows.items() if r.msg.recipient == name]:
                del st.rows[seq]  # acked or expired: they released their payload already
            st.boxes.pop(name, None)
            for sid, sched in list(st.schedules.items()):
                try:
                    recipient = sched.spec.recipient
                except AttributeError:  # a spec that is not one: kept, cancellable
                    continue
                if recipient == name:
                    del st.schedules[sid]
                    self._holds.drop(sched.spec.data, sched.spec.data_kind)
                    touched.add(SCHEDULES_CHANNEL)
            touched.add(mail_channel(name))
            return True

        return self._txn.run(op)

    # --- request / reply -----------------------------------------------------------------------

    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        def op(touched: set[str]) -> bool:
            st = self._state
            if ack is not None:
                self._settle(ack, now, touched)
            slot = st.requests.get(correlation_id)
            if slot is None or slot.reply is not None:
                st.counters["late_replies"] += 1
                return False
            slot.reply = reply
            self._holds.hold(reply.data, reply.data_kind)
            touched.add(reply_channel(correlation_id))
            return True

        return self._txn.run(op)

    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        def op(touched: set[str]) -> StoredReply | None:
            requests = self._state.requests
            slot = requests.get(correlation_id)
            if slot is None:
                return None
            if slot.reply is not None or abandon:
                del requests[correlation_id]
            return slot.reply

        return self._txn.run(op)

    async def request_attempts(self, correlation_id: str) -> int:
        with self._txn.lock:
            slot = self._state.requests.get(correlation_id)
            return 0 if slot is None else slot.attempts

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        def op(touched: set[str]) -> None:
            self.register_missing(spec.recipient, auto_register, spec.created_at)
            self._state.schedules[spec.id] = _Schedule(spec)
            self._holds.hold(spec.data, spec.data_kind)
            touched.add(SCHEDULES_CHANNEL)

        self._txn.run(op)

    async def cancel_schedule(self, schedule_id: str) -> bool:
        def op(touched: set[str]) -> bool:
            gone = self._state.schedules.pop(schedule_id, None)
            if gone is not None:
                try:
                    held = (gone.spec.data, gone.spec.data_kind)
                except AttributeError:  # a spec that is not one: what it held is unknown
                    held = None
                if held is not None:
                    self._holds.drop(*held)
                touched.add(SCHEDULES_CHANNEL)
            return gone is not None

        return self._txn.run(op)

    async def list_schedules(self) -> list[ScheduleInfo]:
        with self._txn.lock:
            items = [_schedule_info(sid, s) for sid, s in self._state.schedules.items()]
        return sorted(items, key=lambda s: s.next_run)

    async def fire_due(self, now: float) -> float | None:
        def op(touched: set[str]) -> float | None:
            st = self._state
            upcoming = []
            for sid, sched in list(st.schedules.items()):
                if sched.error is not None:
                    continue
                try:
                    nxt = self._fire(sched, now, touched)
                except Exception as exc:  # one bad schedule must not stop the others
                    _park(sid, sched, exc)
                    st.counters["undecodable"] += 1
                    continue
                upcoming.append(nxt)
            return min(upcoming, default=None)

        return self._txn.run(op)

    def _fire(self, sched: _Schedule, now: float, touched: set[str]) -> float:
        """Fire `sched` if due; its next run. Raises, changing nothing, if it cannot be fired."""
        spec = sched.spec
        if spec.next_run > now:
            return spec.next_run
        upcoming = next_occurrence(spec.cron, spec.every, spec.next_run, now)
        if not math.isfinite(upcoming) or upcoming <= now:
            raise ValueError(f"its next run would be {upcoming!r}")
        msg = scheduled_message(spec, now)
        st = self._state
        st.seq += 1
        row = _Row(st.seq, msg, State.READY)
        st.rows[row.seq] = row
        self._holds.hold(msg.data, msg.data_kind)
        self._make_ready(row)
        spec.next_run = upcoming
        sched.runs += 1
        st.counters["scheduled_runs"] += 1
        st.counters["sent"] += 1
        touched.add(mail_channel(spec.recipient))
        return upcoming

    # --- housekeeping (called by the core) -----------------------------------------------------

    def prune_step(self, now: float, touched: set[str]) -> PruneReport:
        """Expire, dead-letter and delete messages, dedupe keys and reply slots as the
        retention policy says; the caller holds the store's lock."""
        st = self._state
        retention = self._retention
        expired = dead = pruned = 0
        for box in st.boxes.values():
            before = st.counters["dead_lettered"]
            self._fire_timers(box, now, touched)
            dead += st.counters["dead_lettered"] - before
        keep = {
            State.ACKED: retention.acked,
            State.EXPIRED: retention.expired,
            State.DEAD: retention.dead,
        }
        for seq, row in list(st.rows.items()):
            if row.state in (State.READY, State.DELAYED):
                exp = row.msg.expires_at
                if exp is not None and exp <= now:
                    self._finish(row, State.EXPIRED, now, touched)
                    expired += 1
            elif row.state in keep and row.finished_at + keep[row.state] <= now:
                del st.rows[seq]
                pruned += 1
                if row.state == State.DEAD:
                    self._holds.drop(row.msg.data, row.msg.data_kind)
        stale_keys = [k for k, (_, until) in st.dedupe.items() if until <= now]
        for k in stale_keys:
            del st.dedupe[k]
        stale_requests = [
            c for c, slot in st.requests.items() if slot.deadline + REPLY_GRACE <= now
        ]
        for c in stale_requests:
            reply = st.requests.pop(c).reply
            if reply is not None:  # a reply nobody took still held its payload's reference
                self._holds.drop(reply.data, reply.data_kind)
        return PruneReport(expired, dead, pruned, len(stale_keys), len(stale_requests))

    def hub_stats(self) -> HubStats:
        """The store's event counters."""
        with self._txn.lock:
            return HubStats(**self._state.counters)


def _schedule_info(sid: str, s: _Schedule) -> ScheduleInfo:
    try:
        sp = s.spec
        if s.error is None:
            return ScheduleInfo(sp.id, sp.sender, sp.recipient, sp.type, sp.cron, sp.every,
                                sp.next_run, s.runs)  # fmt: skip
        error = s.error
    except Exception as exc:  # a spec that was never checked: listed, not raised
        error = f"cannot be decoded or fired: {type(exc).__name__}: {exc}"
    return ScheduleInfo(sid, "", "", "", None, None, math.inf, s.runs, error)


def _park(sid: str, sched: _Schedule, exc: BaseException) -> None:
    sched.error = f"cannot be decoded or fired: {type(exc).__name__}: {exc}"
    logger.error(
        "Schedule %s %s. It is parked (never due again); cancel it with "
        "hub.cancel_schedule(%r) and create it anew.",
        sid,
        sched.error,
        sid,
    )


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
    try:
        data, metadata, error = (
            decode_payload(m.data, m.data_kind),
            decode_metadata(m.metadata),
            None,
        )
    except Exception as exc:  # one bad entry must not fail the listing
        data, metadata, error = None, {}, f"cannot be decoded: {type(exc).__name__}: {exc}"
    return DeadLetter(
        id=m.id,
        sender=m.sender,
        recipient=m.recipient,
        type=m.type,
        reason=row.dead_reason,
        attempts=row.attempt,
        enqueued_at=m.enqueued_at,
        dead_at=row.finished_at,
        data=data,
        metadata=metadata,
        error=error,
    )
