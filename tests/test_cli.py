"""The `agentcomm` command line: `demo` runs the scenario for real, `inspect` shows a store."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import agentcomm
from agentcomm._cli import app

# wide, plain output: no wrapping inside table cells, no colour codes
ENV: dict[str, str | None] = {
    "COLUMNS": "200",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "AGENTCOMM_URL": None,
}
runner = CliRunner()


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={**ENV, **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{output}")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# --- demo ------------------------------------------------------------------------------------


def test_demo_runs_the_scenario_and_keeps_the_store(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "demo.db")
    code, out = invoke("demo", "--url", url, "--keep")
    assert code == 0, out

    trace = [line for line in out.splitlines() if re.match(r"^\+\s*\d+\.\d{3}s  ", line)]
    times = [float(line.split("s", 1)[0].lstrip("+")) for line in trace]
    assert len(trace) >= 25 and times == sorted(times)
    # tasks fanned out to two workers and acked
    for worker, title in [
        ("worker-1", "parse logs"),
        ("worker-1", "summarise logs"),
        ("worker-2", "write report"),
    ]:
        assert f"planner   sends task {title!r} to {worker}" in out
        assert f"{worker}  acks {title!r}" in out
    # request / reply
    assert "reviewer  receives review request  (from planner)" in out
    assert "planner   gets verdict from reviewer" in out
    # a task retried until max_attempts, then dead-lettered
    assert out.count("worker-2  nacks 'deploy to prod'") == 3
    assert "attempt 3/3" in out
    assert "nacked on final delivery 3, attempts=3" in out
    # the scheduled tick arrives twice, then its schedule is cancelled
    assert "monitor   receives tick #2" in out
    assert "planner   cancels the tick schedule  (after 2 runs, cancelled=True)" in out
    # summary
    assert row(out, "worker-2")[2:] == ["0", "0", "0", "1"]
    assert row(out, "worker-1")[2:] == ["0", "0", "0", "0"]
    assert f"agentcomm inspect {url}" in out

    async def check() -> None:
        async with agentcomm.connect(url, background=False) as hub:
            assert {a.name for a in await hub.agents()} == {
                "planner",
                "worker-1",
                "worker-2",
                "reviewer",
                "monitor",
            }
            (dead,) = await hub.dead_letters("worker-2")
            assert (dead.sender, dead.type, dead.attempts) == ("planner", "task", 3)
            assert dead.data == {"title": "deploy to prod", "fail": True}
            assert dead.reason == "nacked on final delivery 3"
            stats = await hub.stats()
            assert stats.dead_lettered == 1 and stats.late_replies == 0
            assert stats.scheduled_runs >= 2
            # 4 tasks, 1 request, 4 shutdowns, one message per scheduled run
            assert stats.sent == 9 + stats.scheduled_runs
            assert await hub.schedules() == []
            for name in ("planner", "worker-1", "reviewer", "monitor"):
                assert await hub.queue_depth(name) == 0

    asyncio.run(check())


def test_demo_default_store_is_fresh_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agentcomm-demo.db").write_text("left over from an earlier run")
    code, out = invoke("demo")
    assert code == 0, out
    assert "agentcomm demo on sqlite:///agentcomm-demo.db" in out
    assert "monitor   receives tick #2" in out
    assert "removed" in out
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_an_existing_store(tmp_path: Path) -> None:
    db = tmp_path / "mine.db"
    db.write_bytes(b"precious")
    code, out = invoke("demo", "--url", sqlite_url(db))
    assert code == 1
    assert "already exists" in out and "Traceback" not in out
    assert db.read_bytes() == b"precious"


# --- inspect ---------------------------------------------------------------------------------


async def populate(url: str) -> float:
    """A store with ready, delayed, in-flight and dead messages and a due schedule."""
    fast = agentcomm.Limits(min_schedule_period=0.01)
    async with agentcomm.connect(url, background=False, limits=fast) as hub:
        lead = await hub.agent("lead")
        await hub.agent("team.b:1")
        await lead.send("team.b:1", {"n": 1}, type="job")
        await lead.send("team.b:1", {"n": 2}, type="job", priority=5)
        await lead.send("team.b:1", {"n": 3}, type="job", delay=3600)
        got = await (await hub.agent("team.b:1")).receive(timeout=1, lease=600)
        assert got is not None and got.data == {"n": 2}
        hub._ctx.leases.take()  # left leased, as by a crashed consumer (a close releases it)
        await lead.send("lead", "poison", type="oops", max_attempts=1)
        bad = await lead.receive(timeout=1)
        assert bad is not None
        await bad.dead_letter("cannot parse the payload")
        await lead.schedule("team.b:1", {"ping": True}, type="ping", every=0.01)
        (sched,) = await hub.schedules()
        return sched.next_run


async def snapshot(url: str) -> tuple[object, ...]:
    async with agentcomm.connect(url, background=False) as hub:
        return (
            [await hub.mailbox_stats(a.name) for a in await hub.agents()],
            await hub.schedules(),
            await hub.stats(),
        )


def test_inspect_shows_a_store_and_changes_nothing(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "store.db")
    next_run = asyncio.run(populate(url))
    while time.time() <= next_run:  # the schedule is due: inspecting must not fire it
        time.sleep(0.005)
    before = asyncio.run(snapshot(url))

    code, out = invoke("inspect", url)
    assert code == 0, out
    assert f"agentcomm store {url}" in out
    assert row(out, "team.b:1")[2:] == ["1", "1", "1", "0"]
    assert row(out, "lead")[2:] == ["0", "0", "0", "1"]
    dead_id = next(line for line in out.splitlines() if "cannot parse the payload" in line)
    assert row(out, dead_id.split("│")[1].strip())[1:] == [
        "lead",
        "oops",
        "cannot parse the payload",
        "1",
    ]
    sched = next(line for line in out.splitlines() if "every 0.01 s" in line)
    assert [c.strip() for c in sched.split("│")[2:5]] == ["lead", "team.b:1", "ping"]
    assert sched.split("│")[-2].strip() == "0"  # runs

    assert asyncio.run(snapshot(url)) == before


def test_inspect_defaults_to_agentcomm_url(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "env.db")
    asyncio.run(populate(url))
    code, out = invoke("inspect", AGENTCOMM_URL=url)
    assert code == 0, out
    assert f"agentcomm store {url}" in out
    assert row(out, "lead")[0] == "lead"


def test_inspect_empty_store(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "empty.db")

    async def create() -> None:
        async with agentcomm.connect(url):
            pass

    asyncio.run(create())
    code, out = invoke("inspect", url)
    assert code == 0, out
    assert out.count("(none)") == 3  # agents, dead letters, schedules


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://localhost:27017", "Unknown backend scheme 'mongodb'"),
        ("redis://127.0.0.1:1/0", "Redis at redis://127.0.0.1:1/0 cannot be reached"),
        ("sqlite:///{tmp}/missing.db", "No agentcomm store at"),
        ("sqlite:///{tmp}/not-a-db.db", "The file is not an agentcomm SQLite database"),
        ("sqlite:///{tmp}/x.db?fast=1", "Unknown sqlite URL option"),
    ],
)
def test_inspect_bad_url_exits_1(tmp_path: Path, url: str, message: str) -> None:
    (tmp_path / "not-a-db.db").write_text("just text")
    code, out = invoke("inspect", url.format(tmp=tmp_path))
    assert code == 1
    assert f"Error: {message}" in out
    assert "Traceback" not in out
    assert not (tmp_path / "missing.db").exists()


def test_console_script_reports_errors_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from agentcomm._cli import main; main()", "inspect", "nope://x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Unknown backend scheme 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_token_create_grants_leases(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "t.db")
    code, out = invoke("token", "create", "--agent", "dev", "--lease", "src/api/*",
                       "--lease", "docs/*", "--label", "dev", "--url", url)  # fmt: skip
    token = out.strip().splitlines()[-1]
    assert code == 0 and token.startswith("act_")
    code, out = invoke("token", "list", "--url", url)
    header = next(x for x in out.splitlines() if "leases" in x).replace("┃", "|").split("|")
    cells = row(out, token.split("_")[1])
    assert code == 0 and cells[[c.strip() for c in header].index("leases") - 1] == (
        "src/api/* docs/*"
    )
