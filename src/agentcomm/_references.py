"""References: large payloads stored once, by content, and passed by reference.

`hub.refs` is the reference store. A blob's id is `"sha256:<hex>"` of its original bytes, so the
same bytes always give the same id and storing them again adds a reference instead of a copy.
Blobs are stored in chunks, compressed when that saves space, and verified against their id on
every read.

The tier policy decides, per message type, whether a payload travels by value or by reference:
`"value"`, `"reference"`, or `AutoPromote(threshold)` (by reference when the encoded payload is
larger than the threshold). Sends, requests, replies, schedules and shared-memory puts apply it
transparently: receivers get the original value back, and `payload_ref` tells the tier used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import stat
import threading
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, Literal, TypeAlias

import msgspec
import zstandard

from . import _observe
from ._context import Context
from ._errors import IntegrityError, RefNotFound, ValidationError
from ._ref_records import (
    COMPRESSIONS,
    GC_STRATEGIES,
    INTERNAL_HOLDER,
    Compression,
    GCStrategy,
    Ref,
    RefMeta,
    RefStats,
)
from ._validation import check_bool, check_path, check_seconds, check_text

__all__ = ["AutoPromote", "Policy", "Ref", "RefConfig", "RefStats", "RefStore"]

#: Size of the pieces blobs are read, compressed and stored in (original bytes per piece).
CHUNK_SIZE = 1 << 20
_PREFIX = "sha256:"
_DEFAULT_TYPE = "application/octet-stream"
# Content that is compressed already; "auto" does not try to shrink it again.
_PRECOMPRESSED = ("image/", "video/", "audio/", "application/zip", "application/gzip",
                  "application/zstd", "application/x-7z", "application/x-xz")  # fmt: skip
_OFFLOAD_AT = 256 * 1024  # bytes above which hashing and compression run off the event loop
_READ_BATCH = 16  # chunks per backend read
_ZSTD_LEVEL = 1  # here as small as level 3 on JSON, at twice the speed
_SAMPLE = 64 * 1024  # a larger blob is first sampled: noise is not worth compressing whole
_GZIP_LEVEL = 6
_REF_ID = re.compile(r"sha256:[0-9a-f]{64}")


class AutoPromote(msgspec.Struct, frozen=True):
    """Send by reference when the encoded payload is larger than `threshold` bytes.

    `enabled=False` turns promotion off: every payload goes by value.
    """

    threshold: int = 10_240
    enabled: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise ValidationError(f"AutoPromote threshold must be an int, not {self.threshold!r}.")
        if self.threshold < 0:
            raise ValidationError("AutoPromote threshold must be >= 0 bytes.")
        check_bool("AutoPromote.enabled", self.enabled)


#: A tier: always `"value"`, always `"reference"`, or `AutoPromote(...)` above a size.
Policy: TypeAlias = Literal["value", "reference"] | AutoPromote


class RefConfig(msgspec.Struct, frozen=True):
    """How a hub's reference store collects garbage and compresses.

    A blob is *evictable* once nothing references it and its `expires_at` (set by `ttl=`, a
    minimum lifetime) is None or passed; a referenced blob is never evicted. `gc` says when
    evictable blobs go: `"ref_counting"` at the release that makes them evictable (and, for
    those a TTL kept, at the next background retention pass or `gc()`); `"ttl"` at the hub's
    background retention passes and `gc()`, with `default_ttl` (seconds; None: none) given to
    blobs stored without `ttl=`; `"manual"` only when `gc()` is called.
    `compress_threshold`: blobs smaller than this many bytes are never compressed. Use the
    same strategy on every hub of a store.

    `holder` names the holder of the references this hub takes with `store`, `store_file`
    and `retain`: `release` drops only those. None (default): a name made for this hub alone
    (`"hub-<hex>"`); give a stable name to release, after a restart, what an earlier process
    of the same name took. `"legacy"` holds the explicit references of a SQLite store
    written before references were counted per holder.
    """

    gc: GCStrategy = "ref_counting"
    default_ttl: float | None = 3600.0
    compress_threshold: int = 1024
    holder: str | None = None

    def __post_init__(self) -> None:
        if self.gc not in GC_STRATEGIES:
            raise ValidationError(
                f"Unknown reference GC strategy {self.gc!r}; use one of: "
                + ", ".join(GC_STRATEGIES) + "."
            )  # fmt: skip
        if self.default_ttl is not None:
            check_seconds("RefConfig.default_ttl", self.default_ttl, positive=True)
        threshold = self.compress_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValidationError("RefConfig.compress_threshold must be an int >= 0.")
        if self.holder is not None:
            check_text("RefConfig.holder", self.holder, longest=255, empty=False)
            if self.holder.startswith(INTERNAL_HOLDER):
                raise ValidationError(
                    f"RefConfig.holder must not start with {INTERNAL_HOLDER!r} (agentcomm's own "
                    f"holders use it); choose another name than {self.holder!r}."
                )


def check_policy(what: str, policy: object) -> Policy:
    """Validate a tier policy."""
    if isinstance(policy, AutoPromote):
        return policy
    if policy == "value" or policy == "reference":
        return policy
    raise ValidationError(
        f"{what} must be 'value', 'reference' or agentcomm.AutoPromote(...), not {policy!r}."
    )


class PolicyTable:
    """The tier policy of each message type, and the default for the others."""

    def __init__(self, policies: Mapping[str, Policy] | None, default: Policy | None) -> None:
        if policies is not None and not isinstance(policies, Mapping):
            raise ValidationError("policies must map message types to policies.")
        self.default = check_policy("default_policy", default or AutoPromote())
        self.policies = {
            str(t): check_policy(f"The policy of type {t!r}", p)
            for t, p in (policies or {}).items()
        }

    def by_reference(self, type: str | None, size: int) -> bool:
        """Whether a payload of `type` (None: shared memory, the default) and encoded `size`
        travels by reference."""
        policy = self.default if type is None else self.policies.get(type, self.default)
        if isinstance(policy, AutoPromote):
            return policy.enabled and size > policy.threshold
        return policy == "reference"


def ref_id_of(ref: Ref | str) -> str:
    """The id of a Ref or id string, validated."""
    ref_id = ref.id if isinstance(ref, Ref) else ref
    if not isinstance(ref_id, str) or _REF_ID.fullmatch(ref_id) is None:
        raise ValidationError(f"{ref!r:.100} is not a reference id ('sha256:' + 64 hex digits).")
    return ref_id


# --- compression --------------------------------------------------------------------------------


_local = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    # a fresh context allocates and touches a megabyte of tables, which costs more than
    # compressing 1 MB of JSON: each thread keeps its own (contexts are not thread-safe)
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(
        _local, "zstd", None
    )
    if pair is None:
        pair = _local.zstd = (
            zstandard.ZstdCompressor(level=_ZSTD_LEVEL),
            zstandard.ZstdDecompressor(),
        )
    return pair


def _compress(piece: bytes, algo: str) -> bytes:
    """Compress one piece (at most CHUNK_SIZE bytes) as a frame of its own.

    Every stored chunk decompresses on its own, to at most one piece: reading never holds
    more than a chunk, and a damaged chunk cannot inflate into a huge buffer.
    """
    if algo == "zstd":
        return _zstd()[0].compress(piece)
    return zlib.compress(piece, _GZIP_LEVEL, 31)


class _Unpacker:
    """Turns stored chunks back into original bytes, checking them against the id."""

    def __init__(self, ref: Ref) -> None:
        self.ref = ref
        self._hash = hashlib.sha256()
        self._size = 0

    def chunk(self, data: bytes) -> bytes:
        algo = self.ref.compression
        try:
            if algo == "zstd":
                if not 0 <= zstandard.frame_content_size(data) <= CHUNK_SIZE:
                    raise self._corrupt("a zstd chunk claims an impossible size")
                out: bytes = _zstd()[1].decompress(data)
            elif algo == "gzip":
                inflate = zlib.decompressobj(31)
                out = inflate.decompress(data, CHUNK_SIZE + 1)
                if len(out) > CHUNK_SIZE or not inflate.eof:
                    raise self._corrupt("a gzip chunk does not end where it should")
            else:
                out = data
        except (zstandard.ZstdError, zlib.error) as exc:
            raise self._corrupt(f"a {algo} chunk is damaged ({exc})") from exc
        self._hash.update(out)
        self._size += len(out)
        return out

    def verify(self) -> None:
        if self._size != self.ref.size:
            raise self._corrupt(f"it holds {self._size} bytes, not {self.ref.size}")
        if _PREFIX + self._hash.hexdigest() != self.ref.id:
            raise self._corrupt("its SHA-256 differs")

    def _corrupt(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"The stored blob {self.ref.id} does not match its id: {why}. "
            "It was damaged in storage; no data was returned."
        )


def _choose(compression: Compression, size: int, content_type: str, threshold: int) -> str:
    if compression not in COMPRESSIONS:
        raise ValidationError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}."
        )
    if compression == "none" or size < threshold or size == 0:
        return "none"
    if compression == "auto":
        return "none" if content_type.startswith(_PRECOMPRESSED) else "zstd"
    return compression


def _digest(data: bytes) -> str:
    return _PREFIX + hashlib.sha256(data).hexdigest()


def _pack(data: bytes, algo: str) -> tuple[str, list[bytes]]:
    """Chunk `data`, compressed with `algo` if that makes it smaller."""
    raw = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    sampled = algo != "none" and len(data) > 2 * _SAMPLE
    if sampled and len(_compress(data[:_SAMPLE], algo)) > _SAMPLE * 0.97:
        algo = "none"
    if algo != "none":
        packed = [_compress(p, algo) for p in raw]
        if sum(map(len, packed)) < len(data):
            return algo, packed
    return "none", raw


# --- reading ----------------------------------------------------------------------------------


async def read_blob(ctx: Context, ref_id: str) -> tuple[Ref, bytes]:
    """The record and original bytes of blob `ref_id`, verified (RefNotFound, IntegrityError)."""
    parts: list[bytes] = []
    found: list[Ref] = []
    async for piece in _pieces(ctx, ref_id, _READ_BATCH, found):
        parts.append(piece)
    return found[0], parts[0] if len(parts) == 1 else b"".join(parts)


async def _pieces(ctx: Context, ref_id: str, batch: int, found_box: list[Ref]) -> Any:
    """Yield the original bytes chunk by chunk (the record goes to `found_box` first);
    raises IntegrityError after the last chunk if the whole does not match the id."""
    backend = ctx
    found, chunks = await backend.references.ref_read(ref_id, 0, batch)
    if found is None:
        raise RefNotFound(f"No blob {ref_id} is stored (never stored, or evicted).")
    found_box.append(found)
    unpack = _Unpacker(found)
    total = found.stored_size
    start, read = 0, 0
    while True:
        for chunk in chunks:
            read += len(chunk)
            if len(chunk) > _OFFLOAD_AT:
                yield await asyncio.to_thread(unpack.chunk, chunk)
            else:
                yield unpack.chunk(chunk)
        start += len(chunks)
        if len(chunks) < batch:
            break
        again, chunks = await backend.references.ref_read(ref_id, start, batch)
        if again is None or again.created_at != found.created_at:
            raise RefNotFound(f"Blob {ref_id} was evicted while it was being read.")
    if read != total:
        raise IntegrityError(
            f"The stored blob {ref_id} does not match its id: {read} stored bytes were "
            f"found, not {total}. No data was returned."
        )
    unpack.verify()


async def stream_blob(ctx: Context, ref_id: str) -> tuple[Ref, AsyncIterator[bytes]]:
    """The record of blob `ref_id` (RefNotFound first) and its original bytes piece by piece.

    The last piece is held back until the whole matched its id: on damage the iterator
    raises IntegrityError before the blob's last bytes, so a reader never gets all of a
    damaged blob's bytes as if they were good."""
    found: list[Ref] = []
    pieces = _pieces(ctx, ref_id_of(ref_id), 2, found)
    first = await anext(pieces, None)

    async def lagged() -> AsyncIterator[bytes]:
        held = first
        try:
            async for piece in pieces:
                if held is not None:
                    yield held
                held = piece
        finally:
            await pieces.aclose()
        if held is not None:
            yield held

    return found[0], lagged()


