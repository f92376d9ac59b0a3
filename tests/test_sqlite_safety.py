"""SQLite storage safety: what opening a file refuses and why, damaged files, `agentcomm check`,
URL options, and timeouts that hold while another connection holds the write lock."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import agentcomm
from agentcomm._backends.sqlite import files, writer
from agentcomm._cli import app

ENV: dict[str, str | None] = {"COLUMNS": "200", "NO_COLOR": "1", "AGENTCOMM_URL": None}


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


async def fill(path: Path, n: int = 2000) -> None:
    async with agentcomm.connect(url_of(path)) as hub:
        a = await hub.agent("a")
        await a.send_many([agentcomm.Outgoing(to="a", data={"i": i, "pad": "x" * 200})
                           for i in range(n)])  # fmt: skip


def check_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["check", *args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


# --- opening: what is refused ------------------------------------------------------------------


async def test_a_truncated_store_is_refused_not_reopened_empty(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await fill(path)
    os.truncate(path, 0)
    with pytest.raises(agentcomm.ConfigurationError, match=r"empty \(0 bytes\).*create=1"):
        await agentcomm.connect(url_of(path)).open()
    assert path.stat().st_size == 0  # left as it was: nothing written into it
    # asked for explicitly, a new store is made in it
    async with agentcomm.connect(url_of(path, "?create=1")) as hub:
        assert await hub.agents() == []
    async with agentcomm.connect(url_of(path)) as hub:  # now a store: opens without the flag
        assert await hub.agents() == []


async def test_a_missing_file_is_still_created(tmp_path: Path) -> None:
    async with agentcomm.connect(url_of(tmp_path / "new.db")) as hub:
        await hub.agent("a")
    assert (tmp_path / "new.db").stat().st_size > 0


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(agentcomm.ConfigurationError, match=r"not agentcomm's \(users\)"):
        await agentcomm.connect(url_of(path)).open()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"users"}  # none of ours added


async def test_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "x.db"
    with pytest.raises(agentcomm.ConfigurationError, match=r"does not exist.*Create it first"):
        await agentcomm.connect(url_of(path)).open()
    assert not (tmp_path / "no").exists()


async def test_a_too_long_directory_name_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 300) / "x.db"
    with pytest.raises(agentcomm.ConfigurationError, match="File name too long"):
        await agentcomm.connect(url_of(path)).open()


async def test_a_read_only_directory_or_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests run as root, for whom every file is writable: the permission answer is simulated
    path = tmp_path / "s.db"
    await fill(path, 1)
    real_access = os.access

    def access(target: str, mode: int, **kwargs: object) -> bool:
        return False if mode & os.W_OK and str(target) == denied else real_access(target, mode)

    monkeypatch.setattr(os, "access", access)
    denied = str(tmp_path)
    with pytest.raises(agentcomm.ConfigurationError, match=r"directory .* is read-only"):
        await agentcomm.connect(url_of(path)).open()
    denied = str(path)
    with pytest.raises(agentcomm.ConfigurationError, match=r"file .* is read-only"):
        await agentcomm.connect(url_of(path)).open()


def test_os_and_driver_errors_map_to_messages_that_say_what_to_do() -> None:
    rofs = files.location_error("/ro/x.db", OSError(errno.EROFS, "Read-only file system"))
    assert isinstance(rofs, agentcomm.ConfigurationError)
    assert "Read-only file system" in str(rofs) and "writable directory" in str(rofs)
    cant = files.open_error("/x.db", sqlite3.OperationalError("unable to open database file"))
    assert isinstance(cant, agentcomm.ConfigurationError) and "read-only" in str(cant)
    bad = writer.map_sqlite_error(sqlite3.DatabaseError("database disk image is malformed"))
    assert isinstance(bad, agentcomm.BackendError)
    assert "integrity_check" in str(bad) and "backup" in str(bad)
    assert "agentcomm check URL" in str(bad)
    ro = writer.map_sqlite_error(sqlite3.OperationalError("attempt to write a readonly database"))
    assert isinstance(ro, agentcomm.BackendError) and "read-only" in str(ro)


@pytest.mark.parametrize(
    "query",
    ["recheck=nan", "recheck=inf", "recheck=-1", "recheck=0", "recheck=soon",
     "busy_timeout=-1", "busy_timeout=1e3", "busy_timeout=nan", "busy_timeout=99999999999",
     "create=maybe"],
)  # fmt: skip
def test_nonsense_url_options_are_refused(tmp_path: Path, query: str) -> None:
    with pytest.raises(agentcomm.ConfigurationError, match="Bad sqlite URL option"):
        agentcomm.connect(url_of(tmp_path / "x.db", f"?{query}"))


# --- damaged files and `agentcomm check` -------------------------------------------------------


def corrupt(path: Path) -> None:
    """Overwrite every page after the first few with garbage (the header and schema survive)."""
    size = path.stat().st_size
    page = 4096
    with path.open("r+b") as f:
        for offset in range(4 * page, size, page):
            f.seek(offset)
            f.write(os.urandom(page // 2))


async def test_a_damaged_store_names_the_remedy_and_check_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await fill(path)
    corrupt(path)
    try:
        async with agentcomm.connect(url_of(path), background=False) as hub:
            agent = await hub.agent("a")
            with pytest.raises(agentcomm.BackendError) as caught:
                for _ in range(3):  # reading the damaged pages fails, with the remedy
                    await agent.receive_many(1000, timeout=0)
                    await hub.pending("a", limit=5000)
            message = str(caught.value)
            report = await hub.check()
            assert not report.ok and report.backend == "sqlite"
            assert any("backup" in p for p in report.problems)
    except agentcomm.BackendError as exc:  # or the damage shows already when opening
        message = str(exc)
    assert "agentcomm check URL" in message and "backup" in message
    code, out = await asyncio.to_thread(check_cli, url_of(path))
    assert code == 1 and "problem(s) found" in out


def test_check_of_a_sound_store_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    asyncio.run(fill(path, 10))
    code, out = check_cli(url_of(path))
    assert code == 0 and "ok (PRAGMA integrity_check" in out, out
    code, out = check_cli(url_of(path), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["backend"] == "sqlite" and report["url"] == url_of(path)


def test_check_of_a_store_that_cannot_be_opened_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    code, out = check_cli(url_of(missing), "--json")
    assert code == 1 and json.loads(out)["ok"] is False
    assert not missing.exists()  # checking never creates a store
    (tmp_path / "empty.db").touch()
    code, out = check_cli(url_of(tmp_path / "empty.db"))
    assert code == 1 and "empty (0 bytes)" in out


def test_check_of_a_memory_store_has_nothing_to_check() -> None:
    code, out = check_cli("memory://check-me", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["checked"] == "nothing to check"


# --- timeouts while another connection holds the write lock -----------------------------------


async def test_receive_and_request_keep_their_timeout_while_the_file_is_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with agentcomm.connect(url_of(path)) as hub:  # busy_timeout stays 10 s
        a, b = await hub.agent("a"), await hub.agent("b")
        await b.send("a", "waiting")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            assert await a.receive(timeout=1) is None
            assert time.monotonic() - started < 3
            started = time.monotonic()
            assert await a.receive_many(5, timeout=0) == []
            assert time.monotonic() - started < 2
            started = time.monotonic()
            with pytest.raises((agentcomm.BackendUnavailable, agentcomm.RequestTimeout)):
                await a.request("b", "ping", timeout=1)
            assert time.monotonic() - started < 3
        finally:
            other.execute("ROLLBACK")
            other.close()
        # the looks given up changed nothing: the message is delivered once, at attempt 1
        msg = await a.receive(timeout=5)
        assert msg is not None and msg.data == "waiting" and msg.attempt == 1
        await msg.ack()
        assert await hub.pending("b") == []  # the request given up was never stored


async def test_a_durable_next_keeps_its_timeout_while_the_file_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with agentcomm.connect(url_of(path)) as hub:
        a = await hub.agent("a")
        sub = await a.subscribe("jobs.>", durable="workers")
        await a.publish("jobs.one", 1)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(agentcomm.BackendUnavailable, match="locked past the call"):
                await sub.next(timeout=1)
            assert time.monotonic() - started < 3
        finally:
            other.execute("ROLLBACK")
            other.close()
        msg = await sub.next(timeout=5)  # nothing was claimed meanwhile
        assert msg is not None and msg.data == 1 and msg.attempt == 1
        await sub.aclose()
