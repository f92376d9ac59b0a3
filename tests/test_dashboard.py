"""The dashboard app in process, on every backend: pages, the redrive API, the live feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

import agentcomm
from agentcomm._dashboard.app import PAGES, redacted
from agentcomm._dashboard.feed import Feed, FeedClosed
from agentcomm._notify import ALL, Notifier
from agentcomm.dashboard import build_dashboard_app


@pytest.fixture
async def client(hub: agentcomm.Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = build_dashboard_app(hub)
    app.state.dashboard_feed.min_interval = 0.0  # each request reads the store afresh
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
        yield c


async def _dead_letter(hub: agentcomm.Hub, agent: str, data: object) -> str:
    sender = await hub.agent("sender")
    receiver = await hub.agent(agent)
    msg_id = await sender.send(agent, data, type="job", max_attempts=1)
    msg = await receiver.receive(timeout=5.0)
    assert msg is not None and msg.id == msg_id
    await msg.dead_letter("refused by the test")
    return msg_id


async def test_every_page_renders_what_the_store_holds(
    hub: agentcomm.Hub, client: httpx.AsyncClient
) -> None:
    planner = await hub.agent("planner")
    await hub.agent("coder")
    dead = await _dead_letter(hub, "coder", {"html": "<b>x</b>"})
    waiting = await planner.send("coder", {"goal": "tests"}, type="task")
    await planner.publish("build.started", {"n": 1})
    await hub.memory("proj").put("plan", 1)
    for _, _, path in PAGES:
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert 'id="live"' in answer.text and "dashboard.js" in answer.text
    agents = (await client.get("/")).text
    assert 'data-agent="coder"' in agents and 'data-agent="planner"' in agents
    flow = (await client.get("/flow")).text
    assert f'data-id="{waiting}"' in flow and f'data-id="{dead}"' in flow
    letters = (await client.get("/dead-letters")).text
    assert f'data-id="{dead}"' in letters and "refused by the test" in letters
    assert "<b>x</b>" not in letters and "&lt;b&gt;x&lt;/b&gt;" in letters  # escaped
    assert "build.started" in (await client.get("/topics")).text
    audit = await planner.subscribe("build.>", durable="audit", start="all")
    await audit.aclose()
    assert "audit" in (await client.get("/topics")).text
    await (await hub.agent("coder")).memory().put("scratch", 1)
    memory = (await client.get("/memory")).text
    assert "<code>plan</code>" in memory and "<code>scratch</code>" in memory
    pool = await hub.pool("review")
    await pool.join("lead@r0", agent="lead")
    wake = await pool.wait_for("lead@r0", agentcomm.EventFilter(types={"verdict"}), timeout=600)
    pools = (await client.get("/pools")).text
    assert 'data-pool="review"' in pools and wake.id in pools
    for path in ("/static/dashboard.js", "/static/dashboard.css"):
        assert (await client.get(path)).status_code == 200


async def test_redrive_requeues_dead_letters(hub: agentcomm.Hub, client: httpx.AsyncClient) -> None:
    first = await _dead_letter(hub, "worker", {"n": 1})
    await _dead_letter(hub, "worker", {"n": 2})
    answer = await client.post("/api/redrive", json={"agent": "worker", "ids": [first]})
    assert answer.status_code == 200 and answer.json()["requeued"] == 1
    assert [d.id for d in await hub.dead_letters("worker")] != [first]
    assert await hub.queue_depth("worker") == 1
    answer = await client.post("/api/redrive", json={"agent": "worker"})
    assert answer.json()["requeued"] == 1
    assert await hub.dead_letters("worker") == []
    assert await hub.queue_depth("worker") == 2


async def test_redrive_refuses_bad_requests_and_changes_nothing(
    hub: agentcomm.Hub, client: httpx.AsyncClient
) -> None:
    dead = await _dead_letter(hub, "worker", {"n": 1})
    form = await client.post("/api/redrive", data={"agent": "worker"})
    assert form.status_code == 415
    unknown = await client.post("/api/redrive", json={"agent": "nobody"})
    assert unknown.status_code == 400 and "nobody" in unknown.json()["error"]
    for body in ({"agent": "worker", "ids": dead}, {"ids": [dead]}, ["worker"]):
        assert (await client.post("/api/redrive", json=body)).status_code == 400, body
    assert [d.id for d in await hub.dead_letters("worker")] == [dead]
    assert (await client.get("/api/redrive")).status_code == 405


async def test_the_event_stream_refuses_an_unknown_page(client: httpx.AsyncClient) -> None:
    assert (await client.get("/events?page=nope")).status_code == 404


async def test_the_feed_follows_the_hub_wake_ups_and_ends_when_it_closes(url: str) -> None:
    hub = await agentcomm.connect(url)
    other = await agentcomm.connect(url)  # a change made through another hub reaches it too
    feed = Feed(hub, min_interval=0.05, idle_refresh=60.0)
    try:
        sender = await other.agent("sender")
        await other.agent("inbox")
        first = await feed.current()
        async with feed.watching():
            version = feed.version
            msg_id = await sender.send("inbox", {"n": 1})
            seen: list[str] = []
            while msg_id not in seen:  # the idle refresh is a minute away: a wake-up did it
                snap = await feed.next(version, timeout=30.0)
                assert snap is not None, "no snapshot after a send"
                version = feed.version
                seen = [row.id for row in snap.flow]
            assert snap is not None and first.agents_total <= snap.agents_total
            waiter = asyncio.create_task(feed.next(feed.version, timeout=30.0))
            await asyncio.sleep(0)
            await hub.aclose()
            with pytest.raises(FeedClosed):
                await waiter
        assert hub._ctx.tasks.cancelled == 0  # the loop ended on the close, not by a cancel
        with pytest.raises(FeedClosed):
            await feed.current()
    finally:
        await hub.aclose()
        await other.aclose()


async def test_a_listener_on_all_hears_every_channel() -> None:
    notifier = Notifier()
    with notifier.listen(ALL) as tap, notifier.listen("mail:a") as mail:
        notifier.notify(["mail:b"])
        assert tap.notified and not mail.notified
        tap.rearm()
        notifier.notify(["mail:a"])
        assert tap.notified and mail.notified


def test_build_dashboard_app_takes_a_hub() -> None:
    with pytest.raises(agentcomm.ConfigurationError, match=r"agentcomm\.connect"):
        build_dashboard_app("sqlite:///x.db")  # type: ignore[arg-type]


def test_passwords_stay_out_of_the_page() -> None:
    assert redacted("redis://:s3cret@host:6380/0") == "redis://***@host:6380/0"
    assert redacted("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redacted("sqlite:///a.db") == "sqlite:///a.db"
