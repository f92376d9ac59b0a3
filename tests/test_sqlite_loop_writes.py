"""SQLite loop writes: small transactions on the event-loop thread, and their guards."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import agentcomm
from agentcomm._backends.sqlite import writer
from agentcomm._backends.sqlite.writer import Writer


def _url(tmp_path: Path, query: str = "") -> str:
    return f"sqlite:///{tmp_path / 'loop.db'}" + (f"?{query}" if query else "")


def _writer(hub: agentcomm.Hub) -> Writer:
    w: Writer = hub._backend._writer  # type: ignore[attr-defined]
    return w


async def _roundtrip(hub: agentcomm.Hub, n: int) -> list[Any]:
    sender, worker = await hub.agent("sender"), await hub.agent("worker")
    for i in range(n):
        await sender.send("worker", i)
    got = []
    for _ in range(n):
        msg = await worker.receive(timeout=5)
        assert msg is not None
        await msg.ack()
        got.append(msg.data)
    return got


async def test_small_writes_run_on_the_loop_by_default(tmp_path: Path) -> None:
    async with agentcomm.connect(_url(tmp_path)) as hub:
        assert await _roundtrip(hub, 20) == list(range(20))
        counts = _writer(hub).counts
        assert counts["loop"] >= 40  # sends, claims and acks
        conn = _writer(hub)._conn
        assert conn is not None
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


@pytest.mark.parametrize("query", ["loop_writes=0", "loop_writes=false", "synchronous=FULL"])
async def test_loop_writes_off_by_url_or_with_synchronous_full(tmp_path: Path, query: str) -> None:
    async with agentcomm.connect(_url(tmp_path, query)) as hub:
        assert not _writer(hub).loop_writes
        assert await _roundtrip(hub, 10) == list(range(10))
        assert _writer(hub).counts["loop"] == 0


def test_a_bad_loop_writes_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(agentcomm.ConfigurationError, match="loop_writes must be 1 or 0"):
        agentcomm.connect(_url(tmp_path, "loop_writes=maybe"))


async def test_a_write_lock_held_elsewhere_sends_the_write_to_the_thread(tmp_path: Path) -> None:
    async with agentcomm.connect(_url(tmp_path)) as hub:
        sender = await hub.agent("sender")
        await hub.agent("worker")
        w = _writer(hub)
        other = sqlite3.connect(str(tmp_path / "loop.db"), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's write transaction
            on_thread = w.counts["thread"]
            sending = asyncio.create_task(sender.send("worker", "after the lock"))
            await asyncio.sleep(0.2)
            assert not sending.done()  # waiting on the thread, not failed, not on the loop
            other.execute("COMMIT")
            await asyncio.wait_for(sending, 10)
            assert w.counts["thread"] > on_thread
        finally:
            other.close()
        msg = await (await hub.agent("worker")).receive(timeout=5)
        assert msg is not None and msg.data == "after the lock"


async def test_a_small_write_waits_for_what_is_queued_on_the_thread(tmp_path: Path) -> None:
    async with agentcomm.connect(_url(tmp_path)) as hub:
        sender, worker = await hub.agent("sender"), await hub.agent("worker")
        batch = [agentcomm.Outgoing(to="worker", data=i) for i in range(100)]  # thread: > 16
        # issued in this order in one loop turn: the batch first, then the single send
        await asyncio.gather(sender.send_many(batch), sender.send("worker", "last"))
        got = await worker.receive_many(200, timeout=5)
        assert [m.data for m in got] == [*range(100), "last"]


async def test_writes_past_the_budget_commit_together_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LOOP_BUDGET", 0.0)  # every write after the first batches
    monkeypatch.setattr(writer, "LOOP_BATCH_MAX", 3)
    async with agentcomm.connect(_url(tmp_path)) as hub:
        worker = await hub.agent("worker")
        senders = [await hub.agent(f"s{k}") for k in range(8)]

        async def send_all(k: int) -> None:
            for i in range(20):
                await senders[k].send("worker", [k, i])

        await asyncio.gather(*(send_all(k) for k in range(8)))
        assert _writer(hub).counts["batched"] > 0, _writer(hub).counts
        got = [m.data for m in await worker.receive_many(500, timeout=5)]
        assert sorted(got) == [[k, i] for k in range(8) for i in range(20)]
        for k in range(8):  # each sender's messages in the order it sent them
            assert [i for kk, i in got if kk == k] == list(range(20))


async def test_a_loop_batch_past_its_time_commits_and_the_rest_follow_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LOOP_BUDGET", 0.0)  # every write after the first batches
    monkeypatch.setattr(writer, "LOOP_BATCH_TIME", 0.0)  # so every batch stops after one
    flushes: list[tuple[int, int]] = []  # (operations handed in, operations committed)
    flush = Writer._flush

    def counting_flush(self: Writer, batch: list[Any]) -> None:
        before = self.counts["batched"]
        flush(self, batch)
        flushes.append((len(batch), self.counts["batched"] - before))

    monkeypatch.setattr(Writer, "_flush", counting_flush)
    async with agentcomm.connect(_url(tmp_path)) as hub:
        worker = await hub.agent("worker")
        senders = [await hub.agent(f"s{k}") for k in range(8)]

        async def send_all(k: int) -> None:
            for i in range(10):
                await senders[k].send("worker", [k, i])

        await asyncio.gather(*(send_all(k) for k in range(8)))
        assert any(handed > 1 for handed, _ in flushes), flushes  # batches did form
        assert all(committed <= 1 for _, committed in flushes), flushes  # and were cut
        got = [m.data for m in await worker.receive_many(500, timeout=5)]
        assert sorted(got) == [[k, i] for k in range(8) for i in range(10)]
        for k in range(8):  # each sender's messages in the order it sent them
            assert [i for kk, i in got if kk == k] == list(range(10))


async def test_a_failing_write_in_a_loop_batch_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LOOP_BUDGET", 0.0)
    async with agentcomm.connect(_url(tmp_path), auto_register=False) as hub:
        sender = await hub.agent("sender")
        await hub.agent("worker")
        results = await asyncio.gather(
            sender.send("worker", 1),
            sender.send("nobody", 2),  # unknown recipient: raises, stores nothing
            sender.send("worker", 3),
            return_exceptions=True,
        )
        assert isinstance(results[1], agentcomm.UnknownAgent)
        assert all(isinstance(r, str) for r in (results[0], results[2]))
        assert await hub.queue_depth("worker") == 2


async def test_slow_loop_writes_trip_the_breaker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "SLOW_LOOP_TXN", 0.0)  # every loop write counts as slow
    async with agentcomm.connect(_url(tmp_path)) as hub:
        await _roundtrip(hub, writer.BREAKER_WINDOW)
        w = _writer(hub)
        assert w.counts["tripped"] == 1
        loop_before, thread_before = w.counts["loop"], w.counts["thread"]
        assert await _roundtrip(hub, 5) == list(range(5))
        assert w.counts["loop"] == loop_before  # the breaker is open: all on the thread
        assert w.counts["thread"] > thread_before


async def test_the_checkpointer_checkpoints_once_writes_pause(tmp_path: Path) -> None:
    async with agentcomm.connect(_url(tmp_path)) as hub:
        await _roundtrip(hub, 10)
        checkpointer = _writer(hub)._checkpointer
        assert checkpointer is not None
        for _ in range(500):  # bounded: a pause of 20 ms is all it waits for
            if checkpointer.checkpoints:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.checkpoints >= 1


async def test_the_first_commit_into_a_restarted_wal_runs_on_the_thread(tmp_path: Path) -> None:
    async with agentcomm.connect(_url(tmp_path)) as hub:
        sender = await hub.agent("sender")
        await hub.agent("worker")
        await sender.send("worker", 0)
        w = _writer(hub)
        checkpointer = w._checkpointer
        assert checkpointer is not None
        for _ in range(500):  # bounded: the idle checkpoint copies the whole WAL
            if checkpointer.wal_restarts:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.wal_restarts
        loop_before, thread_before = w.counts["loop"], w.counts["thread"]
        await sender.send("worker", 1)  # starts the WAL over (an fsync): on the thread
        assert (w.counts["loop"], w.counts["thread"]) == (loop_before, thread_before + 1)
        assert not checkpointer.wal_restarts
        for i in range(2, 5):  # and the loop takes the next ones again (the first may still
            await sender.send("worker", i)  # find the thread releasing the connection)
        assert w.counts["loop"] > loop_before
        assert await hub.queue_depth("worker") == 5


async def test_a_wal_that_keeps_growing_under_steady_writes_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "CHECKPOINT_RESTART_FRAMES", 8)
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 4)  # checkpoint while writes go on
    async with agentcomm.connect(_url(tmp_path)) as hub:
        sender = await hub.agent("sender")
        await hub.agent("worker")
        checkpointer = _writer(hub)._checkpointer
        assert checkpointer is not None
        sent = 0
        while not checkpointer.restarts and sent < 20_000:  # bounded; writes never pause
            await sender.send_many([agentcomm.Outgoing(to="worker", data=sent)] * 4)
            sent += 4
        assert checkpointer.restarts >= 1
        assert await hub.queue_depth("worker") == sent
