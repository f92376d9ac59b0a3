"""References in memory: the blob table of a store, the holds rows take on it, and the feature.

Blobs live in one table per store (every hub of a named `memory://` store shares it); all of it
runs under the store's lock, so refcount changes are atomic like a SQLite transaction. Explicit
references are counted per holder in `RefTable.holders` (blob id -> holder -> count).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from ..._errors import RefNotFound, RefNotHeld
from ..._ref_records import Ref, RefMeta, RefStats, merge_expiry, ref_id_in
from ..contracts import ReferenceStore
from .transactions import Transactions

#: An upload not committed after this many seconds was abandoned; `ref_gc` drops it.
ABANDONED_AFTER = 3600.0


class _Blob:
    __slots__ = ("chunks", "ref")

    def __init__(self, ref: Ref, chunks: list[bytes]) -> None:
        self.ref = ref
        self.chunks = chunks


class RefTable:
    """The blobs of one memory store, their refcounts and counters."""

    def __init__(self) -> None:
        self.blobs: dict[str, _Blob] = {}
        self.uploads: dict[int, tuple[float, dict[int, bytes]]] = {}
        #: blob id -> holder -> the explicit references that holder has on it (all > 0)
        self.holders: dict[str, dict[str, int]] = {}
        self.next_upload = 0
        self.counters = dict.fromkeys(("total_refs", "total_bytes", "gc_runs", "evictions",
                                       "dedupe_hits"), 0)  # fmt: skip
        #: The GC strategy of the hub that used the store last.
        self.strategy = "ref_counting"

    def _set(self, blob: _Blob, **changes: object) -> Ref:
        blob.ref = msgspec.structs.replace(blob.ref, **changes)
        return blob.ref

    def adjust(self, ref_id: str, delta: int, holder: str | None = None) -> Ref | None:
        """Change a refcount (never below zero), `holder`'s count with it (None: a row's
        reference); returns the record after the change. RefNotHeld, changing nothing, for a
        drop by a holder that holds none."""
        blob = self.blobs.get(ref_id)
        if blob is None:
            return None
        if holder is not None:
            held = self.holders.setdefault(ref_id, {})
            count = held.get(holder, 0) + delta
            if count < 0:
                if not held:
                    del self.holders[ref_id]
                raise RefNotHeld(ref_id, holder)
            if count:
                held[holder] = count
            else:
                del held[holder]
                if not held:
                    del self.holders[ref_id]
        ref = self._set(blob, refcount=max(blob.ref.refcount + delta, 0))
        if delta < 0 and self.strategy == "ref_counting" and evictable(ref, time.time()):
            self.evict(ref_id)
        return ref

    def add(self, ref_id: str) -> None:
        """Add a reference to a stored blob; RefNotFound if it is not stored."""
        blob = self.blobs.get(ref_id)
        if blob is None:
            raise RefNotFound(f"The payload refers to {ref_id}, which is not stored (evicted?).")
        self._set(blob, refcount=blob.ref.refcount + 1)

    def evict(self, ref_id: str) -> Ref:
        """Remove a blob and count the eviction."""
        blob = self.blobs.pop(ref_id)
        self.holders.pop(ref_id, None)
        self.counters["evictions"] += 1
        return blob.ref

    def put(self, meta: RefMeta, chunks: list[bytes], now: float, holder: str) -> Ref:
        """Store a blob with one reference of `holder`, or add one to the stored copy."""
        held = self.holders.setdefault(meta.id, {})
        held[holder] = held.get(holder, 0) + 1
        blob = self.blobs.get(meta.id)
        if blob is not None:
            self.counters["dedupe_hits"] += 1
            expires_at = merge_expiry(blob.ref.expires_at, meta.expires_at)
            return self._set(blob, refcount=blob.ref.refcount + 1, expires_at=expires_at)
        ref = Ref(meta.id, meta.size, meta.stored_size, meta.compression, meta.content_type, now,
                  meta.expires_at, 1)  # fmt: skip
        self.blobs[meta.id] = _Blob(ref, chunks)
        self.counters["total_refs"] += 1
        self.counters["total_bytes"] += meta.size
        return ref


def evictable(ref: Ref, now: float) -> bool:
    """Unreferenced, and not kept by a TTL that has yet to pass."""
    return ref.refcount == 0 and (ref.expires_at is None or ref.expires_at <= now)


class RefHolds:
    """The references stored rows hold: taken in the operation that stores a row whose payload
    is a reference, dropped in the one that removes it. Callers hold the store's lock."""

    __slots__ = ("_table",)

    def __init__(self, table: RefTable) -> None:
        self._table = table

    def hold(self, data: bytes | None, kind: int) -> None:
        """Add the reference a payload about to be stored holds (no-op for a value)."""
        ref_id = ref_id_in(data, kind)
        if ref_id is not None:
            self._table.add(ref_id)

    def drop(self, data: bytes | None, kind: int) -> None:
        """Drop the reference a payload held; evict at zero under `ref_counting`."""
        ref_id = ref_id_in(data, kind)
        if ref_id is not None:
            self._table.adjust(ref_id, -1)

    def size_of(self, data: bytes, kind: int) -> int:
        """A stored payload's size: the original size of a blob it refers to."""
        ref_id = ref_id_in(data, kind)
        if ref_id is None:
            return len(data)
        blob = self._table.blobs.get(ref_id)
        return 0 if blob is None else blob.ref.size


