"""The backend contracts: one small ABC per feature, and the core every backend implements.

A backend is a `Backend` (open, close, prune, stats) that carries one object per feature it
implements: `mailboxes` (`MailboxStore`: agents, messages, replies, schedules), `topics`
(`TopicStore`), `shared_memory` (`SharedMemoryStore`) and `references` (`ReferenceStore`).
A feature it lacks is None; the feature layer then raises `ConfigurationError`.

Backends store *encoded* records (see `agentcomm._models`); validation, encoding, ids, clocks
and waiting live once in the feature layer (`hub.py`, `agent.py`, `mailbox.py`). Every method
that changes state must be atomic on its own, also against other processes using the same
store. After a change, a backend notifies the channels it touched on `self.notifier`:

- `mail:<agent>`: a message became ready (or may have) for `<agent>`;
- `reply:<correlation id>`: a reply arrived;
- `schedules`: a schedule was added or cancelled;
- `kv:<owner>/<namespace>` (`Space.channel`): a shared-memory space got a change-log entry;
- `topics` and `topics:<first token>`: a publish to a topic with that first token;
  `topic-consumer:<name>`: deliveries of durable consumer `<name>` were released or it was
  rewound (see `agentcomm._subjects`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from .._kv_records import KVChanges, KVCounts, KVOutcome, KVRecord, KVSnapshot, KVWrite, Space
from .._lease_models import Lease, LeaseResult, LeaseWant
from .._models import (
    AgentInfo,
    CheckReport,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    ScheduleInfo,
    TopicStats,
)
from .._notify import Notifier
from .._pool_records import (
    MemberRecord,
    NewPoolMessage,
    PoolPage,
    PoolSnapshotRecord,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from .._records import (
    Claimed,
    ConsumerRecord,
    ConsumerSpec,
    NewMessage,
    NewTopicRecord,
    PeekRecord,
    ScheduleSpec,
    Settle,
    StoredReply,
    TopicBatch,
    TopicClaim,
    TopicRecord,
)
from .._ref_records import Ref, RefMeta, RefStats
from .._settings import Retention


class MailboxStore(abc.ABC):
    """Agents, their mailboxes, request / reply slots and schedules.

    Every method that changes state is atomic on its own, also against other processes using
    the same store, and notifies the channels it touched (`agentcomm._backends.common`).

    Whatever dead-letters a message (a settle, a claim or prune finding a lease used up)
    also, in the same transaction: writes `_records.failed_reply` into its reply slot if it
    is a request whose requester still waits (notifying `reply:<id>`), and appends a
    dead-letter notice (`common.dead_notice`) to topic `common.dead_topic(recipient)` with
    origin `SYSTEM_ORIGIN` (notifying the topic channels). Expiring a request also writes a
    failure reply (reason `common.expired_reason`), but no notice.
    """

    # --- agents ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def register_agent(self, name: str, now: float) -> AgentInfo:
        """Register `name`, or refresh its `last_seen` if it exists."""

    @abc.abstractmethod
    async def list_agents(self) -> list[AgentInfo]:
        """Every registered agent, by name."""

    @abc.abstractmethod
    async def get_agent(self, name: str) -> AgentInfo | None:
        """Agent `name` as `list_agents` lists it, or None if it was never registered."""

    @abc.abstractmethod
    async def touch_agent(self, name: str, *, seen: float, active: float | None) -> None:
        """Record activity of agent `name`: `last_seen` becomes `seen` and, if given,
        `last_active` becomes `active`. Changes nothing if `name` is not registered."""

    # --- mailboxes ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(
        self, messages: Sequence[NewMessage], *, auto_register: bool, now: float
    ) -> list[str]:
        """Store messages in order and return their ids.

        A message whose (sender, recipient, idempotency_key) was seen before its dedupe window
        ended is not stored; the first message's id is returned in its place. An unknown
        recipient raises UnknownAgent unless `auto_register`. A message with
        `request_deadline` also opens a reply slot for its correlation id.
        """

    @abc.abstractmethod
    async def claim(self, agent: str, *, max_messages: int, lease: float, now: float) -> Claimed:
        """Lease up to `max_messages` ready messages for `agent`, best first.

        Highest priority first, FIFO within a priority. Before claiming, due delayed messages
        become ready, and expired leases become ready again, or dead when their attempts are
        used up. Expired messages are never returned. `next_wake` is the earliest time a
        delayed message or a lease of this mailbox falls due. A claimed request records its
        attempt in its reply slot (see `request_attempts`).
        """

    @abc.abstractmethod
    async def settle(self, op: Settle, *, now: float) -> bool:
        """Ack, nack, dead-letter or extend one delivery. False if the lease was lost."""

    @abc.abstractmethod
    async def settle_many(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        """Settle several deliveries in one atomic step; one result per op, as `settle`."""

    @abc.abstractmethod
    async def release(self, ops: Sequence[Settle], *, now: float) -> list[bool]:
        """Hand deliveries back unprocessed (kind `RELEASE`), in one atomic step: each one
        still in flight at its (seq, attempt) becomes ready at once and its attempt count goes
        back by one, so this delivery does not count towards dead-lettering. One result per op:
        False if the lease was lost (the delivery is no longer in flight at that attempt)."""

    @abc.abstractmethod
    async def mailbox_stats(self, agent: str) -> MailboxStats:
        """Counts of `agent`'s mailbox by state."""

    @abc.abstractmethod
    async def pending(self, agent: str, *, limit: int) -> list[PendingInfo]:
        """Undelivered and in-flight messages of `agent`, best first, without payloads."""

    @abc.abstractmethod
    async def dead_letters(self, agent: str, *, limit: int) -> list[DeadLetter]:
        """Dead-lettered messages of `agent`, oldest first."""

    @abc.abstractmethod
    async def requeue_dead(self, agent: str, ids: Sequence[str] | None, *, now: float) -> int:
        """Make dead letters ready again with a fresh attempt count; None means all of them."""

    # --- operators -----------------------------------------------------------------------------
    # Removing a message (delete, purge, remove_agent) drops the reference its payload holds
    # in the same transaction, as a prune does, and notifies `mail:<agent>`. A removed request
    # gets no failure reply: its requester waits until its timeout.

    @abc.abstractmethod
    async def peek(self, agent: str, *, limit: int) -> list[PeekRecord]:
        """What `pending` lists, with each message's encoded payload, metadata, max attempts
        and correlation id; changes nothing."""

    @abc.abstractmethod
    async def delete_message(self, agent: str, message_id: str, *, now: float) -> bool:
        """Remove the message `message_id` of `agent`'s mailbox if it is ready, delayed, in
        flight or dead; False if there is none (a lease on it is then lost)."""

    @abc.abstractmethod
    async def purge(self, agent: str, *, dead: bool, now: float) -> int:
        """Remove every ready, delayed and in-flight message of `agent` (and, with `dead`,
        its dead letters); returns how many."""

    @abc.abstractmethod
    async def remove_agent(self, name: str, *, now: float) -> bool:
        """Unregister agent `name`: remove it, every message addressed to it (in any state)
        and the schedules that send to it; False if it was not registered."""

    # --- request / reply ---------------------------------------------------------------------

    @abc.abstractmethod
    async def post_reply(
        self, correlation_id: str, reply: StoredReply, ack: Settle | None, *, now: float
    ) -> bool:
        """Hand a reply to its waiting requester and settle the request, atomically.

        Returns False, counting a late reply, when no requester waits any more.
        """

    @abc.abstractmethod
    async def take_reply(self, correlation_id: str, *, abandon: bool) -> StoredReply | None:
        """Remove and return the reply if it arrived. With `abandon`, also close the slot so a
        later reply is counted as late."""

    @abc.abstractmethod
    async def request_attempts(self, correlation_id: str) -> int:
        """How many times the request with this reply slot was delivered (claimed); 0 if
        never, or if the slot is gone. Each claim of a request records its attempt in the
        slot, in the claim's transaction."""

    # --- schedules ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_schedule(self, spec: ScheduleSpec, *, auto_register: bool) -> None:
        """Store a schedule."""

    @abc.abstractmethod
    async def cancel_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule; False if there was none."""

    @abc.abstractmethod
    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, soonest first."""

    @abc.abstractmethod
    async def fire_due(self, now: float) -> float | None:
        """Enqueue one message for every schedule due at `now` and move each to its next
        occurrence, in one atomic step. Returns the next time a schedule falls due."""


