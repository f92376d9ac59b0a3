"""Workers: releasing leases on close, `agent.serve`, `msg.auto_extend`, presence and strict
agent names, on every backend."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

import agentcomm
from agentcomm import Hub, Message
from agentcomm._backends.sqlite.wake import wake_dir_for
from processes import finish, spawn


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def _send(hub: Hub, to: str, *data: Any, **kwargs: Any) -> list[str]:
    boss = await hub.agent("boss")
    await hub.agent(to)
    return [await boss.send(to, d, **kwargs) for d in data]


# --- release on close ----------------------------------------------------------------------


async def test_close_releases_unsettled_messages_without_counting_an_attempt(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub() as other:
        first = await make_hub()
        await first.open()
        worker = await first.agent("w")
        await _send(first, "w", "a", "b", "c")
        got = await worker.receive_many(3, lease=600)
        assert [m.attempt for m in got] == [1, 1, 1]
        await got[0].ack()
        await got[1].nack(delay=600)
        await first.aclose()  # "c" is released, at once
        with pytest.raises(agentcomm.HubClosed):
            await got[2].ack()

        stats = await other.mailbox_stats("w")
        assert (stats.ready, stats.delayed, stats.in_flight) == (1, 1, 0)
        again = await (await other.agent("w")).receive(timeout=5)
        assert again is not None and again.data == "c"
        assert again.attempt == 1  # the released delivery did not count
        await again.ack()


async def test_release_skips_a_delivery_whose_lease_passed_to_another(
    make_hub: Callable[..., Hub],
) -> None:
    clock = FakeClock()
    async with make_hub(clock=clock) as second:
        first = await make_hub(clock=clock)
        await first.open()
        await _send(first, "w", "job")
        old = await (await first.agent("w")).receive(timeout=1, lease=10)
        assert old is not None
        clock.now += 20  # the lease ends; another consumer gets the message
        new = await (await second.agent("w")).receive(timeout=1, lease=600)
        assert new is not None and new.attempt == 2
        await first.aclose()  # its stale delivery is not released
        assert (await second.mailbox_stats("w")).in_flight == 1
        await new.ack()


# --- serve ---------------------------------------------------------------------------------


async def _serve_until(
    agent: agentcomm.Agent, handler: Any, done: Callable[[], bool], **kwargs: Any
) -> None:
    """Serve until `done()` holds (checked after each handler call), then stop."""
    stop = asyncio.Event()

    async def checked(msg: Message) -> Any:
        try:
            return await handler(msg)
        finally:
            if done():
                stop.set()

    await asyncio.wait_for(agent.serve(checked, stop=stop, signals=False, **kwargs), 30)


async def test_serve_acks_nacks_and_dead_letters_by_outcome(make_hub: Callable[..., Hub]) -> None:
    fast = agentcomm.Backoff(base=0.0, max=0.0)
    async with make_hub(backoff=fast, max_attempts=2) as hub:
        worker = await hub.agent("w")
        await _send(hub, "w", "ok", "flaky", "bad", "poison")
        seen: list[tuple[Any, int]] = []

        async def handler(msg: Message) -> None:
            seen.append((msg.data, msg.attempt))
            if msg.data == "flaky" and msg.attempt == 1:
                raise RuntimeError("try again")
            if msg.data == "bad":
                raise ValueError("always fails")
            if msg.data == "poison":
                raise agentcomm.Reject("cannot parse the order")

        await _serve_until(worker, handler, lambda: len(seen) >= 6, concurrency=2)
        assert sorted(seen) == sorted(
            [("ok", 1), ("flaky", 1), ("flaky", 2), ("bad", 1), ("bad", 2), ("poison", 1)]
        )
        letters = {d.data: d for d in await hub.dead_letters("w")}
        assert set(letters) == {"bad", "poison"}
        assert letters["poison"].reason == "cannot parse the order"
        assert letters["poison"].attempts == 1
        assert "ValueError: always fails" in letters["bad"].reason
        stats = await hub.mailbox_stats("w")
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 2)


async def test_serve_answers_requests_with_the_return_value(make_hub: Callable[..., Hub]) -> None:
    async with make_hub() as hub:
        worker = await hub.agent("adder")
        client = await hub.agent("client")
        stop = asyncio.Event()

        async def add(msg: Message) -> int:
            return int(msg.data["a"] + msg.data["b"])

        serving = asyncio.create_task(worker.serve(add, stop=stop, signals=False))
        reply = await client.request("adder", {"a": 2, "b": 3}, timeout=10)
        assert reply.data == 5
        stop.set()
        await asyncio.wait_for(serving, 10)
        assert (await hub.mailbox_stats("adder")).in_flight == 0


async def test_serve_runs_at_most_concurrency_handlers(make_hub: Callable[..., Hub]) -> None:
    async with make_hub() as hub:
        worker = await hub.agent("w")
        await _send(hub, "w", *range(7))
        running = peak = handled = 0
        gate = asyncio.Event()

        async def handler(msg: Message) -> None:
            nonlocal running, peak, handled
            running += 1
            peak = max(peak, running)
            if running == 3:
                gate.set()
            await gate.wait()
            await asyncio.sleep(0)
            running -= 1
            handled += 1

        await _serve_until(worker, handler, lambda: handled == 7, concurrency=3)
        assert peak == 3
        assert await hub.queue_depth("w") == 0


async def test_serve_stop_waits_for_running_handlers_within_the_grace(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub() as hub:
        worker = await hub.agent("w")
        await _send(hub, "w", "quick", "stuck")
        started = asyncio.Event()
        finish_quick = asyncio.Event()
        both = 0

        async def handler(msg: Message) -> None:
            nonlocal both
            both += 1
            if both == 2:
                started.set()
            if msg.data == "quick":
                await finish_quick.wait()
            else:
                await asyncio.Event().wait()  # never ends by itself

        stop = asyncio.Event()
        serving = asyncio.create_task(
            worker.serve(handler, stop=stop, grace=0.5, signals=False, lease=600)
        )
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        finish_quick.set()  # finishes within the grace period: acked
        await asyncio.wait_for(serving, 10)
        # "stuck" was cancelled at the end of the grace period and released at once
        stats = await hub.mailbox_stats("w")
        assert (stats.ready, stats.in_flight) == (1, 0)
        again = await worker.receive(timeout=5)
        assert again is not None and again.data == "stuck" and again.attempt == 1


async def test_serve_returns_quietly_when_the_hub_closes(make_hub: Callable[..., Hub]) -> None:
    hub = await make_hub()
    await hub.open()
    worker = await hub.agent("w")

    async def handler(msg: Message) -> None:
        pass

    serving = asyncio.create_task(worker.serve(handler, signals=False))
    await asyncio.sleep(0.1)
    await hub.aclose()
    await asyncio.wait_for(serving, 10)
    assert serving.result() is None


async def test_serve_checks_its_arguments(hub: Hub) -> None:
    worker = await hub.agent("w")

    async def handler(msg: Message) -> None:
        pass

    bad: list[dict[str, Any]] = [
        {"concurrency": 0},
        {"concurrency": "4"},
        {"lease": -1},
        {"grace": float("nan")},
        {"stop": "soon"},
        {"signals": 1},
    ]
    for kwargs in bad:
        with pytest.raises(agentcomm.ValidationError):
            await worker.serve(handler, **kwargs)
    with pytest.raises(agentcomm.ValidationError):
        await worker.serve("not a function")  # type: ignore[arg-type]


# --- auto-extend ---------------------------------------------------------------------------


async def test_auto_extend_keeps_the_lease_while_the_block_runs(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub() as hub, make_hub() as rival_hub:
        await _send(hub, "w", "long job")
        msg = await (await hub.agent("w")).receive(timeout=5, lease=1.0)
        assert msg is not None
        rival = await rival_hub.agent("w")
        async with msg.auto_extend() as keeper:
            await asyncio.sleep(1.6)  # past the end of the lease it was received with
            assert await rival.receive(timeout=0) is None
        assert keeper.extends >= 2 and not keeper.lost
        await msg.ack()


async def test_auto_extend_checks_its_arguments(hub: Hub) -> None:
    await _send(hub, "w", 1)
    msg = await (await hub.agent("w")).receive(timeout=5, lease=30)
    assert msg is not None
    with pytest.raises(agentcomm.ValidationError):
        msg.auto_extend(lease=0)
    with pytest.raises(agentcomm.ValidationError):
        msg.auto_extend(lease=10, every=10)
    with pytest.raises(agentcomm.ValidationError):
        msg.auto_extend(every=-1)
    await msg.ack()


# --- presence ------------------------------------------------------------------------------


async def test_presence_reports_active_idle_and_gone(make_hub: Callable[..., Hub]) -> None:
    clock = FakeClock()
    presence = agentcomm.Presence(interval=1.0, active=5.0, gone=10.0)
    async with make_hub(clock=clock, presence=presence) as hub:
        start = clock.now
        worker = await hub.agent("w")
        (info,) = await hub.agents()
        assert info.last_active is None and info.state == "idle"

        await worker.send("w", 1)
        clock.now += 0.5
        await worker.send("w", 2)  # within the interval: coalesced, not written
        (info,) = await hub.agents()
        assert (info.last_active, info.last_seen, info.state) == (start, start, "active")

        clock.now += 0.6
        msg = await worker.receive(timeout=1)
        assert msg is not None
        (info,) = await hub.agents()
        assert info.last_active == clock.now and info.state == "active"

        clock.now += 6  # no work for longer than `active`
        assert [a.state for a in await hub.agents()] == ["idle"]
        clock.now += 10  # not seen for longer than `gone`
        assert [a.state for a in await hub.agents()] == ["gone"]
        await msg.ack()  # activity again
        (info,) = await hub.agents()
        assert (info.last_seen, info.last_active, info.state) == (clock.now, clock.now, "active")


async def test_a_waiting_receive_keeps_the_agent_seen(make_hub: Callable[..., Hub]) -> None:
    presence = agentcomm.Presence(interval=0.1, active=0.0, gone=60.0)
    async with make_hub(presence=presence) as hub:
        worker = await hub.agent("w")
        (before,) = await hub.agents()
        assert await worker.receive(timeout=0.5) is None
        (after,) = await hub.agents()
        assert after.last_seen > before.last_seen
        assert after.last_active is None and after.state == "idle"


def test_presence_checks_its_thresholds() -> None:
    with pytest.raises(agentcomm.ValidationError, match="twice"):
        agentcomm.Presence(interval=10, gone=15)
    with pytest.raises(agentcomm.ValidationError):
        agentcomm.Presence(interval=0)
    with pytest.raises(agentcomm.ConfigurationError):
        agentcomm.connect("memory://", presence={"interval": 1})  # type: ignore[arg-type]


# --- strict names --------------------------------------------------------------------------


async def test_attach_only_and_queries_refuse_unknown_agents(hub: Hub) -> None:
    with pytest.raises(agentcomm.UnknownAgent, match="'workers'"):
        await hub.agent("workers", create=False)
    assert await hub.agents() == []  # nothing was registered
    for query in (
        hub.queue_depth("workers"),
        hub.mailbox_stats("workers"),
        hub.pending("workers"),
        hub.dead_letters("workers"),
        hub.requeue_dead_letters("workers"),
    ):
        with pytest.raises(agentcomm.UnknownAgent):
            await query
    await hub.agent("workers")
    attached = await hub.agent("workers", create=False)
    assert attached.name == "workers"
    assert await hub.queue_depth("workers") == 0
    with pytest.raises(agentcomm.ValidationError):
        await hub.agent("workers", create="no")  # type: ignore[arg-type]


async def test_attach_only_sees_agents_registered_by_other_hubs(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub() as first, make_hub() as second:
        await first.agent("pool")
        pool = await second.agent("pool", create=False)
        await _send(first, "pool", "job")
        got = await pool.receive(timeout=5)
        assert got is not None and got.data == "job"
        await got.ack()


# --- SIGTERM of a worker process -----------------------------------------------------------

_WORKER = """
async def main(url):
    async with agentcomm.connect(url, lease=600) as hub:
        worker = await hub.agent("w", create=False)

        async def handler(msg):
            print("started", msg.attempt, flush=True)
            await asyncio.Event().wait()  # a long LLM call

        await worker.serve(handler, grace=0.5)
        print("stopped", flush=True)
