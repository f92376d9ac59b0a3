"""References and the tier policy: the conformance suite, run on every backend."""

from __future__ import annotations

import asyncio
import contextlib
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
from agentcomm import AutoPromote, IntegrityError, RefConfig, RefNotFound, ValidationError

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
            else:
                assert await hub.refs.release(ref_id) == max(model[ref_id] - 1, 0)
                model[ref_id] = max(model[ref_id] - 1, 0)
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


# --- lifetime: holders release -------------------------------------------------------------------


async def test_ack_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", "one")
        await a.send("b", "one")
        refs = await hub.refs.list_refs()
        assert len(refs) == 1 and refs[0].refcount == 2
        first, second = await b.receive_many(2, timeout=5)
        await first.ack()
        assert (await hub.refs.list_refs())[0].refcount == 1
        await b.ack_many([second])
        assert await hub.refs.list_refs() == []


async def test_ack_releases_when_acked_rows_are_kept(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    retention = agentcomm.Retention(acked=3600)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", "payload")
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.ack()
        assert await hub.refs.list_refs() == []


async def test_expiry_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        await hub.agent("b")
        await a.send("b", "short-lived", ttl=0.01)
        assert len(await hub.refs.list_refs()) == 1
        await asyncio.sleep(0.05)
        assert (await hub.prune()).expired == 1
        assert await hub.refs.list_refs() == []


async def test_dead_letters_hold_until_pruned(make_hub: Callable[..., agentcomm.Hub]) -> None:
    retention = agentcomm.Retention(dead=0.01)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", {"doomed": True})
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("no")
        [dead] = await hub.dead_letters("b")
        assert dead.data == {"doomed": True}
        assert len(await hub.refs.list_refs()) == 1
        await asyncio.sleep(0.05)
        assert (await hub.prune()).pruned_messages == 1
        assert await hub.refs.list_refs() == []


async def test_requeued_dead_letter_still_resolves(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", [1, 2, 3])
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("later")
        assert await hub.requeue_dead_letters("b") == 1
        again = await b.receive(timeout=5)
        assert again is not None and again.data == [1, 2, 3]
        await again.ack()
        assert await hub.refs.list_refs() == []


async def test_shared_memory_holds_and_releases(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        kv = hub.memory("ns")
        entry = await kv.put("plan", {"v": 1})
        assert entry.payload_ref is not None and entry.value == {"v": 1}
        got = await kv.get("plan")
        assert got is not None and got.value == {"v": 1} and got.payload_ref is not None
        await kv.put("plan", {"v": 1})  # same content: still held, by the new version
        assert [r.refcount for r in await hub.refs.list_refs()] == [1]
        await kv.put("plan", {"v": 2})  # overwrite releases the old value
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'{"v":2}')]
        await kv.delete("plan")
        assert await hub.refs.list_refs() == []
        await kv.put("tmp", "x", ttl=0.01)
        await asyncio.sleep(0.05)
        assert await kv.get("tmp") is None  # expiry releases
        assert await hub.refs.list_refs() == []


async def test_shared_memory_history_holds_past_versions(hub: agentcomm.Hub) -> None:
    kv = hub.memory("hist", history=2)
    big = ["x" * 20_000]
    await kv.put("k", big)
    await kv.put("k", "small")
    [now, before] = await kv.history("k")
    assert (now.value, before.value) == ("small", big)
    await kv.put("k", "smaller")  # the big version leaves the kept history
    assert await hub.refs.list_refs() == []


async def test_watch_sees_values_stored_by_reference(hub: agentcomm.Hub) -> None:
    kv = hub.memory("watched")
    big = {"blob": "y" * 20_000}
    # include_initial: the put is seen whether it lands before or after the watch starts
    watch = kv.watch("*", include_initial=True)
    first = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0.05)
    await kv.put("k", big)
    change = await asyncio.wait_for(first, 10)
    assert (change.kind, change.value) == ("put", big)
    await watch.aclose()


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


# --- the tier policy -----------------------------------------------------------------------------


async def _tier(hub: agentcomm.Hub, type: str, data: Any) -> agentcomm.Ref | None:
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", data, type=type)
    msg = await b.receive(timeout=5)
    assert msg is not None and msg.data == data and msg.type == type
    await msg.ack()
    return msg.payload_ref


