"""Agent pools: named groups of agent runs with addressed messages, receipts, wakes and a log.

A run is an agent of the hub: joining a pool registers it, and its pool messages arrive in its
mailbox. The pool adds membership (agent, topics, policy refs), addressing, receipts
deduplicated by idempotency key, wake conditions and a per-pool log that can be watched. The
rules live in `_backends/pool_engine.py` (Redis: `_backends/redis/pools_lua.py`); this module
checks arguments, encodes, and waits.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import msgspec

from ._backends.common import pool_channel
from ._backends.contracts import PoolStore
from ._codec import decode_metadata, decode_payload, encode_metadata, encode_payload
from ._context import Context
from ._errors import HubClosed, ValidationError
from ._ids import new_id
from ._pool_models import (
    Address,
    EventFilter,
    PoolConfig,
    PoolMember,
    PoolRecord,
    Receipt,
    ToAgent,
    ToPool,
    ToRun,
    ToTopic,
    WakeResult,
)
from ._pool_records import (
    ConfigSpec,
    FilterSpec,
    MemberRecord,
    NewPoolMessage,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from ._validation import (
    MAX_COUNT,
    MAX_SEQUENCE,
    check_attempts,
    check_bool,
    check_int,
    check_name,
    check_priority,
    check_seconds,
    check_text,
)

__all__ = ["Pool", "PoolSnapshot", "Wake"]

_config_encoder = msgspec.json.Encoder()
_config_decoder = msgspec.json.Decoder(ConfigSpec)
_FILTER_KINDS = frozenset(
    {
        "opened", "member_joined", "member_left", "message", "event",
        "wake_registered", "wake_triggered", "wake_timed_out", "wake_cancelled",
    }
)  # fmt: skip
_RESUME = ("envelope", "full")
#: Records read per step by `watch`.
_WATCH_PAGE = 256


def _names(what: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValidationError(f"{what} must be a list of names, not {values!r}.")
    return sorted({check_name(what, v) for v in values})


def encode_config(config: PoolConfig) -> bytes:
    """A config's canonical stored form (equal configs encode to equal bytes)."""
    if not isinstance(config, PoolConfig):
        raise ValidationError(f"config must be an agentcomm.PoolConfig, not {config!r}.")
    spec = ConfigSpec(
        _names("required_policy_refs", config.required_policy_refs),
        check_bool("include_sender_in_broadcast", config.include_sender_in_broadcast),
        _names("observe_policy_refs", config.observe_policy_refs),
    )
    return _config_encoder.encode(spec)


def decode_config(data: bytes) -> PoolConfig:
    """The public view of a stored config."""
    spec = _config_decoder.decode(data)
    return PoolConfig(
        required_policy_refs=tuple(spec.required_policy_refs),
        include_sender_in_broadcast=spec.include_sender_in_broadcast,
        observe_policy_refs=tuple(spec.observe_policy_refs),
    )


def _address(to: object) -> tuple[str, str]:
    if isinstance(to, ToRun):
        return "run", check_name("ToRun.run", to.run)
    if isinstance(to, ToAgent):
        return "agent", check_name("ToAgent.agent", to.agent)
    if isinstance(to, ToTopic):
        return "topic", check_name("ToTopic.topic", to.topic)
    if isinstance(to, ToPool):
        return "pool", ""
    raise ValidationError(
        f"to= must be ToRun(run), ToAgent(agent), ToTopic(topic) or ToPool(), not {to!r}."
    )


def _to(kind: str | None, value: str | None) -> Address | None:
    if kind == "run":
        return ToRun(value or "")
    if kind == "agent":
        return ToAgent(value or "")
    if kind == "topic":
        return ToTopic(value or "")
    if kind == "pool":
        return ToPool()
    return None


def _name_set(what: str, values: object) -> list[str] | None:
    return None if values is None else _names(what, values)


