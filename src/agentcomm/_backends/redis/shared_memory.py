"""Shared memory on Redis: each operation is one call of the `KV` script (see
`shared_memory_lua.py` for the keys of a space), so a version check and the write it guards
are atomic across every hub on the server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._errors import BackendError
from ..._ids import new_id
from ..._kv_records import (
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
from .errors import text
from .scripts import Scripts
from .shared_memory_lua import KV


def _space_id(space: Space) -> str:
    # neither part can contain "/", so this names one space only
    return f"{space.owner}/{space.namespace}"


def _record(key: str, v: Sequence[Any]) -> KVRecord:
    """A record from the script's `v d k c u b e` fields."""
    return KVRecord(
        key, int(v[0]), v[1], int(v[2]), float(v[3]), float(v[4]),
        None if v[5] is None else v[5].decode(), None if v[6] is None else float(v[6]),
    )  # fmt: skip


def _change(entry: Sequence[Any]) -> KVChangeRecord:
    seq = int(entry[0].split(b"-", 1)[0])
    raw = entry[1]
    f = {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}
    by = f.get(b"b")
    return KVChangeRecord(
        seq, int(f[b"k"]), f[b"key"].decode(), int(f[b"v"]), f.get(b"d"), int(f[b"dk"]),
        float(f[b"at"]), None if by is None else by.decode(),
    )  # fmt: skip


#: What a damaged stored record may raise while it is decoded.
_UNDECODABLE = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    BackendError,
)


def _opt(value: object) -> Any:
    return "" if value is None else value


class RedisSharedMemory(SharedMemoryStore):
    """Shared memory on Redis."""

    def __init__(self, scripts: Scripts) -> None:
        self._scripts = scripts
        self._script = scripts.register(KV)

    async def _kv_op(
        self, op: str, space: Space, now: float, *args: Any, token: str | None = None
    ) -> Any:
        return await self._scripts.run(self._script, op, now, (_space_id(space), *args), token)

    async def _decoded(self, rows: Sequence[Any], decode: Any, what: str) -> list[Any]:
        """`decode` of each row; rows that cannot be decoded are skipped and reported."""
        out, errors = [], []
        for row in rows:
            try:
                out.append(decode(row))
            except _UNDECODABLE as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        await self._scripts.report_undecodable(what, errors)
        return out

    async def kv_get(self, space: Space, key: str, *, now: float) -> KVRecord | None:
        v = await self._kv_op("get", space, now, key)
        if v is None:
            return None
        # a damaged record reads as absent (and the next write replaces it)
        got = await self._decoded([v], lambda r: _record(key, r), "shared-memory record")
        return got[0] if got else None

    async def kv_put(self, space: Space, write: KVWrite, *, now: float) -> KVOutcome:
        w = write
        expires = "" if w.expires_at is None else repr(float(w.expires_at))
        result = await self._kv_op(
            "put", space, now, w.key, _opt(w.expected_version), w.data, int(w.data_kind), expires,
            _opt(w.by), _opt(w.history), _opt(w.change_log), token=new_id(),
        )  # fmt: skip
        if result[0]:
            return KVOutcome(True, int(result[1]))
        version = int(result[1])
        record = KVRecord(
            w.key, version, w.data, w.data_kind, float(result[2]), now, w.by, w.expires_at
        )
        return KVOutcome(False, version, record)

    async def kv_delete(
        self, space: Space, key: str, *, expected_version: int | None, by: str | None, now: float
    ) -> KVOutcome:
        conflict, version = await self._kv_op(
            "delete", space, now, key, _opt(expected_version), _opt(by), token=new_id()
        )
        return KVOutcome(bool(conflict), int(version))

    async def kv_scan(self, space: Space, prefix: str | None, *, now: float) -> KVSnapshot:
        args = ("0", "") if prefix is None else ("1", prefix)
        rows, seq = await self._kv_op("scan", space, now, *args)
        records = await self._decoded(
            rows, lambda r: _record(r[0].decode(), r[1:]), "shared-memory records"
        )
        return KVSnapshot(records, int(seq))

    async def kv_changes(self, space: Space, after: int, *, limit: int, now: float) -> KVChanges:
        entries, floor, seq, nxt = await self._kv_op("changes", space, now, after, limit)
        changes = await self._decoded(entries, _change, "shared-memory changes")
        return KVChanges(
            changes, int(floor), int(seq), None if nxt is None else float(nxt)
        )  # fmt: skip

    async def kv_history(self, space: Space, key: str, *, limit: int, now: float) -> list[KVRecord]:
        rows = await self._kv_op("history", space, now, key, limit)
        return await self._decoded(rows, lambda r: _record(key, r), "shared-memory versions")

    async def kv_counts(self, space: Space, *, now: float) -> KVCounts:
        keys, size, writes, conflicts = await self._kv_op("counts", space, now)
        return KVCounts(int(keys), int(size), int(writes), int(conflicts))

    async def kv_spaces(self) -> list[Space]:
        scripts = self._scripts
        members = await scripts.command(scripts.client.smembers(scripts.prefix + "kvspaces"))
        spaces = []
        for member in members:
            owner, _, namespace = text(member).partition("/")
            spaces.append(Space(owner, namespace))
        return sorted(spaces, key=lambda s: (s.owner, s.namespace))

    async def prune(self, now: float) -> None:
        """Record due expiries in every space and drop tombstones older than TOMBSTONE_KEEP."""
        scripts = self._scripts
        members = await scripts.command(scripts.client.smembers(scripts.prefix + "kvspaces"))
        for member in members:
            owner, _, namespace = text(member).partition("/")
            await self._kv_op("prune", Space(owner, namespace), now)
