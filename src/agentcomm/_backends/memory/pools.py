"""Agent pools in memory: the pool engine's tables as dictionaries, under the store's lock."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from ..._pool_records import (
    MemberRecord,
    NewPoolMessage,
    PoolPage,
    PoolSnapshotRecord,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from ..._records import NewMessage
from ..._settings import Retention
from .. import pool_engine as engine
from ..contracts import PoolStore
from ..pool_engine import PoolRow
from .mailbox import MemoryMailboxes
from .transactions import Transactions

_T = TypeVar("_T")
_copy = msgspec.structs.replace


class _Pool:
    __slots__ = ("counters", "key_index", "members", "receipts", "records", "row", "topic_index")

    def __init__(self, row: PoolRow) -> None:
        self.row = row
        self.counters: Counter[str] = Counter()
        self.members: dict[str, MemberRecord] = {}
        self.topic_index: dict[str, set[str]] = {}
        #: the log from the oldest kept record on: records[i].seq == records[0].seq + i
        self.records: list[StoredPoolRecord] = []
        #: by message id: the receipt and when it was written
        self.receipts: dict[str, tuple[ReceiptRecord, float]] = {}
        self.key_index: dict[str, str] = {}


class PoolState:
    """Every pool of one memory store."""

    def __init__(self) -> None:
        self.pools: dict[str, _Pool] = {}
        self.wakes: dict[str, WakeRecord] = {}
        self.wake_keys: dict[tuple[str, str], str] = {}
        #: registered wakes per pool, in registration order
        self.pending: dict[str, dict[str, WakeRecord]] = {}
        #: (deadline, wake id) of registered wakes; stale entries are skipped
        self.deadlines: list[tuple[float, str]] = []


class _Tables:
    """`pool_engine.PoolTables` over a `PoolState`; getters return copies, so the engine's
    changes reach the state only through the setters."""

    def __init__(self, state: PoolState, mailboxes: MemoryMailboxes, touched: set[str]) -> None:
        self._st = state
        self._mailboxes = mailboxes
        self._touched = touched

    def _pool(self, name: str) -> _Pool:
        return self._st.pools[name]

    def pool(self, name: str) -> PoolRow | None:
        p = self._st.pools.get(name)
        return None if p is None else _copy(p.row)

    def create_pool(self, name: str, config: bytes, now: float) -> None:
        self._st.pools[name] = _Pool(PoolRow(config, now, 0))

    def set_head(self, name: str, head: int) -> None:
        self._pool(name).row.head = head

    def bump(self, name: str, counter: str, n: int = 1) -> None:
        self._pool(name).counters[counter] += n

    def counters(self, name: str) -> dict[str, int]:
        return dict(self._pool(name).counters)

    def member(self, pool: str, run: str) -> MemberRecord | None:
        return self._pool(pool).members.get(run)

    def members(self, pool: str) -> list[MemberRecord]:
        members = self._pool(pool).members
        return [members[run] for run in sorted(members)]

    def members_of_agent(self, pool: str, agent: str) -> list[MemberRecord]:
        return [m for m in self.members(pool) if m.agent == agent]

    def members_of_topic(self, pool: str, topic: str) -> list[MemberRecord]:
        p = self._pool(pool)
        return [p.members[run] for run in sorted(p.topic_index.get(topic, ()))]

    def put_member(self, pool: str, member: MemberRecord) -> None:
        self.delete_member(pool, member.run)
        p = self._pool(pool)
        p.members[member.run] = member
        for topic in member.topics:
            p.topic_index.setdefault(topic, set()).add(member.run)

    def delete_member(self, pool: str, run: str) -> None:
        p = self._pool(pool)
        old = p.members.pop(run, None)
        if old is not None:
            for topic in old.topics:
                runs = p.topic_index.get(topic)
                if runs is not None:
                    runs.discard(run)
                    if not runs:
                        del p.topic_index[topic]

    def append(self, pool: str, record: StoredPoolRecord) -> None:
        self._pool(pool).records.append(record)

    def page(self, pool: str, after: int, limit: int) -> list[StoredPoolRecord]:
        return _page(self._pool(pool), after, limit)

    def receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        p = self._pool(pool)
        if key is not None:
            message_id = p.key_index.get(key)
        found = None if message_id is None else p.receipts.get(message_id)
        return None if found is None else _copy(found[0])

    def put_receipt(self, pool: str, receipt: ReceiptRecord, now: float) -> None:
        p = self._pool(pool)
        p.receipts[receipt.message_id] = (_copy(receipt), now)
        if receipt.idempotency_key is not None:
            p.key_index[receipt.idempotency_key] = receipt.message_id

    def wake(self, pool: str, *, wake_id: str | None, key: str | None) -> WakeRecord | None:
        if key is not None:
            wake_id = self._st.wake_keys.get((pool, key))
        found = None if wake_id is None else self._st.wakes.get(wake_id)
        return None if found is None or found.pool != pool else _copy(found)

    def put_wake(self, wake: WakeRecord) -> None:
        st = self._st
        stored = _copy(wake)
        old = st.wakes.get(wake.id)
        st.wakes[wake.id] = stored
        if wake.idempotency_key is not None:
            st.wake_keys[(wake.pool, wake.idempotency_key)] = wake.id
        pending = st.pending.setdefault(wake.pool, {})
        if wake.status == "registered":
            pending[wake.id] = stored
            if wake.deadline is not None and (old is None or old.deadline != wake.deadline):
                heapq.heappush(st.deadlines, (wake.deadline, wake.id))
        else:
            pending.pop(wake.id, None)

    def pending_wakes(self, pool: str, run: str | None = None) -> list[WakeRecord]:
        wakes = self._st.pending.get(pool, {}).values()
        return [_copy(w) for w in wakes if run is None or w.run == run]

    def due_wakes(self, pool: str | None, now: float) -> list[WakeRecord]:
        if pool is not None:
            return [
                w for w in self.pending_wakes(pool) if w.deadline is not None and w.deadline <= now
            ]
        st = self._st
        due: list[WakeRecord] = []
        while st.deadlines and st.deadlines[0][0] <= now:
            deadline, wake_id = heapq.heappop(st.deadlines)
            wake = st.wakes.get(wake_id)
            if wake is not None and wake.status == "registered" and wake.deadline == deadline:
                due.append(_copy(wake))
        return due

    def next_deadline(self) -> float | None:
        st = self._st
        while st.deadlines:
            deadline, wake_id = st.deadlines[0]
            wake = st.wakes.get(wake_id)
            if wake is not None and wake.status == "registered" and wake.deadline == deadline:
                return deadline
            heapq.heappop(st.deadlines)
        return None

    def deliver(self, messages: Sequence[NewMessage], now: float) -> None:
        self._mailboxes.enqueue_in(messages, True, now, self._touched)

    def register_agent(self, name: str, now: float) -> None:
        self._mailboxes.register_missing(name, True, now)

    def notify(self, channel: str) -> None:
        self._touched.add(channel)


def _page(p: _Pool, after: int, limit: int) -> list[StoredPoolRecord]:
    records = p.records
    if not records:
        return []
    start = max(after + 1 - records[0].seq, 0)
    return records[start : start + limit]


class MemoryPools(PoolStore):
    """The pool part of the backend contract in memory."""

    def __init__(
        self, state: PoolState, txn: Transactions, mailboxes: MemoryMailboxes, retention: Retention
    ) -> None:
        self._state = state
        self._txn = txn
        self._mailboxes = mailboxes
        self._retention = retention

    def _run(self, fn: Callable[[_Tables], _T]) -> _T:
        return self._txn.run(lambda touched: fn(_Tables(self._state, self._mailboxes, touched)))

    async def pool_open(
        self, name: str, config: bytes | None, default: bytes, *, now: float
    ) -> bytes:
        return self._run(lambda t: engine.open_pool(t, name, config, default, now))

    async def pool_join(self, pool: str, member: MemberRecord, *, now: float) -> StoredPoolRecord:
        return self._run(lambda t: engine.join(t, pool, member, now))

    async def pool_leave(self, pool: str, run: str, *, now: float) -> StoredPoolRecord:
        return self._run(lambda t: engine.leave(t, pool, run, now))

    async def pool_send(self, message: NewPoolMessage, *, now: float) -> ReceiptRecord:
        return self._run(lambda t: engine.send(t, message, now))

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
        return self._run(lambda t: engine.emit(t, pool, run, type, data, data_kind, metadata, now))

    async def pool_receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        with self._txn.lock:
            return _Tables(self._state, self._mailboxes, set()).receipt(
                pool, message_id=message_id, key=key
            )

    async def pool_wait_for(self, spec: WakeSpec, *, now: float) -> WakeRecord:
        return self._run(lambda t: engine.wait_for(t, spec, now))

    async def pool_wake(
        self, pool: str, *, wake_id: str | None, key: str | None, now: float
    ) -> WakeRecord | None:
        def op(t: _Tables) -> WakeRecord | None:
            engine.expire_due(t, pool, now)
            return t.wake(pool, wake_id=wake_id, key=key)

        return self._run(op)

    async def pool_cancel_wake(self, pool: str, wake_id: str, *, now: float) -> bool:
        return self._run(lambda t: engine.cancel_wake(t, pool, wake_id, now))

    async def pool_snapshot(self, pool: str, *, now: float) -> PoolSnapshotRecord:
        def op(t: _Tables) -> PoolSnapshotRecord:
            engine.expire_due(t, pool, now)
            row = t.pool(pool)
            if row is None:
                raise engine.pool_missing(pool)
            return PoolSnapshotRecord(
                row.config, row.created_at, t.members(pool), t.pending_wakes(pool), row.head,
                t.counters(pool),
            )  # fmt: skip

        return self._run(op)

    async def pool_records(self, pool: str, after: int, *, limit: int) -> PoolPage:
        with self._txn.lock:
            p = self._state.pools.get(pool)
            if p is None:
                raise engine.pool_missing(pool)
            oldest = p.records[0].seq if p.records else p.row.head + 1
            return PoolPage(_page(p, after, limit), p.row.head, oldest)

    async def pool_expire_wakes(self, *, now: float) -> float | None:
        def op(t: _Tables) -> float | None:
            engine.expire_due(t, None, now)
            return t.next_deadline()

        return self._run(op)

    async def pool_names(self) -> list[str]:
        with self._txn.lock:
            return sorted(self._state.pools)

    def prune_step(self, now: float) -> int:
        """Drop log records beyond the retention policy, and receipts and finished wakes older
        than the dedupe window; the caller holds the store's lock. Returns records dropped."""
        keep = self._retention
        dropped = 0
        for p in self._state.pools.values():
            records = p.records
            cut = max(len(records) - keep.pool_max_count, 0)
            oldest_at = now - keep.pool_max_age
            while cut < len(records) and records[cut].at < oldest_at:
                cut += 1
            if cut:
                del records[:cut]
                dropped += cut
            expired = [mid for mid, (_, at) in p.receipts.items() if at < now - keep.dedupe_window]
            for mid in expired:
                receipt, _ = p.receipts.pop(mid)
                if receipt.idempotency_key is not None:
                    p.key_index.pop(receipt.idempotency_key, None)
        st = self._state
        for wake_id, wake in list(st.wakes.items()):
            if wake.finished_at is not None and wake.finished_at < now - keep.dedupe_window:
                del st.wakes[wake_id]
                if wake.idempotency_key is not None:
                    st.wake_keys.pop((wake.pool, wake.idempotency_key), None)
        return dropped
