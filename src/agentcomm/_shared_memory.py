"""Shared memory: namespaced key-value state with versions, TTL, history and watch.

Get a namespace with `hub.memory("project-x")`, or an agent's private one with
`agent.memory()`. Every write bumps the key's version (from 1); `expected_version` makes a
write conditional (0: only if absent) and raises VersionConflict otherwise. Every change is
appended to the namespace's change log, which `watch()` follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import re
from collections.abc import AsyncGenerator, Callable
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeAlias

import msgspec

from . import _observe
from ._codec import decode_payload, encode_for
from ._context import Context
from ._errors import HubClosed, InvalidName, RefNotFound, ValidationError, VersionConflict
from ._kv_records import ChangeKind, KVChangeRecord, KVRecord, KVWrite, Space
from ._ref_records import REF_FLAG, Ref
from ._validation import (
    MAX_COUNT,
    MAX_SEQUENCE,
    check_bool,
    check_int,
    check_name,
    check_seconds,
)

__all__ = ["Change", "Entry", "KVStats", "SharedMemory"]

_KEY = re.compile(r"[A-Za-z0-9_.:@/=+-]{1,256}")
_PATTERN = re.compile(r"[A-Za-z0-9_.:@/=+\-*?\[\]!]{1,512}")
_WILDCARDS = "*?["
#: What a `Change` records.
ChangeType: TypeAlias = Literal["put", "delete", "expire", "resync"]
_KIND_NAMES: dict[ChangeKind, ChangeType] = {
    ChangeKind.PUT: "put", ChangeKind.DELETE: "delete", ChangeKind.EXPIRE: "expire",
}  # fmt: skip
_WATCH_BATCH = 256
_MAX_HISTORY = 1000
# Reads retried when a value stored by reference was overwritten and evicted between reading
# the key and resolving the reference.
_REF_RETRIES = 5


class Entry(msgspec.Struct, frozen=True):
    """A key's value at one version. `updated_by` is the writing agent, None for `hub.memory`."""

    key: str
    value: Any
    version: int
    created_at: float
    updated_at: float
    updated_by: str | None
    expires_at: float | None = None
    #: The reference the value is stored by, or None if it is stored by value.
    payload_ref: Ref | None = None


class Change(msgspec.Struct, frozen=True):
    """One change seen by `watch()`.

    `kind` is `"put"`, `"delete"`, `"expire"` or `"resync"`. A resync means the watcher fell
    behind the change log's retention and missed changes: drop what you derived from earlier
    changes; the current entries follow as puts, then live changes. `sequence` is the
    change's position in the namespace's log; pass the last one seen to `watch(since=...)` to
    resume. `updated_at` and `updated_by` say when and by which agent (None for `hub.memory`)
    the change was made. `value` is None for deletes, expiries and resyncs.
    """

    kind: ChangeType
    key: str
    version: int
    sequence: int
    updated_at: float
    updated_by: str | None
    value: Any = None


class KVStats(msgspec.Struct, frozen=True):
    """Counts of a namespace. `keys`, `bytes`, `writes` and `conflicts` are the store's;
    `reads` and `watchers` are this hub's since it opened."""

    namespace: str
    keys: int
    bytes: int
    reads: int
    writes: int
    conflicts: int
    watchers: int


class _Local:
    __slots__ = ("reads", "watchers")

    def __init__(self) -> None:
        self.reads = 0
        self.watchers = 0


