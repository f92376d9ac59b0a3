"""The MCP server: the tools in process (a real MCP client against the server object), and
end to end with stdio server processes sharing one SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner

import agentcomm
from agentcomm._cli import app
from agentcomm._mcp import DEFAULT_TOOLS, EXTRA_TOOLS, McpOptions, build_server, fixed

SRC = str(Path(agentcomm.__file__).resolve().parent.parent)


async def call(client: Client, tool: str, **args: Any) -> Any:
    """The tool's JSON result; fails the test on a tool error."""
    result = await client.call_tool(tool, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


async def error(client: Client, tool: str, **args: Any) -> str:
    """The text of the tool error the call must give."""
    result = await client.call_tool(tool, args)
    assert result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


@asynccontextmanager
async def clients(
    hub: agentcomm.Hub, *names: str, options: McpOptions | None = None
) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        out = []
        for name in names:
            await hub.agent(name)
            server = build_server(hub, fixed(name), options)
            out.append(await stack.enter_async_context(Client(server)))
        yield out


# --- in process --------------------------------------------------------------------------------


async def test_the_tool_profiles() -> None:
    async with (
        agentcomm.connect("memory://") as hub,
        clients(hub, "alice") as (default,),
        clients(hub, "bob", options=McpOptions(tools="all")) as (everything,),
    ):
        listed = await default.list_tools()
        assert tuple(t.name for t in listed.tools) == DEFAULT_TOOLS
        assert all(t.description for t in listed.tools)
        names = {t.name for t in (await everything.list_tools()).tools}
        assert names == set(DEFAULT_TOOLS) | set(EXTRA_TOOLS)
        me = await call(default, "whoami")
        assert me["agent"] == "alice" and me["inbox"]["ready"] == 0


async def test_peek_receive_acknowledge_and_threads() -> None:
    async with agentcomm.connect("memory://") as hub, clients(hub, "alice", "bob") as (a, b):
        sent = await call(a, "send_message", to="bob", body="please review", thread="t-1")
        mid = sent["ids"]["bob"]
        await call(a, "send_message", to="bob", body="x" * 2000, type="log")
        peek = await call(b, "check_inbox")
        assert next(m["id"] for m in peek["messages"]) == mid
        first = peek["messages"][0]
        assert (first["from"], first["type"], first["thread"], first["body"]) == (
            "alice", "message", "t-1", "please review",
        )  # fmt: skip
        assert peek["messages"][1]["truncated"] is True
        assert len(peek["messages"][1]["body"]) < 600
        assert (await call(b, "check_inbox", thread="t-1"))["messages"][0]["id"] == mid
        assert len((await call(b, "check_inbox"))["messages"]) == 2  # peeking consumed nothing

        got = await call(b, "receive", max_messages=1)
        assert [m["id"] for m in got["messages"]] == [mid]
        answer = await call(b, "reply", message_id=mid, body="looks good")
        assert answer["thread"] == "t-1"
        (back,) = (await call(a, "check_inbox", thread="t-1"))["messages"]
        assert back["body"] == "looks good" and back["from"] == "bob"
        assert "No agent named" in await error(a, "send_message", to="nobody", body="x")
        assert "receive" in await error(b, "acknowledge", message_ids=[mid])  # settled already

        log = (await call(b, "receive"))["messages"][0]
        assert len(log["body"]) == 2000  # a received body is whole
        assert (await call(b, "acknowledge", message_ids=[log["id"]]))["acknowledged"]
        assert (await call(b, "check_inbox"))["messages"] == []


async def test_release_puts_a_message_back() -> None:
    async with agentcomm.connect("memory://") as hub, clients(hub, "alice", "bob") as (a, b):
        await call(a, "send_message", to="bob", body="job")
        (msg,) = (await call(b, "receive"))["messages"]
        assert (await call(b, "check_inbox"))["messages"][0]["held_by_you"] is True
        await call(b, "release", message_ids=[msg["id"]])
        again = (await call(b, "receive"))["messages"][0]
        assert again["id"] == msg["id"] and again["attempt"] == 2


async def test_ask_is_answered_by_the_other_agent() -> None:
    async with agentcomm.connect("memory://") as hub, clients(hub, "alice", "bob") as (a, b):

        async def answer() -> None:
            assert (await call(b, "wait_for_mail", timeout_seconds=30))["mail"] is True
            (req,) = (await call(b, "check_inbox"))["messages"]
            assert req["request"] is True
            (got,) = (await call(b, "receive"))["messages"]
            await call(b, "reply", message_id=got["id"], body="42")

        answering = asyncio.ensure_future(answer())
        got = await call(a, "ask", to="bob", body="the answer?", timeout_seconds=30)
        await answering
        assert got == {"from": "bob", "type": "reply", "body": "42"}
        text = await error(a, "ask", to="bob", body="again?", timeout_seconds=0.2)
        assert "No answer from 'bob'" in text


async def test_topics_memory_and_reservations() -> None:
    async with agentcomm.connect("memory://") as hub, clients(hub, "alice", "bob") as (a, b):
        await call(a, "publish", topic="build.status", body="green")
        await call(a, "publish", topic="build.status", body="red")
        read = await call(b, "read_topic", topic="build.*")
        assert [m["body"] for m in read["messages"]] == ["green", "red"]
        assert (await call(b, "read_topic", topic="build.*"))["messages"] == []  # cursor kept
        await call(a, "publish", topic="build.status", body="green again")
        assert [m["body"] for m in (await call(b, "read_topic", topic="build.*"))["messages"]] == [
            "green again"
        ]

        assert (await call(a, "memory_get", key="plan"))["version"] == 0
        put = await call(a, "memory_put", key="plan", value={"step": 1}, expected_version=0)
        assert put["version"] == 1
        text = await error(b, "memory_put", key="plan", value={"step": 9}, expected_version=0)
        assert "memory_get" in text and "expected_version=1" in text
        assert (await call(b, "memory_get", key="plan"))["value"] == {"step": 1}

        mine = await call(a, "reserve_files", paths=["src/api/*.py"], reason="auth")
        assert mine["ok"] is True
        theirs = await call(b, "reserve_files", paths=["src/**"])
        assert theirs["ok"] is False and theirs["granted"] == []
        (conflict,) = theirs["conflicts"]
        assert (conflict["path"], conflict["holder"], conflict["pattern"], conflict["reason"]) == (
            "src/**", "alice", "src/api/*.py", "auth",
        )  # fmt: skip
        listed = await call(b, "list_reservations", path="src/api/users.py")
        assert [r["holder"] for r in listed["reservations"]] == ["alice"]
        assert "absolute" in await error(b, "reserve_files", paths=["/etc/x"])
        assert (await call(a, "release_files"))["released"] == ["src/api/*.py"]
        assert (await call(b, "reserve_files", paths=["src/**"]))["ok"] is True


async def test_broadcast_skips_retired_agents_until_they_act() -> None:
    now = [1_800_000_000.0]
    async with agentcomm.connect("memory://", clock=lambda: now[0]) as hub:
        await hub.agent("carol")
        now[0] += 7200  # carol is gone, for longer than retire_after
        async with clients(hub, "alice", "bob", options=McpOptions(retire_after=3600)) as (a, _b):
            listed = await call(a, "list_agents")
            assert {x["name"]: x["state"] for x in listed["agents"]} == {
                "alice": "active", "bob": "idle",  # registered, has not acted yet
            }  # fmt: skip
            every = await call(a, "list_agents", include_retired=True)
            assert {x["name"]: x["state"] for x in every["agents"]}["carol"] == "retired"
            sent = await call(a, "send_message", to="*", body="standup")
            assert list(sent["ids"]) == ["bob"] and sent["skipped_retired"] == ["carol"]
            async with clients(hub, "carol") as (c,):
                await call(c, "whoami")  # carol comes back by acting
                sent = await call(a, "send_message", to="*", body="standup 2")
                assert sorted(sent["ids"]) == ["bob", "carol"]


def test_inbox_command_peeks_and_exits_by_whether_there_is_mail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.db'}"

    async def setup() -> None:
        async with agentcomm.connect(url) as hub:
            alice, _ = await hub.agent("alice"), await hub.agent("bob")
            await alice.send("bob", "hello bob", metadata={"thread": "t"})

    asyncio.run(setup())
    runner = CliRunner()
    for _ in range(2):  # never consumes
        out = runner.invoke(app, ["inbox", url, "--agent", "bob", "--json"])
        assert out.exit_code == 0, out.output
        shown = json.loads(out.output)
        assert shown["count"] == 1 and shown["messages"][0]["preview"] == "hello bob"
        assert shown["messages"][0]["thread"] == "t"
    empty = runner.invoke(app, ["inbox", url, "--json", "--wait", "0.2"],
                          env={"AGENTCOMM_AGENT": "alice"})  # fmt: skip
    assert empty.exit_code == 1 and json.loads(empty.output)["count"] == 0
    unknown = runner.invoke(app, ["inbox", url, "--agent", "zed"])
    assert unknown.exit_code == 1 and "not registered" in unknown.output


# --- stdio processes on one SQLite file ----------------------------------------------------------


def _stdio(url: str, agent: str) -> Client:
    env = {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "from agentcomm._entry import main; main()"
    params = StdioServerParameters(
        command=sys.executable, args=["-c", code, "mcp", url, "--agent", agent], env=env
    )
    return Client(params)


@pytest.mark.slow
async def test_two_stdio_servers_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agents.db'}"
    async with _stdio(url, "alice") as a, _stdio(url, "bob") as b:
        assert (await call(a, "whoami"))["agent"] == "alice"
        assert (await call(b, "whoami"))["agent"] == "bob"  # both registered on start
        names = {x["name"] for x in (await call(a, "list_agents"))["agents"]}
        assert names == {"alice", "bob"}

        # peek does not consume; an unacknowledged receive comes back after its lease
        mid = (await call(a, "send_message", to="bob", body="task 1", thread="T"))["ids"]["bob"]
        for _ in range(2):
            (peek,) = (await call(b, "check_inbox"))["messages"]
            assert peek["id"] == mid and peek["thread"] == "T"
        (got,) = (await call(b, "receive", lease_seconds=1))["messages"]
        assert got["id"] == mid
        assert (await call(b, "wait_for_mail", timeout_seconds=10))["mail"] is True  # lease end
        (again,) = (await call(b, "receive", lease_seconds=30))["messages"]
        assert again["id"] == mid and again["attempt"] == 2
        await call(b, "acknowledge", message_ids=[mid])
        assert (await call(b, "check_inbox"))["messages"] == []

        # wait_for_mail wakes on a send from the other process
        waiting = asyncio.ensure_future(call(b, "wait_for_mail", timeout_seconds=30))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        sent_at = time.monotonic()
        await call(a, "send_message", to="bob", body="ping")
        assert (await waiting)["mail"] is True
        assert time.monotonic() - sent_at < 1.5  # woken by the send, not a poll
        (ping,) = (await call(b, "receive"))["messages"]
        await call(b, "acknowledge", message_ids=[ping["id"]])

        # ask is answered by the other session
        async def answer() -> None:
            await call(b, "wait_for_mail", timeout_seconds=30)
            (req,) = (await call(b, "receive"))["messages"]
            assert req["request"] is True
            await call(b, "reply", message_id=req["id"], body=f"got: {req['body']}")

        answering = asyncio.ensure_future(answer())
        assert (await call(a, "ask", to="bob", body="q", timeout_seconds=30))["body"] == "got: q"
        await answering

        # reservations conflict across processes, and release
        assert (await call(a, "reserve_files", paths=["src/api/"]))["ok"] is True
        denied = await call(b, "reserve_files", paths=["src/api/users.py"])
        assert denied["conflicts"][0]["holder"] == "alice"
        await call(a, "release_files", paths=["src/api/"])
        assert (await call(b, "reserve_files", paths=["src/api/users.py"]))["ok"] is True


@pytest.mark.slow
async def test_many_stdio_servers_on_one_file_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    async with AsyncExitStack() as stack:
        sink = await stack.enter_async_context(_stdio(url, "sink"))
        senders = [await stack.enter_async_context(_stdio(url, f"s{i}")) for i in range(2)]

        async def burst(client: Client, i: int) -> None:
            for n in range(6):
                await call(client, "send_message", to="sink", body=f"{i}:{n}")
                await call(client, "reserve_files", paths=[f"shared/{n}.txt"], ttl_seconds=60)

        await asyncio.gather(*(burst(c, i) for i, c in enumerate(senders)))
        got: list[str] = []
        while len(got) < 12:
            batch = (await call(sink, "receive", max_messages=50, wait_seconds=5))["messages"]
            assert batch, got
            got += [m["body"] for m in batch]
            await call(sink, "acknowledge", message_ids=[m["id"] for m in batch])
        assert sorted(got) == sorted(f"{i}:{n}" for i in range(2) for n in range(6))
        held = (await call(sink, "list_reservations"))["reservations"]
        # exclusive by default: each file is held by exactly one of the senders
        assert sorted(r["pattern"] for r in held) == [f"shared/{n}.txt" for n in range(6)]

    async def check() -> agentcomm.CheckReport:
        async with agentcomm.connect(url) as hub:
            return await hub.check()

    assert (await asyncio.to_thread(asyncio.run, check())).ok


# --- streamable HTTP, standalone (agentcomm serve mounts the same app at /mcp) -----------------


async def test_streamable_http_acts_as_the_agent_of_the_bearer_token() -> None:
    import socket

    import httpx2
    import uvicorn
    from mcp.client.streamable_http import streamable_http_client
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from agentcomm._mcp import http_app

    tokens = {"token-a": "alice", "token-b": "bob"}
    async with agentcomm.connect("memory://") as hub:
        mcp_app, lifespan = http_app(hub, tokens.get)

        @asynccontextmanager
        async def host_lifespan(_: Starlette) -> AsyncIterator[None]:
            async with lifespan():
                yield

        host = Starlette(routes=[Mount("/mcp", mcp_app)], lifespan=host_lifespan)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(host, host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.ensure_future(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 (uvicorn offers only a flag)
                await asyncio.sleep(0.02)

            async with AsyncExitStack() as stack:

                async def client(token: str) -> Client:
                    http = await stack.enter_async_context(
                        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
                    )
                    url = f"http://127.0.0.1:{port}/mcp/"
                    return await stack.enter_async_context(
                        Client(streamable_http_client(url, http_client=http))
                    )

                a, b = await client("token-a"), await client("token-b")
                assert (await call(b, "whoami"))["agent"] == "bob"
                await call(a, "send_message", to="bob", body="over http")
                (got,) = (await call(b, "check_inbox"))["messages"]
                assert got["body"] == "over http" and got["from"] == "alice"
                assert (await call(a, "check_inbox"))["messages"] == []  # alice's own inbox
                assert "not valid" in await error(await client("stolen"), "whoami")
        finally:
            server.should_exit = True
            await serving
