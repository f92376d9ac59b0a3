"""The sandbox channel's rules, both sides in this process (fast); the cross-process claims
are in test_sandbox_processes.py and test_sandbox_bridge.py."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentcomm
from agentcomm import sandbox


@pytest.fixture(params=["delete", "wal"])
async def sides(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[sandbox.Host, sandbox.Sandbox]]:
    async with (
        sandbox.open_host(tmp_path, journal=request.param, background=False) as host,
        sandbox.open_sandbox(tmp_path) as box,
    ):
        yield host, box


async def test_the_module_is_importable_from_the_package() -> None:
    assert "sandbox" in agentcomm.__all__
    assert agentcomm.sandbox.open_host is sandbox.open_host
    assert issubclass(sandbox.SandboxError, agentcomm.AgentCommError)
    assert issubclass(sandbox.ActionRejected, sandbox.SandboxError)
    for name in sandbox.__all__:
        assert getattr(sandbox, name).__doc__, name


async def test_bad_arguments_store_nothing(tmp_path: Path) -> None:
    with pytest.raises(agentcomm.ValidationError):
        sandbox.open_host(tmp_path, journal="memory")  # type: ignore[arg-type]
    with pytest.raises(agentcomm.ValidationError):
        sandbox.open_host(tmp_path, stale_after=0)
    with pytest.raises(agentcomm.ValidationError):
        sandbox.open_host(tmp_path, max_tries=0)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240
    with pytest.raises(sandbox.SandboxError, match="open the host side first"):
        await sandbox.open_sandbox(tmp_path)
    with pytest.raises(sandbox.SandboxError, match="not a directory"):
        await sandbox.open_host(tmp_path / "missing")
    async with sandbox.open_host(tmp_path, background=False) as host:
        for bad in (
            {"kind": "no spaces"},
            {"recurrence": "every day"},
            {"catch_up": "all"},
            {"idempotency_key": ""},
        ):
            with pytest.raises(agentcomm.ValidationError):
                await host.send({"x": 1}, **bad)  # type: ignore[arg-type]
        with pytest.raises(agentcomm.EncodeError):
            await host.send(object())
        with pytest.raises(agentcomm.NotFound):
            await host.status("nope")
        with pytest.raises(sandbox.SandboxError, match="Another process"):
            await sandbox.open_host(tmp_path)
        assert _count(tmp_path / "inbound.db", "messages_in") == 0


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_files_are_owner_writable_and_the_peer_is_read_only(
    sides: tuple[sandbox.Host, sandbox.Sandbox], tmp_path: Path
) -> None:
    host, box = sides
    for name in ("inbound.db", "outbound.db"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    await box.send({"x": 1}, to="a")

    def write_peer(conn: sqlite3.Connection) -> None:
        assert host._need_store().attach_peer(conn)
        conn.execute("DELETE FROM peer.messages_out")

    with pytest.raises(sandbox.SandboxError, match=r"read-only|readonly"):
        await host._need_store().call(write_peer)
    assert _count(tmp_path / "outbound.db", "messages_out") == 1


async def test_claimed_rows_are_filtered_before_the_limit(
    sides: tuple[sandbox.Host, sandbox.Sandbox],
) -> None:
    host, box = sides
    first = [await host.send({"n": n}) for n in range(5)]
    batch = await box.next_batch(max_messages=5, timeout=1)
    assert [m.id for m in batch] == first  # claimed, never completed: stale rows
    later = await host.send({"n": 5})
    batch = await box.next_batch(max_messages=5, timeout=1)
    assert [m.id for m in batch] == [later]
    assert await box.next_batch(timeout=0) == []


async def test_complete_and_fail_are_distinct(sides: tuple[sandbox.Host, sandbox.Sandbox]) -> None:
    host, box = sides
    ok, bad = await host.send({"n": 1}), await host.send({"n": 2})
    assert (await host.status(ok)).state == "pending"
    a, b = await box.next_batch(timeout=1)
    assert (await host.status(ok)).state == "processing"
    await box.complete(a)
    await box.fail(b, "no such file")
    st_ok, st_bad = await host.status(ok), await host.status(bad)
    assert (st_ok.state, st_ok.tries) == ("completed", 1)
    assert (st_bad.state, st_bad.reason) == ("failed", "no such file")
    report = await host.sweep()  # the host mirrors them; the states stay
    assert report.failed == [bad]
    assert (await host.status(ok)).state == "completed"
    assert (await host.status(bad)).reason == "no such file"


async def test_context_rides_with_the_next_trigger(
    sides: tuple[sandbox.Host, sandbox.Sandbox],
) -> None:
    host, box = sides
    ctx = await host.send({"said": "earlier"}, trigger=False)
    assert await box.next_batch(timeout=0.05) == []
    go = await host.send({"said": "now"})
    batch = await box.next_batch(timeout=1)
    assert [(m.id, m.trigger) for m in batch] == [(ctx, False), (go, True)]


async def test_idempotency_key_and_scheduling(sides: tuple[sandbox.Host, sandbox.Sandbox]) -> None:
    host, box = sides
    a = await host.send({"n": 1}, idempotency_key="k")
    assert await host.send({"n": 2}, idempotency_key="k") == a
    later = await host.send({"n": 3}, at=time.time() + 3600)
    assert [m.id for m in await box.next_batch(timeout=0.05)] == [a]
    assert (await host.status(later)).state == "pending"


async def test_sequence_numbers_alternate_and_increase(
    sides: tuple[sandbox.Host, sandbox.Sandbox],
) -> None:
    host, box = sides
    seqs = []
    for n in range(3):
        await host.send({"n": n})
        [m] = await box.next_batch(timeout=1)
        seqs.append(m.seq)
        await box.send({"r": n}, in_reply_to=m.id, to="x")
        out = await host.next_outbound(timeout=1)
        assert out is not None
        seqs.append(out.seq)
        await out.delivered()
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [s % 2 for s in seqs] == [0, 1] * 3


async def test_delivery_is_recorded_once(sides: tuple[sandbox.Host, sandbox.Sandbox]) -> None:
    host, box = sides
    await box.send({"x": 1}, to="a")
    out = await host.next_outbound(timeout=1)
    assert out is not None
    assert await out.failed("no route to 'a'")
    assert not await out.delivered()  # recorded failed, never delivered afterwards
    assert await host.next_outbound(timeout=0.05) is None


async def test_actions_are_applied_or_rejected_with_a_reason(
    sides: tuple[sandbox.Host, sandbox.Sandbox],
) -> None:
    host, box = sides
    for name, handler in sandbox.task_actions().items():
        host.register_action(name, handler)

    def refuse(args: object, tx: sandbox.ActionTx) -> None:
        tx.schedule({"never": 1})  # undone with the rejection
        raise sandbox.ActionRejected("not today")

    host.register_action("refuse", refuse)

    async def request(name: str, args: object) -> sandbox.ActionResult:
        task = asyncio.ensure_future(box.request_action(name, args, timeout=5))
        while not task.done():
            await host.sweep()
            await asyncio.sleep(0.01)
        return task.result()

    got = await request("schedule_task", {"prompt": "report", "cron": "0 9 * * *"})
    assert got.status == "applied"
    series = got.result["series_id"]
    assert (await host.status(series)).process_after > time.time()
    assert (await request("pause_task", {"series_id": series})).status == "applied"
    assert (await host.status(series)).state == "paused"
    assert (await request("resume_task", {"series_id": series})).status == "applied"
    refused = await request("refuse", {})
    assert (refused.status, refused.reason) == ("rejected", "not today")
    unknown = await request("launch", {})
    assert unknown.status == "rejected" and "unknown action 'launch'" in (unknown.reason or "")
    assert (await request("cancel_task", {"series_id": series})).status == "applied"
    assert (await host.status(series)).state == "cancelled"
    with pytest.raises(agentcomm.RequestTimeout):
        await box.request_action("schedule_task", {}, timeout=0.05)  # nobody sweeps


async def test_finished_rows_are_pruned_on_each_side(tmp_path: Path) -> None:
    async with (
        sandbox.open_host(tmp_path, background=False, retention=0) as host,
        sandbox.open_sandbox(tmp_path, retention=0) as box,
    ):
        await host.send({"n": 1})
        batch = await box.next_batch(timeout=1)
        await box.complete(batch)
        await box.send({"x": 1}, to="a")
        out = await host.next_outbound(timeout=1)
        assert out is not None
        await out.delivered()
        await host.sweep()
        await host._prune(time.time() + 1)
        await box._prune(time.time() + 1)
        await host._prune(time.time() + 1)
        await box._prune(time.time() + 1)
    assert _count(tmp_path / "inbound.db", "messages_in") == 0
    assert _count(tmp_path / "inbound.db", "deliveries") == 0
    assert _count(tmp_path / "outbound.db", "messages_out") == 0
    assert _count(tmp_path / "outbound.db", "acks") == 0


async def test_closed_sides_refuse_and_close_is_idempotent(tmp_path: Path) -> None:
    host = await sandbox.open_host(tmp_path)
    box = await sandbox.open_sandbox(tmp_path)
    await box.close()
    await box.close()
    await host.close()
    await host.close()
    with pytest.raises(sandbox.SandboxError):
        await host.send({"x": 1})
    with pytest.raises(sandbox.SandboxError):
        await box.send({"x": 1})
    assert not (tmp_path / "host.wake").exists()
    assert not (tmp_path / "inbound.db-wal").exists()