async def test_policy_table(make_hub: Callable[..., agentcomm.Hub]) -> None:
    policies = {
        "session_state": "reference",
        "control": "value",
        "tool_result": AutoPromote(threshold=100),
    }
    async with make_hub(policies=policies, default_policy=AutoPromote(enabled=False)) as hub:
        tiny, big = "s", "b" * 50_000
        state = await _tier(hub, "session_state", tiny)
        assert state is not None and state.size == len(b'"s"')
        assert await _tier(hub, "control", big) is None
        assert await _tier(hub, "tool_result", "x" * 90) is None  # 92 bytes encoded
        assert await _tier(hub, "tool_result", "x" * 99) is not None  # 101 bytes
        assert await _tier(hub, "other", big) is None  # auto-promotion disabled: by value
        assert await hub.refs.list_refs() == []  # and nothing was stored for it
        assert (await hub.refs.stats()).total_refs == 2


async def test_default_policy_promotes_above_10_kib(hub: agentcomm.Hub) -> None:
    assert await _tier(hub, "message", "x" * (10_240 - 2)) is None  # exactly 10 KiB encoded
    ref = await _tier(hub, "message", "x" * (10_240 - 1))
    assert ref is not None and ref.size == 10_241


async def test_value_default_never_promotes(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="value") as hub:
        assert await _tier(hub, "message", "x" * 1_000_000) is None
        assert (await hub.refs.stats()).total_refs == 0


async def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValidationError):
        agentcomm.connect("memory://", policies={"t": "sometimes"})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        agentcomm.connect("memory://", default_policy="by-value")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AutoPromote(threshold=-1)


# --- transparent application ---------------------------------------------------------------------


async def test_five_megabytes_sent_and_received_transparently(hub: agentcomm.Hub) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    blob = os.urandom(5 * 1024 * 1024)
    doc = {"rows": [{"i": i, "text": "lorem ipsum " * 8} for i in range(40_000)]}
    await a.send("b", blob, type="dataset")
    await a.send("b", doc, type="dataset")
    first, second = await b.receive_many(2, timeout=10)
    assert first.data == blob and second.data == doc
    assert first.payload_ref is not None and first.payload_ref.size == len(blob)
    assert second.payload_ref is not None and second.payload_ref.compression == "zstd"
    await b.ack_many([first, second])
    assert await hub.refs.list_refs() == []


async def test_one_payload_to_ten_recipients_is_stored_once(hub: agentcomm.Hub) -> None:
    sender = await hub.agent("sender")
    names = [f"r{i}" for i in range(10)]
    for name in names:
        await hub.agent(name)
    payload = os.urandom(1_000_000)
    await sender.send_many([agentcomm.Outgoing(to=n, data=payload) for n in names])
    stats = await hub.refs.stats()
    assert (stats.total_refs, stats.stored_bytes, stats.dedupe_hits) == (1, len(payload), 0)
    assert [p.size for p in await hub.pending("r0")] == [len(payload)]
    assert [r.refcount for r in await hub.refs.list_refs()] == [10]
    for name in names:
        agent = await hub.agent(name)
        msg = await agent.receive(timeout=5)
        assert msg is not None and msg.data == payload
        await msg.ack()
    assert await hub.refs.list_refs() == []


async def test_send_many_from_a_generator_keeps_values_apart(hub: agentcomm.Hub) -> None:
    a = await hub.agent("a")
    b = await hub.agent("b")
    await a.send_many(
        agentcomm.Outgoing(to="b", data={"n": n, "pad": "x" * 20_000}) for n in range(20)
    )
    got = await b.receive_many(20, timeout=5)
    assert sorted(m.data["n"] for m in got) == list(range(20))
    assert all(m.payload_ref is not None for m in got)


