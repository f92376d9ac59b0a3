"""Mailboxes on Redis: agents, messages, request / reply slots and schedules, each operation
one call of the `MAILBOX` script (`mailbox_lua.py`, which lists the keys).

A message is stored as a hash: the fields the script reads, and one msgpack blob (`Body`) of
everything it never looks into. Replies travel to the waiting hub by pub/sub (the backend's
listener hands them to `deliver_reply`), so a requester usually needs no round trip to fetch
its reply. Messages do the same for a receive that waits (`claim_waiting`): the sender's
script leases the message to the waiting hub and sends it there whole (`deliver`), so the
receiver needs no claim after its wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any

import msgspec

from ..._codec import decode_metadata, decode_payload
from ..._errors import BackendError, UnknownAgent, ValidationError
from ..._ids import new_id
from ..._models import AgentInfo, DeadLetter, MailboxStats, PendingInfo, ScheduleInfo
from ..._notify import Listener
from ..._records import (
    PENDING_STATE_NAMES,
    Claimed,
    NewMessage,
    PeekRecord,
    ScheduleSpec,
    Settle,
    SettleKind,
    State,
    StoredMessage,
    StoredReply,
    failed_reply,
)
from ..._ref_records import ref_id_in
from ..._scheduling import next_occurrence, scheduled_message
from ..._settings import Retention
from ..common import (
    REPLY_GRACE,
    log_dead_letter,
    log_lease_expired,
    mail_channel,
    reply_channel,
)
from ..contracts import MailboxStore
from .mailbox_lua import MAILBOX
from .scripts import Scripts, num, opt_float

_PRUNE_BATCH = 10_000
#: Seconds a reply slot read by pub/sub waits to be dropped with the others read meanwhile
#: (one script call for many requests instead of one each).
_DROP_DELAY = 0.05
_DROP_BATCH = 1_000

logger = logging.getLogger("agentcomm")

#: What a stored value that cannot be decoded may raise while it is turned into a record.
_UNDECODABLE = (
    msgspec.DecodeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    BackendError,
)

_reply_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(StoredReply)
_spec_decoder = msgspec.msgpack.Decoder(ScheduleSpec)


def decode_reply(blob: bytes) -> StoredReply:
    """A reply slot's content: a `StoredReply` (msgpack), or the failure the mailbox script
    wrote when the request was dead-lettered or expired (see mailbox_lua_functions.py)."""
    if blob[:2] != b"\0F":
        return _reply_decoder.decode(blob)
    state, attempts, recipient, message_id, at, reason = blob[2:].split(b"\0", 5)
    return failed_reply(
        message_id.decode(), recipient.decode(), int(attempts), reason.decode(errors="replace"),
        float(at), expired=state == b"4",
    )  # fmt: skip


def _log_events(events: Sequence[bytes]) -> None:
    """Log what a script reports: lease expiries and dead letters (see `events` in the Lua)."""
    for event in events:
        kind, agent, message_id, attempt, last = event.decode(errors="replace").split("\0", 4)
        if kind == "R":
            log_lease_expired(agent, message_id, attempt, last)
        else:
            log_dead_letter(agent, message_id, last, attempt)


def _opt_num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class Body(msgspec.Struct, array_like=True):
    """What a stored message keeps in one blob: everything the scripts never look into.

    A message a script builds itself (a pool send) is encoded by the Lua `message_body` of
    `mailbox_lua_functions.py`, which writes these fields in this order: keep them in step.
    """

    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    data: bytes
    data_kind: int
    metadata: bytes | None
    enqueued_at: float
    expires_at: float | None
    max_attempts: int
    correlation_id: str | None
    reply_to: str | None


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(Body)


def _message_args(m: NewMessage) -> tuple[str, bytes]:
    """The header (the fields the scripts read, NUL-separated: the reference the payload holds,
    if any, and the idempotency key last, as it may hold any character) and the body of one
    message."""
    header = "\0".join(
        (
            m.id, m.sender, m.recipient, str(int(m.priority)), num(m.visible_at),
            _opt_num(m.expires_at), str(int(m.max_attempts)), _opt_num(m.dedupe_until),
            m.correlation_id or "", _opt_num(m.request_deadline),
            ref_id_in(m.data, m.data_kind) or "", m.idempotency_key or "",
        )
    )  # fmt: skip
    body = Body(
        m.id, m.sender, m.recipient, m.type, int(m.priority), m.data, int(m.data_kind),
        m.metadata, m.enqueued_at, m.expires_at, int(m.max_attempts), m.correlation_id,
        m.reply_to,
    )  # fmt: skip
    return header, _body_encoder.encode(body)


def _stored(sid: bytes, attempt: int, blob: bytes, lease_until: float) -> StoredMessage:
    """A claimed message from the claim script's sid, attempt and body."""
    b = _body_decoder.decode(blob)
    return StoredMessage(
        int(sid), b.id, b.sender, b.recipient, b.type, b.priority, b.data, b.data_kind,
        b.metadata, int(attempt), b.max_attempts, b.enqueued_at, lease_until, b.correlation_id,
        b.reply_to,
    )  # fmt: skip


