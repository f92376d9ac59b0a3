"""Shared memory in memory: versioned key-value spaces, with the same semantics as SQLite."""

from __future__ import annotations

from collections import deque

from ..._kv_records import (
    DEFAULT_CHANGE_LOG,
    DEFAULT_HISTORY,
    TOMBSTONE_KEEP,
    ChangeKind,
    KVChangeRecord,
    KVChanges,
    KVCounts,
    KVOutcome,
    KVRecord,
    KVSnapshot,
    KVWrite,
    Space,
)
from ..contracts import SharedMemoryStore
from .references import RefHolds
from .transactions import Transactions


class _Space:
    """One space: current rows (tombstones have `data == b""` and `live=False`), past versions,
    the change log and counters."""

    __slots__ = (
        "change_log", "changes", "conflicts", "floor", "history", "holds", "last_seq", "past",
        "rows", "tombstones", "writes",
    )  # fmt: skip

    def __init__(self, holds: RefHolds) -> None:
        # values and past versions hold their references; change-log entries do not, so an
        # overwrite frees a large value at once instead of when its change leaves the log
        self.holds = holds
        self.rows: dict[str, KVRecord] = {}
        self.tombstones: dict[str, KVRecord] = {}
        self.past: dict[str, list[KVRecord]] = {}  # oldest first
        self.changes: deque[KVChangeRecord] = deque()
        self.last_seq = 0
        self.floor = 0
        self.history = DEFAULT_HISTORY
        self.change_log = DEFAULT_CHANGE_LOG
        self.writes = 0
        self.conflicts = 0

    def version(self, key: str) -> int:
        row = self.rows.get(key) or self.tombstones.get(key)
        return 0 if row is None else row.version

    def append(
        self, space: Space, kind: ChangeKind, row: KVRecord, live: bool, touched: set[str]
    ) -> None:
        self.last_seq += 1
        self.writes += 1
        self.changes.append(
            KVChangeRecord(
                self.last_seq, int(kind), row.key, row.version, row.data if live else None,
                row.data_kind if live else 0, row.updated_at, row.updated_by,
            )
        )  # fmt: skip
        while len(self.changes) > self.change_log:
            self.floor = self.changes.popleft().seq
        touched.add(space.channel)

    def keep_history(self, key: str, old: KVRecord | None, new_version: int) -> None:
        if self.history <= 1:
            return
        past = self.past.setdefault(key, [])
        if old is not None:
            past.append(old)
            self.holds.hold(old.data, old.data_kind)
        while past and past[0].version <= new_version - self.history:
            gone = past.pop(0)
            self.holds.drop(gone.data, gone.data_kind)

    def end(
        self, space: Space, row: KVRecord, kind: ChangeKind, now: float, by: str | None,
        touched: set[str],
    ) -> int:  # fmt: skip
        version = row.version + 1
        self.keep_history(row.key, row, version)
        del self.rows[row.key]
        self.holds.drop(row.data, row.data_kind)
        tomb = KVRecord(row.key, version, b"", 0, row.created_at, now, by, None)
        self.tombstones[row.key] = tomb
        self.append(space, kind, tomb, False, touched)
        return version

    def current(self, space: Space, key: str, now: float, touched: set[str]) -> KVRecord | None:
        row = self.rows.get(key)
        if row is not None and row.expires_at is not None and row.expires_at <= now:
            self.end(space, row, ChangeKind.EXPIRE, now, None, touched)
            return None
        return row

    def expire_due(self, space: Space, now: float, touched: set[str]) -> float | None:
        due = sorted(
            (r for r in self.rows.values() if r.expires_at is not None and r.expires_at <= now),
            key=lambda r: (r.expires_at or 0.0, r.key),
        )
        for row in due:
            self.end(space, row, ChangeKind.EXPIRE, now, None, touched)
        return min(
            (r.expires_at for r in self.rows.values() if r.expires_at is not None), default=None
        )


class SharedMemoryState:
    """The spaces of one memory store."""

    __slots__ = ("spaces",)

    def __init__(self) -> None:
        self.spaces: dict[Space, _Space] = {}