def _verify_expected(ref_id: str, expected: str | None) -> None:
    if expected is not None and expected != ref_id:
        raise IntegrityError(
            f"The body's checksum is {ref_id}, not the {expected} sent; nothing was stored."
        )


# --- the store ----------------------------------------------------------------------------------


class RefStore:
    """The reference store of a hub: `hub.refs`."""

    def __init__(self, ctx: Context, config: RefConfig) -> None:
        self._ctx = ctx
        self.config = config
        #: The holder of the references this hub takes and releases (see `RefConfig.holder`).
        self.holder = config.holder or f"hub-{uuid.uuid4().hex}"

    @property
    def policies(self) -> PolicyTable:
        """The tier policy of each message type (from `connect(policies=...)`)."""
        return self._ctx.settings.policies

    def __repr__(self) -> str:
        return f"<RefStore gc={self.config.gc!r} holder={self.holder!r}>"

    def _backend(self) -> Context:
        self._ctx.check_open()
        return self._ctx

    def _expiry(self, ttl: float | None, now: float) -> float | None:
        if ttl is not None:
            ttl = check_seconds("ttl", ttl, positive=True, allow_inf=True)
            return None if math.isinf(ttl) else now + ttl
        if self.config.gc == "ttl" and self.config.default_ttl is not None:
            return now + self.config.default_ttl
        return None

    async def store(
        self,
        data: bytes | bytearray | memoryview,
        *,
        content_type: str = _DEFAULT_TYPE,
        ttl: float | None = None,
        compression: Compression = "auto",
    ) -> Ref:
        """Store `data` and hold one reference to it for the caller (`release` it when done).

        Storing bytes already stored adds a reference, not a copy. `compression` is
        `"auto"` (zstd, skipped for content types compressed already), `"zstd"`, `"gzip"` or
        `"none"`; it is applied from `RefConfig.compress_threshold` bytes up and kept only if
        it makes the blob smaller (`Ref.compression` and `stored_size` say what was stored).
        `ttl` seconds set `expires_at`: the blob is kept at least that long, even when
        unreferenced (see `RefConfig`).
        """
        if _observe.active():
            attrs = {"agentcomm.holder": self.holder, "agentcomm.content_type": content_type}
            with _observe.span("refs.store", attrs) as note:
                ref = await self._store_as(
                    self.holder, data, content_type=content_type, ttl=ttl,
                    compression=compression,
                )  # fmt: skip
                note("agentcomm.ref", ref.id)
                note("agentcomm.size", ref.size)
                return ref
        return await self._store_as(
            self.holder, data, content_type=content_type, ttl=ttl, compression=compression
        )

    async def _store_as(
        self,
        holder: str,
        data: bytes | bytearray | memoryview,
        *,
        content_type: str = _DEFAULT_TYPE,
        ttl: float | None = None,
        compression: Compression = "auto",
    ) -> Ref:
        """`store`, with the reference held by `holder` (for the feature layer's own holds)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValidationError(f"store() takes bytes, not {type(data).__name__}.")
        check_text("content_type", content_type, longest=255)
        try:
            blob = bytes(data)
        except (BufferError, TypeError, ValueError) as exc:
            raise ValidationError(f"store() cannot read the buffer given ({exc}).") from None
        now = self._ctx.now()
        expires_at = self._expiry(ttl, now)
        algo = _choose(compression, len(blob), content_type, self.config.compress_threshold)
        if len(blob) > _OFFLOAD_AT:  # hashing and compressing both release the GIL
            ref_id, (algo, chunks) = await asyncio.gather(
                asyncio.to_thread(_digest, blob), asyncio.to_thread(_pack, blob, algo)
            )
        else:
            ref_id, (algo, chunks) = _digest(blob), _pack(blob, algo)
        meta = RefMeta(ref_id, len(blob), sum(map(len, chunks)), algo, content_type, expires_at)
        return await self._backend().references.ref_put(meta, chunks, holder=holder, now=now)

    async def store_file(
        self,
        path: str | os.PathLike[str],
        *,
        content_type: str = _DEFAULT_TYPE,
        ttl: float | None = None,
        compression: Compression = "auto",
    ) -> Ref:
        """Store a file's content like `store`, streamed: read, hashed, compressed and stored
        one chunk at a time, so memory use does not grow with the file.

        Whether compression saves space is judged on the first chunk and checked at the end
        (if the whole did not shrink, the file is stored again uncompressed).
        """
        path = check_path("path", path)
        check_text("content_type", content_type, longest=255)
        backend = self._backend()
        now = self._ctx.now()
        expires_at = self._expiry(ttl, now)
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):  # e.g. /dev/zero would never end
                raise ValidationError(f"store_file() reads regular files only, not {path!r}.")
            size = info.st_size  # to choose; the size stored is the size read
            algo = _choose(compression, size, content_type, self.config.compress_threshold)
            ref_id, algo, stored, upload, size = await self._stage_file(backend, path, algo)
            if algo != "none" and stored >= size:
                await backend.references.ref_abort(upload)
                ref_id, algo, stored, upload, size = await self._stage_file(backend, path, "none")
        except OSError as exc:
            raise ValidationError(f"Cannot read {os.fspath(path)!r}: {exc}.") from exc
        meta = RefMeta(ref_id, size, stored, algo, content_type, expires_at)
        return await backend.references.ref_commit(upload, meta, holder=self.holder, now=now)

    async def _stage_file(
        self, backend: Context, path: str | os.PathLike[str], algo: str
    ) -> tuple[str, str, int, int, int]:
        """Stage the file's chunks; returns (id, compression, stored size, upload, size)."""
        digest = hashlib.sha256()
        upload: int | None = None
        n = stored = 0
        now = self._ctx.now()

        def step(f: Any) -> bytes | None:
            piece: bytes = f.read(CHUNK_SIZE)
            if not piece:
                return None
            digest.update(piece)
            return piece if algo == "none" else _compress(piece, algo)

        try:
            f = await asyncio.to_thread(open, path, "rb")
            with contextlib.closing(f):
                while True:
                    out = await asyncio.to_thread(step, f)
                    if out is None:
                        break
                    if n == 0 and algo != "none" and len(out) >= f.tell():
                        return await self._restart(backend, upload, path)
                    upload = await backend.references.ref_stage(upload, n, out, now=now)
                    n += 1
                    stored += len(out)
                # the size read, not the size at the start: the file may have grown meanwhile
                size = f.tell()
            if upload is None:  # an empty file is one empty chunk
                upload = await backend.references.ref_stage(None, 0, b"", now=now)
        except BaseException:
            if upload is not None:
                with contextlib.suppress(Exception):
                    await backend.references.ref_abort(upload)
            raise
        return _PREFIX + digest.hexdigest(), algo, stored, upload, size

    async def _store_stream(
        self,
        body: AsyncIterable[bytes],
        *,
        content_type: str = _DEFAULT_TYPE,
        ttl: float | None = None,
        expected: str | None = None,
    ) -> Ref:
        """Store what `body` yields, with a reference held by this hub's holder, without
        holding more than about one CHUNK_SIZE piece: hashed, compressed and staged piece by
        piece (the server's streamed upload).

        A blob of one piece is stored as `store` does. A larger one is compressed ("auto")
        when its first piece shrinks by 3 % or more; the body cannot be read twice, so that
        choice is kept to the end. `expected` ("sha256:<hex>"): if the bytes' id differs, the
        staged upload is dropped and IntegrityError raised. Any error while reading `body`
        (e.g. a size limit its producer enforces) drops the staged upload too: nothing is
        stored unless the whole blob is.
        """
        check_text("content_type", content_type, longest=255)
        buffer = bytearray()
        stream = aiter(body)
        async for part in stream:
            buffer += part
            if len(buffer) > CHUNK_SIZE:
                break
        else:  # one piece: the in-memory path (hashed once more for the check; it is small)
            data = bytes(buffer)
            _verify_expected(_digest(data), expected)
            return await self._store_as(self.holder, data, content_type=content_type, ttl=ttl)
        backend = self._backend()
        now = self._ctx.now()
        expires_at = self._expiry(ttl, now)
        algo = _choose("auto", CHUNK_SIZE, content_type, self.config.compress_threshold)
        if algo != "none" and len(_compress(bytes(buffer[:_SAMPLE]), algo)) > _SAMPLE * 0.97:
            algo = "none"
        digest = hashlib.sha256()
        upload: int | None = None
        n = size = stored = 0

        def pack(piece: bytes) -> bytes:
            digest.update(piece)
            return piece if algo == "none" else _compress(piece, algo)

        async def stage(piece: bytes) -> None:
            nonlocal upload, n, size, stored
            out = await asyncio.to_thread(pack, piece)
            upload = await backend.references.ref_stage(upload, n, out, now=now)
            n, size, stored = n + 1, size + len(piece), stored + len(out)

        try:
            while True:
                while len(buffer) >= CHUNK_SIZE:
                    await stage(bytes(buffer[:CHUNK_SIZE]))
                    del buffer[:CHUNK_SIZE]
                try:
                    buffer += await anext(stream)
                except StopAsyncIteration:
                    break
            if buffer:
                await stage(bytes(buffer))
            assert upload is not None  # more than one piece was staged
            ref_id = _PREFIX + digest.hexdigest()
            _verify_expected(ref_id, expected)
        except BaseException:
            if upload is not None:
                with contextlib.suppress(Exception):
                    await backend.references.ref_abort(upload)
            raise
        meta = RefMeta(ref_id, size, stored, algo, content_type, expires_at)
        return await backend.references.ref_commit(upload, meta, holder=self.holder, now=now)

    async def _restart(
        self, backend: Context, upload: int | None, path: str | os.PathLike[str]
    ) -> tuple[str, str, int, int, int]:
        if upload is not None:
            await backend.references.ref_abort(upload)
        return await self._stage_file(backend, path, "none")

    async def get(self, ref: Ref | str) -> Ref | None:
        """The stored record of `ref` (current refcount), or None if it is not stored."""
        found, _ = await self._backend().references.ref_read(ref_id_of(ref), 0, 0)
        return found

    async def resolve(self, ref: Ref | str) -> bytes:
        """The original bytes of `ref` (a Ref or its id), verified against the id.

        Raises RefNotFound if it is not stored and IntegrityError if the stored bytes do not
        match the id.
        """
        if _observe.active():
            with _observe.span("refs.resolve", {"agentcomm.ref": ref_id_of(ref)}):
                _, data = await read_blob(self._backend(), ref_id_of(ref))
                return data
        _, data = await read_blob(self._backend(), ref_id_of(ref))
        return data

    async def resolve_to(self, ref: Ref | str, path: str | os.PathLike[str]) -> Ref:
        """Write the original bytes of `ref` to `path`, streamed chunk by chunk and verified.

        The file appears only once the whole blob matched its id; on IntegrityError nothing is
        left at `path`. Returns the blob's record.
        """
        ref_id = ref_id_of(ref)
        target = check_path("path", path)
        part = f"{target}.{uuid.uuid4().hex[:8]}.part"
        found: list[Ref] = []
        try:
            f = await asyncio.to_thread(open, part, "wb")
            with contextlib.closing(f):
                async for piece in _pieces(self._backend(), ref_id, 2, found):
                    await asyncio.to_thread(f.write, piece)
            os.replace(part, target)
        except OSError as exc:
            raise ValidationError(f"Cannot write {target!r}: {exc}.") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(part)
        return found[0]

    async def retain(self, ref: Ref | str) -> Ref:
        """Add a reference to a stored blob for this hub's holder; returns its record (the
        total refcount). Raises RefNotFound."""
        ref_id = ref_id_of(ref)
        found = await self._backend().references.ref_adjust(
            ref_id, 1, holder=self.holder, now=self._ctx.now()
        )
        if found is None:
            raise RefNotFound(f"Cannot retain {ref_id}: no such blob is stored.")
        return found

    async def release(self, ref: Ref | str) -> int:
        """Drop one reference this hub's holder took by `store`, `store_file` or `retain`;
        returns the total refcount left. At zero, `ref_counting` evicts the blob at once.

        Raises RefNotHeld (changing nothing) if this holder holds no reference to it, e.g.
        for a received message's `payload_ref`, which the message holds itself; RefNotFound
        if it is not stored.
        """
        ref_id = ref_id_of(ref)
        found = await self._backend().references.ref_adjust(
            ref_id, -1, holder=self.holder, now=self._ctx.now()
        )
        if found is None:
            raise RefNotFound(f"Cannot release {ref_id}: no such blob is stored.")
        return found.refcount

    async def gc(self) -> list[Ref]:
        """Evict what the GC strategy allows now (see `RefConfig`); returns the evicted."""
        return await self._backend().references.ref_gc(now=self._ctx.now())

    async def stats(self) -> RefStats:
        """Counters: total refs and bytes, active refs, current bytes, GC runs, evictions."""
        return await self._backend().references.ref_stats()

    async def list_refs(self) -> list[Ref]:
        """Every stored blob's record, by id."""
        return await self._backend().references.ref_list()
