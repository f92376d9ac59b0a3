"""The Redis backend: every hub on every machine that uses one Redis (and one prefix) shares
one store.

Each state change is one Lua script call (see `scripts.py`), atomic on the server. Waiters in
other hubs are woken through one pub/sub channel per prefix, which a background task of each
hub listens to; a re-check every `recheck_interval` seconds covers a wake-up lost while the
connection was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript

from ..._codec import decode_metadata, decode_payload
from ..._errors import BackendError, BackendUnavailable, ConfigurationError, UnknownAgent
from ..._ids import new_id
from ..._models import (
    AgentInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
)
from ..._notify import Notifier
from ..._records import (
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
from ..._ref_records import ref_id_in
from ..._scheduling import next_occurrence, scheduled_message
from ..._settings import Retention
from ..common import REPLY_GRACE, mail_channel, reply_channel
from ..contracts import Backend, MailboxStore, ReferenceStore, SharedMemoryStore, TopicStore
from . import scripts
from .errors import CLOSE_ERRORS, REDIS_ERRORS, redis_errors, text, translate
from .references import RedisReferences
from .shared_memory import RedisSharedMemory
from .topics import RedisTopics

_PREFIX = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_PRUNE_BATCH = 10_000
_LISTEN_BACKOFF_MAX = 1.0
_IDLE_PING = 30.0  # seconds without a wake-up before the listener checks its connection

_reply_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(StoredReply)
_spec_decoder = msgspec.msgpack.Decoder(ScheduleSpec)


def check_prefix(prefix: str) -> str:
    """A key prefix: 1-64 letters, digits or `_ . : @ -`."""
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ConfigurationError(
            f"Invalid Redis key prefix {prefix!r}: use 1-64 letters, digits or '_ . : @ -'."
        )
    return prefix


def _num(value: float) -> str:
    return repr(float(value))


def _opt_num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _opt_str(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _opt_float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


class Body(msgspec.Struct, array_like=True):
    """What a stored message keeps in one blob: everything the scripts never look into."""

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
            m.id, m.sender, m.recipient, str(int(m.priority)), _num(m.visible_at),
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


def _pending(r: list[Any]) -> PendingInfo:
    """From the pending script's sid, state, attempt, visible_at, body and the original size
    of the blob the payload refers to (if it does)."""
    b = _body_decoder.decode(r[4])
    size = len(b.data) if r[5] is None else int(r[5])
    return PendingInfo(
        id=b.id, sender=b.sender, recipient=b.recipient, type=b.type, priority=b.priority,
        state=PENDING_STATE_NAMES[State(int(r[1]))], attempt=int(r[2]), enqueued_at=b.enqueued_at,
        visible_at=float(r[3]), expires_at=b.expires_at, size=size,
    )  # fmt: skip


def _dead_letter(r: list[Any]) -> DeadLetter:
    """From the dead script's reason, attempts, finish time and body."""
    b = _body_decoder.decode(r[3])
    return DeadLetter(
        id=b.id, sender=b.sender, recipient=b.recipient, type=b.type,
        reason=(r[0] or b"").decode(), attempts=int(r[1]), enqueued_at=b.enqueued_at,
        dead_at=float(r[2]), data=decode_payload(b.data, b.data_kind),
        metadata=decode_metadata(b.metadata),
    )  # fmt: skip


def _settle_arg(op: Settle) -> str:
    return f"{int(op.kind)}\0{op.seq:016d}\0{int(op.attempt)}\0{op.until!r}\0{op.reason}"