def _why(exc: BaseException) -> str:
    return f"undecodable: {type(exc).__name__}: {exc}"


def _number(value: bytes | None, default: float = 0.0) -> float:
    """A stored number, or `default` when it is missing or damaged."""
    try:
        return default if value is None else float(value)
    except ValueError:
        return default


def _pending(r: list[Any], agent: str) -> PendingInfo:
    """From the pending script's sid, state, attempt, visible_at, body, the original size of
    the blob the payload refers to (if it does) and id; an entry that cannot be decoded is
    listed with its error as its type."""
    try:
        return _decoded_pending(r)
    except _UNDECODABLE as exc:
        return PendingInfo(
            id=(r[6] or r[0]).decode(errors="replace"), sender="", recipient=agent,
            type=_why(exc), priority=0, state="undecodable", attempt=int(_number(r[2])),
            enqueued_at=0.0, visible_at=_number(r[3]), expires_at=None, size=0,
        )  # fmt: skip


def _decoded_pending(r: list[Any]) -> PendingInfo:
    b = _body_decoder.decode(r[4])
    size = len(b.data) if r[5] is None else int(r[5])
    return PendingInfo(
        id=b.id, sender=b.sender, recipient=b.recipient, type=b.type, priority=b.priority,
        state=PENDING_STATE_NAMES[State(int(r[1]))], attempt=int(r[2]), enqueued_at=b.enqueued_at,
        visible_at=float(r[3]), expires_at=b.expires_at, size=size,
    )  # fmt: skip


def _peeked(r: list[Any], agent: str) -> PeekRecord:
    """From the pending script's row (see `_pending`): the description and the payload; an
    entry that cannot be decoded has its error and no payload."""
    info = _pending(r, agent)
    try:
        b = _body_decoder.decode(r[4])
    except _UNDECODABLE as exc:
        return PeekRecord(info, 0, None, b"", 0, None, error=_why(exc))
    return PeekRecord(info, b.max_attempts, b.correlation_id, b.data, b.data_kind, b.metadata)


def _dead_letter(r: list[Any], agent: str) -> DeadLetter:
    """From the dead script's reason, attempts, finish time, body and id; one that cannot be
    decoded is listed with its error in its reason and no data."""
    try:
        return _decoded_dead_letter(r)
    except _UNDECODABLE as exc:
        reason = (r[0] or b"").decode(errors="replace")
        return DeadLetter(
            id=(r[4] or b"?").decode(errors="replace"), sender="", recipient=agent, type="",
            reason=f"{reason} ({_why(exc)})" if reason else _why(exc),
            attempts=int(_number(r[1])), enqueued_at=0.0, dead_at=_number(r[2]), data=None,
            metadata={}, error=_why(exc),
        )  # fmt: skip


def _decoded_dead_letter(r: list[Any]) -> DeadLetter:
    b = _body_decoder.decode(r[3])
    return DeadLetter(
        id=b.id, sender=b.sender, recipient=b.recipient, type=b.type,
        reason=(r[0] or b"").decode(), attempts=int(r[1]), enqueued_at=b.enqueued_at,
        dead_at=float(r[2]), data=decode_payload(b.data, b.data_kind),
        metadata=decode_metadata(b.metadata),
    )  # fmt: skip


def _agent_info(name: bytes, created: bytes, seen: bytes | None, active: bytes | None) -> AgentInfo:
    at = _number(created)
    last_active = None if active is None else _number(active)
    return AgentInfo(name.decode(), at, _number(seen, at), last_active)


def _settle_arg(op: Settle) -> str:
    return f"{int(op.kind)}\0{op.seq:016d}\0{int(op.attempt)}\0{op.until!r}\0{op.reason}"


