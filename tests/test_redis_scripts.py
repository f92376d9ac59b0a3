"""Redis only: how the scripts reach the server. On Redis 7+ each feature's script is a
Functions library, loaded once per server by the first hub that misses it and called by FCALL;
with `scripts=eval`, or for a user who may not load or call functions, the same Lua runs by
EVALSHA. Both ways must behave alike (the retry tests of test_redis_retries.py run both)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
import redis

import agentcomm
from agentcomm._backends.redis import RedisBackend
from agentcomm._backends.redis.leases_lua import LEASES
from agentcomm._backends.redis.mailbox_lua import MAILBOX
from agentcomm._backends.redis.pools_lua import POOLS
from agentcomm._backends.redis.references_lua import REFS
from agentcomm._backends.redis.scripts import Lua
from agentcomm._backends.redis.shared_memory_lua import KV
from agentcomm._backends.redis.topics_lua import TOPICS
from redis_server import BINARY

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")

ALL_SCRIPTS = [MAILBOX, TOPICS, KV, REFS, POOLS, LEASES]


def functions_supported(raw: redis.Redis) -> bool:
    info: Any = raw.info("server")
    return int(str(info["redis_version"]).split(".")[0]) >= 7


def spy(hub: agentcomm.Hub) -> list[str]:
    """The names of the commands the hub's script runner sends from now on."""
    backend = hub._backend
    assert isinstance(backend, RedisBackend)
    scripts = backend._scripts
    sent: list[str] = []
    execute = scripts._execute

    async def recording(*args: Any) -> Any:
        sent.append(str(args[0]))
        return await execute(*args)

    scripts._execute = recording
    return sent


async def round_trip(hub: agentcomm.Hub) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", {"n": 1})
    msg = await b.receive(timeout=5)
    assert msg is not None and msg.data == {"n": 1}
    await msg.ack()
    kv = hub.memory("space")
    await kv.put("k", 1)
    entry = await kv.get("k")
    assert entry is not None and entry.value == 1


@pytest.mark.parametrize("lua", ALL_SCRIPTS, ids=lambda s: s.name)
def test_every_script_compiles_both_ways(raw: redis.Redis, lua: Lua) -> None:
    raw.script_load(lua.eval_text())
    if functions_supported(raw):
        name, code = lua.library()
        assert raw.function_load(code, replace=True) == name.encode()


async def test_a_hub_calls_functions_on_redis_7(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    if not functions_supported(raw):
        pytest.skip("the server is older than Redis 7")
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}") as hub:
        sent = spy(hub)
        await round_trip(hub)
    assert "FCALL" in sent and "EVALSHA" not in sent
    name, _ = MAILBOX.library()
    assert raw.function_list(library=name)


async def test_a_library_deleted_under_an_open_hub_is_loaded_again(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    if not functions_supported(raw):
        pytest.skip("the server is older than Redis 7")
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}") as hub:
        await round_trip(hub)
        for lua in ALL_SCRIPTS:
            name, _ = lua.library()
            if raw.function_list(library=name):
                raw.function_delete(name)
        sent = spy(hub)
        await round_trip(hub)
    assert "FUNCTION" in sent and "EVALSHA" not in sent  # loaded again, still by FCALL


async def test_scripts_eval_runs_the_same_lua_by_evalsha(redis_url: str, prefix: str) -> None:
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}&scripts=eval") as hub:
        sent = spy(hub)
        await round_trip(hub)
        backend = hub._backend
        assert isinstance(backend, RedisBackend)
        await (
            backend._scripts.client.script_flush()
        )  # a restarted server: the scripts are loaded again
        await round_trip(hub)
    assert "EVALSHA" in sent and "FCALL" not in sent and "SCRIPT" in sent


async def test_a_user_who_may_not_run_functions_falls_back_to_evalsha(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    if not functions_supported(raw):
        pytest.skip("the server is older than Redis 7")
    user, password = f"u-{uuid4().hex[:8]}", uuid4().hex
    raw.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all", "-fcall", "-fcall_ro", "-function"],
    )  # fmt: skip
    try:
        parts = urlsplit(redis_url)
        url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))
        async with agentcomm.connect(f"{url}?prefix={prefix}") as hub:
            await round_trip(hub)  # FCALL refused (by each call already on its way), EVALSHA
            sent = spy(hub)
            await round_trip(hub)
        assert "EVALSHA" in sent and "FCALL" not in sent  # for good
    finally:
        raw.acl_deluser(user)


def test_a_bad_scripts_option_is_refused(redis_url: str) -> None:
    with pytest.raises(agentcomm.ConfigurationError, match="scripts"):
        agentcomm.connect(f"{redis_url}?scripts=lua")


@pytest.mark.parametrize("query", ["", "&scripts=eval"])
async def test_reply_slots_read_by_pub_sub_are_dropped(
    redis_url: str, prefix: str, raw: redis.Redis, query: str
) -> None:
    # two hubs: the replies reach the requester's hub whole on the wake channel, and its slots
    # are dropped afterwards, several in one call
    url = f"{redis_url}?prefix={prefix}{query}"
    async with agentcomm.connect(url) as asking, agentcomm.connect(url) as answering:
        requester, responder = await asking.agent("asker"), await answering.agent("answerer")

        async def answer(n: int) -> None:
            for _ in range(n):
                msg = await responder.receive(timeout=5)
                assert msg is not None
                await msg.reply(msg.data * 2)

        backend = asking._backend
        assert isinstance(backend, RedisBackend)
        ops: list[Any] = []
        execute = backend._scripts._execute

        async def recording(*args: Any) -> Any:
            if args[0] in ("FCALL", "EVALSHA"):
                ops.append(args[6])  # ARGV 4: the operation
            return await execute(*args)

        backend._scripts._execute = recording
        answering_task = asyncio.ensure_future(answer(3))
        replies = [(await requester.request("answerer", i, timeout=5)).data for i in range(3)]
        await answering_task
        assert replies == [0, 2, 4]
        for _ in range(100):  # dropped after a short delay: wait up to 2 s
            if raw.hlen(f"{prefix}:req") == 0:
                break
            await asyncio.sleep(0.02)
        assert raw.hlen(f"{prefix}:req") == 0
        assert raw.zcard(f"{prefix}:req:dl") == 0 and raw.hlen(f"{prefix}:req:att") == 0
        assert "drop" in ops and not any(str(op).startswith("take") for op in ops)