class MemorySharedMemory(SharedMemoryStore):
    """The shared-memory part of the backend contract in memory."""

    def __init__(self, state: SharedMemoryState, txn: Transactions, holds: RefHolds) -> None:
        self._spaces = state.spaces
        self._txn = txn
        self._holds = holds

    def _space(self, space: Space) -> _Space:
        state = self._spaces.get(space)
        if state is None:
            state = self._spaces[space] = _Space(self._holds)
        return state

    async def kv_get(self, space: Space, key: str, *, now: float) -> KVRecord | None:
        def op(touched: set[str]) -> KVRecord | None:
            return self._space(space).current(space, key, now, touched)

        return self._txn.run(op)

    async def kv_put(self, space: Space, write: KVWrite, *, now: float) -> KVOutcome:
        w = write

        def op(touched: set[str]) -> KVOutcome:
            s = self._space(space)
            if w.history is not None:
                s.history = w.history
            if w.change_log is not None:
                s.change_log = w.change_log
            row = s.current(space, w.key, now, touched)
            actual = 0 if row is None else row.version
            if w.expected_version is not None and w.expected_version != actual:
                s.conflicts += 1
                return KVOutcome(True, actual)
            version = s.version(w.key) + 1
            # hold the new value first: an overwrite with the same content must not evict it
            s.holds.hold(w.data, w.data_kind)
            s.keep_history(w.key, row, version)
            record = KVRecord(
                w.key, version, w.data, w.data_kind, now if row is None else row.created_at, now,
                w.by, w.expires_at,
            )  # fmt: skip
            s.tombstones.pop(w.key, None)
            s.rows[w.key] = record
            if row is not None:
                s.holds.drop(row.data, row.data_kind)
            s.append(space, ChangeKind.PUT, record, True, touched)
            return KVOutcome(False, version, record)

        return self._txn.run(op)

    async def kv_delete(
        self, space: Space, key: str, *, expected_version: int | None, by: str | None, now: float
    ) -> KVOutcome:
        def op(touched: set[str]) -> KVOutcome:
            s = self._space(space)
            row = s.current(space, key, now, touched)
            actual = 0 if row is None else row.version
            if expected_version is not None and expected_version != actual:
                s.conflicts += 1
                return KVOutcome(True, actual)
            if row is None:
                return KVOutcome(False, 0)
            return KVOutcome(False, s.end(space, row, ChangeKind.DELETE, now, by, touched))

        return self._txn.run(op)

    async def kv_scan(self, space: Space, prefix: str | None, *, now: float) -> KVSnapshot:
        def op(touched: set[str]) -> KVSnapshot:
            s = self._space(space)
            s.expire_due(space, now, touched)
            records: list[KVRecord] = []
            if prefix is not None:
                records = sorted(
                    (r for k, r in s.rows.items() if k.startswith(prefix)), key=lambda r: r.key
                )
            return KVSnapshot(records, s.last_seq)

        return self._txn.run(op)

    async def kv_changes(self, space: Space, after: int, *, limit: int, now: float) -> KVChanges:
        def op(touched: set[str]) -> KVChanges:
            s = self._space(space)
            next_expiry = s.expire_due(space, now, touched)
            out: list[KVChangeRecord] = []
            if s.floor <= after < s.last_seq:
                start = after - s.floor  # the log holds seqs floor+1 .. last_seq, in order
                out = [s.changes[i] for i in range(start, min(start + limit, len(s.changes)))]
            return KVChanges(out, s.floor, s.last_seq, next_expiry)

        return self._txn.run(op)

    async def kv_history(self, space: Space, key: str, *, limit: int, now: float) -> list[KVRecord]:
        def op(touched: set[str]) -> list[KVRecord]:
            s = self._space(space)
            row = s.current(space, key, now, touched)
            out = [] if row is None else [row]
            out.extend(reversed(s.past.get(key, [])))
            return out[:limit]

        return self._txn.run(op)

    async def kv_counts(self, space: Space, *, now: float) -> KVCounts:
        def op(touched: set[str]) -> KVCounts:
            s = self._space(space)
            live = [r for r in s.rows.values() if r.expires_at is None or r.expires_at > now]
            return KVCounts(len(live), sum(len(r.data) for r in live), s.writes, s.conflicts)

        return self._txn.run(op)

    async def kv_spaces(self) -> list[Space]:
        with self._txn.lock:
            return sorted(self._spaces, key=lambda s: (s.owner, s.namespace))

    def prune_step(self, now: float, touched: set[str]) -> None:
        """Record due expiries in every space and drop tombstones older than TOMBSTONE_KEEP;
        the caller holds the store's lock."""
        for space, s in self._spaces.items():
            s.expire_due(space, now, touched)
            stale = [k for k, t in s.tombstones.items() if t.updated_at <= now - TOMBSTONE_KEEP]
            for key in stale:
                del s.tombstones[key]
                for old in s.past.pop(key, []):
                    s.holds.drop(old.data, old.data_kind)