def parse_delivery(payload: bytes) -> tuple[str, float, list[tuple[bytes, int, bytes]]]:
    """A delivery of the script's `deliver`: the agent, the lease end, and the sid, attempt and
    body of each message (`agent NUL lease_until NUL count`, then `NUL sid NUL attempt NUL
    length NUL body` for each)."""
    agent, lease_until, count, rest = payload.split(b"\0", 3)
    out = []
    pos = 0
    for _ in range(int(count)):
        sid_end = rest.index(b"\0", pos)
        att_end = rest.index(b"\0", sid_end + 1)
        len_end = rest.index(b"\0", att_end + 1)
        size = int(rest[att_end + 1 : len_end])
        body = rest[len_end + 1 : len_end + 1 + size]
        out.append((rest[pos:sid_end], int(rest[sid_end + 1 : att_end]), body))
        pos = len_end + 2 + size
    return agent.decode(), float(lease_until), out


class _Waiter:
    """A receive of this hub waiting in `claim_waiting`: its listener, and the delivery the
    backend's listener handed it (`RedisMailboxes.deliver`)."""

    __slots__ = ("delivery", "listener")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.delivery: bytes | None = None


class RedisMailboxes(MailboxStore):
    """Agents, mailboxes, replies and schedules on Redis."""

    def __init__(self, scripts: Scripts, retention: Retention) -> None:
        self._scripts = scripts
        self._script = scripts.register(MAILBOX)
        self._retention = retention
        self._notify = scripts.notifier.notify
        # requests of this hub waiting for a reply, and replies that came by pub/sub
        self._awaiting: dict[str, float] = {}  # correlation id -> request deadline
        self._inbox: dict[str, bytes] = {}
        self._cleanup: set[asyncio.Task[Any]] = set()
        self._drops: list[str] = []  # reply slots to drop, by `_drop_slots`
        self._dropper: asyncio.Task[None] | None = None
        # receives of this hub waiting for an agent's next message, first come first served
        self._waiters: dict[str, deque[_Waiter]] = {}
        #: whether waiting receives register for deliveries (off when the hub may not
        #: subscribe to its own channel)
        self.deliveries = True

    async def _mail(self, op: str, now: float, *args: Any, token: str | None = None) -> Any:
        return await self._scripts.run(self._script, op, now, args, token)

    def _bare(self, op: str, now: float, *args: Any, token: str | None = None) -> Awaitable[Any]:
        """A hot op: its result alone; the caller notifies this hub's waiters."""
        return self._scripts.call(self._script, op, now, args, token)

    def deliver_reply(self, correlation_id: str, reply: bytes) -> None:
        """A reply that came by pub/sub: kept for `take_reply` if this hub awaits it."""
        if correlation_id in self._awaiting:
            self._inbox[correlation_id] = reply
            self._notify((reply_channel(correlation_id),))

    def deliver(self, payload: bytes) -> None:
        """Messages the script leased to this hub for a waiting receive (see `deliver` in
        mailbox_lua_functions.py): handed to the first receive still waiting for that agent,
        else given back at once."""
        agent = payload[: payload.index(b"\0")].decode()
        waiters = self._waiters.get(agent)
        if not waiters:
            self._give_back(payload)
            return
        waiter = waiters.popleft()  # leaves the queue with its delivery: it gets one only
        waiter.delivery = payload
        waiter.listener.fire()

    def _give_back(self, payload: bytes) -> None:
        """Release delivered messages no receive took (it left meanwhile), in the background."""
        agent, _, messages = parse_delivery(payload)
        ops = [Settle(SettleKind.RELEASE, agent, int(sid), att) for sid, att, _ in messages]
        task = asyncio.get_running_loop().create_task(self._release_quietly(ops))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _release_quietly(self, ops: list[Settle]) -> None:
        # a failure leaves them leased: they are delivered again when their lease ends
        with contextlib.suppress(BackendError):
            await self.release(ops, now=time.time())

    def pending_cleanup(self) -> set[asyncio.Task[Any]]:
        """The reply slots still being dropped (a prune pass drops those never finished)."""
        return set(self._cleanup)

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        created = await self._mail("register", now, name)
        return AgentInfo(name, float(created), now)

    async def list_agents(self) -> list[AgentInfo]:
        s = self._scripts
        async with s.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(s.prefix + "agents")
            pipe.hgetall(s.prefix + "seen")
            pipe.hgetall(s.prefix + "active")
            created, seen, active = await s.command(pipe.execute())
        return sorted(
            (
                _agent_info(name, at, seen.get(name), active.get(name))
                for name, at in created.items()
            ),
            key=lambda a: a.name,
        )

    async def get_agent(self, name: str) -> AgentInfo | None:
        s = self._scripts
        async with s.client.pipeline(transaction=True) as pipe:
            pipe.hget(s.prefix + "agents", name)
            pipe.hget(s.prefix + "seen", name)
            pipe.hget(s.prefix + "active", name)
            created, seen, active = await s.command(pipe.execute())
        return None if created is None else _agent_info(name.encode(), created, seen, active)

    async def touch_agent(self, name: str, *, seen: float, active: float | None) -> None:
        await self._mail("touch", seen, name, "" if active is None else num(active))

    # --- mailboxes -----------------------------------------------------------------------------

    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        args: list[Any] = [b"1" if auto_register else b"0"]
        for m in messages:
            args += _message_args(m)
        for m in messages:
            if m.request_deadline is not None and m.correlation_id is not None:
                self._awaiting[m.correlation_id] = m.request_deadline
        # the token: the first message's id, new for every call (see `Scripts.call`)
        result = await self._bare("enqueue", now, *args, token=messages[0].id)
        if isinstance(result, bytes):
            raise UnknownAgent(result.decode())
        deduplicated, quiet, mine = result
        for payload in mine:  # delivered to receives of this hub waiting for them
            self.deliver(payload)
        # the recipients whose messages all went to waiting receives have nothing to wake for
        skip = {r.decode() for r in quiet}
        self._notify({mail_channel(m.recipient) for m in messages if m.recipient not in skip})
        ids = [m.id for m in messages]
        for i in range(0, len(deduplicated), 2):  # the deduplicated ones: position, first id
            ids[int(deduplicated[i]) - 1] = deduplicated[i + 1].decode()
        return ids

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        return await self._claim(agent, max_messages, lease, now, None)

    async def claim_waiting(
        self,
        agent: str,
        *,
        max_messages: int,
        lease: float,
        now: float,
        wait: float,
        also: tuple[str, ...] = (),
    ) -> Claimed:
        """`claim`; when nothing is ready, wait up to `wait` seconds for a message delivered to
        this receive by the sender's script (`deliver`), or for a wake-up of the agent's
        mailbox or of a channel of `also` (after which the caller claims again)."""
        if wait <= 0 or not self.deliveries:
            return await self._claim(agent, max_messages, lease, now, None)
        waiter = _Waiter(self._scripts.notifier.listen(mail_channel(agent), *also))
        waiters = self._waiters.setdefault(agent, deque())
        waiters.append(waiter)
        taken = False  # whether this receive returns the delivery handed to it
        try:
            claimed = await self._claim(agent, max_messages, lease, now, now + wait)
            if not claimed.messages:
                if waiter.delivery is None:
                    if claimed.next_wake is not None:
                        wait = min(wait, max(claimed.next_wake - now, 0.0) + 0.001)
                    await waiter.listener.wait(wait)
                if waiter.delivery is not None:
                    claimed = await self._delivered(waiter.delivery, now)
                    taken = True
            return claimed
        finally:
            waiter.listener.close()
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._waiters.get(agent) is waiters:
                del self._waiters[agent]
            # cancelled as it came, or it came for an earlier registration as the claim
            # found messages: back to the mailbox
            if waiter.delivery is not None and not taken:
                self._give_back(waiter.delivery)

    async def _delivered(self, payload: bytes, now: float) -> Claimed:
        agent, lease_until, flat = parse_delivery(payload)
        messages, buried = [], []
        for sid, attempt, body in flat:
            try:
                messages.append(_stored(sid, attempt, body, lease_until))
            except _UNDECODABLE as exc:  # never delivered: a dead letter saying why
                buried += [sid, attempt, _why(exc)]
        await self._bury(agent, buried, now)
        return Claimed(messages, None)

    async def _claim(
        self, agent: str, max_messages: int, lease: float, now: float, wait_until: float | None
    ) -> Claimed:
        if not 0 < lease < math.inf:
            raise ValidationError("lease must be a finite number of seconds > 0.")
        lease_until = now + lease
        args: tuple[Any, ...] = (agent, num(lease_until), max_messages)
        if wait_until is not None:
            # one registration per waiting receive (its task), so each gets a delivery
            args += (num(wait_until), num(lease), f"{id(asyncio.current_task()):x}")
        flat = await self._bare("claim", now, *args)
        head = flat[0]  # the next wake-up, then what to log
        if len(head) > 1:
            _log_events(head[1:])
        messages, buried = [], []
        for i in range(1, len(flat), 3):
            try:
                messages.append(_stored(flat[i], flat[i + 1], flat[i + 2], lease_until))
            except _UNDECODABLE as exc:  # never delivered: a dead letter saying why
                buried += [flat[i], flat[i + 1], _why(exc)]
        await self._bury(agent, buried, now)
        return Claimed(messages, opt_float(head[0]))

    async def _bury(self, agent: str, buried: list[Any], now: float) -> None:
        if buried:
            logger.warning(
                "agentcomm: %d message(s) for %r cannot be decoded; moved to its dead letters",
                len(buried) // 3, agent,
            )  # fmt: skip
            await self._mail("bury", now, agent, *buried)

    async def settle(self, op: Settle, *, now: float) -> bool:
        return (await self.settle_many((op,), now=now))[0]

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        keep = b"1" if self._retention.acked > 0 else b"0"
        results, events = await self._bare("settle", now, keep, *[_settle_arg(op) for op in ops])
        if events:
            _log_events(events)
        nacked = {mail_channel(op.recipient) for op in ops if op.kind == SettleKind.NACK}
        if nacked:  # a waiter may need to re-arm its timer for the retry
            self._notify(nacked)
        return [bool(r) for r in results]

    async def release(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        results = await self._mail("release", now, *(_settle_arg(op) for op in ops), token=new_id())
        return [bool(r) for r in results]

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        ready, delayed, in_flight, dead = await self._mail("box_stats", 0.0, agent)
        return MailboxStats(agent, ready, delayed, in_flight, dead)

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        rows = await self._mail("pending", 0.0, agent, limit)
        infos = ((_pending(r, agent), r[0]) for r in rows)
        ranked = sorted(infos, key=lambda p: (-p[0].priority, p[1]))
        return [info for info, _ in ranked[:limit]]

    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        rows = await self._mail("dead", 0.0, agent, limit)
        return [_dead_letter(r, agent) for r in rows]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        selection = ["0"] if ids is None else ["1", *ids]
        count: int = await self._mail("requeue", now, agent, *selection, token=new_id())
        return count

    # --- operators -----------------------------------------------------------------------------

    async def peek(self, agent: str, *, limit: int) -> list[PeekRecord]:
        rows = await self._mail("pending", 0.0, agent, limit)
        peeked = ((_peeked(r, agent), r[0]) for r in rows)
        ranked = sorted(peeked, key=lambda p: (-p[0].info.priority, p[1]))
        return [record for record, _ in ranked[:limit]]

    async def delete_message(self, agent: str, message_id: str, *, now: float) -> bool:
        return bool(await self._mail("delete", now, agent, message_id, token=new_id()))

    async def purge(self, agent: str, *, dead: bool, now: float) -> int:
        return int(await self._mail("purge", now, agent, 1 if dead else 0, token=new_id()))

    async def remove_agent(self, name: str, *, now: float) -> bool:
        # the schedules that send to it: their specs are read here (the script cannot decode
        # them); one added between this read and the script is kept
        ids = []
        for blob, _, _, sched_id in await self._mail("sched_list", 0.0):
            try:
                if blob is not None and _spec_decoder.decode(blob).recipient == name:
                    ids.append(sched_id)
            except _UNDECODABLE:
                continue  # kept, listed with its error, cancellable
        return bool(await self._mail("remove_agent", now, name, *ids, token=new_id()))

    # --- request / reply -----------------------------------------------------------------------

    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        keep = 1 if self._retention.acked > 0 else 0
        ref = ref_id_in(reply.data, reply.data_kind) or ""
        args = [keep, correlation_id, _reply_encoder.encode(reply), ref]
        if ack is not None:
            args.append(_settle_arg(ack))
        delivered = bool(await self._bare("reply", now, *args, token=new_id()))
        if delivered:
            self._notify((reply_channel(correlation_id),))
        return delivered

    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        blob = self._inbox.pop(correlation_id, None)
        if blob is not None:
            # it came by pub/sub: the slot is removed off the requester's path, with the
            # others read meanwhile (and by a prune pass if this fails)
            self._awaiting.pop(correlation_id, None)
            self._drops.append(correlation_id)
            if self._dropper is None:
                task = self._dropper = asyncio.get_running_loop().create_task(self._drop_slots())
                self._cleanup.add(task)
                task.add_done_callback(self._cleanup.discard)
            return decode_reply(blob)
        blob = await self._bare("take", 0.0, correlation_id, 1 if abandon else 0, token=new_id())
        if blob is not None or abandon:
            self._awaiting.pop(correlation_id, None)
            self._inbox.pop(correlation_id, None)
        return None if blob is None else decode_reply(blob)

    async def take_reply_waiting(self, correlation_id: str, *, wait: float) -> StoredReply | None:
        """`take_reply`, after waiting up to `wait` seconds for the reply to come by pub/sub
        (then taking it needs no round trip)."""
        if wait > 0 and correlation_id not in self._inbox:
            with self._scripts.notifier.listen(reply_channel(correlation_id)) as listener:
                if correlation_id not in self._inbox:
                    await listener.wait(wait)
        return await self.take_reply(correlation_id, abandon=False)

    async def request_attempts(self, correlation_id: str) -> int:
        return int(await self._mail("attempts", 0.0, correlation_id))

    async def _drop_slots(self) -> None:
        try:
            await asyncio.sleep(_DROP_DELAY)
        finally:
            cids, self._drops, self._dropper = self._drops, [], None
        for i in range(0, len(cids), _DROP_BATCH):
            with contextlib.suppress(BackendError):
                await self._bare("drop", 0.0, *cids[i : i + _DROP_BATCH])

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        unknown = await self._mail(
            "sched_add", spec.created_at, 1 if auto_register else 0, spec.id,
            msgspec.msgpack.encode(spec), num(spec.next_run), spec.recipient,
            ref_id_in(spec.data, spec.data_kind) or "", token=spec.id,
        )  # fmt: skip
        if unknown is not None:
            raise UnknownAgent(unknown.decode())

    async def cancel_schedule(self, schedule_id: str) -> bool:
        return bool(await self._mail("sched_cancel", 0.0, schedule_id, token=new_id()))

    async def list_schedules(self) -> list[ScheduleInfo]:
        out = []
        for blob, next_run, runs, sched_id in await self._mail("sched_list", 0.0):
            if blob is None:
                continue
            try:
                s = _spec_decoder.decode(blob)
                info = ScheduleInfo(
                    s.id, s.sender, s.recipient, s.type, s.cron, s.every, float(next_run),
                    int(runs or 0),
                )  # fmt: skip
            except _UNDECODABLE as exc:  # listed with its error, and cancellable by its id
                info = ScheduleInfo(
                    sched_id.decode(errors="replace"), "", "", "", None, None,
                    _number(next_run, math.inf), int(_number(runs)), error=_why(exc),
                )  # fmt: skip
            out.append(info)
        return out

    async def fire_due(self, now: float) -> float | None:
        due, first = await self._mail("sched_due", now)
        if not due:
            return opt_float(first)
        args: list[Any] = []
        bad: list[bytes] = []
        for sched_id, next_run, blob in due:
            if blob is None:
                continue
            try:
                spec = _spec_decoder.decode(blob)
                upcoming = next_occurrence(spec.cron, spec.every, float(next_run), now)
                fire = [sched_id, next_run, num(upcoming)]
                fire += _message_args(scheduled_message(spec, now))
            except (*_UNDECODABLE, ValidationError) as exc:  # one bad schedule stops no other
                logger.warning(
                    "agentcomm: schedule %s cannot be decoded or fired (%s); it stays listed "
                    "and cancellable but never fires",
                    sched_id.decode(errors="replace"), exc,
                )  # fmt: skip
                bad.append(sched_id)
                continue
            args += fire
        if bad:
            await self._mail("sched_park", now, *bad)
        return opt_float(await self._mail("sched_fire", now, *args))

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> tuple[int, int, int, int, int]:
        """One retention pass: (expired, dead, pruned, dedupe keys, reply slots)."""
        r = self._retention
        report = await self._mail(
            "prune", now, num(r.acked), num(r.expired), num(r.dead), _PRUNE_BATCH
        )
        # requests abandoned without a last look (their task was cancelled)
        for cid in [c for c, deadline in self._awaiting.items() if deadline + REPLY_GRACE <= now]:
            del self._awaiting[cid]
            self._inbox.pop(cid, None)
        if report[5]:
            _log_events(report[5])
        expired, dead, pruned, dedupe, requests = (int(x) for x in report[:5])
        return expired, dead, pruned, dedupe, requests
