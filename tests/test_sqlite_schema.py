"""SQLite schema versions: a store of the previous layout opens with all its data, migrations
run in order once, and a store written by a newer agentcomm is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import agentcomm
from agentcomm._backends.sqlite import backend, references, schema
from agentcomm._backends.sqlite.schema import FeatureSchema

FIXTURE = Path(__file__).parent / "fixtures" / "sqlite_layout_1.sql"
# what the fixture's store holds (see the comment at the top of the file)
BIG = ("layout one " * 2000).encode()
FEATURES = {"mailboxes", "shared_memory", "topics", "references", "pools", "leases"}
# the versions this code writes: references 2 adds per-holder references, mailboxes 2
# the agents' last_active and 3 the reply slots' attempts
CURRENT = {
    "mailboxes": 3,
    "shared_memory": 1,
    "topics": 1,
    "references": 2,
    "pools": 1,
    "leases": 1,
}


def previous_layout(path: Path) -> str:
    """A store written by agentcomm before schema versions; returns its URL."""
    conn = sqlite3.connect(path)
    conn.executescript(FIXTURE.read_text())
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    return f"sqlite:///{path}"


def versions(path: Path) -> tuple[int, dict[str, int]]:
    conn = sqlite3.connect(path)
    try:
        layout = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute("SELECT feature, version FROM schema_versions").fetchall()
    finally:
        conn.close()
    return layout, dict(rows)


async def test_a_store_of_the_previous_layout_opens_with_all_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with agentcomm.connect(previous_layout(path), background=False) as hub:
        assert [a.name for a in await hub.agents()] == ["alice", "bob", "carol"]
        bob = await hub.agent("bob")
        got = await bob.receive_many(10, timeout=0)
        assert [(m.sender, m.data, m.metadata) for m in got] == [
            ("alice", BIG, {}),
            ("alice", {"n": 1}, {"trace": "t1"}),
            ("alice", "third", {}),
        ]
        await bob.ack_many(got)
        [schedule] = await hub.schedules()
        assert (schedule.sender, schedule.recipient, schedule.every) == ("alice", "carol", 3600.0)

        kv = hub.memory("ns")
        plan = await kv.get("plan")
        assert plan is not None and (plan.value, plan.version) == ({"steps": 4}, 2)
        assert [e.value for e in await kv.history("plan")] == [{"steps": 4}, {"steps": 3}]
        big = await kv.get("big")
        assert big is not None and big.value == BIG and big.payload_ref is not None
        assert await kv.get("gone") is None
        assert await kv.keys() == ["big", "plan"]

        async with await bob.subscribe("news.>", durable="keeper") as sub:
            first, second = await sub.next(timeout=1), await sub.next(timeout=1)
            assert first is not None and second is not None
            assert (first.sequence, first.topic, first.data) == (1, "news.sports", {"score": 1})
            assert (second.sequence, second.data, second.metadata) == (
                2, "rain", {"region": "north"},
            )  # fmt: skip
            await first.ack()
            await second.ack()
        assert [t.name for t in await hub.topics()] == [
            "news.sports",
            "news.weather",
            "other.topic",
        ]

        held = [r for r in await hub.refs.list_refs() if r.content_type == "text/plain"]
        assert [r.refcount for r in held] == [1]
        assert await hub.refs.resolve(held[0]) == b"held explicitly"

        # sequences carry on where the old code left them
        alice = await hub.agent("alice")
        await alice.send("bob", "fourth")
        assert (await hub.stats()).sent == 4
        assert (await alice.publish("news.sports", {"score": 2})).sequence == 4
    assert versions(path) == (schema.LAYOUT_VERSION, CURRENT)


async def test_explicit_references_of_the_previous_layout_go_to_the_legacy_holder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    url = previous_layout(path)
    async with agentcomm.connect(url, background=False) as hub:
        [explicit] = [r for r in await hub.refs.list_refs() if r.content_type == "text/plain"]
        [held_by_rows] = [r for r in await hub.refs.list_refs() if r.id != explicit.id]
        assert held_by_rows.refcount == 2  # a message and a key: no explicit reference
        with pytest.raises(agentcomm.RefNotHeld):
            await hub.refs.release(explicit)  # a hub of its own holds nothing there
        with pytest.raises(agentcomm.RefNotHeld):
            await hub.refs.release(held_by_rows)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT ref_id, holder, count FROM ref_holders").fetchall() == [
        (explicit.id, "legacy", 1)
    ]
    conn.close()
    legacy = agentcomm.RefConfig(holder="legacy")
    async with agentcomm.connect(url, background=False, refs=legacy) as hub:
        with pytest.raises(agentcomm.RefNotHeld):
            await hub.refs.release(held_by_rows)  # the rows' references are not legacy's
        assert await hub.refs.release(explicit) == 0
        assert [r.id for r in await hub.refs.list_refs()] == [held_by_rows.id]
        bob = await hub.agent("bob")
        first = (await bob.receive_many(10, timeout=0))[0]
        assert first.data == BIG  # the message's reference was kept


def test_a_migration_runs_on_a_store_of_the_previous_layout(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    previous_layout(path)
    ran: list[int] = []

    def add_note(conn: sqlite3.Connection) -> None:
        ran.append(conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0])
        conn.execute("UPDATE refs SET note = 'v2'")

    refs_v3 = references.SCHEMA._replace(
        migrations=("ALTER TABLE refs ADD COLUMN note TEXT", add_note)
    )
    features = [s for s in backend.SCHEMAS if s.name != "references"] + [refs_v3]
    for _ in range(2):  # the second open finds everything current
        conn = schema.connect(str(path), synchronous="NORMAL", busy_timeout_ms=1000)
        schema.migrate(conn, features)
        conn.close()
    assert ran == [2]  # once, in order (the column existed), on the old store's two blobs
    assert versions(path) == (
        schema.LAYOUT_VERSION,
        {**CURRENT, "references": 3},
    )
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT DISTINCT note FROM refs").fetchall() == [("v2",)]
    conn.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    previous_layout(path)
    broken = FeatureSchema("topics", "", migrations=("ALTER TABLE no_such_table ADD x INT",))
    conn = schema.connect(str(path), synchronous="NORMAL", busy_timeout_ms=1000)
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn, [*backend.SCHEMAS[:2], broken])
    conn.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "schema_versions" not in tables
    conn.close()


@pytest.mark.parametrize(
    ("newer", "message"),
    [
        ("UPDATE schema_versions SET version = 7 WHERE feature = 'topics'", "topics tables use"),
        (
            f"PRAGMA user_version = {schema.LAYOUT_VERSION + 1}",
            f"uses schema {schema.LAYOUT_VERSION + 1}",
        ),
    ],
)
async def test_a_store_from_a_newer_agentcomm_is_refused(
    tmp_path: Path, newer: str, message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    async with agentcomm.connect(url) as hub:
        await hub.agent("a")
    assert versions(tmp_path / "new.db") == (schema.LAYOUT_VERSION, CURRENT)
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    conn.execute(newer)
    conn.close()
    with pytest.raises(agentcomm.ConfigurationError, match=f"{message}.*Upgrade agentcomm"):
        async with agentcomm.connect(url):
            pass


def test_connections_opening_a_new_file_at_once_all_switch_it_to_wal(tmp_path: Path) -> None:
    # the switch to WAL can find the file locked without SQLite waiting out the busy timeout
    # (it failed about one round in twenty here); each connection retries within its timeout
    import threading

    errors: list[BaseException] = []
    for round_ in range(80):
        path = str(tmp_path / f"new-{round_}.db")
        start = threading.Barrier(6)

        def open_one(path: str = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                conn = schema.connect(path, synchronous="NORMAL", busy_timeout_ms=5000)
            except sqlite3.Error as exc:
                errors.append(exc)
                return
            try:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            finally:
                conn.close()

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
