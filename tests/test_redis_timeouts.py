"""Redis only: a call with a timeout ends within it (plus `scripts.MARGIN`) even when the server
is frozen (SIGSTOP), and one without a timeout within the URL's `command_timeout`.

These tests freeze a redis-server of their own, never the session's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentcomm
from agentcomm._backends.redis import RedisBackend
from agentcomm._backends.redis.scripts import MARGIN
from redis_server import BINARY, RedisServer

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")

SLACK = 1.0  # seconds of scheduling noise allowed on top of a bound: not a benchmark
GUARD = 30.0  # fails a hung call fast


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as srv:
        yield srv
        _thaw(srv)


def _freeze(srv: RedisServer) -> None:
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGSTOP)


def _thaw(srv: RedisServer) -> None:
    if srv.proc is not None:
        os.kill(srv.proc.pid, signal.SIGCONT)


@pytest.fixture
async def hub(server: RedisServer) -> AsyncIterator[agentcomm.Hub]:
    h = await agentcomm.connect(f"{server.url}?prefix=frozen&command_timeout=1")
    try:
        yield h
    finally:
        _thaw(server)
        await h.aclose()


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    """Seconds `call` took and what it returned or raised."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(GUARD):
            outcome: Any = await call
    except agentcomm.AgentCommError as exc:
        outcome = exc
    return time.monotonic() - started, outcome


async def test_receive_on_a_frozen_server_ends_within_its_timeout(
    hub: agentcomm.Hub, server: RedisServer
) -> None:
    agent = await hub.agent("worker")
    _freeze(server)
    took, outcome = await _timed(agent.receive(timeout=1))
    assert took < 1 + MARGIN + SLACK
    assert outcome is None or isinstance(outcome, agentcomm.BackendUnavailable)


async def test_request_on_a_frozen_server_ends_within_its_timeout(
    hub: agentcomm.Hub, server: RedisServer
) -> None:
    asker = await hub.agent("asker")
    await hub.agent("helper")
    _freeze(server)
    took, outcome = await _timed(asker.request("helper", "ping", timeout=1))
    assert took < 1 + MARGIN + SLACK
    assert isinstance(outcome, agentcomm.BackendUnavailable | agentcomm.RequestTimeout)


async def test_a_request_whose_server_freezes_while_it_waits_ends_in_time(
    hub: agentcomm.Hub, server: RedisServer
) -> None:
    asker = await hub.agent("asker")
    await hub.agent("helper")
    task = asyncio.ensure_future(_timed(asker.request("helper", "ping", timeout=1.5)))
    await asyncio.sleep(0.3)  # the request is stored and waiting
    _freeze(server)
    took, outcome = await task
    assert took < 1.5 + MARGIN + SLACK
    assert isinstance(outcome, agentcomm.BackendUnavailable | agentcomm.RequestTimeout)


async def test_calls_without_a_timeout_end_within_command_timeout(
    hub: agentcomm.Hub, server: RedisServer
) -> None:
    kv = hub.memory("team")
    await kv.put("k", 1)
    agent = await hub.agent("worker")
    _freeze(server)
    for call in (kv.get("k"), kv.put("k", 2), agent.send("worker", "x"), hub.stats()):
        took, outcome = await _timed(call)
        assert took < 1 + SLACK  # command_timeout=1
        assert isinstance(outcome, agentcomm.BackendUnavailable)
        assert "did not answer" in str(outcome)


async def test_the_hub_works_again_after_the_server_thaws(
    hub: agentcomm.Hub, server: RedisServer
) -> None:
    agent = await hub.agent("worker")
    kv = hub.memory("team")
    _freeze(server)
    await _timed(agent.receive(timeout=0.5))
    await _timed(kv.put("k", 1))
    _thaw(server)
    async with asyncio.timeout(GUARD):
        await agent.send("worker", "after")
        msg = await agent.receive(timeout=5)
        assert msg is not None and msg.data == "after"
        await msg.ack()
        await kv.put("k", 2)
        entry = await kv.get("k")
        assert entry is not None and entry.value == 2


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "x"])
def test_a_bad_command_timeout_is_refused(value: str) -> None:
    with pytest.raises(agentcomm.ConfigurationError, match="command_timeout"):
        agentcomm.connect(f"redis://127.0.0.1:1/0?command_timeout={value}")


@pytest.mark.parametrize(("query", "expected"), [("", None), ("?socket_timeout=2", 2.0)])
async def test_round_trips_have_no_socket_timeout_unless_the_url_sets_one(
    server: RedisServer, query: str, expected: float | None
) -> None:
    # redis-py 8.1 defaults to 5 s, which arms a task per send and a timer per read; the
    # watchdog bounds every round trip instead
    async with agentcomm.connect(server.url + query) as hub:
        backend = hub._backend
        assert isinstance(backend, RedisBackend)
        agent = await hub.agent("a")
        await agent.send("a", 1)
        for client in (backend._scripts.client, backend._wake_client):
            conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                assert conn.socket_timeout == expected
            finally:
                await client.connection_pool.release(conn)
