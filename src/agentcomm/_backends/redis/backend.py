"""The Redis backend: every hub on every machine that uses one Redis (and one prefix) shares
one store.

Each state change is one Lua script call (see `scripts.py`), atomic on the server; each
feature is an object of its own module (`mailbox.py`, `topics.py`, `shared_memory.py`,
`references.py`) with its Lua beside it. This module keeps the core: the client, the pub/sub
listener that wakes this hub's waiters for changes made by other hubs, and open / close /
prune / stats. A re-check every `recheck_interval` seconds covers a wake-up lost while the
connection was down.

Closing does not rely on cancelling anything: the background tasks end on a closed flag plus
a wake-up (the flag is set, the pub/sub connection closed, an event set), and `close()`
returns within `CLOSE_TIMEOUT` seconds even if the server is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from ..._errors import BackendError, BackendUnavailable, ConfigurationError
from ..._ids import new_id
from ..._models import HubStats, PruneReport
from ..._notify import Notifier
from ..._records import Claimed, StoredReply
from ..._settings import Retention
from ..contracts import Backend
from .errors import CLOSE_ERRORS, redis_errors, text
from .leases import RedisLeases
from .mailbox import RedisMailboxes
from .pools import RedisPools
from .references import RedisReferences
from .scripts import DEFAULT_COMMAND_TIMEOUT, Scripts
from .shared_memory import RedisSharedMemory
from .topics import RedisTopics

#: Seconds `close()` takes at most: its tasks and the server get 3/4 of it, closing the
#: connections the rest.
CLOSE_TIMEOUT = 2.0

_PREFIX = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_LISTEN_BACKOFF_MAX = 1.0
_IDLE_PING = 30.0  # seconds without a wake-up before the listener checks its connection

#: Connection events of the Redis backend (INFO: the wake-up connection lost and back).
log = logging.getLogger("agentcomm.redis")


def check_prefix(prefix: str) -> str:
    """A key prefix: 1-64 letters, digits or `_ . : @ -`."""
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ConfigurationError(
            f"Invalid Redis key prefix {prefix!r}: use 1-64 letters, digits or '_ . : @ -'."
        )
    return prefix


#: Keys only agentcomm writes at the top of a prefix: `prefixes()` finds prefixes by them.
_MARKERS = tuple(
    f":{name}" for name in ("agents", "seq", "counters", "tp:seq", "kvspaces", "pl:all", "refs")
)


class RedisBackend(Backend):
    """Implements the backend contract on a Redis server (5.0 or newer; 7.0 or newer runs
    the scripts as Functions libraries, see `scripts.py`)."""

    #: a receive waits in this process, for a message its store delivers (`claim_waiting`)
    waits_locally = True

    def __init__(
        self,
        url: str,
        retention: Retention,
        *,
        prefix: str = "agentcomm",
        recheck_interval: float = 1.0,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        functions: bool = True,
    ) -> None:
        self.retention = retention
        self.recheck_interval = recheck_interval
        self.notifier = Notifier()
        self._prefix = check_prefix(prefix) + ":"
        self._origin = new_id()
        self._where = _redact(url)
        try:
            # every round trip is bounded by `Scripts.bound` (one timer per call); no socket
            # timeout by default: redis-py would arm another timer for every read
            self._client = _connect(url, Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3))
            # the wake-up connection has a client of its own that never retries by itself: the
            # listener reconnects (with its own backoff), and a read ends when `close()` closes
            # the connection instead of being retried on a new one
            self._wake_client = _connect(url, Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise ConfigurationError(f"Bad Redis URL {self._where}: {exc}") from exc
        self._scripts = Scripts(
            self._client, self._prefix, self._origin, self._where, self.notifier,
            command_timeout, functions,
        )  # fmt: skip
        self._mailboxes = RedisMailboxes(self._scripts, retention)
        self._topics = RedisTopics(self._scripts, retention)
        self._shared_memory = RedisSharedMemory(self._scripts)
        self.mailboxes = self._mailboxes
        self.topics = self._topics
        self.shared_memory = self._shared_memory
        self.references = RedisReferences(self._scripts, lambda: self.ref_gc_strategy)
        self._pools = RedisPools(self._scripts, retention)
        self.pools = self._pools
        self.leases = RedisLeases(self._scripts)
        # a receive waits in `claim_waiting` (for a delivery or a wake-up) as long as the
        # safety re-check would let it
        self.remote_wait = recheck_interval
        self._closed = False
        self._closing = asyncio.Event()  # set with `_closed`: wakes the watchdog and backoffs
        self._listener: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pubsub: aioredis.client.PubSub | None = None  # the listener's current one
        self._heard = 0.0  # loop time of the last message on the wake connection

    # --- plumbing --------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._scripts.command(self._client.ping())
            await self._subscribe()
        except BaseException:
            await self._close_clients()
            raise
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        self._listener = loop.create_task(self._listen())
        self._watchdog = loop.create_task(self._watch_listener())

    async def close(self) -> None:
        """Stop the background tasks and close the connections, within `CLOSE_TIMEOUT`
        seconds even if the server is gone. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self.notifier.wake_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT

        def left(share: float) -> float:
            return max(deadline - loop.time(), 0.0) * share

        if self._pubsub is not None:  # ends the listener's read: it finds the flag set
            await _close(self._pubsub, left(1 / 4))
        work = {loop.create_task(self._leave())}
        work.update(t for t in (self._listener, self._watchdog) if t is not None)
        work.update(self._mailboxes.pending_cleanup())
        _, stuck = await asyncio.wait(work, timeout=left(3 / 4))
        for task in stuck:  # a last resort, not the way they end: nothing waits for them
            task.cancel()
        self._listener = self._watchdog = None
        if self._pubsub is not None:  # the listener may have subscribed again meanwhile
            await _close(self._pubsub, left(1 / 2))
            self._pubsub = None
        await self._close_clients(left(1))
        self.notifier.wake_all()  # whoever began to wait meanwhile

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
        """See `RedisMailboxes.claim_waiting`: a waiting receive gets its message delivered."""
        return await self._mailboxes.claim_waiting(
            agent, max_messages=max_messages, lease=lease, now=now, wait=wait, also=also
        )

    async def take_reply_waiting(self, correlation_id: str, *, wait: float) -> StoredReply | None:
        """See `RedisMailboxes.take_reply_waiting`: the reply comes by pub/sub."""
        return await self._mailboxes.take_reply_waiting(correlation_id, wait=wait)

    async def _leave(self) -> None:
        """No longer count as a hub to wake (see `publish` in scripts.py)."""
        with contextlib.suppress(*CLOSE_ERRORS):
            await self._client.srem(self._prefix + "hubs", self._origin)

    async def _close_clients(self, timeout: float = CLOSE_TIMEOUT) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    self._wake_client.aclose(), self._client.aclose(), return_exceptions=True
                )

    async def _subscribe(self) -> aioredis.client.PubSub:
        """A pub/sub connection subscribed to the wake channel and to this hub's own channel
        (the messages the mailbox script delivers to its waiting receives), confirmed by the
        server. A user who may not use the hub's own channel gets the wake channel alone:
        its receives then claim after their wake-up, as before deliveries existed."""
        wake = self._prefix + "wake"
        channels = [wake]
        if self._mailboxes.deliveries:
            channels.append(f"{wake}:{self._origin}")
        try:
            return await self._subscribe_to(channels)
        except BackendError as exc:
            if len(channels) == 1 or not isinstance(exc.__cause__, rexc.NoPermissionError):
                raise
            self._mailboxes.deliveries = False
            log.info(
                "Redis at %s refused this hub's own channel (%s); its receives claim after "
                "each wake-up instead of having messages delivered",
                self._where, exc.__cause__,
            )  # fmt: skip
            return await self._subscribe_to([wake])

    async def _subscribe_to(self, channels: list[str]) -> aioredis.client.PubSub:
        pubsub = self._pubsub = self._wake_client.pubsub()
        try:
            with redis_errors(self._where):
                await pubsub.subscribe(*channels)
                confirmed = 0
                while confirmed < len(channels):  # from now on no wake-up is missed
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        raise BackendUnavailable(f"Redis at {self._where} did not subscribe.")
                    if msg["type"] == "subscribe":
                        confirmed += 1
                # only now, subscribed, does this hub count as one to wake (see `publish`)
                await self._client.sadd(self._prefix + "hubs", self._origin)
                return pubsub
        except BaseException:
            self._pubsub = None
            await _close(pubsub, CLOSE_TIMEOUT / 4)
            raise

    async def _listen(self) -> None:
        """Wake this hub's waiters for changes made by other hubs; reconnect on loss, until
        the backend is closed."""
        delay = 0.05
        lost = False
        while not self._closed:
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self.notifier.wake_all()  # changes made while we were away
                    delay = 0.05
                    if lost:
                        log.info("reconnected to Redis at %s", self._where)
                        lost = False
                await self._relay(pubsub)
            except Exception as exc:  # whatever broke the connection: reconnect unless closed
                if self._closed:
                    break
                if not lost:
                    log.info(
                        "lost the wake-up connection to Redis at %s (%s: %s); reconnecting",
                        self._where, type(exc).__name__, exc,
                    )  # fmt: skip
                    lost = True
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    await _close(pubsub, CLOSE_TIMEOUT / 4)
                await self._pause(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX)

    async def _relay(self, pubsub: aioredis.client.PubSub) -> None:
        """Relay wake-ups and replies from `pubsub` until its connection fails or closes."""
        origin = self._origin.encode()
        notify = self.notifier.notify
        deliver_reply = self._mailboxes.deliver_reply
        deliver = self._mailboxes.deliver
        loop = asyncio.get_running_loop()
        while not self._closed:
            # no read timeout: redis-py would arm a timer for every message (see
            # `_watch_listener` for a connection that dies silently)
            msg = await pubsub.get_message(timeout=None)
            self._heard = loop.time()
            if msg is None or msg["type"] != "message":
                continue
            data: bytes = msg["data"]
            if data[:1] == b"\1":
                cid, _, reply = data[1:].partition(b"\n")
                deliver_reply(cid.decode(), reply)
                continue
            if data[:1] == b"\2":
                deliver(data[1:])
                continue
            sender, _, channels = data.partition(b"\n")
            if sender != origin:
                notify(channels.decode().split("\n"))

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the backend is closed meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _watch_listener(self) -> None:
        """PING the wake connection when it has been quiet for a while; drop it if even that
        gets no answer, so `_listen` reconnects (a connection can die without a word)."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._pause(_IDLE_PING)
            pubsub = self._pubsub
            quiet = loop.time() - self._heard
            if self._closed or pubsub is None or quiet < _IDLE_PING:
                continue
            if quiet >= 2.5 * _IDLE_PING and pubsub.connection is not None:
                with contextlib.suppress(*CLOSE_ERRORS):
                    await pubsub.connection.disconnect()
                continue
            with contextlib.suppress(*CLOSE_ERRORS):
                await pubsub.ping()

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float) -> PruneReport:
        expired, dead, pruned, dedupe, requests = await self._mailboxes.prune(now)
        await self._shared_memory.prune(now)
        topic_records = await self._topics.prune(now)
        pool_records = await self._pools.prune(now)
        return PruneReport(
            expired, dead, pruned, dedupe, requests, topic_records,
            pruned_pool_records=pool_records,
        )  # fmt: skip

    async def prefixes(self) -> dict[str, int]:
        """Every key prefix on this server that holds agentcomm data, with its key count: a
        prefix is recognised by a key only agentcomm writes at its top (`<prefix>:agents`,
        `<prefix>:tp:seq`, ...). One SCAN over the whole keyspace."""
        names: set[str] = set()
        found: set[str] = set()
        cursor: int = 0
        while True:
            cursor, keys = await self._scripts.command(self._client.scan(cursor, count=1000))
            for key in keys:
                name = text(key)
                names.add(name)
                for marker in _MARKERS:
                    if name.endswith(marker) and _PREFIX.fullmatch(name[: -len(marker)]):
                        found.add(name[: -len(marker)])
            if cursor == 0:
                break
        # a marker inside another prefix's keys (a topic named "agents": `P:tp:s:agents`)
        # is not a prefix of its own
        prefixes = sorted(found, key=len)
        kept = [p for p in prefixes if not any(p.startswith(q + ":") for q in prefixes if q != p)]
        out = dict.fromkeys(sorted(kept), 0)
        for name in names:
            owner = max((p for p in kept if name.startswith(p + ":")), key=len, default=None)
            if owner is not None:
                out[owner] += 1
        return out

    async def stats(self) -> HubStats:
        s = self._scripts
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._prefix + "counters")
            pipe.get(self._prefix + "seq")
            counters, seq = await s.command(pipe.execute())
        values = {text(k): int(v) for k, v in counters.items()}
        values["sent"] = int(seq or 0)  # every stored message took the next sequence number
        return HubStats(**{f: values.get(f, 0) for f in HubStats.__struct_fields__})


def _connect(url: str, retry: Retry) -> aioredis.Redis:
    """A client for `url` (connections are made on first use)."""
    return aioredis.Redis.from_url(
        url,
        retry=retry,
        socket_connect_timeout=5.0,
        # explicitly none: redis-py 8.1 defaults to 5 s, which costs a task (`wait_for`) per
        # send and a timer per read; every round trip is bounded by `Scripts.bound` instead
        socket_timeout=None,
        # RESP2 unless the URL asks otherwise: its pure-Python parser is the faster one; with
        # hiredis installed (the `hiredis` extra) redis-py parses either in C
        protocol=2,
        socket_keepalive=True,
    )


async def _close(pubsub: aioredis.client.PubSub, timeout: float) -> None:
    with contextlib.suppress(*CLOSE_ERRORS, TimeoutError):
        # bounded: a connection stuck mid-read must not hold up the hub's close
        async with asyncio.timeout(max(timeout, 0.0)):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)
