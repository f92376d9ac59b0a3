"""References: store, resolve, GC, integrity, compression, streaming; on every backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agentcomm
from agentcomm import IntegrityError, RefConfig, RefNotFound, ValidationError

COMPRESSIBLE = b"the same sentence, over and over. " * 4000  # ~136 KB


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def sqlite_only(backend_name: str) -> None:
    if backend_name != "sqlite":
        pytest.skip("this checks what the SQLite file holds")


@pytest.fixture
def not_memory(backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store holds every blob in memory")


def db_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


# --- store, resolve, dedupe, refcounts -----------------------------------------------------------


async def test_store_and_resolve_by_content(hub: agentcomm.Hub) -> None:
    data = os.urandom(50_000)
    ref = await hub.refs.store(data, content_type="application/x-test")
    assert ref.id == sha(data)
    assert (ref.size, ref.refcount, ref.content_type) == (len(data), 1, "application/x-test")
    assert ref.expires_at is None
    assert await hub.refs.resolve(ref) == data
    assert await hub.refs.resolve(ref.id) == data
    assert await hub.refs.resolve(await hub.refs.store(b"")) == b""


async def test_same_bytes_add_a_reference_not_a_copy(hub: agentcomm.Hub) -> None:
    first = await hub.refs.store(COMPRESSIBLE)
    second = await hub.refs.store(bytearray(COMPRESSIBLE))
    assert second.id == first.id
    assert second.refcount == 2
    stats = await hub.refs.stats()
    assert (stats.entries, stats.total_refs, stats.dedupe_hits) == (1, 1, 1)
    assert stats.current_bytes == len(COMPRESSIBLE)
    assert stats.stored_bytes == first.stored_size
    assert [r.id for r in await hub.refs.list_refs()] == [first.id]


async def test_retain_and_release_count(hub: agentcomm.Hub) -> None:
    ref = await hub.refs.store(b"x" * 100)
    assert (await hub.refs.retain(ref)).refcount == 2
    assert await hub.refs.release(ref) == 1
    got = await hub.refs.get(ref.id)
    assert got is not None and got.refcount == 1
    assert await hub.refs.release(ref.id) == 0
    with pytest.raises(RefNotFound):
        await hub.refs.release(ref)
    with pytest.raises(RefNotFound):
        await hub.refs.retain(ref)
    with pytest.raises(ValidationError):
        await hub.refs.resolve("not-a-ref")


async def test_stats_count_what_is_stored(hub: agentcomm.Hub) -> None:
    a = await hub.refs.store(b"a" * 10)
    await hub.refs.store(b"b" * 20)
    await hub.refs.release(a)
    stats = await hub.refs.stats()
    assert (stats.total_refs, stats.total_bytes) == (2, 30)
    assert (stats.entries, stats.active_refs, stats.current_bytes) == (1, 1, 20)
    assert stats.evictions == 1
    await hub.refs.gc()
    assert (await hub.refs.stats()).gc_runs == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["ref_counting", "manual"])
async def test_refcounts_follow_a_model(
    make_hub: Callable[..., agentcomm.Hub], seed: int, strategy: Any
) -> None:
    """Random store / retain / release / gc sequences against a dict of refcounts."""
    rng = random.Random(seed)
    contents = [f"content {i}".encode() * (1 + 200 * i) for i in range(4)]
    model: dict[str, int] = {}  # id -> refcount, for stored blobs
    async with make_hub(refs=RefConfig(gc=strategy)) as hub:
        for _ in range(120):
            data = rng.choice(contents)
            ref_id = sha(data)
            op = rng.choice(["store", "retain", "release", "release", "gc"])
            if op == "store":
                assert (await hub.refs.store(data)).refcount == model.get(ref_id, 0) + 1
                model[ref_id] = model.get(ref_id, 0) + 1
            elif op == "gc":
                evicted = {r.id for r in await hub.refs.gc()}
                assert evicted == {i for i, n in model.items() if n == 0}
                model = {i: n for i, n in model.items() if n > 0}
            elif ref_id not in model:
                with pytest.raises(RefNotFound):
                    await (hub.refs.retain if op == "retain" else hub.refs.release)(ref_id)
            elif op == "retain":
                assert (await hub.refs.retain(ref_id)).refcount == model[ref_id] + 1
                model[ref_id] += 1
            elif model[ref_id] == 0:  # stored, but this hub holds no reference to it
                with pytest.raises(agentcomm.RefNotHeld):
                    await hub.refs.release(ref_id)
            else:
                assert await hub.refs.release(ref_id) == model[ref_id] - 1
                model[ref_id] -= 1
                if model[ref_id] == 0 and strategy == "ref_counting":
                    del model[ref_id]
            assert {r.id: r.refcount for r in await hub.refs.list_refs()} == model
            if model:
                some = rng.choice(sorted(model))
                assert sha(await hub.refs.resolve(some)) == some


# --- GC strategies -------------------------------------------------------------------------------


async def test_ref_counting_evicts_at_zero(hub: agentcomm.Hub) -> None:
    ref = await hub.refs.store(b"payload" * 100)
    await hub.refs.retain(ref)
    await hub.refs.release(ref)
    assert await hub.refs.resolve(ref) == b"payload" * 100
    await hub.refs.release(ref)
    with pytest.raises(RefNotFound):
        await hub.refs.resolve(ref)
    assert await hub.refs.list_refs() == []


async def test_manual_evicts_only_on_gc(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(refs=RefConfig(gc="manual")) as hub:
        kept = await hub.refs.store(b"kept")
        dropped = await hub.refs.store(b"dropped")
        assert await hub.refs.release(dropped) == 0
        assert await hub.refs.resolve(dropped) == b"dropped"
        evicted = await hub.refs.gc()
        assert [r.id for r in evicted] == [dropped.id]
        assert [r.id for r in await hub.refs.list_refs()] == [kept.id]


async def test_ttl_evicts_expired_unreferenced_only(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub(refs=RefConfig(gc="ttl", default_ttl=None)) as hub:
        held_expired = await hub.refs.store(b"held", ttl=0.5)
        free_expired = await hub.refs.store(b"free", ttl=0.5)
        free_fresh = await hub.refs.store(b"fresh", ttl=3600)
        no_ttl = await hub.refs.store(b"no ttl")
        for ref in (free_expired, free_fresh, no_ttl):
            assert await hub.refs.release(ref) == 0
        assert len(await hub.refs.list_refs()) == 4  # a release evicts nothing under "ttl"
        assert [r.id for r in await hub.refs.gc()] == [no_ttl.id]
        await asyncio.sleep(0.6)
        assert [r.id for r in await hub.refs.gc()] == [free_expired.id]
        assert {r.id for r in await hub.refs.list_refs()} == {held_expired.id, free_fresh.id}
        assert await hub.refs.resolve(held_expired) == b"held"


async def test_ttl_strategy_default_ttl(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(refs=RefConfig(gc="ttl", default_ttl=0.5)) as hub:
        ref = await hub.refs.store(b"defaulted")
        assert ref.expires_at is not None and ref.expires_at <= ref.created_at + 0.51
        await hub.refs.release(ref)
        assert await hub.refs.gc() == []
        await asyncio.sleep(0.6)
        assert [r.id for r in await hub.refs.gc()] == [ref.id]


@pytest.mark.parametrize("strategy", ["ref_counting", "manual"])
async def test_a_ttl_keeps_an_unreferenced_blob_until_it_passes(
    make_hub: Callable[..., agentcomm.Hub], strategy: Any
) -> None:
    async with make_hub(refs=RefConfig(gc=strategy)) as hub:
        ref = await hub.refs.store(b"keep me a while", ttl=0.5)
        assert await hub.refs.release(ref) == 0
        assert await hub.refs.gc() == []
        assert await hub.refs.resolve(ref) == b"keep me a while"
        await asyncio.sleep(0.6)
        assert [r.id for r in await hub.refs.gc()] == [ref.id]


@pytest.mark.parametrize("strategy", ["ttl", "manual"])
async def test_background_passes_evict_except_under_manual(
    make_hub: Callable[..., agentcomm.Hub], strategy: Any
) -> None:
    config = RefConfig(gc=strategy, default_ttl=0.01)
    async with make_hub(refs=config, retention=agentcomm.Retention(interval=0.02)) as hub:
        ref = await hub.refs.store(b"unreferenced soon")
        await hub.refs.release(ref)
        # "ttl": wait (bounded) for a pass to evict it; "manual": let ~10 passes go by
        for _ in range(100 if strategy == "ttl" else 10):
            if strategy == "ttl" and not await hub.refs.list_refs():
                break
            await asyncio.sleep(0.02)
        left = [r.id for r in await hub.refs.list_refs()]
        assert left == ([ref.id] if strategy == "manual" else [])


async def test_ttl_never_evicts_what_a_live_message_holds(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    config = RefConfig(gc="ttl", default_ttl=0.01)
    async with make_hub(refs=config, default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", {"big": "state"})
        await asyncio.sleep(0.05)
        assert await hub.refs.gc() == []
        msg = await b.receive(timeout=5)
        assert msg is not None and msg.data == {"big": "state"}
        assert msg.payload_ref is not None and msg.payload_ref.refcount == 1
        await msg.ack()
        assert [r.id for r in await hub.refs.gc()] == [msg.payload_ref.id]


async def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValidationError, match="ref_counting"):
        RefConfig(gc="sometimes")  # type: ignore[arg-type]


# --- integrity -----------------------------------------------------------------------------------


async def test_corrupted_blob_raises_integrity_error(
    hub: agentcomm.Hub, url: str, sqlite_only: None
) -> None:
    data = os.urandom(10_000)
    ref = await hub.refs.store(data)
    with sqlite3.connect(db_path(url)) as conn:
        (key, stored) = conn.execute("SELECT key, data FROM ref_chunks").fetchone()
        flipped = stored[:100] + bytes([stored[100] ^ 0x01]) + stored[101:]
        conn.execute("UPDATE ref_chunks SET data = ? WHERE key = ?", (flipped, key))
    with pytest.raises(IntegrityError, match=ref.id):
        await hub.refs.resolve(ref)


async def test_corrupted_compressed_blob_raises_integrity_error(
    make_hub: Callable[..., agentcomm.Hub], url: str, sqlite_only: None
) -> None:
    async with make_hub(default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", COMPRESSIBLE.decode())
        with sqlite3.connect(db_path(url)) as conn:
            (key, stored) = conn.execute("SELECT key, data FROM ref_chunks").fetchone()
            flipped = stored[:-10] + bytes([stored[-10] ^ 0xFF]) + stored[-9:]
            conn.execute("UPDATE ref_chunks SET data = ? WHERE key = ?", (flipped, key))
        with pytest.raises(IntegrityError):
            await b.receive(timeout=5)


async def test_resolve_to_leaves_nothing_on_corruption(
    hub: agentcomm.Hub, url: str, tmp_path: Path, sqlite_only: None
) -> None:
    ref = await hub.refs.store(os.urandom(3_000_000))
    with sqlite3.connect(db_path(url)) as conn:
        key = conn.execute("SELECT MAX(key) FROM ref_chunks").fetchone()[0]
        conn.execute("UPDATE ref_chunks SET data = zeroblob(length(data)) WHERE key = ?", (key,))
    target = tmp_path / "out.bin"
    with pytest.raises(IntegrityError):
        await hub.refs.resolve_to(ref, target)
    assert [p for p in os.listdir(tmp_path) if p.startswith("out.bin")] == []


# --- compression ---------------------------------------------------------------------------------


async def test_compression_shrinks_compressible_data(hub: agentcomm.Hub) -> None:
    ref = await hub.refs.store(COMPRESSIBLE)
    assert ref.compression == "zstd"
    assert ref.stored_size < ref.size // 20
    assert (await hub.refs.stats()).stored_bytes == ref.stored_size
    assert await hub.refs.resolve(ref) == COMPRESSIBLE


async def test_compression_is_skipped_for_random_data(hub: agentcomm.Hub) -> None:
    data = os.urandom(200_000)
    algos: tuple[Any, ...] = ("auto", "zstd", "gzip")
    for algo in algos:
        ref = await hub.refs.store(data, compression=algo)
        assert (ref.compression, ref.stored_size) == ("none", len(data))


@pytest.mark.parametrize("algo", ["zstd", "gzip", "none"])
async def test_each_compression_option(hub: agentcomm.Hub, algo: Any) -> None:
    data = COMPRESSIBLE + b"tail-" + algo.encode()
    ref = await hub.refs.store(data, compression=algo)
    assert ref.compression == algo
    assert (ref.stored_size < ref.size) == (algo != "none")
    assert await hub.refs.resolve(ref) == data


async def test_compression_threshold_and_content_type(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub() as hub:
        small = await hub.refs.store(b"a" * 1000)  # under the default 1 KiB
        assert small.compression == "none"
        png = await hub.refs.store(COMPRESSIBLE + b"png", content_type="image/png")
        assert png.compression == "none"  # "auto" does not recompress media
        forced = await hub.refs.store(COMPRESSIBLE + b"png2", content_type="image/png",
                                      compression="zstd")  # fmt: skip
        assert forced.compression == "zstd"
        with pytest.raises(ValidationError):
            await hub.refs.store(b"x", compression="brotli")  # type: ignore[arg-type]
    async with make_hub(refs=RefConfig(compress_threshold=10)) as hub:
        assert (await hub.refs.store(b"b" * 1000)).compression == "zstd"


# --- large blobs, streamed ------------------------------------------------------------------------


async def test_files_round_trip_streamed(hub: agentcomm.Hub, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    block = os.urandom(300_000) + bytes(700_000)
    src.write_bytes(block * 3 + b"end")
    ref = await hub.refs.store_file(src)
    assert ref.id == sha(src.read_bytes()) and ref.compression == "zstd"
    assert ref.stored_size < ref.size
    assert (await hub.refs.store(src.read_bytes())).refcount == 2  # same content, same blob
    out = tmp_path / "out.bin"
    assert (await hub.refs.resolve_to(ref, out)).id == ref.id
    assert out.read_bytes() == src.read_bytes()
    gz = await hub.refs.store_file(src, compression="gzip", content_type="text/plain")
    assert (gz.id, gz.compression, gz.refcount) == (ref.id, "zstd", 3)  # stored already
    other = tmp_path / "other.bin"
    other.write_bytes(block * 2)
    gz = await hub.refs.store_file(other, compression="gzip")
    assert gz.compression == "gzip" and gz.stored_size < gz.size
    assert await hub.refs.resolve(gz) == other.read_bytes()
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(2_500_000))
    raw = await hub.refs.store_file(noise)
    assert (raw.compression, raw.stored_size) == ("none", raw.size)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert await hub.refs.resolve(await hub.refs.store_file(empty)) == b""


async def test_200_mb_blob_streams_in_bounded_memory(
    hub: agentcomm.Hub, tmp_path: Path, not_memory: None
) -> None:
    size = 200 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    noise = os.urandom(1 << 20)
    with src.open("wb") as f:
        for i in range(size >> 20):
            # half noise, half zeros: compressible, but not trivially
            block = noise[: 1 << 19] + i.to_bytes(8, "big") * (1 << 16)
            digest.update(block)
            f.write(block)
    del noise
    tracemalloc.start()
    try:
        ref = await hub.refs.store_file(src)
        out = tmp_path / "back.bin"
        await hub.refs.resolve_to(ref, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.id == "sha256:" + digest.hexdigest()
    assert ref.size == size and ref.compression == "zstd" and ref.stored_size < size
    assert peak < 32 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB blob"
    assert out.stat().st_size == size
    check = hashlib.sha256()
    with out.open("rb") as f:
        while piece := f.read(1 << 20):
            check.update(piece)
    assert check.hexdigest() == digest.hexdigest()


# --- several processes ---------------------------------------------------------------------------

CHURN = """
import asyncio, sys, agentcomm