class TopicStore(abc.ABC):
    """The topic log, per-topic stats and durable consumers."""

    # --- topics ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, record: NewTopicRecord, *, now: float) -> TopicRecord:
        """Append a publish to the topic log, count it in the topic's stats, and return it as
        stored, with its sequence (increasing per store, never reused)."""

    @abc.abstractmethod
    async def topic_head(self) -> int:
        """The sequence of the latest publish (0 if none)."""

    @abc.abstractmethod
    async def read_topics(self, after: int, *, exclude_origin: str, limit: int) -> TopicBatch:
        """Log records after sequence `after`, oldest first, skipping those published by
        `exclude_origin`; at most `limit` records are scanned. `through` is the sequence to
        read after next time."""

    @abc.abstractmethod
    async def count_topic_deliveries(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """Add (delivered, dropped) counts of live subscribers to the topics' stats."""

    @abc.abstractmethod
    async def topic_stats(self, name: str | None) -> list[TopicStats]:
        """Stats of topic `name` (one entry, zeros if never published), or of every topic
        published to, by name. `subscribers` counts the durable consumers whose pattern matches
        (live subscribers are known only to their own hub)."""

    @abc.abstractmethod
    async def open_consumer(self, spec: ConsumerSpec, *, now: float) -> None:
        """Create a durable consumer, or attach to it. A `spec.start` other than the one the
        consumer was last started with rewinds it there, dropping its outstanding leases.

        Raises ValidationError if it exists with another pattern or other filters.
        """

    @abc.abstractmethod
    async def claim_topic(
        self,
        consumer: str,
        *,
        acks: Sequence[tuple[int, int]],
        releases: Sequence[tuple[int, int]],
        max_messages: int,
        lease: float,
        now: float,
    ) -> TopicClaim:
        """Settle, then lease up to `max_messages` records to durable `consumer`, atomically.

        `acks` and `releases` are (sequence, attempt) pairs of earlier deliveries: an ack
        removes the delivery, a release makes it deliverable again now; stale pairs are
        ignored. Records whose lease expired come first (attempt + 1), then records after the
        consumer's position that match its pattern and filters. `lost` counts records it lost
        to retention since the last claim; `next_wake` is its earliest lease end.
        """

    @abc.abstractmethod
    async def list_consumers(self) -> list[ConsumerRecord]:
        """Every durable consumer with its position, outstanding deliveries and lost count,
        by name."""


class SharedMemoryStore(abc.ABC):
    """Versioned key-value spaces with a change log."""

    # --- shared memory -----------------------------------------------------------------------
    # Keys of a `Space` carry versions from 1, +1 per write (deletes and expiries included; a
    # deleted key keeps a tombstone so its version keeps counting). Every write appends to the
    # space's change log (seq +1 per entry, bounded by the space's `change_log` setting) and
    # notifies `space.channel`. A live key whose `expires_at` passed reads as absent; the
    # operation that notices it first records the expiry (tombstone + EXPIRE change).

    @abc.abstractmethod
    async def kv_get(self, space: Space, key: str, *, now: float) -> KVRecord | None:
        """The live value of `key`, or None."""

    @abc.abstractmethod
    async def kv_put(self, space: Space, write: KVWrite, *, now: float) -> KVOutcome:
        """Store a value unless `write.expected_version` (0: absent) differs from the key's
        version, which counts a conflict and writes nothing. Keeps the key's last `history`
        versions."""

    @abc.abstractmethod
    async def kv_delete(
        self, space: Space, key: str, *, expected_version: int | None, by: str | None, now: float
    ) -> KVOutcome:
        """Delete a live key (checked like `kv_put`); version 0 in the outcome if absent."""

    @abc.abstractmethod
    async def kv_scan(self, space: Space, prefix: str | None, *, now: float) -> KVSnapshot:
        """Live entries whose key starts with `prefix`, by key (none if `prefix` is None),
        with the change-log position they reflect."""

    @abc.abstractmethod
    async def kv_changes(self, space: Space, after: int, *, limit: int, now: float) -> KVChanges:
        """Up to `limit` change-log entries with seq > `after`, in order, after recording the
        space's due expiries; `next_expiry` is when the next live key expires."""

    @abc.abstractmethod
    async def kv_history(self, space: Space, key: str, *, limit: int, now: float) -> list[KVRecord]:
        """The key's stored versions, newest first: the live one, then older ones."""

    @abc.abstractmethod
    async def kv_counts(self, space: Space, *, now: float) -> KVCounts:
        """Live keys and their bytes; writes and conflicts since the space was created."""

    @abc.abstractmethod
    async def kv_spaces(self) -> list[Space]:
        """Every space written to (and not dropped), by owner and namespace."""


class ReferenceStore(abc.ABC):
    """Content-addressed blobs with reference counts."""

    # --- references --------------------------------------------------------------------------
    # Blobs addressed by "sha256:<hex of the original bytes>", stored as chunks the feature
    # layer already compressed (and verifies on read). A stored payload whose kind has
    # `REF_FLAG` (its data is the id) holds one reference: the backend adds it in the
    # transaction that stores the row (message, reply slot, schedule, key, past version,
    # change-log entry) and drops it in the transaction that removes the row or ends its need
    # (ack, expiry, pruning of dead letters, overwrite, delete, trimming). Adds happen before
    # drops within a transaction. A blob is evictable when unreferenced and its `expires_at`
    # (a minimum lifetime) is None or passed; under the `ref_counting` strategy a drop that
    # makes it evictable evicts it in that same transaction.

    # Explicit references (`store`, `retain`, and the feature layer's transient holds) are
    # counted per holder, a name (`RefConfig.holder`, or the feature layer's own): `refcount`
    # is the total of the row references and every holder's, and a holder can drop only what
    # it holds. Eviction removes a blob's holder records with it.

    @abc.abstractmethod
    async def ref_put(
        self, meta: RefMeta, chunks: Sequence[bytes], *, holder: str, now: float
    ) -> Ref:
        """Store a blob with one reference held by `holder`; if `meta.id` is stored already,
        add one for `holder` (keeping the longer expiry) and store nothing."""

    @abc.abstractmethod
    async def ref_stage(self, upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
        """Store chunk `n` of a streamed upload (None: start a new one); returns the upload."""

    @abc.abstractmethod
    async def ref_commit(self, upload: int, meta: RefMeta, *, holder: str, now: float) -> Ref:
        """Turn a staged upload into the blob `meta.id` with one reference held by `holder`,
        as `ref_put` (the staged chunks are dropped if the id is stored already)."""

    @abc.abstractmethod
    async def ref_abort(self, upload: int) -> None:
        """Drop a staged upload."""

    @abc.abstractmethod
    async def ref_read(self, ref_id: str, start: int, limit: int) -> tuple[Ref | None, list[bytes]]:
        """The blob's record and up to `limit` stored chunks from chunk `start`, read atomically;
        (None, []) if it is not stored."""

    @abc.abstractmethod
    async def ref_adjust(
        self, ref_id: str, delta: int, *, holder: str | None, now: float
    ) -> Ref | None:
        """Add (+1) or drop (-1) a reference of `holder`; None if the blob is not stored. A
        drop by a holder that holds none raises `RefNotHeld` and changes nothing. `holder`
        None drops a reference a row handed over when it was removed (a taken reply's),
        without a holder record; it never goes below zero. The record returned is the one
        after the change."""

    @abc.abstractmethod
    async def ref_list(self) -> list[Ref]:
        """Every stored blob's record, by id."""

    @abc.abstractmethod
    async def ref_gc(self, *, now: float) -> list[Ref]:
        """Evict every evictable blob and drop abandoned uploads; count a GC run. Returns the
        evicted."""

    @abc.abstractmethod
    async def ref_stats(self) -> RefStats:
        """The store's reference counters."""


class PoolStore(abc.ABC):
    """Agent pools: membership, addressed messages with receipts, wakes and a per-pool log.

    The rules are in `pool_engine` (Python backends run them inside their transactions; Redis
    runs the same rules in Lua). Every method that changes a pool is one atomic step that
    appends its log records (seq per pool, from 1, without gaps), updates the state tables,
    enqueues to recipients' mailboxes, triggers the registered wakes the new records match, and
    first times out the pool's wakes whose deadline passed. Each append notifies
    `pool_channel(pool)`; registering a wake with a deadline notifies `POOL_WAKES_CHANNEL`.
    Operations on a pool that does not exist raise NotFound; on a run that is not a member,
    NotAMember.
    """

    @abc.abstractmethod
    async def pool_open(
        self, name: str, config: bytes | None, default: bytes, *, now: float
    ) -> bytes:
        """Create the pool with `config` (None: `default`), writing its `opened` record, or,
        if it exists, raise PoolConfigConflict unless `config` is None or equal (byte for
        byte); returns the stored config."""

    @abc.abstractmethod
    async def pool_join(self, pool: str, member: MemberRecord, *, now: float) -> StoredPoolRecord:
        """Add or update a member and register its run as an agent; ValidationError if the
        run is a member as another agent."""

    @abc.abstractmethod
    async def pool_leave(self, pool: str, run: str, *, now: float) -> StoredPoolRecord:
        """Cancel the run's registered wakes and remove it."""

    @abc.abstractmethod
    async def pool_send(self, message: NewPoolMessage, *, now: float) -> ReceiptRecord:
        """Address, deliver and record a message; see `pool_engine.send`."""

    @abc.abstractmethod
    async def pool_emit(
        self,
        pool: str,
        run: str,
        type: str,
        data: bytes,
        data_kind: int,
        metadata: bytes | None,
        *,
        now: float,
    ) -> StoredPoolRecord:
        """Record a custom event of a member run."""

    @abc.abstractmethod
    async def pool_receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        """A stored receipt by message id or idempotency key."""

    @abc.abstractmethod
    async def pool_wait_for(self, spec: WakeSpec, *, now: float) -> WakeRecord:
        """Register a wake, or return the one stored under its idempotency key."""

    @abc.abstractmethod
    async def pool_wake(
        self, pool: str, *, wake_id: str | None, key: str | None, now: float
    ) -> WakeRecord | None:
        """A wake by id or idempotency key, after timing out the pool's due wakes."""

    @abc.abstractmethod
    async def pool_cancel_wake(self, pool: str, wake_id: str, *, now: float) -> bool:
        """Cancel a registered wake; False if it had finished."""

    @abc.abstractmethod
    async def pool_snapshot(self, pool: str, *, now: float) -> PoolSnapshotRecord:
        """Config, members, registered wakes, head and counters, in one consistent read."""

    @abc.abstractmethod
    async def pool_records(self, pool: str, after: int, *, limit: int) -> PoolPage:
        """Up to `limit` log records after `after`, with the head and the oldest kept seq."""

    @abc.abstractmethod
    async def pool_expire_wakes(self, *, now: float) -> float | None:
        """Time out every due wake of every pool; returns the next deadline, if any."""

    @abc.abstractmethod
    async def pool_names(self) -> list[str]:
        """The name of every pool, sorted."""


class LeaseStore(abc.ABC):
    """Coordination leases: owners hold file globs, exclusively or shared, until they expire.

    The rules are in `lease_engine` (which every backend applies to a snapshot of its leases
    inside one atomic step). Each method that changes leases is atomic against other hubs and
    processes, deletes the expired leases it finds, and notifies `lease_engine.LEASES_CHANNEL`
    when anything changed.
    """

    @abc.abstractmethod
    async def lease_acquire(
        self,
        owner: str,
        wants: Sequence[LeaseWant],
        *,
        ttl: float,
        reason: str | None,
        partial: bool,
        now: float,
    ) -> LeaseResult:
        """Grant `wants` (distinct patterns) to `owner` as `lease_engine.acquire` decides."""

    @abc.abstractmethod
    async def lease_renew(
        self, owner: str, selectors: frozenset[str] | None, *, ttl: float, now: float
    ) -> list[Lease]:
        """Extend `owner`'s live leases as `lease_engine.renew` decides; returns them."""

    @abc.abstractmethod
    async def lease_release(
        self, owner: str, selectors: frozenset[str] | None, *, now: float
    ) -> list[Lease]:
        """Release `owner`'s live leases as `lease_engine.release` decides; returns them."""

    @abc.abstractmethod
    async def lease_list(self, *, now: float) -> list[Lease]:
        """Every live lease, by owner, then pattern."""


class Backend(abc.ABC):
    """A storage engine behind a hub. One instance serves one hub, on one event loop.

    It carries one object per feature it implements (None for a feature it lacks); the hub
    reaches features only through these attributes.
    """

    #: Agents, mailboxes, replies and schedules.
    mailboxes: MailboxStore | None = None
    #: The topic log and durable consumers.
    topics: TopicStore | None = None
    #: Versioned key-value spaces.
    shared_memory: SharedMemoryStore | None = None
    #: Content-addressed blobs.
    references: ReferenceStore | None = None
    #: Agent pools.
    pools: PoolStore | None = None
    #: Coordination leases on file globs.
    leases: LeaseStore | None = None

    #: The reference GC strategy (`_ref_records.GC_STRATEGIES`); set by the hub before `open`.
    ref_gc_strategy: str = "ref_counting"

    notifier: Notifier
    retention: Retention

    #: True when another process (the agentcomm server) runs the housekeeping: firing
    #: schedules, retention passes and pool wake timeouts; the hub then starts none of it.
    housekeeping_elsewhere: bool = False

    #: Seconds between safety re-checks while waiting. A backend whose notifications reach
    #: every process sets this high; one that may miss a wake-up sets it low.
    recheck_interval: float = 60.0

    #: The longest `claim_waiting` / `take_reply_waiting` wait where the store is; 0 (the
    #: default): they do not wait, and the hub waits for wake-ups. The http backend's server
    #: waits, so a receive or request that has to wait costs one round trip instead of a
    #: wake-up and another call.
    remote_wait: float = 0.0

    #: True when `claim_waiting` waits in this process (the redis backend: for a message its
    #: store delivers), so it can also end on a wake-up of the channels `also` names.
    waits_locally: bool = False

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
        """`mailboxes.claim`, waiting up to `wait` seconds (at most `remote_wait`) for a
        message to claim; a backend that `waits_locally` also ends the wait on a wake-up of a
        channel of `also`. The default claims without waiting."""
        assert self.mailboxes is not None
        return await self.mailboxes.claim(agent, max_messages=max_messages, lease=lease, now=now)

    async def take_reply_waiting(self, correlation_id: str, *, wait: float) -> StoredReply | None:
        """`mailboxes.take_reply` (not abandoning), waiting up to `wait` seconds (at most
        `remote_wait`) where the store is for the reply; the default takes without waiting."""
        assert self.mailboxes is not None
        return await self.mailboxes.take_reply(correlation_id, abandon=False)

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or attach to the store; start any background machinery."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued work and release every resource. Idempotent."""

    # --- housekeeping ------------------------------------------------------------------------

    @abc.abstractmethod
    async def prune(self, now: float) -> PruneReport:
        """Expire overdue messages, dead-letter exhausted leases, and delete finished rows,
        dedupe keys and abandoned reply slots older than the retention policy. Also record
        due shared-memory expiries and drop tombstones older than `TOMBSTONE_KEEP`, and delete
        topic log records beyond the retention policy (counting, per durable consumer, the
        records it had not consumed)."""

    @abc.abstractmethod
    async def stats(self) -> HubStats:
        """Event counters since the store was created."""

    async def check(self) -> CheckReport:
        """Check the stored state for damage; the default: a store with nothing to check."""
        return CheckReport(
            type(self).__name__.removesuffix("Backend").lower(), "nothing to check", []
        )

    async def prefixes(self) -> dict[str, int] | None:
        """The key prefixes that hold agentcomm data on this store's server, with their key
        counts; None for a backend without prefixes (only Redis has them)."""
        return None

    @property
    def capabilities(self) -> frozenset[str]:
        """The names of the features this backend implements."""
        return frozenset(name for name in FEATURES if getattr(self, name) is not None)


#: The optional features a backend may carry, by attribute name.
FEATURES = ("mailboxes", "topics", "shared_memory", "references", "pools", "leases")