def filter_spec(f: EventFilter) -> FilterSpec:
    """Check an event filter and normalize it for the store."""
    if not isinstance(f, EventFilter):
        raise ValidationError(f"filter must be an agentcomm.EventFilter, not {f!r}.")
    kinds = _name_set("EventFilter.kinds", f.kinds)
    if kinds is not None and not set(kinds) <= _FILTER_KINDS:
        unknown = ", ".join(sorted(set(kinds) - _FILTER_KINDS))
        raise ValidationError(
            f"EventFilter.kinds has unknown kinds ({unknown}); use {sorted(_FILTER_KINDS)}."
        )
    if f.to_me is not None:
        check_bool("EventFilter.to_me", f.to_me)
    metadata: dict[str, str | int | bool | None] | None = None
    if f.metadata is not None:
        if not isinstance(f.metadata, Mapping):
            raise ValidationError(f"EventFilter.metadata must be a dict, not {f.metadata!r}.")
        metadata = {}
        for key, value in f.metadata.items():
            if not isinstance(key, str):
                raise ValidationError(f"EventFilter.metadata keys must be str, not {key!r}.")
            if value is not None and not isinstance(value, str | int | bool):
                raise ValidationError(
                    f"EventFilter.metadata values must be str, int, bool or None; {key!r} is "
                    f"{value!r}."
                )
            if isinstance(value, int) and not -(2**53) <= value <= 2**53:
                raise ValidationError(f"EventFilter.metadata int {key!r} is out of range.")
            metadata[key] = value
    return FilterSpec(
        kinds=kinds,
        runs=_name_set("EventFilter.runs", f.runs),
        senders=_name_set("EventFilter.senders", f.senders),
        agents=_name_set("EventFilter.agents", f.agents),
        types=_name_set("EventFilter.types", f.types),
        topics=_name_set("EventFilter.topics", f.topics),
        to_me=bool(f.to_me),
        metadata=metadata,
    )


def _public_filter(spec: FilterSpec) -> EventFilter:
    def s(v: list[str] | None) -> frozenset[str] | None:
        return None if v is None else frozenset(v)

    return EventFilter(
        kinds=s(spec.kinds), runs=s(spec.runs), senders=s(spec.senders),
        agents=s(spec.agents), types=s(spec.types), topics=s(spec.topics),
        to_me=spec.to_me or None, metadata=None if spec.metadata is None else dict(spec.metadata),
    )  # fmt: skip


def _receipt(r: ReceiptRecord) -> Receipt:
    return Receipt(
        r.message_id, r.status, tuple(r.delivered_to), r.seq, r.duplicate, r.reason,
        r.idempotency_key,
    )  # fmt: skip


def _member(m: MemberRecord) -> PoolMember:
    return PoolMember(m.run, m.agent, tuple(m.topics), tuple(m.policy_refs), m.joined_at)


def record_view(pool: str, r: StoredPoolRecord, *, payload: bool = True) -> PoolRecord:
    """The public view of a stored record; `payload=False` withholds message and event data."""
    data = None
    if payload and r.data is not None:
        data = decode_payload(r.data, r.data_kind)
    return PoolRecord(
        seq=r.seq, kind=r.kind, pool=pool, run=r.run, at=r.at, agent=r.agent,
        topics=tuple(r.topics or ()), policy_refs=tuple(r.policy_refs or ()),
        message_id=r.message_id, to=_to(r.to_kind, r.to_value), type=r.type, data=data,
        metadata=decode_metadata(r.metadata) if r.metadata else None,
        receipt=None if r.receipt is None else _receipt(r.receipt), wake_id=r.wake_id,
        trigger_seq=r.trigger_seq, config=None if r.config is None else decode_config(r.config),
    )  # fmt: skip


class PoolSnapshot(msgspec.Struct, frozen=True):
    """A pool's current state: config, members, topics, registered wakes, counts, and the
    `cursor` (the last record's seq) to `watch` from."""

    name: str
    config: PoolConfig
    created_at: float
    members: tuple[PoolMember, ...]
    topics: tuple[str, ...]
    pending_wakes: tuple[Wake, ...]
    counts: dict[str, int]
    cursor: int


