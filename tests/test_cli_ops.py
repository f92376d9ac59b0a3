"""The operator commands of `agentcomm` against a store filled by a fixture, on SQLite and Redis,
each in both output forms (the JSON parsed and checked)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

import agentcomm
import agentcomm.sync
from agentcomm._cli import app

ENV: dict[str, str | None] = {
    "COLUMNS": "250",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "AGENTCOMM_URL": None,
}
runner = CliRunner()
BIG = "x" * 20_000

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite", "redis"])


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def as_json(*args: str) -> Any:
    code, out = invoke(*args, "--json")
    assert code == 0, out
    return json.loads(out)


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{output}")


class Filled:
    """What the fixture put into the store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ready: list[str] = []
        self.dead: list[str] = []
        self.schedule = ""


async def _fill(url: str) -> Filled:
    f = Filled(url)
    async with agentcomm.connect(url, background=False) as hub:
        planner = await hub.agent("planner")
        worker = await hub.agent("worker")
        await hub.agent("idle")
        for i in range(3):
            f.ready.append(await planner.send("worker", {"task": i}, type="task"))
        f.ready.append(await planner.send("worker", BIG, type="big"))
        await planner.send("worker", "later", type="later", delay=3600)
        for i in range(4):
            f.dead.append(
                await planner.send("worker", i, type="doomed", max_attempts=1, priority=9)
            )
            msg = await worker.receive(timeout=5)
            assert msg is not None and msg.type == "doomed"
            await msg.nack()
        f.schedule = await planner.schedule("worker", "tick", every=3600)
        sub = await worker.subscribe("jobs.>", durable="audit", start="all")
        await sub.aclose()
        for i in range(3):
            await planner.publish("jobs.build", i)
        await hub.memory("plans").put("goal", {"x": 1})
        await hub.memory("plans").put("step", "one")
        pool = await hub.pool("crew")
        await pool.join("run-1", agent="coder", topics=["code"])
    return f


@pytest.fixture
def filled(fresh_url: Callable[[], str]) -> Filled:
    return asyncio.run(_fill(fresh_url()))