class MemoryReferences(ReferenceStore):
    """The reference part of the backend contract in memory."""

    def __init__(self, table: RefTable, txn: Transactions) -> None:
        self._table = table
        self._txn = txn
        self._strategy = "ref_counting"

    def use_strategy(self, strategy: str) -> None:
        """Apply this hub's GC strategy, now and at each of its reference operations."""
        self._strategy = self._table.strategy = strategy

    def _refs(self) -> RefTable:
        table = self._table
        table.strategy = self._strategy
        return table

    async def ref_put(
        self, meta: RefMeta, chunks: Sequence[bytes], *, holder: str, now: float
    ) -> Ref:
        return self._txn.run(lambda touched: self._refs().put(meta, list(chunks), now, holder))

    async def ref_stage(self, upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
        def op(touched: set[str]) -> int:
            table = self._refs()
            number = upload
            if number is None:
                table.next_upload += 1
                number = table.next_upload
                table.uploads[number] = (now, {})
            table.uploads[number][1][n] = chunk
            return number

        return self._txn.run(op)

    async def ref_commit(self, upload: int, meta: RefMeta, *, holder: str, now: float) -> Ref:
        def op(touched: set[str]) -> Ref:
            table = self._refs()
            _, staged = table.uploads.pop(upload, (now, {}))
            return table.put(meta, [staged[n] for n in sorted(staged)], now, holder)

        return self._txn.run(op)

    async def ref_abort(self, upload: int) -> None:
        self._txn.run(lambda touched: self._refs().uploads.pop(upload, None))

    async def ref_read(self, ref_id: str, start: int, limit: int) -> tuple[Ref | None, list[bytes]]:
        def op(touched: set[str]) -> tuple[Ref | None, list[bytes]]:
            blob = self._refs().blobs.get(ref_id)
            if blob is None:
                return None, []
            return blob.ref, blob.chunks[start : start + limit]

        return self._txn.run(op)

    async def ref_adjust(
        self, ref_id: str, delta: int, *, holder: str | None, now: float
    ) -> Ref | None:
        return self._txn.run(lambda touched: self._refs().adjust(ref_id, delta, holder))

    async def ref_list(self) -> list[Ref]:
        return self._txn.run(lambda touched: [b.ref for _, b in sorted(self._refs().blobs.items())])

    async def ref_gc(self, *, now: float) -> list[Ref]:
        def op(touched: set[str]) -> list[Ref]:
            table = self._refs()
            due = [ref_id for ref_id, b in table.blobs.items() if evictable(b.ref, now)]
            for number, (started, _) in list(table.uploads.items()):
                if started <= now - ABANDONED_AFTER:
                    del table.uploads[number]
            table.counters["gc_runs"] += 1
            return [table.evict(ref_id) for ref_id in due]

        return self._txn.run(op)

    async def ref_stats(self) -> RefStats:
        def op(touched: set[str]) -> RefStats:
            table = self._refs()
            refs = [b.ref for b in table.blobs.values()]
            c = table.counters
            return RefStats(
                c["total_refs"], c["total_bytes"], sum(r.refcount > 0 for r in refs),
                sum(r.size for r in refs), c["gc_runs"], c["evictions"], len(refs),
                sum(r.stored_size for r in refs), c["dedupe_hits"],
            )  # fmt: skip

        return self._txn.run(op)