class Wake:
    """A wake condition of a pool run: registered, then triggered, timed out or cancelled.

    Get one from `pool.wait_for()` or `pool.wake()`. Its attributes are as of when it was
    read; `result()` waits for the end and `refresh()` re-reads it.
    """

    def __init__(self, ctx: Context, store: PoolStore, w: WakeRecord) -> None:
        self._ctx = ctx
        self._store = store
        self._load(w)

    def _load(self, w: WakeRecord) -> None:
        #: The wake's id.
        self.id = w.id
        self.pool = w.pool
        #: The run it wakes.
        self.run = w.run
        self.filter = _public_filter(w.filter)
        self.idempotency_key = w.idempotency_key
        self.resume = w.resume
        #: "registered", "triggered", "timed_out" or "cancelled".
        self.status = w.status
        self.registered_at = w.registered_at
        #: When it times out (epoch seconds), None for never.
        self.deadline = w.deadline
        #: The seq of the record that triggered it.
        self.trigger_seq = w.trigger_seq

    def __repr__(self) -> str:
        return f"<Wake {self.id} of {self.run!r} in pool {self.pool!r}: {self.status}>"

    async def refresh(self) -> str:
        """Re-read the wake; returns its status."""
        self._ctx.check_open()
        w = await self._store.pool_wake(self.pool, wake_id=self.id, key=None, now=self._ctx.now())
        if w is not None:
            self._load(w)
        return self.status

    async def result(self) -> WakeResult:
        """Wait until the wake is triggered, times out or is cancelled, and say how.

        Returns at the deadline at the latest (the wake is then timed out, also when no other
        process watches the pool). A triggered result carries the matching record, its
        payload withheld unless the wake was registered with `resume="full"`. Raises
        HubClosed if the hub closes meanwhile.
        """
        ctx = self._ctx
        ctx.check_open()
        with ctx.wakeups(pool_channel(self.pool)) as wakeups:
            while True:
                wakeups.rearm()
                await self.refresh()
                if self.status != "registered":
                    break
                if ctx.closed:
                    raise HubClosed("The hub closed while waiting for a pool wake.")
                await wakeups.wait(self.deadline)
                if ctx.closed:
                    raise HubClosed("The hub closed while waiting for a pool wake.")
        record = None
        if self.status == "triggered" and self.trigger_seq is not None:
            page = await self._store.pool_records(self.pool, self.trigger_seq - 1, limit=1)
            if page.records and page.records[0].seq == self.trigger_seq:
                record = record_view(self.pool, page.records[0], payload=self.resume == "full")
        return WakeResult(self.status, record)

    async def cancel(self) -> bool:
        """Cancel the wake; False if it had ended (a triggered wake stays triggered)."""
        ctx = self._ctx
        ctx.check_open()
        done = await self._store.pool_cancel_wake(self.pool, self.id, now=ctx.now())
        await self.refresh()
        return done


