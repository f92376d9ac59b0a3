"""Stored state that cannot be decoded (written by a bug, by hand, or damaged) is reported,
skipped and still removable; it never fails every schedule or a whole listing.

The bad state is made behind agentcomm's back: raw SQL on SQLite, poking the store in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest
from typer.testing import CliRunner

import agentcomm
from agentcomm._backends.memory import MemoryBackend
from agentcomm._cli import app

BACKENDS = ["memory", "sqlite"]
HOUR = 3600.0


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    return f"memory://{request.node.name.replace('[', '-').rstrip(']')}"


def sqlite_path(url: str) -> str | None:
    parts = urlsplit(url)
    return parts.path[1:] if parts.scheme == "sqlite" else None


def spoil_schedule_sql(path: str, schedule_id: str, how: str) -> None:
    conn = sqlite3.connect(path)
    if how == "garbage":
        blob = b"\xc1 not msgpack"
    else:  # a spec that decodes as msgpack but not as a schedule: every=True (issue 10 item 1)
        fields = msgspec.msgpack.decode(
            conn.execute("SELECT spec FROM schedules WHERE id = ?", (schedule_id,)).fetchone()[0]
        )
        blob = msgspec.msgpack.encode({**fields, "every": True})
    conn.execute("UPDATE schedules SET spec = ? WHERE id = ?", (blob, schedule_id))
    conn.execute("UPDATE schedules SET next_run = 0")  # both due now
    conn.commit()
    conn.close()


def memory_mailboxes(hub: agentcomm.Hub) -> object:
    backend = hub._backend
    assert isinstance(backend, MemoryBackend)
    return backend.mailboxes._state


@pytest.mark.parametrize("how", ["garbage", "wrong-type"])
async def test_a_bad_schedule_is_parked_listed_counted_and_cancellable(
    store: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = sqlite_path(store)
    async with agentcomm.connect(store) as hub:
        boss = await hub.agent("boss")
        await hub.agent("worker")
        bad = await boss.schedule("worker", "bad", every=HOUR)
        good = await boss.schedule("worker", "good", every=HOUR)
        if path is not None:
            await hub.aclose()
            spoil_schedule_sql(path, bad, how)
        else:
            schedules = memory_mailboxes(hub).schedules  # type: ignore[attr-defined]
            if how == "garbage":
                schedules[bad].spec = None
            else:
                schedules[bad].spec.every, schedules[bad].spec.cron = None, "not a cron"
            for s in schedules.values():
                if s.spec is not None:
                    s.spec.next_run = 0.0
            # a new schedule wakes the hub's schedule loop, which then fires what is due
            await boss.schedule("worker", "wake", every=HOUR)
        with caplog.at_level(logging.ERROR, logger="agentcomm"):
            async with agentcomm.connect(store) as hub2:
                worker = await hub2.agent("worker")
                msg = await worker.receive(timeout=5)
                assert msg is not None and msg.data == "good"  # the others still fire
                await msg.ack()
                assert (await hub2.stats()).undecodable == 1
                listed = {s.id: s for s in await hub2.schedules()}
                assert listed[good].error is None and listed[good].runs == 1
                assert "cannot be decoded" in str(listed[bad].error)
                assert listed[bad].next_run == math.inf  # parked: never due again
                if path is not None:
                    report = await hub2.check()
                    assert not report.ok and bad in report.problems[0]
                assert await hub2.cancel_schedule(bad) is True
                assert bad not in {s.id for s in await hub2.schedules()}
                assert (await hub2.check()).ok
                assert await worker.receive(timeout=0) is None  # the bad one sent nothing
    logged = [r for r in caplog.records if bad in r.getMessage()]
    assert len(logged) == 1 and "cancel_schedule" in logged[0].getMessage()


async def test_a_dead_letter_that_cannot_be_decoded_is_listed_with_its_error(
    store: str,
) -> None:
    path = sqlite_path(store)
    async with agentcomm.connect(store) as hub:
        a = await hub.agent("a")
        ids = [await a.send("a", {"n": n}, metadata={"m": n}) for n in range(3)]
        for _ in ids:
            msg = await a.receive(timeout=1)
            assert msg is not None
            await msg.dead_letter("test")
        if path is not None:
            conn = sqlite3.connect(path)
            conn.execute("UPDATE messages SET data = x'7b7b' WHERE id = ?", (ids[1],))
            conn.commit()
            conn.close()
        else:
            rows = memory_mailboxes(hub).rows  # type: ignore[attr-defined]
            next(r for r in rows.values() if r.msg.id == ids[1]).msg.data = b"{{"
        letters = {d.id: d for d in await hub.dead_letters("a")}
        assert [letters[i].data for i in (ids[0], ids[2])] == [{"n": 0}, {"n": 2}]
        assert letters[ids[0]].error is None and letters[ids[0]].metadata == {"m": 0}
        assert letters[ids[1]].data is None and "cannot be decoded" in str(letters[ids[1]].error)
        assert await hub.requeue_dead_letters("a", [ids[0]]) == 1  # the others still work


def spoil_sql(path: str, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, args)
    conn.commit()
    conn.close()


async def test_a_value_that_cannot_be_decoded_raises_a_typed_error_and_can_be_deleted(
    store: str,
) -> None:
    path = sqlite_path(store)
    async with agentcomm.connect(store) as hub:
        kv = hub.memory("ns")
        await kv.put("good", {"ok": True})
        await kv.put("bad", {"ok": False})
        if path is not None:
            spoil_sql(path, "UPDATE kv SET data = x'7b7b' WHERE key = 'bad'")
        else:
            backend = hub._backend
            assert isinstance(backend, MemoryBackend)
            spaces = backend.shared_memory._spaces
            next(s for sp, s in spaces.items() if sp.namespace == "ns").rows["bad"].data = b"{{"
        with pytest.raises(agentcomm.BackendError, match="stored payload cannot be decoded"):
            await kv.get("bad")
        assert (await kv.get("good")) is not None
        assert sorted(await kv.keys()) == ["bad", "good"]
        assert await kv.delete("bad") is True
        assert await kv.get("bad") is None


async def test_a_message_that_cannot_be_decoded_can_be_received_and_dead_lettered(
    store: str,
) -> None:
    path = sqlite_path(store)
    async with agentcomm.connect(store) as hub:
        a = await hub.agent("a")
        bad = await a.send("a", "spoiled")
        await a.send("a", "fine")
        if path is not None:
            spoil_sql(path, "UPDATE messages SET data = x'7b7b' WHERE id = ?", bad)
        else:
            rows = memory_mailboxes(hub).rows  # type: ignore[attr-defined]
            next(r for r in rows.values() if r.msg.id == bad).msg.data = b"{{"
        msg = await a.receive(timeout=1)
        assert msg is not None and msg.id == bad
        with pytest.raises(agentcomm.BackendError, match="dead-letter the message"):
            _ = msg.data
        await msg.dead_letter("cannot be decoded")
        nxt = await a.receive(timeout=1)
        assert nxt is not None and nxt.data == "fine"
        [letter] = await hub.dead_letters("a")
        assert letter.id == bad and letter.data is None and letter.error is not None


def test_inspect_shows_a_parked_schedule(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"

    async def make() -> str:
        async with agentcomm.connect(url, background=False) as hub:
            boss = await hub.agent("boss")
            return await boss.schedule("boss", "x", every=HOUR)

    bad = asyncio.run(make())
    path = sqlite_path(url)
    assert path is not None
    spoil_schedule_sql(path, bad, "garbage")

    async def fire() -> None:  # opening with background tasks fires what is due once
        async with agentcomm.connect(url) as hub:
            for _ in range(50):
                if (await hub.stats()).undecodable:
                    return
                await asyncio.sleep(0.05)

    asyncio.run(fire())
    env = {"COLUMNS": "250", "NO_COLOR": "1", "AGENTCOMM_URL": None}
    result = CliRunner().invoke(app, ["inspect", url], env=env)
    assert result.exit_code == 0, result.output
    assert "never (parked)" in result.output and bad in result.output
