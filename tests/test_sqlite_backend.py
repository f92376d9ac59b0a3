"""SQLite-specific machinery: inline point reads and their fallback, error mapping."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import agentcomm
from agentcomm._backends.sqlite import SQLiteBackend, writer


def _raises(exc: BaseException) -> writer.Op:
    def fn(conn: sqlite3.Connection, touched: set[str]) -> Any:
        raise exc

    return fn


def test_read_inline_reports_a_lock_instead_of_waiting() -> None:
    conn = sqlite3.connect(":memory:")
    locked = sqlite3.OperationalError("database is locked")
    assert writer.read_inline(conn, _raises(locked)) is writer.INLINE_BUSY
    with pytest.raises(agentcomm.BackendError, match="SQLite failed"):
        writer.read_inline(conn, _raises(sqlite3.OperationalError("no such table: kv")))
    assert writer.read_inline(conn, lambda c, t: c.execute("SELECT 7").fetchall()) == [(7,)]
    conn.close()


async def test_get_falls_back_to_the_reader_thread_when_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with agentcomm.connect(f"sqlite:///{tmp_path / 'k.db'}") as hub:
        kv = hub.memory("ns")
        await kv.put("plan", {"steps": 3})
        backend = hub._backend
        assert isinstance(backend, SQLiteBackend)
        monkeypatch.setattr(backend._db, "read_inline", lambda fn: writer.INLINE_BUSY)
        entry = await kv.get("plan")
        assert entry is not None and entry.value == {"steps": 3}


async def test_a_locked_database_maps_to_backend_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}?busy_timeout=50"
    async with agentcomm.connect(url) as hub:
        await hub.agent("a")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(agentcomm.BackendUnavailable, match="busy_timeout"):
                await hub.agent("b")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [a.name for a in await hub.agents()] == ["a"]