class Pool:
    """A named group of agent runs. Get one with `await hub.pool(name, config=...)`."""

    def __init__(self, ctx: Context, store: PoolStore, name: str, config: PoolConfig) -> None:
        self._ctx = ctx
        self._store = store
        #: The pool's name.
        self.name = name
        #: The config the pool was created with.
        self.config = config

    def __repr__(self) -> str:
        return f"<Pool {self.name!r}>"

    def _open(self) -> PoolStore:
        self._ctx.check_open()
        return self._store

    # --- membership ----------------------------------------------------------------------------

    async def join(
        self,
        run: str,
        *,
        agent: str,
        topics: Iterable[str] = (),
        policy_refs: Iterable[str] = (),
    ) -> PoolMember:
        """Add run `run` (an agent run of `agent`) to the pool, holding `topics` and
        `policy_refs`, and register it as an agent of the hub: its pool messages arrive in its
        mailbox (`await hub.agent(run)`). Joining again updates its topics and policy refs."""
        check_name("run", run)
        check_name("agent", agent)
        member = MemberRecord(
            run, agent, _names("topics", topics), _names("policy_refs", policy_refs),
            self._ctx.now(),
        )  # fmt: skip
        store = self._open()
        await store.pool_join(self.name, member, now=member.joined_at)
        return _member(member)

    async def leave(self, run: str) -> None:
        """Remove `run` from the pool, cancelling its registered wakes; NotAMember if it is
        not one. Its mailbox (and what is in it) stays."""
        check_name("run", run)
        store = self._open()
        await store.pool_leave(self.name, run, now=self._ctx.now())

    # --- messages ------------------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        *,
        to: Address,
        data: Any = None,
        type: str = "message",
        policy_refs: Iterable[str] = (),
        idempotency_key: str | None = None,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
    ) -> Receipt:
        """Send a pool message from member run `sender` and return its receipt.

        `to`: `ToRun(run)`, `ToAgent(agent)` (its member runs), `ToTopic(topic)` (members
        holding it) or `ToPool()` (every member). Each recipient must hold every policy ref
        of the message. The message is enqueued in each recipient's mailbox in the same
        atomic step as its receipt and log record; `msg.data` is `data`, and the pool's
        name, the record's seq, the sender run and the pool message id travel in
        `msg.metadata` (`pool.name`, `pool.seq`, `pool.sender`, `pool.message_id`).

        The receipt says "delivered", or fails closed ("failed", nothing enqueued, `reason`
        set) when no member matches or a required policy ref is missing; "expired" if `ttl`
        <= 0. A repeated `idempotency_key` returns the first receipt with `duplicate=True`
        and sends nothing. NotAMember if `sender` is not a member. Pool payloads are stored
        by value (at most `Limits.max_payload` bytes encoded).
        """
        ctx = self._ctx
        settings = ctx.settings
        limits = settings.limits
        check_name("sender", sender)
        to_kind, to_value = _address(to)
        check_name("type", type)
        refs = _names("policy_refs", policy_refs)
        if idempotency_key is not None:
            check_text("idempotency_key", idempotency_key, longest=256, empty=False)
        now = ctx.now()
        if ttl is None:
            expires_at: float | None = now + settings.default_ttl
        else:
            seconds = _ttl(ttl)
            expires_at = None if math.isinf(seconds) else now + seconds
        if metadata is not None and any(
            isinstance(k, str) and k.startswith("pool.") for k in metadata
        ):
            raise ValidationError(
                "metadata keys starting with 'pool.' are set by the pool; use other names."
            )
        encoded_meta = encode_metadata(metadata, settings)
        payload, kind = encode_payload(data, limits.max_depth)
        if len(payload) > limits.max_payload:
            raise ValidationError(
                f"The payload is {len(payload)} bytes encoded, more than the "
                f"{limits.max_payload} bytes a pool message may carry (Limits.max_payload). "
                "Store it with `hub.refs.store(...)` and send the Ref instead."
            )
        message = NewPoolMessage(
            pool=self.name, message_id=new_id(), sender=sender, to_kind=to_kind,
            to_value=to_value, type=type, data=payload, data_kind=kind, metadata=encoded_meta,
            policy_refs=refs, idempotency_key=idempotency_key, expires_at=expires_at,
            priority=check_priority(priority),
            max_attempts=check_attempts(
                settings.max_attempts if max_attempts is None else max_attempts
            ),
        )  # fmt: skip
        receipt = await self._open().pool_send(message, now=now)
        return _receipt(receipt)

    async def receipt(self, key_or_id: str) -> Receipt | None:
        """The stored receipt of a message, by idempotency key or message id; None if
        unknown (or pruned after the dedupe window)."""
        check_text("key_or_id", key_or_id, longest=256, empty=False)
        store = self._open()
        found = await store.pool_receipt(self.name, message_id=None, key=key_or_id)
        if found is None:
            found = await store.pool_receipt(self.name, message_id=key_or_id, key=None)
        return None if found is None else _receipt(found)

    async def emit(
        self, run: str, type: str, data: Any = None, *, metadata: dict[str, Any] | None = None
    ) -> PoolRecord:
        """Record a custom event of member run `run`; it can trigger wakes. Returns the record."""
        ctx = self._ctx
        check_name("run", run)
        check_name("type", type)
        encoded_meta = encode_metadata(metadata, ctx.settings)
        payload, kind = encode_payload(data, ctx.settings.limits.max_depth)
        if len(payload) > ctx.settings.limits.max_payload:
            raise ValidationError(
                f"The event data is {len(payload)} bytes encoded, more than "
                f"Limits.max_payload ({ctx.settings.limits.max_payload})."
            )
        stored = await self._open().pool_emit(
            self.name, run, type, payload, kind, encoded_meta, now=ctx.now()
        )
        return record_view(self.name, stored)

    # --- wakes ---------------------------------------------------------------------------------

    async def wait_for(
        self,
        run: str,
        filter: EventFilter,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        replay: bool = False,
        resume: str = "envelope",
    ) -> Wake:
        """Register a wake for member run `run`: it triggers on the first record after now
        that `filter` matches (with `replay=True`, on the first already in the log), or times
        out after `timeout` seconds (None: never). `await wake.result()` waits for it. The
        same `idempotency_key` returns the wake registered with it, whatever its state."""
        ctx = self._ctx
        check_name("run", run)
        spec_filter = filter_spec(filter)
        check_bool("replay", replay)
        if resume not in _RESUME:
            raise ValidationError(f"resume must be 'envelope' or 'full', not {resume!r}.")
        if idempotency_key is not None:
            check_text("idempotency_key", idempotency_key, longest=256, empty=False)
        now = ctx.now()
        deadline = None
        if timeout is not None:
            most = ctx.settings.limits.max_delay
            deadline = now + check_seconds("timeout", timeout, maximum=most)
        spec = WakeSpec(
            new_id(), self.name, run, spec_filter, idempotency_key, replay, resume, now, deadline
        )
        w = await self._open().pool_wait_for(spec, now=now)
        return Wake(ctx, self._store, w)

    async def wake(self, id_or_key: str) -> Wake | None:
        """A wake by id or idempotency key, as it is now; None if unknown."""
        check_text("id_or_key", id_or_key, longest=256, empty=False)
        store = self._open()
        now = self._ctx.now()
        w = await store.pool_wake(self.name, wake_id=None, key=id_or_key, now=now)
        if w is None:
            w = await store.pool_wake(self.name, wake_id=id_or_key, key=None, now=now)
        return None if w is None else Wake(self._ctx, self._store, w)

    # --- reading -------------------------------------------------------------------------------

    async def snapshot(self) -> PoolSnapshot:
        """The pool's config, members, topics, registered wakes and counts, and the cursor
        to watch from; its cost grows with members and registered wakes, not with history."""
        ctx = self._ctx
        snap = await self._open().pool_snapshot(self.name, now=ctx.now())
        members = tuple(_member(m) for m in snap.members)
        topics = tuple(sorted({t for m in snap.members for t in m.topics}))
        counts = {
            "records": snap.head, "members": len(members),
            "pending_wakes": len(snap.pending_wakes), "messages": 0, "failed": 0,
            "expired": 0, "duplicates": 0, "events": 0,
        }  # fmt: skip
        counts.update(snap.counts)
        return PoolSnapshot(
            self.name, decode_config(snap.config), snap.created_at, members, topics,
            tuple(Wake(ctx, self._store, w) for w in snap.pending_wakes), counts, snap.head,
        )  # fmt: skip

    async def records(
        self, after: int = 0, limit: int = 100, *, as_run: str | None = None
    ) -> list[PoolRecord]:
        """Up to `limit` records with seq > `after`, oldest first. With `as_run`, message
        payloads are withheld unless that run sent or received the message."""
        check_int("after", after, 0, MAX_SEQUENCE)
        check_int("limit", limit, 1, MAX_COUNT)
        if as_run is not None:
            check_name("as_run", as_run)
        page = await self._open().pool_records(self.name, after, limit=limit)
        return [self._view(r, as_run) for r in page.records]

    def _view(self, r: StoredPoolRecord, as_run: str | None) -> PoolRecord:
        visible = as_run is None or r.kind != "message" or r.run == as_run or (
            r.receipt is not None and as_run in r.receipt.delivered_to
        )  # fmt: skip
        return record_view(self.name, r, payload=visible)

    async def watch(
        self,
        after: int = 0,
        *,
        filter: EventFilter | None = None,
        as_run: str | None = None,
    ) -> AsyncIterator[PoolRecord]:
        """Yield the pool's records after seq `after`, oldest first, then wait for new ones
        (also written by other processes) until the hub closes (HubClosed) or the generator is
        closed (`aclose()`). With `filter`, only matching records (the filter's `to_me`
        applies to `as_run`). Records dropped by retention before they were read are
        reported by one `PoolRecord(kind="gap", missed=N)`, never skipped silently."""
        from ._backends.pool_engine import matches

        check_int("after", after, 0, MAX_SEQUENCE)
        spec = None if filter is None else filter_spec(filter)
        if as_run is not None:
            check_name("as_run", as_run)
        ctx = self._ctx
        store = self._open()
        position = after
        with ctx.wakeups(pool_channel(self.name)) as wakeups:
            while True:
                wakeups.rearm()
                if ctx.closed:
                    raise HubClosed("The hub closed while watching a pool.")
                page = await store.pool_records(self.name, position, limit=_WATCH_PAGE)
                if page.oldest > position + 1 and page.head > position:
                    missed = min(page.oldest, page.head + 1) - position - 1
                    yield PoolRecord(
                        seq=0, kind="gap", pool=self.name, run=None, at=ctx.now(), missed=missed
                    )
                    position = page.oldest - 1
                for r in page.records:
                    position = r.seq
                    if spec is None or matches(spec, r, as_run):
                        yield self._view(r, as_run)
                if len(page.records) == _WATCH_PAGE:
                    continue
                await wakeups.wait()


def _ttl(value: object) -> float:
    """A pool message's ttl: any finite real (<= 0 means already expired) or math.inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"ttl must be a number of seconds (or math.inf), not {value!r}.")
    seconds = float(value)
    if math.isnan(seconds) or seconds == -math.inf:
        raise ValidationError(f"ttl must be a number of seconds (or math.inf), not {value!r}.")
    return seconds


async def open_pool(ctx: Context, store: PoolStore, name: str, config: PoolConfig | None) -> Pool:
    """Create or attach to pool `name` (see `Hub.pool`)."""
    check_name("pool name", name)
    wanted = None if config is None else encode_config(config)
    stored = await store.pool_open(name, wanted, encode_config(PoolConfig()), now=ctx.now())
    return Pool(ctx, store, name, decode_config(stored))