async def test_request_and_reply_by_reference(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")

        async def answer() -> None:
            msg = await answerer.receive(timeout=5)
            assert msg is not None and msg.payload_ref is not None
            assert await msg.reply({"answer": msg.data["q"] * 2})

        task = asyncio.create_task(answer())
        reply = await asker.request("answerer", {"q": 21}, timeout=10)
        await task
        assert reply.data == {"answer": 42}
        assert await hub.refs.list_refs() == []


async def test_cancelled_request_leaves_no_reference(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")
        request = asyncio.create_task(asker.request("answerer", "q?", timeout=30))
        msg = await answerer.receive(timeout=5)
        assert msg is not None
        assert await msg.reply("an answer nobody may read")
        request.cancel()  # whether it took the reply first or not, nothing stays referenced
        with contextlib.suppress(asyncio.CancelledError):
            await request
        closing = [t for t in hub._ctx.tasks if "close_slot" in repr(t.get_coro())]
        await asyncio.gather(*closing)
        assert await hub.refs.list_refs() == []


async def test_cancelled_send_leaves_no_reference(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        await hub.agent("b")
        sending = asyncio.create_task(a.send("b", os.urandom(3_000_000)))
        await asyncio.sleep(0)  # let it start hashing and storing
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        assert sending.cancelled()
        # the store finishes in the background, then its reference is released: an empty
        # list only counts once the store has happened
        for _ in range(500):
            stored = (await hub.refs.stats()).total_refs >= 1
            if stored and not await hub.refs.list_refs():
                break
            await asyncio.sleep(0.01)
        assert (await hub.refs.stats()).total_refs == 1
        assert await hub.refs.list_refs() == []
        assert await hub.queue_depth("b") == 0


async def test_late_reply_by_reference_is_not_kept(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        asker, answerer = await hub.agent("asker"), await hub.agent("answerer")
        with pytest.raises(agentcomm.RequestTimeout):
            await asker.request("answerer", "q?", timeout=0.05)
        msg = await answerer.receive(timeout=0)
        assert msg is None  # the request expired with its timeout
        await hub.prune()
        assert await hub.refs.list_refs() == []


async def test_schedule_by_reference(make_hub: Callable[..., agentcomm.Hub]) -> None:
    fast = agentcomm.Limits(min_schedule_period=0.01)
    async with make_hub(default_policy="reference", limits=fast) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        sched = await a.schedule("b", {"tick": True}, every=0.05)
        assert [r.refcount for r in await hub.refs.list_refs()] == [1]  # the schedule holds it
        msg = await b.receive(timeout=10)
        assert msg is not None and msg.data == {"tick": True} and msg.payload_ref is not None
        await msg.ack()
        assert await hub.cancel_schedule(sched)
        for m in await b.receive_many(100, timeout=0):
            await m.ack()
        assert await hub.refs.list_refs() == []


async def test_put_that_conflicts_keeps_nothing(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        kv = hub.memory("ns")
        await kv.put("k", "first")
        with pytest.raises(agentcomm.VersionConflict):
            await kv.put("k", "second", expected_version=0)
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'"first"')]


async def test_unknown_recipient_keeps_nothing(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(default_policy="reference") as hub:
        a = await hub.agent("a")
        with pytest.raises(agentcomm.UnknownAgent):
            await a.send("nobody", "payload")
        assert await hub.refs.list_refs() == []


# --- topics ------------------------------------------------------------------------------------


async def test_publish_by_reference_reaches_every_kind_of_subscriber(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    big = {"table": ["row " * 10] * 2_000}  # ~100 KB: promoted by the default policy
    async with make_hub() as hub, make_hub() as other:
        pub = await hub.agent("pub")
        live = await (await hub.agent("here")).subscribe("data.>")
        remote = await (await other.agent("there")).subscribe("data.>")
        durable = await (await hub.agent("keeper")).subscribe("data.>", durable="d", start="all")
        result = await pub.publish("data.tables", big)
        refs = await hub.refs.list_refs()
        assert len(refs) == 1 and refs[0].refcount == 1  # one store, held by the log record
        for sub in (live, remote, durable):
            msg = await sub.next(timeout=10)
            assert msg is not None and msg.data == big and msg.sequence == result.sequence
            await msg.ack()
        for sub in (live, remote, durable):
            await sub.aclose()


async def test_pruned_topic_records_release_their_payloads(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    retention = agentcomm.Retention(topic_max_count=1)
    async with make_hub(default_policy="reference", retention=retention) as hub:
        pub = await hub.agent("pub")
        for n in range(3):
            await pub.publish("t", {"n": n})
        await hub.prune()
        assert [r.id for r in await hub.refs.list_refs()] == [sha(b'{"n":2}')]


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