@pytest.fixture
def meanwhile(filled: Filled) -> Iterator[Callable[[Callable[[Any], None]], None]]:
    """Run an action on the store every 0.1 s in a thread while a command follows it."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(action: Callable[[Any], None]) -> None:
        def loop() -> None:
            with agentcomm.sync.connect(filled.url, background=False) as hub:
                while not stop.wait(0.1):
                    action(hub)

        threads.append(threading.Thread(target=loop, daemon=True))
        threads[-1].start()

    yield start
    stop.set()
    for t in threads:
        t.join(10)


def test_agents(filled: Filled) -> None:
    data = {a["name"]: a for a in as_json("agents", "--url", filled.url)}
    assert set(data) >= {"planner", "worker", "idle", "run-1"}
    w = data["worker"]
    assert (w["ready"], w["delayed"], w["in_flight"], w["dead"]) == (4, 1, 0, 4)
    assert w["state"] in ("active", "idle") and w["last_seen"] > 0
    code, out = invoke("agents", "--url", filled.url)
    assert code == 0, out
    assert row(out, "worker")[3:] == ["4", "1", "0", "4"]
    # --watch --count: one JSON line per refresh
    code, out = invoke("agents", "--url", filled.url, "--json", "--watch", "--count", "2",
                       "--interval", "0.05")  # fmt: skip
    assert code == 0 and len([json.loads(line) for line in out.splitlines()]) == 2


def test_peek(filled: Filled) -> None:
    data = as_json("peek", "worker", "--url", filled.url, "--limit", "3")
    assert (data["agent"], data["total"], data["more"]) == ("worker", 5, 2)
    assert [m["id"] for m in data["messages"]] == filled.ready[:3]
    first = data["messages"][0]
    assert first["data"] == {"task": 0} and first["sender"] == "planner"
    assert first["state"] == "ready" and first["attempt"] == 0 and first["max_attempts"] == 3
    every = as_json("peek", "worker", "--url", filled.url)["messages"]
    big = next(m for m in every if m["type"] == "big")
    assert big["data"] == BIG and big["ref"].startswith("sha256:") and big["size"] >= len(BIG)
    assert {m["state"] for m in every} == {"ready", "delayed"}
    code, out = invoke("peek", "worker", "--url", filled.url, "--limit", "3")
    assert code == 0, out
    cells = row(out, filled.ready[0])
    assert cells[1:4] == ["ready", "planner", "task"] and cells[5] == "0/3"
    assert cells[7] == '{"task":0}'
    assert "2 more not shown" in out
    code, out = invoke("peek", "nobody", "--url", filled.url)
    assert code == 1 and "nobody" in out


def test_dead_letters_count_beyond_the_limit(filled: Filled) -> None:
    data = as_json("dead-letters", "--url", filled.url, "--limit", "2")
    assert (data["total"], data["more"]) == (4, 2)
    assert [d["id"] for d in data["letters"]] == filled.dead[:2]
    assert data["letters"][0]["data"] == 0 and data["letters"][0]["recipient"] == "worker"
    assert as_json("dead-letters", "idle", "--url", filled.url) == {
        "total": 0, "more": 0, "letters": [],
    }  # fmt: skip
    code, out = invoke("dead-letters", "worker", "--url", filled.url, "--limit", "2")
    assert code == 0, out
    cells = row(out, filled.dead[0])
    assert cells[1:4] == ["worker", "planner", "doomed"]
    assert cells[4] == "nacked on final delivery 1"
    assert "2 more not shown" in out


def test_redrive(filled: Filled) -> None:
    code, out = invoke("redrive", "worker", "--url", filled.url)
    assert code == 1 and "--all" in out
    assert as_json("redrive", "worker", "--id", filled.dead[0], "--url", filled.url) == {
        "agent": "worker", "requeued": 1,
    }  # fmt: skip
    code, out = invoke("redrive", "worker", "--all", "--url", filled.url)
    assert code == 0 and "3 dead letter(s) of worker requeued" in out
    assert as_json("dead-letters", "--url", filled.url)["total"] == 0
    assert as_json("peek", "worker", "--url", filled.url)["total"] == 9


def test_purge_needs_yes(filled: Filled) -> None:
    code, out = invoke("purge", "worker", "--url", filled.url)
    assert code == 1 and "removes 5 message(s)" in out and "--yes" in out
    assert as_json("peek", "worker", "--url", filled.url)["total"] == 5
    assert as_json("purge", "worker", "--yes", "--url", filled.url) == {
        "agent": "worker", "removed": 5,
    }  # fmt: skip
    assert as_json("dead-letters", "--url", filled.url)["total"] == 4
    code, out = invoke("purge", "worker", "--yes", "--dead-letters", "--url", filled.url)
    assert code == 0 and "4 message(s) of worker removed" in out
    assert as_json("dead-letters", "--url", filled.url)["total"] == 0


def test_delete(filled: Filled) -> None:
    target = filled.ready[1]
    assert as_json("delete", target, "--url", filled.url) == {
        "id": target, "agent": "worker", "deleted": True,
    }  # fmt: skip
    code, out = invoke("delete", target, "--url", filled.url)
    assert code == 1 and "No message" in out
    code, out = invoke("delete", target, "--url", filled.url, "--json")
    assert code == 1 and json.loads(out)["deleted"] is False
    code, out = invoke("delete", filled.dead[0], "--agent", "worker", "--url", filled.url)
    assert code == 0 and "removed from worker's mailbox" in out
    ids = [m["id"] for m in as_json("peek", "worker", "--url", filled.url)["messages"]]
    assert target not in ids and len(ids) == 4


def test_schedules_and_cancel(filled: Filled) -> None:
    (s,) = as_json("schedules", "--url", filled.url)
    assert (s["id"], s["recipient"], s["every"]) == (filled.schedule, "worker", 3600)
    code, out = invoke("schedules", "--url", filled.url)
    assert code == 0 and row(out, filled.schedule)[4] == "every 3600 s"
    code, out = invoke("cancel-schedule", filled.schedule, "--url", filled.url)
    assert code == 0 and "cancelled" in out
    code, out = invoke("cancel-schedule", filled.schedule, "--url", filled.url, "--json")
    assert code == 1 and json.loads(out) == {"id": filled.schedule, "cancelled": False}
    assert as_json("schedules", "--url", filled.url) == []


def test_topics_and_consumers(filled: Filled) -> None:
    stats = {t["name"]: t for t in as_json("topics", "--url", filled.url, "--window", "0")}
    jobs = stats["jobs.build"]
    assert (jobs["published"], jobs["retained"], jobs["subscribers"]) == (3, 3, 1)
    assert jobs["rate"] is None
    assert stats["$agentcomm.dead.worker"]["published"] == 4  # the dead-letter notices
    rated = as_json("topics", "--url", filled.url, "--window", "0.1")
    assert all(t["rate"] == 0.0 for t in rated)
    code, out = invoke("topics", "--url", filled.url, "--window", "0")
    assert code == 0 and row(out, "jobs.build")[1:7] == ["3", "", "0", "0", "1", "3"]

    (c,) = as_json("consumers", "--url", filled.url)
    assert (c["name"], c["pattern"], c["position"], c["lag"], c["pending"]) == (
        "audit", "jobs.>", 0, 3, 0,
    )  # fmt: skip
    assert c["head"] >= 3
    code, out = invoke("consumers", "--url", filled.url)
    assert code == 0
    cells = row(out, "audit")
    assert cells[1:3] == ["jobs.>", "0"] and cells[4:] == ["3", "0", "0"]


def test_kv(filled: Filled) -> None:
    (ns,) = as_json("kv", "--url", filled.url)
    assert (ns["namespace"], ns["owner"], ns["keys"], ns["writes"]) == ("plans", None, 2, 2)
    code, out = invoke("kv", "--url", filled.url)
    assert code == 0 and row(out, "plans")[2] == "2"
    keys = as_json("kv", "plans", "--url", filled.url)
    assert keys["total"] == 2 and [e["key"] for e in keys["entries"]] == ["goal", "step"]
    assert keys["entries"][0]["value"] == {"x": 1}
    code, out = invoke("kv", "plans", "keys", "g*", "--url", filled.url)
    assert code == 0 and row(out, "goal")[1] == "1" and "step" not in out
    assert as_json("kv", "plans", "get", "goal", "--url", filled.url)["value"] == {"x": 1}
    code, out = invoke("kv", "plans", "get", "goal", "--url", filled.url)
    assert code == 0 and out.strip() == '{"x":1}'
    put = as_json("kv", "plans", "put", "goal", '{"x": 2}', "--url", filled.url)
    assert (put["value"], put["version"]) == ({"x": 2}, 2)
    code, out = invoke("kv", "plans", "put", "note", "plain text", "--url", filled.url)
    assert code == 0 and "version 1" in out
    assert as_json("kv", "plans", "get", "note", "--url", filled.url)["value"] == "plain text"
    assert as_json("kv", "plans", "delete", "note", "--url", filled.url)["deleted"] is True
    code, out = invoke("kv", "plans", "get", "note", "--url", filled.url)
    assert code == 1 and "No key 'note'" in out
    code, out = invoke("kv", "plans", "frobnicate", "--url", filled.url)
    assert code == 1 and "Unknown kv action" in out


def test_kv_watch(filled: Filled, meanwhile: Callable[[Callable[[Any], None]], None]) -> None:
    meanwhile(lambda hub: hub.memory("plans").put("live", 1))
    code, out = invoke("kv", "plans", "watch", "--url", filled.url, "--json", "--count", "2")
    assert code == 0, out
    changes = [json.loads(line) for line in out.splitlines()]
    assert [(c["kind"], c["key"], c["value"]) for c in changes] == [("put", "live", 1)] * 2


def test_tail_topic(filled: Filled, meanwhile: Callable[[Callable[[Any], None]], None]) -> None:
    meanwhile(lambda hub: hub.agent("planner").publish("jobs.live", {"n": 1}, type="t"))
    code, out = invoke("tail", "--topic", "jobs.>", "--url", filled.url, "--json", "--count", "2")
    assert code == 0, out
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["topic"], e["sender"], e["type"], e["data"]) for e in events] == [
        ("jobs.live", "planner", "t", {"n": 1})
    ] * 2
    code, out = invoke("tail", "--topic", "jobs.>", "--url", filled.url, "--count", "1")
    assert code == 0 and 'jobs.live planner t {"n":1}' in out


def test_tail_mailbox(filled: Filled, meanwhile: Callable[[Callable[[Any], None]], None]) -> None:
    code, out = invoke("tail", "worker", "--url", filled.url, "--json", "--count", "2")
    assert code == 0, out
    assert [json.loads(line)["id"] for line in out.splitlines()] == filled.ready[:2]
    meanwhile(lambda hub: hub.agent("planner").send("worker", "new", type="fresh"))
    code, out = invoke("tail", "worker", "--url", filled.url, "--count", "7", "--interval", "0.1")
    assert code == 0, out
    assert 'planner -> worker fresh [ready] "new"' in out
    code, out = invoke("tail", "--url", filled.url)
    assert code == 1 and "--topic" in out


def test_refs(filled: Filled) -> None:
    data = as_json("refs", "--url", filled.url)
    assert data["stats"]["entries"] == 1 and data["total"] == 1 and data["dedupe_ratio"] == 1.0
    (ref,) = data["refs"]
    assert ref["size"] == len(BIG) + 2 and ref["refcount"] == 1  # JSON quotes
    code, out = invoke("refs", "--url", filled.url)
    assert code == 0 and row(out, ref["id"])[1] == str(ref["size"])
    assert as_json("refs", "gc", "--url", filled.url) == {"evicted": []}  # still referenced
    code, out = invoke("refs", "gc", "--url", filled.url)
    assert code == 0 and "(none)" in out


def test_pools(filled: Filled) -> None:
    (pool,) = as_json("pools", "--url", filled.url)
    assert pool["name"] == "crew" and pool["topics"] == ["code"]
    assert [m["run"] for m in pool["members"]] == ["run-1"] and pool["pending_wakes"] == []
    assert pool["counts"]["members"] == 1
    code, out = invoke("pools", "--url", filled.url)
    assert code == 0 and row(out, "crew")[1:3] == ["1", "code"]


def test_prefixes_and_inspect_hint(
    filled: Filled, backend_name: str, fresh_url: Callable[[], str]
) -> None:
    if backend_name != "redis":
        code, out = invoke("prefixes", "--url", filled.url)
        assert code == 1 and "only redis:// stores" in out
        return
    own = filled.url.rsplit("prefix=", 1)[1]
    found = as_json("prefixes", "--url", filled.url)
    assert found[own] > 10
    code, out = invoke("prefixes", "--url", filled.url)
    assert code == 0 and row(out, own)[2] == "(this URL)"
    # inspect of an empty prefix names the prefixes that hold data
    empty = fresh_url()
    code, out = invoke("inspect", empty)
    assert code == 0, out
    assert "but these prefixes hold agentcomm data" in out and repr(own) in out
    code, out = invoke("inspect", filled.url)
    assert code == 0 and "prefixes hold" not in out


def test_inspect_json(filled: Filled) -> None:
    code, out = invoke("inspect", filled.url, "--json")
    assert code == 0, out
    snap = json.loads(out)
    assert {a["name"] for a in snap["agents"]} >= {"planner", "worker"}
    assert len(snap["dead_letters"]) == 4 and snap["stats"]["dead_lettered"] == 4
