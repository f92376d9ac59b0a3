"""Reference records exchanged between the feature layer and the backends, and the public views."""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import msgspec

__all__ = ["Compression", "GCStrategy", "Ref", "RefStats"]

#: Set in a stored payload's kind when its `data` is a reference id instead of the payload; the
#: payload's own kind (`DataKind`) is in the other bits. Stored on disk: do not change.
REF_FLAG = 2

#: The holder of the explicit references a SQLite store recorded before references were counted
#: per holder (they are migrated to it): a hub opened with `RefConfig(holder="legacy")` can
#: release them.
LEGACY_HOLDER = "legacy"
#: Holder names starting with this belong to the feature layer (its transient holds while a
#: payload is promoted); `RefConfig.holder` refuses them, so users can never release those.
INTERNAL_HOLDER = "agentcomm:"

#: A garbage-collection strategy of a hub's reference store (see `RefConfig`).
GCStrategy: TypeAlias = Literal["ref_counting", "ttl", "manual"]
GC_STRATEGIES: tuple[GCStrategy, ...] = get_args(GCStrategy)

#: A compression `RefStore.store` accepts; a `Ref` records one of them but `"auto"`.
Compression: TypeAlias = Literal["auto", "zstd", "gzip", "none"]
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)


class Ref(msgspec.Struct, frozen=True):
    """A stored blob, addressed by the SHA-256 of its original bytes.

    `size` is the original length, `stored_size` what the store holds after compression
    (`compression` is `"zstd"`, `"gzip"` or `"none"`). `refcount` counts every reference when the
    record was read: those rows hold (messages, shared-memory entries, ...) plus the explicit
    ones of every holder (`store`, `retain`). `expires_at` is when the
    `ttl` GC strategy may evict it once unreferenced (None: never by age).
    """

    id: str
    size: int
    stored_size: int
    compression: str
    content_type: str
    created_at: float
    expires_at: float | None
    refcount: int


class RefStats(msgspec.Struct, frozen=True):
    """Counters of a reference store.

    `total_refs` and `total_bytes` count every distinct blob ever stored (original bytes);
    `dedupe_hits` the stores that found their content already there. `entries`,
    `active_refs` (entries with at least one holder), `current_bytes` (original) and
    `stored_bytes` (after compression) describe what is stored now. `gc_runs` and `evictions`
    count GC passes and evicted entries (evictions at a release under `ref_counting` included).
    """

    total_refs: int
    total_bytes: int
    active_refs: int
    current_bytes: int
    gc_runs: int
    evictions: int
    entries: int
    stored_bytes: int
    dedupe_hits: int


class RefMeta(msgspec.Struct):
    """What the feature layer knows about a blob before the backend stores it."""

    id: str
    size: int
    stored_size: int
    compression: str
    content_type: str
    expires_at: float | None


def ref_id_in(data: bytes | None, kind: int) -> str | None:
    """The reference id a stored payload holds, or None for a payload stored by value."""
    if data is None or not kind & REF_FLAG:
        return None
    return data.decode("ascii")


def merge_expiry(old: float | None, new: float | None) -> float | None:
    """Storing existing content again keeps it at least as long as either store asked."""
    if old is None or new is None:
        return None
    return max(old, new)
