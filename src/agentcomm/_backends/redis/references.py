"""References on Redis: each operation is one call of the `REFS` script (`references_lua.py`;
keys in `ref_holds.py`), so a store racing a release of the same content on another
hub either finds the blob and holds it or stores it anew, never half of each.

A blob's chunks live in one hash, `P ref:<id>:c`, read a few chunks per call. A blob larger
than `_PUT_AT_ONCE` is staged in batches like a streamed upload and committed in one call, so
no single command carries more than a few megabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..._errors import RefNotHeld
from ..._ids import new_id
from ..._ref_records import Ref, RefMeta, RefStats
from ..contracts import ReferenceStore
from .references_lua import REFS
from .scripts import Scripts

#: An upload not committed after this many seconds was abandoned; `ref_gc` drops it.
ABANDONED_AFTER = 3600.0
_PUT_AT_ONCE = 8 << 20  # stored bytes above which `ref_put` stages its chunks first
_STAGE_BATCH = 4  # chunks per staging call of a large `ref_put`


def _ref(r: Sequence[Any]) -> Ref:
    """A record from the script's `record` fields."""
    return Ref(
        r[0].decode(), int(r[1]), int(r[2]), r[3].decode(), r[4].decode(), float(r[5]),
        float(r[6]) if r[6] else None, int(r[7]),
    )  # fmt: skip


def _opt_ref(r: Sequence[Any] | None) -> Ref | None:
    return None if not r else _ref(r)


def _expiry(meta: RefMeta) -> str:
    return "" if meta.expires_at is None else repr(float(meta.expires_at))


def _meta_args(meta: RefMeta) -> tuple[Any, ...]:
    """id, size, stored_size, compression, content_type, expires_at: as the scripts take them."""
    return (
        meta.id, meta.size, meta.stored_size, meta.compression, meta.content_type, _expiry(meta),
    )  # fmt: skip


class RedisReferences(ReferenceStore):
    """The reference store on Redis. `strategy` reads the hub's GC strategy at each call (the
    scripts that release a reference evict by it)."""

    def __init__(self, scripts: Scripts, strategy: Callable[[], str]) -> None:
        self._scripts = scripts
        self._script = scripts.register(REFS)
        self._strategy = strategy

    @property
    def ref_gc_strategy(self) -> str:
        """The hub's reference GC strategy."""
        return self._strategy()

    async def _ref_op(self, op: str, now: float, *args: Any, token: str | None = None) -> Any:
        return await self._scripts.call(self._script, op, now, args, token)

    async def ref_put(
        self, meta: RefMeta, chunks: Sequence[bytes], *, holder: str, now: float
    ) -> Ref:
        strategy = self.ref_gc_strategy
        if sum(map(len, chunks)) <= _PUT_AT_ONCE:
            args = (strategy, holder, *_meta_args(meta), *chunks)
            return _ref(await self._ref_op("put", now, *args, token=new_id()))
        found = await self._ref_op(
            "dedupe", now, strategy, holder, meta.id, _expiry(meta), token=new_id()
        )
        if found:
            return _ref(found)
        upload: int | None = None
        try:
            for start in range(0, len(chunks), _STAGE_BATCH):
                pairs: list[Any] = []
                for n in range(start, min(start + _STAGE_BATCH, len(chunks))):
                    pairs += (n, chunks[n])
                upload = int(await self._ref_op("stage", now, _opt_upload(upload), *pairs))
        except BaseException:
            if upload is not None:
                await self.ref_abort(upload)
            raise
        assert upload is not None  # more than _PUT_AT_ONCE bytes: at least one chunk
        return await self.ref_commit(upload, meta, holder=holder, now=now)

    async def ref_stage(self, upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
        return int(await self._ref_op("stage", now, _opt_upload(upload), n, chunk))

    async def ref_commit(self, upload: int, meta: RefMeta, *, holder: str, now: float) -> Ref:
        args = (self.ref_gc_strategy, holder, upload, *_meta_args(meta))
        return _ref(await self._ref_op("commit", now, *args, token=new_id()))

    async def ref_abort(self, upload: int) -> None:
        await self._ref_op("abort", 0.0, upload)

    async def ref_read(self, ref_id: str, start: int, limit: int) -> tuple[Ref | None, list[bytes]]:
        got = await self._ref_op("read", 0.0, ref_id, start, limit)
        if not got:
            return None, []
        return _ref(got[0]), list(got[1])

    async def ref_adjust(
        self, ref_id: str, delta: int, *, holder: str | None, now: float
    ) -> Ref | None:
        args = (self.ref_gc_strategy, ref_id, delta, holder or "")
        got = await self._ref_op("adjust", now, *args, token=new_id())
        if got == b"NOTHELD":
            raise RefNotHeld(ref_id, holder or "")
        return _opt_ref(got)

    async def ref_list(self) -> list[Ref]:
        refs = [_ref(r) for r in await self._ref_op("list", 0.0)]
        return sorted(refs, key=lambda r: r.id)

    async def ref_gc(self, *, now: float) -> list[Ref]:
        evicted = await self._ref_op("gc", now, repr(now - ABANDONED_AFTER))
        return sorted((_ref(r) for r in evicted), key=lambda r: r.id)

    async def ref_stats(self) -> RefStats:
        counters, entries, free = await self._ref_op("stats", 0.0)
        total_refs, total_bytes, gc_runs, evictions, dedupe_hits, size, stored = (
            int(c or 0) for c in counters
        )
        return RefStats(
            total_refs, total_bytes, int(entries) - int(free), size, gc_runs, evictions,
            int(entries), stored, dedupe_hits,
        )  # fmt: skip


def _opt_upload(upload: int | None) -> str | int:
    return "" if upload is None else upload