class RedisBackend(
    RedisSharedMemory,
    RedisReferences,
    RedisTopics,
    MailboxStore,
    TopicStore,
    SharedMemoryStore,
    ReferenceStore,
    Backend,
):
    """Implements the backend contract on a Redis server (5.0 or newer)."""

    def __init__(
        self,
        url: str,
        retention: Retention,
        *,
        prefix: str = "agentcomm",
        recheck_interval: float = 1.0,
    ) -> None:
        self.retention = retention
        self.recheck_interval = recheck_interval
        self.notifier = Notifier()
        self._prefix = check_prefix(prefix) + ":"
        self._origin = new_id()
        self._where = _redact(url)
        try:
            self._client: aioredis.Redis = aioredis.Redis.from_url(
                url,
                retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3),
                socket_connect_timeout=5.0,
                # RESP2 unless the URL asks otherwise: its pure-Python parser is the faster one
                protocol=2,
                socket_keepalive=True,
            )
        except ValueError as exc:
            raise ConfigurationError(f"Bad Redis URL {self._where}: {exc}") from exc
        self._mailbox: AsyncScript = self._client.register_script(scripts.MAILBOX)
        self._kv: AsyncScript = self._client.register_script(scripts.KV)
        self._listener: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._heard = 0.0  # loop time of the last message on the wake connection
        # requests of this hub waiting for a reply, and replies that came by pub/sub
        self._awaiting: dict[str, float] = {}  # correlation id -> request deadline
        self._inbox: dict[str, bytes] = {}
        self._cleanup: set[asyncio.Task[Any]] = set()
        # transitional: this object serves every feature until each has its own module
        self.mailboxes = self
        self.topics = self
        self.shared_memory = self
        self.references = self

    # --- plumbing --------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            with redis_errors(self._where):
                await self._client.ping()
            pubsub = await self._subscribe()
        except BaseException:
            with contextlib.suppress(*CLOSE_ERRORS):
                await self._client.aclose()
            raise
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        self._listener = loop.create_task(self._listen(pubsub))
        self._watchdog = loop.create_task(self._watch_listener())

    async def close(self) -> None:
        if self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)
        with contextlib.suppress(*CLOSE_ERRORS, TimeoutError):
            # bounded: closing must not wait on a server that is gone
            await asyncio.wait_for(self._client.srem(self._prefix + "hubs", self._origin), 2.0)
        for task in (self._watchdog, self._listener):
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)  # bounded, like the SREM above
        self._listener = self._watchdog = None
        with contextlib.suppress(*CLOSE_ERRORS):
            await self._client.aclose()
        self.notifier.wake_all()

    async def _subscribe(self) -> aioredis.client.PubSub:
        """A pub/sub connection subscribed to the wake channel, confirmed by the server."""
        pubsub = self._client.pubsub()
        try:
            with redis_errors(self._where):
                await pubsub.subscribe(self._prefix + "wake")
                while True:  # the confirmation: from now on no wake-up is missed
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        raise BackendUnavailable(f"Redis at {self._where} did not subscribe.")
                    if msg["type"] == "subscribe":
                        break
                # only now, subscribed, does this hub count as one to wake (see `publish`)
                await self._client.sadd(self._prefix + "hubs", self._origin)
                return pubsub
        except BaseException:
            await _close(pubsub)
            raise

    async def _listen(self, pubsub: aioredis.client.PubSub | None) -> None:
        """Wake this hub's waiters for changes made by other hubs; reconnect on loss."""
        delay = 0.05
        origin = self._origin.encode()
        notify = self.notifier.notify
        loop = asyncio.get_running_loop()
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self.notifier.wake_all()  # changes made while we were away
                    delay = 0.05
                self._pubsub = pubsub
                while True:
                    # no read timeout: redis-py would arm a timer for every message (see
                    # `_watch_listener` for a connection that dies silently)
                    msg = await pubsub.get_message(timeout=None)
                    self._heard = loop.time()
                    if msg is None or msg["type"] != "message":
                        continue
                    data: bytes = msg["data"]
                    if data[:1] == b"\1":
                        cid, _, reply = data[1:].partition(b"\n")
                        key = cid.decode()
                        if key in self._awaiting:
                            self._inbox[key] = reply
                            notify((reply_channel(key),))
                        continue
                    sender, _, channels = data.partition(b"\n")
                    if sender != origin:
                        notify(channels.decode().split("\n"))
            except asyncio.CancelledError:
                if pubsub is not None:
                    await _close(pubsub)
                raise
            except Exception:  # whatever broke the connection: this task must live on
                self._pubsub = None
                if pubsub is not None:
                    await _close(pubsub)
                    pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX)

    async def _watch_listener(self) -> None:
        """PING the wake connection when it has been quiet for a while; drop it if even that
        gets no answer, so `_listen` reconnects (a connection can die without a word)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_IDLE_PING)
            pubsub = self._pubsub
            quiet = loop.time() - self._heard
            if pubsub is None or quiet < _IDLE_PING:
                continue
            if quiet >= 2.5 * _IDLE_PING and pubsub.connection is not None:
                with contextlib.suppress(*CLOSE_ERRORS):
                    await pubsub.connection.disconnect()
                continue
            with contextlib.suppress(*CLOSE_ERRORS):
                await pubsub.ping()

    async def _call(self, script: AsyncScript, op: str, now: float, args: Sequence[Any]) -> Any:
        """The reply of `op` of `script`, with redis-py's errors mapped to ours."""
        client = self._client
        try:
            try:
                reply = await client.evalsha(
                    script.sha, 0, self._prefix, self._origin, _num(now), op, *args
                )
            except rexc.NoScriptError:  # a restarted or flushed server: load it again
                script.sha = await client.script_load(script.script)
                reply = await client.evalsha(
                    script.sha, 0, self._prefix, self._origin, _num(now), op, *args
                )
        except REDIS_ERRORS as exc:
            raise translate(exc, self._where) from exc
        return reply

    async def _run(self, script: AsyncScript, op: str, now: float, args: Sequence[Any]) -> Any:
        """Run `op` of `script`; notify this hub's waiters of the channels it touched."""
        result, touched = await self._call(script, op, now, args)
        if touched:
            self.notifier.notify([c.decode() for c in touched])
        return result

    async def _mail(self, op: str, now: float, *args: Any) -> Any:
        return await self._run(self._mailbox, op, now, args)

    async def _bare(self, op: str, now: float, *args: Any) -> Any:
        """A hot mailbox op: its result alone; the caller notifies this hub's waiters."""
        return await self._call(self._mailbox, op, now, args)

    # --- agents --------------------------------------------------------------------------------

    async def register_agent(self, name: str, now: float) -> AgentInfo:
        created = await self._mail("register", now, name)
        return AgentInfo(name, float(created), now)

    async def list_agents(self) -> list[AgentInfo]:
        with redis_errors(self._where):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._prefix + "agents")
                pipe.hgetall(self._prefix + "seen")
                created, seen = await pipe.execute()
        return sorted(
            (
                AgentInfo(name.decode(), float(at), float(seen.get(name, at)))
                for name, at in created.items()
            ),
            key=lambda a: a.name,
        )

    # --- mailboxes -----------------------------------------------------------------------------

    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        args: list[Any] = [1 if auto_register else 0]
        for m in messages:
            args += _message_args(m)
        for m in messages:
            if m.request_deadline is not None and m.correlation_id is not None:
                self._awaiting[m.correlation_id] = m.request_deadline
        result = await self._bare("enqueue", now, *args)
        if isinstance(result, bytes):
            raise UnknownAgent(result.decode())
        self.notifier.notify({mail_channel(m.recipient) for m in messages})
        ids = [m.id for m in messages]
        for i in range(0, len(result), 2):  # the deduplicated ones: position, first id
            ids[int(result[i]) - 1] = result[i + 1].decode()
        return ids

    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        lease_until = now + lease
        flat = await self._bare("claim", now, agent, _num(lease_until), max_messages)
        messages = [
            _stored(flat[i], flat[i + 1], flat[i + 2], lease_until) for i in range(1, len(flat), 3)
        ]
        return Claimed(messages, _opt_float(flat[0]))

    async def settle(self, op: Settle, *, now: float) -> bool:
        return (await self.settle_many((op,), now=now))[0]

    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        keep = 1 if self.retention.acked > 0 else 0
        results = await self._bare("settle", now, keep, *(_settle_arg(op) for op in ops))
        nacked = {mail_channel(op.recipient) for op in ops if op.kind == SettleKind.NACK}
        if nacked:  # a waiter may need to re-arm its timer for the retry
            self.notifier.notify(nacked)
        return [bool(r) for r in results]

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        ready, delayed, in_flight, dead = await self._mail("box_stats", 0.0, agent)
        return MailboxStats(agent, ready, delayed, in_flight, dead)

    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        rows = await self._mail("pending", 0.0, agent, limit)
        ranked = sorted(((_pending(r), r[0]) for r in rows), key=lambda p: (-p[0].priority, p[1]))
        return [info for info, _ in ranked[:limit]]

    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        rows = await self._mail("dead", 0.0, agent, limit)
        return [_dead_letter(r) for r in rows]

    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        selection = ["0"] if ids is None else ["1", *ids]
        count: int = await self._mail("requeue", now, agent, *selection)
        return count

    # --- request / reply -----------------------------------------------------------------------

    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        keep = 1 if self.retention.acked > 0 else 0
        ref = ref_id_in(reply.data, reply.data_kind) or ""
        args = [keep, correlation_id, _reply_encoder.encode(reply), ref]
        if ack is not None:
            args.append(_settle_arg(ack))
        delivered = bool(await self._bare("reply", now, *args))
        if delivered:
            self.notifier.notify((reply_channel(correlation_id),))
        return delivered

    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        blob = self._inbox.pop(correlation_id, None)
        if blob is not None:
            # it came by pub/sub: the slot is removed off the requester's path (and by a
            # prune pass if this fails)
            self._awaiting.pop(correlation_id, None)
            task = asyncio.get_running_loop().create_task(self._drop_slot(correlation_id))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)
            return _reply_decoder.decode(blob)
        blob = await self._bare("take", 0.0, correlation_id, 1 if abandon else 0)
        if blob is not None or abandon:
            self._awaiting.pop(correlation_id, None)
            self._inbox.pop(correlation_id, None)
        return None if blob is None else _reply_decoder.decode(blob)

    async def _drop_slot(self, correlation_id: str) -> None:
        with contextlib.suppress(BackendError):
            await self._bare("take", 0.0, correlation_id, 1)

    # --- schedules -----------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        unknown = await self._mail(
            "sched_add", spec.created_at, 1 if auto_register else 0, spec.id,
            msgspec.msgpack.encode(spec), _num(spec.next_run), spec.recipient,
            ref_id_in(spec.data, spec.data_kind) or "",
        )  # fmt: skip
        if unknown is not None:
            raise UnknownAgent(unknown.decode())

    async def cancel_schedule(self, schedule_id: str) -> bool:
        return bool(await self._mail("sched_cancel", 0.0, schedule_id))

    async def list_schedules(self) -> list[ScheduleInfo]:
        out = []
        for blob, next_run, runs in await self._mail("sched_list", 0.0):
            if blob is None:
                continue
            s = _spec_decoder.decode(blob)
            out.append(
                ScheduleInfo(
                    s.id,
                    s.sender,
                    s.recipient,
                    s.type,
                    s.cron,
                    s.every,
                    float(next_run),
                    int(runs or 0),
                )
            )
        return out

    async def fire_due(self, now: float) -> float | None:
        due, first = await self._mail("sched_due", now)
        if not due:
            return _opt_float(first)
        args: list[Any] = []
        for sched_id, next_run, blob in due:
            if blob is None:
                continue
            spec = _spec_decoder.decode(blob)
            upcoming = next_occurrence(spec.cron, spec.every, float(next_run), now)
            args += [sched_id, next_run, _num(upcoming)]
            args += _message_args(scheduled_message(spec, now))
        return _opt_float(await self._mail("sched_fire", now, *args))

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> PruneReport:
        r = self.retention
        report = await self._mail(
            "prune", now, _num(r.acked), _num(r.expired), _num(r.dead), _PRUNE_BATCH
        )
        await self._kv_prune(now)
        topic_records = await self._prune_topics(now)
        # requests abandoned without a last look (their task was cancelled)
        for cid in [c for c, deadline in self._awaiting.items() if deadline + REPLY_GRACE <= now]:
            del self._awaiting[cid]
            self._inbox.pop(cid, None)
        expired, dead, pruned, dedupe, requests = (int(x) for x in report)
        return PruneReport(expired, dead, pruned, dedupe, requests, topic_records)

    async def stats(self) -> HubStats:
        with redis_errors(self._where):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._prefix + "counters")
                pipe.get(self._prefix + "seq")
                counters, seq = await pipe.execute()
        values = {text(k): int(v) for k, v in counters.items()}
        values["sent"] = int(seq or 0)  # every stored message took the next sequence number
        return HubStats(**{f: values.get(f, 0) for f in HubStats.__struct_fields__})


async def _close(pubsub: aioredis.client.PubSub) -> None:
    with contextlib.suppress(*CLOSE_ERRORS, TimeoutError):
        # bounded: a connection stuck mid-read must not hold up the hub's close
        await asyncio.wait_for(pubsub.aclose(), 2.0)  # type: ignore[no-untyped-call]


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)
