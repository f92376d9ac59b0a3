"""The live dashboard in a real browser: `agentcomm dashboard` served in a subprocess, driven by
Playwright on Debian's chromium, headless (`make test` installs the `chromium` package).

Agents of this test write to the same SQLite file through their own hub, so what the page shows
reaches it the way an operator's does: a commit, a cross-process wake-up, a snapshot, an event.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agentcomm
from agentcomm import sync

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["/", "/flow", "/dead-letters", "/topics", "/memory", "/refs", "/pools"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(url: str) -> None:
    """A store with something on every page."""
    with sync.connect(url) as hub:
        planner = hub.agent("planner")
        coder = hub.agent("coder")
        hub.agent("reviewer")
        for n in range(3):
            planner.send("coder", {"task": n, "goal": "write tests"}, type="task", priority=n)
        planner.send("reviewer", {"diff": "+1 -1"}, type="review", delay=3600)
        planner.send("coder", {"broken": True}, type="task", max_attempts=1)
        msg = coder.receive(timeout=5.0)
        assert msg is not None
        msg.dead_letter("handler raised ValueError")
        taken = coder.receive(timeout=5.0, lease=600)  # stays in flight
        assert taken is not None
        sub = coder.subscribe("build.>", durable="coder-builds", start="all")
        for n in range(5):
            planner.publish("build.started", {"n": n}, type="event")
        planner.publish("build.finished", {"ok": True}, type="event")
        first = sub.next(timeout=5.0)
        assert first is not None
        first.ack()
        kv = hub.memory("project-x")
        kv.put("plan", {"steps": 3})
        kv.put("owner", "planner")
        coder.memory().put("scratch", [1, 2, 3])
        blob = b"x" * 50_000
        hub.refs.store(blob)
        hub.refs.store(blob)
        planner.schedule("reviewer", {"digest": True}, type="tick", every=300)
        pool = hub.pool("review-42")
        pool.join("critic@r1", agent="critic", topics=["code"])
        pool.join("lead@r0", agent="planner")
        pool.wait_for("lead@r0", agentcomm.EventFilter(types={"verdict"}), timeout=3600)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'store.db'}"
    _fill(url)
    return url


@pytest.fixture(scope="module")
def server(store: str) -> Iterator[str]:
    """`agentcomm dashboard URL --port N` in a subprocess; its base URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentcomm._entry import main; main()",
         "dashboard", store, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/static/dashboard.js", timeout=5) as answer:
                assert answer.status == 200
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate()[0]
                pytest.fail(f"the dashboard did not start:\n{out}")
            time.sleep(0.1)
    yield base
    proc.send_signal(signal.SIGTERM)  # what a process manager sends
    try:
        out = proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"the dashboard did not stop on SIGTERM:\n{out}")
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Console:
    """The console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _message(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.console = Console(tab)
    yield tab
    context.close()


def _open(page: Any, url: str) -> None:
    page.goto(url)
    playwright_api.expect(page.locator("#live-state")).to_have_text("live", timeout=10_000)


def test_every_page_loads_without_console_errors_and_is_screenshot(
    server: str, page: Any, tmp_path: Path
) -> None:
    for path in PAGES:
        _open(page, server + path)
        assert page.locator("main#live h2").count() >= 1, path
        shot = tmp_path / f"dashboard-{path.strip('/') or 'agents'}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0
        print(f"screenshot of {path}: {shot}")
    assert page.console.errors == []
    # what the fixture stored shows up where it belongs
    _open(page, server + "/")
    rows = page.locator("table#agents tbody tr")
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.agent)")
    assert {"coder", "planner", "reviewer", "critic@r1", "lead@r0"} <= set(shown)
    _open(page, server + "/topics")
    assert page.locator("table#topics").inner_text().count("build.") == 2
    _open(page, server + "/refs")
    assert "dedupe hits" in page.locator("table#refs").inner_text()
    assert page.console.errors == []


def test_a_sent_message_appears_without_reload(server: str, store: str, page: Any) -> None:
    _open(page, server + "/flow")
    page.evaluate("window.__sameDocument = true")
    with sync.connect(store) as hub:
        msg_id = hub.agent("planner").send("reviewer", {"live": 1}, type="live-check")
    row = page.locator(f"table#flow tr[data-id='{msg_id}']")
    playwright_api.expect(row).to_be_visible(timeout=2_000)
    assert "live-check" in row.inner_text()
    assert page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
    assert page.console.errors == []


def test_redrive_moves_a_dead_letter_back_to_its_queue(server: str, store: str, page: Any) -> None:
    with sync.connect(store) as hub:
        hub.agent("redrive-me")
        msg_id = hub.agent("planner").send("redrive-me", {"again": True}, max_attempts=1)
        got = hub.agent("redrive-me").receive(timeout=5.0)
        assert got is not None and got.id == msg_id
        got.dead_letter("rejected for the test")
        assert hub.queue_depth("redrive-me") == 0
    _open(page, server + "/dead-letters")
    row = page.locator(f"table#dead tr[data-id='{msg_id}']")
    playwright_api.expect(row).to_be_visible(timeout=5_000)
    row.locator("button.redrive").click()
    playwright_api.expect(row).to_have_count(0, timeout=5_000)
    playwright_api.expect(page.locator("#toast")).to_contain_text("Requeued 1")
    with sync.connect(store) as hub:
        assert [d.id for d in hub.dead_letters("redrive-me")] == []
        again = hub.agent("redrive-me").receive(timeout=5.0)
        assert again is not None and again.id == msg_id and again.data == {"again": True}
        again.ack()
    assert page.console.errors == []


def test_the_agents_page_follows_presence_and_depth(server: str, store: str, page: Any) -> None:
    _open(page, server + "/")
    with sync.connect(store) as hub:
        hub.agent("late-joiner")
        hub.agent("planner").send("late-joiner", {"hello": 1})
    row = page.locator("table#agents tr[data-agent='late-joiner']")
    playwright_api.expect(row.locator("td.ready")).to_have_text("1", timeout=5_000)
    assert page.console.errors == []


def test_screenshot_for_the_record(server: str, page: Any, tmp_path: Path) -> None:
    """Keep one screenshot where a human can find it when asked (AGENTCOMM_DASHBOARD_SHOT)."""
    target = os.environ.get("AGENTCOMM_DASHBOARD_SHOT")
    if not target:
        pytest.skip("set AGENTCOMM_DASHBOARD_SHOT=path.png to keep a screenshot")
    _open(page, server + "/flow")
    shot = tmp_path / "flow.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, target)
    print(f"screenshot kept at {target}")
