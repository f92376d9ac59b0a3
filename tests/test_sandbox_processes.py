"""The sandbox channel across real processes: the host here, the sandbox in a child process
(as another OS user where the tests run as root), killed with -9 mid-batch."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from agentcomm import sandbox
from sandbox_procs import NOBODY, BoxProcess, other_uid_reason, shared_directory

JOURNALS = ["delete", "wal"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_directory() as d:
        yield d


async def _until(check: object, what: str, timeout: float = 20.0) -> None:
    """Poll an async predicate until it holds (the behaviour waited for, not its speed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("journal", JOURNALS)
async def test_round_trip_in_seq_order(shared_dir: Path, journal: Literal["delete", "wal"]) -> None:
    async with sandbox.open_host(shared_dir, journal=journal) as host:
        ids = [await host.send({"reply": True, "n": n}) for n in range(3)]
        box = await BoxProcess.start("serve", shared_dir)
        try:
            assert (await box.event("ready"))["journal"] == journal
            replies = [await host.next_outbound(timeout=20) for _ in ids]
            assert [r.in_reply_to for r in replies if r is not None] == ids
            assert [r.data["echo"]["n"] for r in replies if r is not None] == [0, 1, 2]
            for r in replies:
                assert r is not None and r.seq % 2 == 1
                assert await r.delivered()
            # a host number above every sandbox number it has seen: seq orders the talk
            stop = await host.send({"stop": True})
            assert (await host.status(stop)).process_after > 0
            await box.event("stopped")
            await box.finish()
            states = [(await host.status(i)).state for i in [*ids, stop]]
            assert states == ["completed"] * 4
            seqs = [r.seq for r in replies if r is not None]
            assert seqs == sorted(seqs)
        finally:
            await box.close()


@pytest.mark.skipif(other_uid_reason() is not None, reason=str(other_uid_reason()))
@pytest.mark.parametrize("journal", JOURNALS)
async def test_sandbox_as_another_user_cannot_write_the_host_file(
    shared_dir: Path, journal: Literal["delete", "wal"]
) -> None:
    async with sandbox.open_host(shared_dir, journal=journal) as host:
        inbound = shared_dir / "inbound.db"
        info = inbound.stat()
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o644
        first = await host.send({"reply": True})
        box = await BoxProcess.start("raw_write", shared_dir, as_nobody=True)
        try:
            tried = await box.event("raw_write")
            assert tried["uid"] == NOBODY
            assert tried["plain"].startswith("refused"), tried
            assert tried["readonly"].startswith("refused"), tried
            assert tried["file"].startswith("refused"), tried
            await box.event("ready")
            reply = await host.next_outbound(timeout=20)
            assert reply is not None and reply.in_reply_to == first
            await reply.delivered()
            await _until(
                lambda: _state(host, first, "completed"), "the completion from the other uid"
            )
            outbound = shared_dir / "outbound.db"
            assert outbound.stat().st_uid == NOBODY
            assert stat.S_IMODE(outbound.stat().st_mode) == 0o644
            with sqlite3.connect(f"file:{inbound}?mode=ro", uri=True) as conn:
                assert (
                    conn.execute("SELECT count(*) FROM meta WHERE key = 'intruder'").fetchone()[0]
                    == 0
                )
                assert conn.execute("SELECT count(*) FROM messages_in").fetchone()[0] == 1
            await host.send({"stop": True})
            await box.event("stopped")
            await box.finish()
        finally:
            await box.close()


async def _state(host: sandbox.Host, mid: str, state: str) -> bool:
    return (await host.status(mid)).state == state


@pytest.mark.parametrize("journal", JOURNALS)
async def test_kill_mid_batch_retries_with_backoff_then_fails(
    shared_dir: Path, journal: Literal["delete", "wal"]
) -> None:
    host = await sandbox.open_host(
        shared_dir, journal=journal, stale_after=0.3, retry_base=0.2, max_tries=3,
        background=False,
    )  # fmt: skip
    try:
        mid = await host.send({"hang": True})
        delays = []
        for attempt in (1, 2, 3):
            box = await BoxProcess.start("serve", shared_dir)
            try:
                claimed = await box.event("claimed")
                assert claimed["id"] == mid and claimed["tries"] == attempt
                assert (await host.status(mid)).state == "processing"
            finally:
                box.kill()
                await box.close()
            report: sandbox.SweepReport | None = None
            bracket = (0.0, 0.0)  # when the last sweep call started and ended

            async def swept() -> bool:
                nonlocal report, bracket
                started = time.time()
                report = await host.sweep()
                bracket = (started, time.time())
                return bool(report.retried or report.failed)

            await _until(swept, "the sweep to see the stale claim")
            assert report is not None and not report.alive
            st = await host.status(mid)
            if attempt < 3:
                assert report.retried == [mid]
                assert st.state == "pending" and st.tries == attempt
                assert st.reason is not None and "heartbeat" in st.reason
                # the sweep set the due time from its own clock reading, within its call:
                # the backoff lies between these two, however slow the machine is
                delays.append((st.process_after - bracket[1], st.process_after - bracket[0]))
            else:
                assert report.failed == [mid]
                assert st.state == "failed" and st.tries == 3
                assert st.reason is not None and st.reason.startswith("gave up after 3 tries")
        # exponential backoff: retry_base, then twice that (stored due times, not speed)
        eps = 1e-3
        assert delays[0][0] - eps <= 0.2 <= delays[0][1] + eps
        assert delays[1][0] - eps <= 0.4 <= delays[1][1] + eps
        # due messages while the sandbox is down are reported: the cue to start it
        await host.send({"work": 1})
        report = await host.sweep()
        assert not report.alive and report.due_while_down == 1
    finally:
        await host.close()


async def test_late_answer_is_acked_and_counted(shared_dir: Path) -> None:
    async with sandbox.open_host(shared_dir) as host:
        box = await BoxProcess.start("ask_late", shared_dir)
        try:
            await box.event("ready")
            question = await host.next_outbound(timeout=20)
            assert question is not None and question.kind == "question"
            assert (await box.event("asked"))["answer"] is None  # timed out
            assert await host.answer(question.id, "too late")
            assert not await host.answer(question.id, "again")  # answered once
            assert not await question.delivered()  # answer() recorded it: a no-op
            late = await box.event("late")
            assert late == {"event": "late", "count": 1, "batch": []}
            await box.finish()

            async def answer_done() -> bool:
                await host.sweep()
                return await _answer_state(shared_dir, question.id) == "completed"

            await _until(answer_done, "the late answer to be acked")
        finally:
            await box.close()


async def _answer_state(directory: Path, question_id: str) -> str | None:
    def read() -> str | None:
        with sqlite3.connect(f"file:{directory / 'inbound.db'}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT state FROM messages_in WHERE in_reply_to = ? AND role = 'answer'",
                (question_id,),
            ).fetchone()
        return None if row is None else str(row[0])

    return await asyncio.to_thread(read)


@pytest.mark.parametrize("catch_up", ["once", "skip"])
async def test_recurring_task_across_a_host_restart(shared_dir: Path, catch_up: str) -> None:
    host = await sandbox.open_host(shared_dir, background=False)
    try:
        series = await host.send(
            {"task": "tick"}, kind="task", recurrence="* * * * * *", at=time.time(),
            catch_up=catch_up,  # type: ignore[arg-type]
        )  # fmt: skip
    finally:
        await host.close()
    # the host is down: the sandbox still runs the due occurrence
    box = await BoxProcess.start("serve", shared_dir)
    try:
        assert (await box.event("batch"))["ids"] == [series]
        await _until(lambda: _completed(shared_dir, series), "the occurrence to complete")
    finally:
        await box.close()
    await asyncio.sleep(1.5)  # occurrences pass while the host is down
    host = await sandbox.open_host(shared_dir, background=False)
    box2: BoxProcess | None = None
    try:
        report = await host.sweep()
        assert len(report.rescheduled) == 1
        nxt = report.rescheduled[0]
        st = await host.status(nxt)
        assert st.series_id == series and st.state == "pending"
        now = time.time()
        if catch_up == "once":
            assert st.process_after <= now  # the missed ones, coalesced into one, now
        else:
            assert st.process_after > now - 0.01  # missed ones skipped: the next slot
        assert (await host.sweep()).rescheduled == []  # no fork on a second pass
        assert _live_occurrences(shared_dir, series) == 1
        # the series continues: the sandbox runs the next one, the host schedules one more
        box2 = await BoxProcess.start("serve", shared_dir)
        assert (await box2.event("batch"))["ids"] == [nxt]

        async def next_scheduled() -> bool:
            return bool((await host.sweep()).rescheduled)

        await _until(next_scheduled, "the occurrence after the restart")
        assert _live_occurrences(shared_dir, series) == 1
        assert (await host.status(nxt)).state == "completed"
        assert await host.cancel_task(series)
        assert _live_occurrences(shared_dir, series) == 0
    finally:
        await host.close()
        if box2 is not None:
            await box2.close()


async def _completed(directory: Path, mid: str) -> bool:
    def read() -> bool:
        with sqlite3.connect(f"file:{directory / 'outbound.db'}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT 1 FROM acks WHERE message_id = ? AND status = 'completed'", (mid,)
            ).fetchone()
        return row is not None

    return await asyncio.to_thread(read)


def _live_occurrences(directory: Path, series: str) -> int:
    with sqlite3.connect(f"file:{directory / 'inbound.db'}?mode=ro", uri=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM messages_in WHERE series_id = ?"
                " AND state IN ('pending', 'paused')",
                (series,),
            ).fetchone()[0]
        )


def test_the_worker_runs_without_a_tty() -> None:
    assert os.path.exists(Path(__file__).with_name("sandbox_worker.py"))
