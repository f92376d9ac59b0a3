"""Redis only: closing a hub is bounded and does not depend on a cancel reaching a command.

redis-py 8 sends each command under `asyncio.wait_for(..., socket_timeout)`, which on Python
3.11 drops a cancel that lands as the send completes; a hub loop cancelled then used to carry
on and wait for its next re-check (5 x recheck: 5 s by default, 300 s with `recheck=60`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

import agentcomm
from agentcomm._backends.redis import backend as redis_backend
from redis_server import BINARY, RedisServer, drop_prefixes

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")

BOUND = 1.0  # seconds a close may take: a bound, not a benchmark
GUARD = 30.0  # fails a hung close fast instead of waiting for the re-check


@pytest.fixture
def store(redis_url: str) -> Iterator[Callable[..., str]]:
    """Make stores of their own on the session's server; their keys are deleted after."""
    made: list[str] = []

    def make(**options: object) -> str:
        made.append(f"t-{uuid4().hex[:8]}")
        query = "&".join(f"{k}={v}" for k, v in {"prefix": made[-1], **options}.items())
        return f"{redis_url}?{query}"

    yield make
    drop_prefixes(redis_url, made)


async def _timed_close(hub: agentcomm.Hub) -> float:
    started = time.monotonic()
    async with asyncio.timeout(GUARD):
        await hub.aclose()
    return time.monotonic() - started


@pytest.mark.parametrize("options", [{}, {"recheck": 60}], ids=["default", "recheck=60"])
async def test_open_and_close_50_times_each_close_bounded(
    store: Callable[..., str], options: dict[str, object]
) -> None:
    url = store(**options)
    for i in range(50):
        hub = agentcomm.connect(url)
        await hub.open()
        # close at different points of the hub's first scheduler pass (a command in flight)
        for _ in range(i % 5):
            await asyncio.sleep(0)
        took = await _timed_close(hub)
        assert took < BOUND, f"close {i + 1} took {took:.2f} s"


async def test_a_receiver_waiting_without_timeout_does_not_hold_up_close(
    store: Callable[..., str],
) -> None:
    hub = await agentcomm.connect(store(recheck=60))
    consumer = await hub.agent("consumer")
    waiting = asyncio.create_task(consumer.receive(timeout=None))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert await _timed_close(hub) < BOUND
    done, _ = await asyncio.wait({waiting}, timeout=BOUND)
    assert done, "the receiver still waits after the hub closed"
    with pytest.raises(agentcomm.HubClosed):
        waiting.result()


async def test_close_is_idempotent_and_bounded_with_the_server_gone(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        hub = await agentcomm.connect(f"{server.url}?recheck=60")
        await (await hub.agent("a")).send("a", "x")
        server.stop(kill=True)
        took = await _timed_close(hub)
    assert took < redis_backend.CLOSE_TIMEOUT + 0.5
    assert await _timed_close(hub) < 0.1  # closed already: nothing to do