def check_key(key: object) -> str:
    """Keys: 1-256 chars of letters, digits and `_ . : @ / = + -`."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValidationError(
            f"Invalid key {key!r}: use 1-256 letters, digits or '_ . : @ / = + -'."
        )
    return key


def _check_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or _PATTERN.fullmatch(pattern) is None:
        raise ValidationError(
            f"Invalid key pattern {pattern!r}: use key characters and the glob wildcards "
            "'*', '?' and '[...]'."
        )
    return pattern


def _literal_prefix(pattern: str) -> str:
    for i, ch in enumerate(pattern):
        if ch in _WILDCARDS:
            return pattern[:i]
    return pattern


def _check_setting(what: str, value: int | None, most: int) -> int | None:
    return None if value is None else check_int(what, value, 1, most)


def _check_expected(version: int | None) -> None:
    if version is not None:
        check_int("expected_version", version, 0, MAX_SEQUENCE)


def _expiry(ctx: Context, ttl: object) -> float | None:
    """When a key written now with `ttl` expires; None: never (`math.inf` means so too)."""
    seconds = check_seconds("ttl", ttl, positive=True, allow_inf=True)
    return None if math.isinf(seconds) else ctx.now() + seconds


async def _value(ctx: Context, data: bytes, kind: int) -> tuple[Any, Ref | None]:
    if kind & REF_FLAG:
        data, kind, ref = await ctx.refs.load(data, kind)
        return decode_payload(data, kind), ref
    return decode_payload(data, kind), None


async def _entry(ctx: Context, r: KVRecord) -> Entry:
    value, ref = await _value(ctx, r.data, r.data_kind)
    return Entry(
        r.key, value, r.version, r.created_at, r.updated_at, r.updated_by, r.expires_at, ref
    )


async def _change(ctx: Context, c: KVChangeRecord) -> Change:
    value = None
    if c.data is not None:
        # the change log holds no reference: a value overwritten since may be evicted, and
        # then arrives as None (the key's later change follows)
        with contextlib.suppress(RefNotFound):
            value, _ = await _value(ctx, c.data, c.data_kind)
    return Change(_KIND_NAMES[ChangeKind(c.kind)], c.key, c.version, c.seq, c.at, c.by, value)


class SharedMemory:
    """A namespace of versioned keys. Get one with `hub.memory(name)` or `agent.memory()`."""

    def __init__(
        self,
        ctx: Context,
        space: Space,
        *,
        by: str | None,
        history: int | None = None,
        change_log: int | None = None,
    ) -> None:
        self._ctx = ctx
        self._space = space
        self._by = by
        self._history = _check_setting("history", history, _MAX_HISTORY)
        self._change_log = _check_setting("change_log", change_log, MAX_COUNT)

    @classmethod
    def _open(
        cls,
        ctx: Context,
        namespace: str | None,
        *,
        agent: str | None,
        history: int | None,
        change_log: int | None,
    ) -> SharedMemory:
        if namespace is None:
            if agent is None:
                raise InvalidName("hub.memory() needs a namespace name, e.g. hub.memory('plan').")
            space = Space(agent, "")
        else:
            space = Space("", check_name("namespace", namespace))
        return cls(ctx, space, by=agent, history=history, change_log=change_log)

    @property
    def namespace(self) -> str:
        """The namespace's name; `""` for an agent's private namespace."""
        return self._space.namespace

    @property
    def owner(self) -> str | None:
        """The agent owning this private namespace, or None for a shared one."""
        return self._space.owner or None

    def __repr__(self) -> str:
        if self._space.owner:
            return f"<SharedMemory private to {self._space.owner!r}>"
        return f"<SharedMemory {self._space.namespace!r}>"

    def _backend(self) -> Context:
        self._ctx.check_open()
        return self._ctx

    def _counters(self, backend: Context) -> _Local:
        local: _Local | None = backend.kv_local.get(self._space)
        if local is None:
            local = backend.kv_local[self._space] = _Local()
        return local

    # --- reads and writes ------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """The key's current entry, or None if it is absent or expired."""
        if _observe.active():
            with _observe.span("shared_memory.get", self._attrs(key)) as note:
                entry = await self._get(key)
                note("agentcomm.version", None if entry is None else entry.version)
                return entry
        return await self._get(key)

    def _attrs(self, key: str) -> dict[str, Any]:
        return {"agentcomm.namespace": self.namespace, "agentcomm.owner": self.owner,
                "agentcomm.key": key}  # fmt: skip

    async def _get(self, key: str) -> Entry | None:
        backend = self._backend()
        check_key(key)
        for attempt in range(_REF_RETRIES):
            record = await backend.shared_memory.kv_get(self._space, key, now=self._ctx.now())
            if record is None:
                break
            try:
                entry = await _entry(self._ctx, record)
            except RefNotFound:
                if attempt == _REF_RETRIES - 1:
                    raise
                continue  # overwritten meanwhile: read the new value
            self._counters(backend).reads += 1
            return entry
        self._counters(backend).reads += 1
        return None

    async def put(
        self,
        key: str,
        value: Any,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        """Store `value` under `key` and return the new entry (version + 1).

        With `expected_version`, write only if the key is at that version (0: only if absent),
        else raise VersionConflict. `ttl` seconds make the key expire; None keeps it forever.
        """
        expires_at = None if ttl is None else _expiry(self._ctx, ttl)
        if _observe.active():
            with _observe.span("shared_memory.put", self._attrs(key)) as note:
                entry = await self._put(key, value, expected_version, expires_at)
                note("agentcomm.version", entry.version)
                return entry
        return await self._put(key, value, expected_version, expires_at)

    async def _put(
        self, key: str, value: Any, expected_version: int | None, expires_at: float | None
    ) -> Entry:
        check_key(key)
        _check_expected(expected_version)
        backend = self._backend()
        data, kind = encode_for(backend.settings, None, value)
        # the entry holds its own reference after the put (unless it conflicted)
        async with backend.refs.hold() as hold:
            data, kind = await hold.promote(None, data, kind)
            write = KVWrite(
                key, data, kind, expected_version, expires_at, self._by, self._history,
                self._change_log,
            )  # fmt: skip
            outcome = await backend.shared_memory.kv_put(self._space, write, now=self._ctx.now())
        if outcome.conflict:
            assert expected_version is not None
            raise VersionConflict(key, expected_version, outcome.version)
        assert outcome.record is not None
        ref = None
        if hold.promoted:
            ref, _ = await backend.references.ref_read(data.decode("ascii"), 0, 0)
        return Entry(
            key, value, outcome.version, outcome.record.created_at, outcome.record.updated_at,
            self._by, expires_at, ref,
        )  # fmt: skip

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete `key`; False if it was absent. With `expected_version`, delete only if the
        key is at that version, else raise VersionConflict."""
        check_key(key)
        _check_expected(expected_version)
        outcome = await self._backend().shared_memory.kv_delete(
            self._space, key, expected_version=expected_version, by=self._by, now=self._ctx.now()
        )
        if outcome.conflict:
            assert expected_version is not None
            raise VersionConflict(key, expected_version, outcome.version)
        return outcome.version > 0

    async def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        ttl: float | None = None,
        retries: int = 100,
    ) -> Entry:
        """Read-modify-write: store `fn(current value or None)`, retrying on a conflict.

        `fn` may be a coroutine function; it can run more than once. Without `ttl` the key
        keeps its current expiry. Raises VersionConflict after `retries` lost races.
        """
        check_int("retries", retries, 1, MAX_COUNT)
        if not callable(fn):
            raise ValidationError(f"fn must be a callable, not {type(fn).__name__}.")
        if ttl is not None:
            _expiry(self._ctx, ttl)  # checked before anything is read or written
        conflict: VersionConflict | None = None
        for _ in range(retries):
            current = await self.get(key)
            new = fn(None if current is None else current.value)
            if inspect.isawaitable(new):
                new = await new
            if ttl is not None:
                expires_at: float | None = _expiry(self._ctx, ttl)
            else:
                expires_at = None if current is None else current.expires_at
            expected = 0 if current is None else current.version
            try:
                return await self._put(key, new, expected, expires_at)
            except VersionConflict as exc:
                conflict = exc
                await asyncio.sleep(0)
        assert conflict is not None
        raise conflict

    async def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching the glob `pattern` (`*`, `?`, `[...]`), sorted."""
        _check_pattern(pattern)
        snap = await self._backend().shared_memory.kv_scan(
            self._space, _literal_prefix(pattern), now=self._ctx.now()
        )
        return [r.key for r in snap.records if fnmatchcase(r.key, pattern)]

    async def history(self, key: str, limit: int | None = None) -> list[Entry]:
        """The key's last versions, newest first: the namespace keeps `history` of them
        (default 1, the current one). After a delete, the values it had before."""
        check_key(key)
        if limit is not None:
            _check_setting("limit", limit, _MAX_HISTORY)
        backend = self._backend()
        for attempt in range(_REF_RETRIES):
            records = await backend.shared_memory.kv_history(
                self._space, key, limit=limit or _MAX_HISTORY, now=self._ctx.now()
            )
            try:
                return [await _entry(self._ctx, r) for r in records]
            except RefNotFound:
                if attempt == _REF_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def stats(self) -> KVStats:
        """Keys, bytes, reads, writes, conflicts and watchers of this namespace."""
        backend = self._backend()
        counts = await backend.shared_memory.kv_counts(self._space, now=self._ctx.now())
        local = self._counters(backend)
        return KVStats(
            self._space.namespace, counts.keys, counts.bytes, local.reads, counts.writes,
            counts.conflicts, local.watchers,
        )  # fmt: skip

    # --- watching --------------------------------------------------------------------------------

    async def watch(
        self, pattern: str = "*", *, include_initial: bool = False, since: int | None = None
    ) -> AsyncGenerator[Change, None]:
        """Yield changes of keys matching `pattern` as they happen, in order; ends when the hub
        closes.

        `include_initial` first yields the current entries as puts. `since` resumes after a
        change's `sequence` instead; a watcher that falls behind the change log's retention gets
        a `"resync"` change (see `Change`) and is never silently dropped.
        """
        _check_pattern(pattern)
        check_bool("include_initial", include_initial)
        if since is not None:
            check_int("since", since, 0, MAX_SEQUENCE)
        try:
            backend = self._backend()
        except HubClosed:
            return
        space = self._space
        prefix = _literal_prefix(pattern)
        local = self._counters(backend)
        local.watchers += 1
        try:
            with backend.wakeups(space.channel) as wakeups:
                if since is None:
                    snap = await backend.shared_memory.kv_scan(
                        space, prefix if include_initial else None, now=self._ctx.now()
                    )
                    after = snap.last_seq
                    for r in snap.records:
                        if fnmatchcase(r.key, pattern):
                            yield await self._initial(r, after)
                else:
                    after = since
                while True:
                    if backend.state != "open":
                        return
                    wakeups.rearm()
                    now = self._ctx.now()
                    batch = await backend.shared_memory.kv_changes(
                        space, after, limit=_WATCH_BATCH, now=now
                    )
                    if after < batch.floor or after > batch.last_seq:
                        yield Change("resync", "", 0, batch.last_seq, now, None)
                        snap = await backend.shared_memory.kv_scan(
                            space, prefix, now=self._ctx.now()
                        )
                        after = snap.last_seq
                        for r in snap.records:
                            if fnmatchcase(r.key, pattern):
                                yield await self._initial(r, after)
                        continue
                    for c in batch.changes:
                        after = c.seq
                        if fnmatchcase(c.key, pattern):
                            yield await _change(self._ctx, c)
                    if batch.changes:
                        continue
                    await wakeups.wait(batch.next_expiry)
        finally:
            local.watchers -= 1

    async def _initial(self, r: KVRecord, seq: int) -> Change:
        value, _ = await _value(self._ctx, r.data, r.data_kind)
        return Change("put", r.key, r.version, seq, r.updated_at, r.updated_by, value)