async def main(url, rounds):
    async with agentcomm.connect(url) as hub:
        for i in range(int(rounds)):
            ref = await hub.refs.store(b"shared content" * 1000)
            if i % 3 == 0:
                await hub.refs.retain(ref)
                await hub.refs.release(ref)
            await hub.refs.release(ref)
        print("ok")

asyncio.run(main(*sys.argv[1:]))
"""


def _spawn_churn(url: str, rounds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHURN), url, str(rounds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
async def test_concurrent_store_and_release_across_processes(url: str, not_memory: None) -> None:
    data = b"shared content" * 1000
    async with agentcomm.connect(url) as hub:
        await hub.refs.store(b"warm-up")  # create the schema before the children race
        procs = [_spawn_churn(url, 300) for _ in range(2)]
        holds = rounds = 0
        while any(p.poll() is None for p in procs):
            # this process keeps every other reference it takes while the children churn
            ref = await hub.refs.store(data)
            rounds += 1
            assert await hub.refs.resolve(ref) == data
            if rounds % 2:
                await hub.refs.release(ref)
            else:
                holds += 1
            await asyncio.sleep(0.01)
        assert rounds > 1
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert out.strip() == "ok"
        got = await hub.refs.get(sha(data))
        if holds:
            assert got is not None and got.refcount == holds
            assert await hub.refs.resolve(got) == data
        else:
            assert got is None
