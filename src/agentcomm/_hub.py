"""The hub: one connection to a backend, the agents on it, and its background housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec

from ._agent import Agent
from ._awaiting import awaitable
from ._backends import DEFAULT_URL, open_backend, with_prefix
from ._backends.common import SCHEDULES_CHANNEL, consumer_filter, mail_channel
from ._backends.contracts import Backend
from ._backends.pool_engine import POOL_WAKES_CHANNEL
from ._codec import StoredRef, decode_metadata, decode_payload
from ._context import Clock, Context
from ._coord_leases import Leases
from ._errors import (
    AgentCommError,
    AsyncMisuse,
    BackendError,
    ConfigurationError,
    HubClosed,
    IntegrityError,
    NotFound,
    RefNotFound,
    UnknownAgent,
    ValidationError,
)
from ._holds import RefHolder
from ._leases import release
from ._models import (
    AgentInfo,
    CheckReport,
    ConsumerInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    NamespaceInfo,
    PeekedMessage,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
    TopicStats,
)
from ._pool_models import PoolConfig
from ._pools import Pool, PoolSnapshot, open_pool
from ._presence import state_of
from ._records import PeekRecord
from ._ref_records import REF_FLAG
from ._references import Policy, PolicyTable, RefConfig, RefStore
from ._settings import Backoff, HubSettings, Limits, Presence, Retention
from ._shared_memory import SharedMemory
from ._subjects import parse_topic
from ._subscription import DEFAULT_BUFFER, Subscribing
from ._topic_bus import TopicBus
from ._validation import (
    check_attempts,
    check_bool,
    check_int,
    check_name,
    check_non_negative,
    check_positive,
    check_seconds,
    check_text,
)

__all__ = ["Hub", "connect"]

logger = logging.getLogger("agentcomm")

#: Seconds `Hub.aclose()` waits for its background tasks to end on their own, then (after
#: cancelling the rest) for them to acknowledge the cancel.
CLOSE_GRACE = 2.0
CANCEL_GRACE = 1.0
#: The most entries one `pending()` or `dead_letters()` call lists.
MAX_LISTING = 10_000
_U = TypeVar("_U")


def connect(
    url: str | None = None,
    *,
    auto_register: bool = False,
    default_ttl: float = 86400.0,
    max_attempts: int = 3,
    lease: float = 30.0,
    retention: Retention | None = None,
    backoff: Backoff | None = None,
    background: bool = True,
    policies: Mapping[str, Policy] | None = None,
    default_policy: Policy | None = None,
    refs: RefConfig | None = None,
    prefix: str | None = None,
    clock: Clock = time.time,
    limits: Limits | None = None,
    presence: Presence | None = None,
    token: str | None = None,
) -> Hub:
    """Make a hub for `url`; use it as `async with connect(url) as hub` or `await connect(url)`.

    `url` defaults to `$AGENTCOMM_URL`, else `sqlite:///agentcomm.db`. Schemes: `sqlite://`,
    `memory://`, `redis://` and `rediss://`. `default_ttl`, `max_attempts` and `lease` are the
    defaults for messages sent and received through this hub. With `background` (default), the
    hub fires due schedules and runs retention passes while it is open. `prefix` (Redis only,
    default `agentcomm`) keeps this deployment's keys apart from others on the same server.

    `policies` maps message types to their tier (`"value"`, `"reference"` or
    `AutoPromote(threshold)`); other types and shared-memory puts use `default_policy`
    (default `AutoPromote(threshold=10_240)`). `refs` configures the reference store
    (`RefConfig`: GC strategy, default TTL, compression threshold).

    `clock` (default `time.time`) is the wall clock the hub reads, in epoch seconds: TTLs,
    delays, leases and timestamps all come from it, so a test can advance a fake clock
    instead of sleeping. Every hub of a store should see the same time.

    `limits` (`Limits`) bounds payload and metadata sizes, nesting, schedule periods and
    delays. `presence` (`Presence`) sets how often agents' activity is written and the
    thresholds `hub.agents()` reports their state by. Every argument is checked here: a bad
    URL raises ConfigurationError, a bad value ValidationError.

    `http://` and `https://` URLs reach an agentcomm server (`agentcomm serve`,
    docs/server.md) with bearer `token` (default `$AGENTCOMM_TOKEN`); the same API works
    over it, within what the token allows (PermissionDenied otherwise).
    """
    if url is None or url == "":
        url = os.environ.get("AGENTCOMM_URL") or DEFAULT_URL
    if not isinstance(url, str):
        raise ConfigurationError(
            f"url must be a string such as 'sqlite:///agentcomm.db', not {url!r}."
        )
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix must be a non-empty string, not {prefix!r}.")
        base = url
        url = _parsing(base, lambda: with_prefix(base, prefix))
    limits = _setting("limits", limits, Limits)
    lease = check_positive("lease", lease, limits.max_delay)
    if token is None:
        token = os.environ.get("AGENTCOMM_TOKEN") or None
    if token is not None and not isinstance(token, str):
        raise ConfigurationError(f"token must be a string, not {type(token).__name__}.")
    return Hub(
        url,
        token=token,
        auto_register=check_bool("auto_register", auto_register),
        default_ttl=check_seconds("default_ttl", default_ttl, positive=True, allow_inf=True),
        max_attempts=check_attempts(max_attempts),
        lease=lease,
        retention=_setting("retention", retention, Retention),
        backoff=_setting("backoff", backoff, Backoff),
        background=check_bool("background", background),
        refs=_setting("refs", refs, RefConfig),
        policies=PolicyTable(policies, default_policy),
        clock=clock,
        limits=limits,
        presence=_setting("presence", presence, Presence),
    )


_T = TypeVar("_T", Retention, Backoff, RefConfig, Limits, Presence)


def _setting(what: str, value: object, cls: type[_T]) -> _T:
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ConfigurationError(
            f"{what}= takes an agentcomm.{cls.__name__}(...), not {type(value).__name__}."
        )
    return value


def _parsing(url: str, build: Callable[[], _U]) -> _U:
    """Run `build`, turning what the URL parser raises into ConfigurationError."""
    try:
        return build()
    except AgentCommError:
        raise
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ConfigurationError(f"Cannot parse the URL {url!r}: {exc}.") from None


class Hub:
    """A connection to an agentcomm store. Create it with `agentcomm.connect()`."""

    def __init__(
        self,
        url: str,
        *,
        auto_register: bool,
        default_ttl: float,
        max_attempts: int,
        lease: float,
        retention: Retention,
        backoff: Backoff,
        background: bool,
        refs: RefConfig | None = None,
        policies: PolicyTable | None = None,
        clock: Clock = time.time,
        limits: Limits | None = None,
        presence: Presence | None = None,
        token: str | None = None,
    ) -> None:
        if not callable(clock):
            raise ValidationError(
                f"clock must be a callable returning epoch seconds, not {clock!r}."
            )
        self.url = url
        self._background = background
        self._backend: Backend = _parsing(url, lambda: open_backend(url, retention, token))
        config = refs or RefConfig()
        self._backend.ref_gc_strategy = config.gc
        settings = HubSettings(
            default_ttl=default_ttl, max_attempts=max_attempts, lease=lease,
            retention=retention, backoff=backoff, auto_register=auto_register,
            policies=policies or PolicyTable(None, None), limits=limits or Limits(),
            presence=presence or Presence(),
        )  # fmt: skip
        self._ctx = ctx = Context(self._backend, url, settings, clock)
        #: The reference store: large payloads stored once, by content (see `RefStore`).
        self.refs = RefStore(ctx, config)
        ctx.refs = RefHolder(ctx, self.refs)
        ctx.bus = self._topic_bus = TopicBus(ctx)
        #: Coordination leases on file globs: advisory locks agents take before editing files.
        self.leases = Leases(ctx)
        self._agents: dict[str, Agent] = {}
        self._pool_wakes_started = False

    @property
    def auto_register(self) -> bool:
        """Whether sending to an unknown agent registers it (else UnknownAgent)."""
        return self._ctx.settings.auto_register

    @property
    def default_ttl(self) -> float:
        """The TTL of a message sent without `ttl=` (seconds)."""
        return self._ctx.settings.default_ttl

    @property
    def max_attempts(self) -> int:
        """Deliveries of a message sent without `max_attempts=` before it is dead-lettered."""
        return self._ctx.settings.max_attempts

    @property
    def lease(self) -> float:
        """The lease of a delivery received without `lease=` (seconds)."""
        return self._ctx.settings.lease

    @property
    def limits(self) -> Limits:
        """The bounds this hub enforces on what it is given (see `Limits`)."""
        return self._ctx.settings.limits

    @property
    def retention(self) -> Retention:
        """How long finished rows are kept (see `Retention`)."""
        return self._ctx.settings.retention

    @property
    def presence(self) -> Presence:
        """How agents' activity is recorded and reported (see `Presence`)."""
        return self._ctx.settings.presence

    @property
    def backoff(self) -> Backoff:
        """The retry delays of `nack()` without a delay (see `Backoff`)."""
        return self._ctx.settings.backoff

    def __repr__(self) -> str:
        return f"<Hub {self.url} {self._ctx.state}>"

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> Hub:
        """Open the backend and start housekeeping; returns the hub."""
        if self._ctx.state == "open":
            self._ctx.check_loop()
            return self
        if self._ctx.state == "closed":
            raise HubClosed("This hub was closed; call agentcomm.connect() again for a new one.")
        await self._backend.open()
        self._ctx.loop = asyncio.get_running_loop()
        self._ctx.state = "open"
        if self._background and not self._backend.housekeeping_elsewhere:
            self._ctx.spawn(self._run_schedules())
            self._ctx.spawn(self._run_retention())
        return self

    async def aclose(self) -> None:
        """Close the hub: end its subscriptions, watches and waiting receives, stop its
        background tasks, write what is pending and close the backend. Idempotent.

        Bounded: every loop sees the close at once (it is woken up); the hub then waits at
        most `CLOSE_GRACE` (2 s) for its background tasks, cancels those still running and
        waits at most `CANCEL_GRACE` (1 s) more before it moves on and closes the backend.

        Messages received through this hub and not settled yet are released first: they go
        back to their queues at once, that delivery not counted as an attempt (a handle of
        such a message can no longer settle it).

        Every waiter ends the same way when the hub closes: a single call that waits
        (`receive`, `receive_many`, `request`, `Subscription.next`) raises HubClosed, an
        iteration (`agent.messages()`, `async for msg in subscription`, `memory.watch()`,
        `agent.serve`) ends quietly. A call made after the close raises HubClosed.
        """
        ctx = self._ctx
        if ctx.state == "closed":
            return
        was_open = ctx.state == "open"
        if was_open:  # while the backend still takes calls
            await release(ctx, ctx.leases.take(), CLOSE_GRACE)
        ctx.state = "closed"
        ctx.tasks.close()
        ctx.notifier.wake_all()  # every waiting loop re-checks and sees the close
        await self._topic_bus.aclose()
        await ctx.tasks.aclose(CLOSE_GRACE, CANCEL_GRACE)
        if was_open:
            with contextlib.suppress(AgentCommError):  # only statistics would be lost
                await self._topic_bus.flush_counts()
            await self._backend.close()

    async def __aenter__(self) -> Hub:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, Hub]:
        return self.open().__await__()

    if not TYPE_CHECKING:  # at runtime only, so that type checkers flag `with connect(...)`

        def __enter__(self) -> NoReturn:
            raise AsyncMisuse(
                "The hub is async: write `async with agentcomm.connect(url) as hub:` inside "
                "an async function, or for blocking code (scripts, notebooks, threads) "
                "`with agentcomm.sync.connect(url) as hub:`."
            )

        def __exit__(self, *exc_info: object) -> None:
            return None

    def _require_backend(self) -> Context:
        self._ctx.check_open()
        return self._ctx

    async def _run_schedules(self) -> None:
        ctx = self._ctx
        with ctx.wakeups(SCHEDULES_CHANNEL, recheck=ctx.recheck_interval * 5) as wakeups:
            while ctx.state == "open":
                wakeups.rearm()
                try:
                    next_run = await ctx.mailboxes.fire_due(ctx.now())
                except AgentCommError as exc:  # e.g. locked past the busy timeout: retry soon
                    logger.info("firing due schedules failed (%s); retrying in 1 s", exc)
                    next_run = ctx.now() + 1.0
                except Exception:  # a bug must not end the scheduler silently
                    logger.exception("agentcomm scheduler pass failed; retrying in 1 s")
                    next_run = ctx.now() + 1.0
                await wakeups.wait(next_run)

    async def _run_pool_wakes(self) -> None:
        # times out due pool wakes of every pool, so a wake ends at its deadline even when the
        # process that registered it is gone (any hub that has opened a pool does this)
        ctx = self._ctx
        with ctx.wakeups(POOL_WAKES_CHANNEL, recheck=ctx.recheck_interval * 5) as wakeups:
            while ctx.state == "open":
                wakeups.rearm()
                try:
                    next_due = await ctx.pools.pool_expire_wakes(now=ctx.now())
                except AgentCommError:  # e.g. locked past the busy timeout: try again soon
                    next_due = ctx.now() + 1.0
                except Exception:  # a bug must not end the loop silently
                    logger.exception("agentcomm pool wake pass failed; retrying in 1 s")
                    next_due = ctx.now() + 1.0
                await wakeups.wait(next_due)

    async def _run_retention(self) -> None:
        ctx = self._ctx
        while await ctx.tasks.sleep(self.retention.interval):
            try:
                await ctx.backend.prune(ctx.now())
                if self.refs.config.gc != "manual":
                    await ctx.references.ref_gc(now=ctx.now())
            except (
                AgentCommError
            ) as exc:  # e.g. locked past the busy timeout: the next pass retries
                logger.info("retention pass failed (%s); the next one retries", exc)
            except Exception:  # a bug must not end housekeeping silently
                logger.exception("agentcomm retention pass failed; retrying next interval")

    # --- agents and mailboxes ------------------------------------------------------------------

    async def pool(self, name: str, *, config: PoolConfig | None = None) -> Pool:
        """Create agent pool `name` with `config` (None: the default `PoolConfig()`), or
        attach to it. Opening an existing pool with a different config raises
        PoolConfigConflict (atomically, also when two processes create it at once); with
        `config=None` or an equal one it returns the same pool. See `Pool`."""
        ctx = self._require_backend()
        pool = await open_pool(ctx, ctx.pools, name, config)
        self._start_pool_wakes()
        return pool

    def _start_pool_wakes(self) -> None:
        """Start the pass that times out due pool wakes (once; not for a hub whose store
        runs it elsewhere). A server starts it when it opens: its clients' store calls never
        go through `pool()`."""
        if (
            self._background
            and not self._pool_wakes_started
            and not self._backend.housekeeping_elsewhere
        ):
            self._pool_wakes_started = True
            self._ctx.spawn(self._run_pool_wakes())

    @awaitable
    async def agent(self, name: str, *, create: bool = True) -> Agent:
        """Register agent `name` (or attach to it if it exists) and return its handle.

        With `create=False` it only attaches: an agent that was never registered raises
        UnknownAgent instead of getting a new, empty mailbox (which is how a typo in a
        worker's name would otherwise wait forever). Any number of hubs and processes may
        attach to one agent: they share its mailbox as competing consumers, each message
        delivered to one of them (see docs/workers.md).
        """
        check_name("agent name", name)
        check_bool("create", create)
        ctx = self._require_backend()
        now = ctx.now()
        if create:
            await ctx.mailboxes.register_agent(name, now)
        elif await ctx.mailboxes.get_agent(name) is None:
            raise UnknownAgent(name)
        else:
            await ctx.mailboxes.touch_agent(name, seen=now, active=None)
        ctx.presence.attached(name, now)
        handle = self._agents.get(name)
        if handle is None:
            handle = self._agents[name] = Agent(self._ctx, name)
        return handle

    async def agents(self) -> list[AgentInfo]:
        """Every registered agent with when it was created, last seen and last active, and
        its state ("active", "idle" or "gone") by this hub's `Presence` thresholds."""
        ctx = self._require_backend()
        infos = await ctx.mailboxes.list_agents()
        p = ctx.settings.presence
        now = ctx.now()
        return [
            msgspec.structs.replace(info, state=state_of(info, now, p.active, p.gone))
            for info in infos
        ]

    async def _known(self, agent: str) -> Context:
        """The context, once `agent` is known to be a registered agent (else UnknownAgent)."""
        check_name("agent name", agent)
        ctx = self._require_backend()
        if agent not in self._agents and await ctx.mailboxes.get_agent(agent) is None:
            raise UnknownAgent(agent)
        return ctx

    async def queue_depth(self, agent: str) -> int:
        """How many messages wait to be delivered to `agent` (ready or delayed); raises
        UnknownAgent if no agent of that name was ever registered."""
        return (await self.mailbox_stats(agent)).pending

    async def mailbox_stats(self, agent: str) -> MailboxStats:
        """Counts of `agent`'s mailbox: ready, delayed, in flight, dead (UnknownAgent if no
        such agent was registered)."""
        ctx = await self._known(agent)
        return await ctx.mailboxes.mailbox_stats(agent)

    async def pending(self, agent: str, *, limit: int = 100) -> list[PendingInfo]:
        """Messages waiting for or leased by `agent`, best first, without payloads
        (UnknownAgent if no such agent was registered); `peek` lists them with payloads."""
        check_name("agent name", agent)
        check_int("limit", limit, 1, MAX_LISTING)
        return await (await self._known(agent)).mailboxes.pending(agent, limit=limit)

    async def wait_for_mail(self, agent: str, *, timeout: float | None = None) -> bool:
        """Wait until a message is ready for `agent`, without receiving it (a peek: nothing
        is leased or counted); True then, False if `timeout` seconds pass first (`None`
        waits as long as it takes, 0 only looks). Wakes on the send itself, also from other
        processes, never by polling; ends with HubClosed if the hub closes.

        Ready means deliverable now: sent and not delayed, or a delivery whose lease ended.
        """
        check_name("agent name", agent)
        if timeout is not None:
            check_non_negative("timeout", timeout)
        ctx = await self._known(agent)
        with ctx.wakeups(mail_channel(agent), timeout=timeout) as wakeups:
            while True:
                ctx.check_open()
                wakeups.rearm()
                now = ctx.now()
                due: float | None = None
                for info in await ctx.mailboxes.pending(agent, limit=MAX_LISTING):
                    if info.expires_at is not None and info.expires_at <= now:
                        continue
                    if info.state == "ready" or info.visible_at <= now:
                        return True
                    due = info.visible_at if due is None else min(due, info.visible_at)
                if not await wakeups.wait(due):
                    return False

    async def dead_letters(self, agent: str, *, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered messages of `agent`, with reason and attempts, oldest first
        (UnknownAgent if no such agent was registered).

        A letter whose payload cannot be read (its blob is gone or damaged, or it cannot be
        decoded) is listed with `data=None` and the reason in `error`; the others list as usual.
        """
        check_name("agent name", agent)
        check_int("limit", limit, 1, MAX_LISTING)
        backend = await self._known(agent)
        letters = await backend.mailboxes.dead_letters(agent, limit=limit)
        out = []
        for letter in letters:
            if isinstance(letter.data, StoredRef):  # a dead letter still holds its payload
                ref = letter.data
                try:
                    data, kind, _ = await backend.refs.load(
                        ref.id.encode("ascii"), ref.kind | REF_FLAG
                    )
                    letter = msgspec.structs.replace(letter, data=decode_payload(data, kind))
                except (RefNotFound, IntegrityError, BackendError) as exc:
                    letter = msgspec.structs.replace(letter, data=None, error=str(exc))
            out.append(letter)
        return out

    async def requeue_dead_letters(self, agent: str, ids: list[str] | None = None) -> int:
        """Deliver dead letters of `agent` again (all, or those in `ids`) with fresh attempts
        (UnknownAgent if no such agent was registered)."""
        check_name("agent name", agent)
        if ids is not None:
            if isinstance(ids, str):
                raise ValidationError("ids= takes a list of message ids, not one string.")
            try:
                ids = [check_text("message id", i, longest=64, empty=False) for i in ids]
            except TypeError:
                raise ValidationError(f"ids= takes a list of message ids, not {ids!r}.") from None
        backend = await self._known(agent)
        return await backend.mailboxes.requeue_dead(agent, ids, now=self._ctx.now())

    # --- operators -----------------------------------------------------------------------------

    async def peek(self, agent: str, *, limit: int = 100) -> list[PeekedMessage]:
        """Messages waiting for or leased by `agent` (ready, delayed, in flight), best first,
        with their payloads and metadata, without consuming them (UnknownAgent if no such
        agent was registered). A payload stored by reference is loaded; one that cannot be
        read is listed with `data=None` and the reason in `error`."""
        check_name("agent name", agent)
        check_int("limit", limit, 1, MAX_LISTING)
        ctx = await self._known(agent)
        return [await self._peeked(r) for r in await ctx.mailboxes.peek(agent, limit=limit)]

    async def _peeked(self, r: PeekRecord) -> PeekedMessage:
        i = r.info
        data: Any = None
        metadata: dict[str, Any] = {}
        ref: str | None = None
        error = r.error
        if error is None:
            try:
                data = decode_payload(r.data, r.data_kind)
                metadata = decode_metadata(r.metadata)
                if isinstance(data, StoredRef):
                    ref = data.id
                    raw, kind, _ = await self._ctx.refs.load(
                        ref.encode("ascii"), data.kind | REF_FLAG
                    )
                    data = decode_payload(raw, kind)
            except AgentCommError as exc:  # the blob is gone or damaged, or cannot be decoded
                data, error = None, str(exc)
        return PeekedMessage(
            id=i.id, sender=i.sender, recipient=i.recipient, type=i.type, priority=i.priority,
            state=i.state, attempt=i.attempt, max_attempts=r.max_attempts,
            enqueued_at=i.enqueued_at, visible_at=i.visible_at, expires_at=i.expires_at,
            size=i.size, data=data, metadata=metadata, correlation_id=r.correlation_id,
            ref=ref, error=error,
        )  # fmt: skip

    async def delete_message(self, agent: str, message_id: str) -> bool:
        """Remove message `message_id` from `agent`'s mailbox, whether ready, delayed, in
        flight or dead-lettered; False if it holds no such message (UnknownAgent if no such
        agent was registered). A consumer holding it in flight can no longer settle it; a
        request removed so gets no reply (its requester waits until its timeout)."""
        check_name("agent name", agent)
        check_text("message id", message_id, longest=64, empty=False)
        ctx = await self._known(agent)
        return await ctx.mailboxes.delete_message(agent, message_id, now=ctx.now())

    async def purge(self, agent: str, *, dead_letters: bool = False) -> int:
        """Remove every message waiting for or leased by `agent` (ready, delayed, in flight)
        and, with `dead_letters=True`, its dead letters too; returns how many were removed
        (UnknownAgent if no such agent was registered). Cannot be undone."""
        check_name("agent name", agent)
        check_bool("dead_letters", dead_letters)
        ctx = await self._known(agent)
        return await ctx.mailboxes.purge(agent, dead=dead_letters, now=ctx.now())

    async def remove_agent(self, agent: str) -> bool:
        """Unregister `agent`: remove it, every message addressed to it (dead letters
        included) and the schedules that send to it; False if it was not registered.

        A hub still serving it finds an empty mailbox; a send to it then raises UnknownAgent
        (unless `auto_register`). Hubs of other processes on SQLite may still send to it
        until they reopen the store (they remember agents they have checked)."""
        check_name("agent name", agent)
        ctx = self._require_backend()
        removed = await ctx.mailboxes.remove_agent(agent, now=ctx.now())
        self._agents.pop(agent, None)
        return removed

    async def consumers(self) -> list[ConsumerInfo]:
        """Every durable topic consumer (`subscribe(..., durable=name)`) by name, with its
        position in the topic log, its lag (retained records after its position that it will
        receive), its pending deliveries (leased, not acked) and the records it lost to
        retention since its last claim."""
        ctx = self._require_backend()
        topics = ctx.topics
        records = await topics.list_consumers()
        head = await topics.topic_head()
        lags = [0] * len(records)
        filters = [consumer_filter(r.spec) for r in records]
        after = min((r.position for r in records), default=head)
        while after < head:  # one pass over the retained log after the earliest position
            batch = await topics.read_topics(after, exclude_origin="\0", limit=1000)
            for rec in batch.records:
                for i, r in enumerate(records):
                    if rec.seq > r.position and filters[i].matches(
                        rec.topic, rec.sender, rec.type, rec.metadata
                    ):
                        lags[i] += 1
            if batch.through <= after:
                break
            after = batch.through
        return [
            ConsumerInfo(
                name=r.spec.name,
                pattern=r.spec.pattern,
                senders=r.spec.senders,
                types=r.spec.types,
                position=r.position,
                head=max(head, r.position),
                lag=lags[i],
                pending=r.pending,
                lost=r.lost,
            )
            for i, r in enumerate(records)
        ]

    async def namespaces(self) -> list[NamespaceInfo]:
        """Every shared-memory namespace written to, with its live keys and their bytes and
        its writes and conflicts: shared ones (`owner` None) and agents' private ones."""
        ctx = self._require_backend()
        store = ctx.shared_memory
        now = ctx.now()
        out = []
        for space in await store.kv_spaces():
            c = await store.kv_counts(space, now=now)
            owner = space.owner or None
            out.append(
                NamespaceInfo(space.namespace, owner, c.keys, c.bytes, c.writes, c.conflicts)
            )
        return sorted(out, key=lambda n: (n.owner is not None, n.owner or "", n.namespace))

    async def pools(self) -> list[PoolSnapshot]:
        """A snapshot of every agent pool (see `Pool.snapshot`), by name."""
        ctx = self._require_backend()
        store = ctx.pools
        out = []
        for name in await store.pool_names():
            try:  # its config comes from the snapshot: the one given here is not used
                out.append(await Pool(ctx, store, name, PoolConfig()).snapshot())
            except NotFound:  # removed since it was listed
                continue
        return out

    async def prefixes(self) -> dict[str, int]:
        """Redis only: every key prefix on the server that holds agentcomm data, with its key
        count (this hub's own included if it holds any). A hub on another backend raises
        ConfigurationError. It scans the whole keyspace: an operator's call, not a hot one."""
        found = await self._require_backend().backend.prefixes()
        if found is None:
            raise ConfigurationError(
                f"{self.url.split(':', 1)[0]}:// stores have no key prefixes; only redis:// "
                "stores do."
            )
        return found

    # --- schedules -----------------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, soonest first."""
        return await self._require_backend().mailboxes.list_schedules()

    async def cancel_schedule(self, schedule_id: str) -> bool:
        """Stop a schedule; False if no schedule had that id."""
        check_text("schedule_id", schedule_id, longest=64, empty=False)
        return await self._require_backend().mailboxes.cancel_schedule(schedule_id)

    # --- topics ------------------------------------------------------------------------------

    async def topics(self) -> list[TopicStats]:
        """Stats of every topic published to (and still within retention), by name."""
        return await self._topic_bus.stats(None)

    def subscribe(
        self,
        pattern: str,
        *,
        senders: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscribing:
        """Watch publishes to topics matching `pattern` as an observer, not as an agent (a
        monitor, `agentcomm tail --topic`): a live subscription, as `agent.subscribe` without
        `durable`, that registers no agent. Use it as `sub = await hub.subscribe(...)` or
        `async with hub.subscribe(...) as sub:`."""
        ctx = self._ctx
        subscribe = functools.partial(
            ctx.bus.subscribe, pattern, senders=senders, types=types, metadata=metadata,
            buffer=buffer, durable=None, start=None, lease=ctx.settings.lease,
        )  # fmt: skip
        return Subscribing(subscribe)

    async def topic_stats(self, name: str) -> TopicStats:
        """Published, delivered, dropped, subscribers and last publish of topic `name`.

        `subscribers` counts this hub's live subscriptions plus the durable consumers whose
        pattern matches; a topic never published to has zero counts.
        """
        parse_topic(name)
        return (await self._topic_bus.stats(name))[0]

    # --- shared memory -------------------------------------------------------------------------

    def memory(
        self, namespace: str, *, history: int | None = None, change_log: int | None = None
    ) -> SharedMemory:
        """The shared-memory namespace `namespace` (see `SharedMemory`).

        `history` (versions kept per key, default 1) and `change_log` (changes kept for
        watchers, default 10,000), when given, become the namespace's settings at its next
        write. Writes through this handle have no author; use `agent.memory(namespace)` to
        record one.
        """
        return SharedMemory._open(
            self._ctx, namespace, agent=None, history=history, change_log=change_log
        )

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self) -> PruneReport:
        """Run a retention pass now (the hub also runs one every `retention.interval`)."""
        return await self._require_backend().backend.prune(self._ctx.now())

    async def check(self) -> CheckReport:
        """Check the store for damage (SQLite: `PRAGMA integrity_check` and stored records that
        cannot be decoded) and report what is wrong; `agentcomm check URL` prints this."""
        return await self._require_backend().backend.check()

    async def stats(self) -> HubStats:
        """Counters: sent, deduplicated, expired, dead-lettered, late replies, scheduled runs."""
        return await self._require_backend().backend.stats()