"""


def _wake_sockets(url: str, pid: int) -> list[str]:
    """The wake sockets process `pid` has in the registry of the SQLite store at `url`."""
    directory = wake_dir_for(url.removeprefix("sqlite:///"))
    left = os.listdir(directory) if os.path.isdir(directory) else []
    return [n for n in left if n.startswith(f"{pid}-")]


async def test_sigterm_mid_handler_hands_the_message_to_another_worker_at_once(
    backend_name: str, url: str
) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store is not shared between processes")
    async with agentcomm.connect(url, lease=600) as hub:
        await _send(hub, "w", "job")
        proc = spawn(_WORKER, url)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)  # type: ignore[union-attr]
            assert line.split() == ["started", "1"], proc.stderr.read()  # type: ignore[union-attr]
            proc.send_signal(signal.SIGTERM)
            out = await asyncio.to_thread(finish, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "stopped" in out  # serve returned, the hub closed normally
        if backend_name == "sqlite":  # the closed hub removed its wake socket
            assert _wake_sockets(url, proc.pid) == []
        # released, not left leased for 600 s, and that delivery did not count
        again = await (await hub.agent("w")).receive(timeout=10)
        assert again is not None and again.data == "job" and again.attempt == 1
        await again.ack()


async def test_signals_stop_every_serve_and_the_old_handlers_come_back(hub: Hub) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    first, second = await hub.agent("one"), await hub.agent("two")

    async def handler(msg: Message) -> None:
        pass

    serving = [asyncio.create_task(a.serve(handler, grace=0)) for a in (first, second)]
    await asyncio.sleep(0.1)  # both are waiting for work now
    assert not any(t.done() for t in serving)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(asyncio.gather(*serving), 10)
    assert {sig: signal.getsignal(sig) for sig in before} == before
