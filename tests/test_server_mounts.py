"""What `agentcomm serve` mounts: the MCP tools at /mcp (the agent taken from the bearer
token) and the dashboard at /dashboard (admin tokens only), on a live server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agentcomm._server.authz import Principal
from agentcomm._server.mounts import COOKIE, dashboard_mount, mcp_mount
from live_server import LiveServer

ALICE = Principal(agents=["alice"])
BOB = Principal(agents=["bob"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    mounts = {"/mcp": mcp_mount(), "/dashboard": dashboard_mount()}
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", mounts=mounts) as s:
        yield s


async def call(client: Client, tool: str, **args: Any) -> Any:
    result = await client.call_tool(tool, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


@asynccontextmanager
async def mcp_clients(server: LiveServer, *tokens: str) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        out = []
        for token in tokens:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            )
            transport = streamable_http_client(f"{server.url}/mcp", http_client=http)
            out.append(await stack.enter_async_context(Client(transport)))
        yield out


# --- /mcp ---------------------------------------------------------------------------------------


async def test_mcp_tools_act_as_the_agent_of_the_token(server: LiveServer) -> None:
    alice_token, bob_token = server.token_for(ALICE), server.token_for(BOB)
    async with mcp_clients(server, alice_token, bob_token) as (alice, bob):
        assert (await call(alice, "whoami"))["agent"] == "alice"
        assert (await call(bob, "whoami"))["agent"] == "bob"
        await call(alice, "send_message", to="bob", body="over serve")
        (got,) = (await call(bob, "check_inbox"))["messages"]
        assert got["body"] == "over serve" and got["from"] == "alice"
        # bob's token sees only bob's inbox; no tool takes an agent to act as
        assert (await call(alice, "check_inbox"))["messages"] == []
        tools = (await alice.list_tools()).tools
        for tool in tools:
            assert not {"agent", "as_agent", "identity"} & set(tool.input_schema["properties"])
        (taken,) = (await call(bob, "receive"))["messages"]
        await call(bob, "acknowledge", message_ids=[taken["id"]])
        assert (await call(bob, "check_inbox"))["messages"] == []


def test_mcp_refuses_missing_unknown_and_ambiguous_tokens(server: LiveServer) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}}  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream"}

    def post(token: str | None) -> httpx.Response:
        auth = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.post(f"{server.url}/mcp", json=init, headers=headers | auth, timeout=30)

    r = post(None)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert post("act_000000000000_not-a-real-secret-value").status_code == 401
    r = post(server.token)  # the admin token acts as "*": no one agent
    assert r.status_code == 403 and "token create --agent" in r.json()["error"]["message"]
    assert post(server.token_for(Principal(agents=["a", "b"]))).status_code == 403
    assert post(server.token_for(ALICE)).status_code == 200


async def test_a_revoked_token_stops_at_its_next_call(server: LiveServer) -> None:
    token = server.token_for(ALICE)
    async with mcp_clients(server, token) as (alice,):
        assert (await call(alice, "whoami"))["agent"] == "alice"
        server.run(server.state.tokens.revoke(token.split("_")[1]))
        with pytest.raises(MCPError):  # the transport's answer to the 401
            await alice.call_tool("whoami", {})


# --- /dashboard ---------------------------------------------------------------------------------


def test_dashboard_needs_an_admin_token(server: LiveServer) -> None:
    base = f"{server.url}/dashboard"
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.get(f"{base}/static/dashboard.css").status_code == 401
    assert httpx.post(f"{base}/api/redrive", json={"agent": "a"}).status_code == 401
    alice = {"Authorization": f"Bearer {server.token_for(ALICE)}"}
    assert httpx.get(f"{base}/", headers=alice).status_code == 403
    assert httpx.get(f"{base}/flow", headers=alice).status_code == 403
    assert httpx.post(f"{base}/api/redrive", json={"agent": "a"}, headers=alice).status_code == 403
    admin = {"Authorization": f"Bearer {server.token}"}
    assert httpx.post(f"{server.url}/v1/agents/alice", headers=admin).status_code == 200
    for page in ("", "/", "/flow", "/dead-letters", "/topics", "/memory", "/refs", "/pools"):
        r = httpx.get(base + page, headers=admin)
        assert r.status_code == 200 and "<html" in r.text.lower(), page
        assert 'href="/dashboard/static/dashboard.css"' in r.text
    r = httpx.post(f"{base}/api/redrive", json={"agent": "alice"}, headers=admin)
    assert r.status_code == 200 and r.json()["requeued"] == 0, r.text


def test_a_browser_logs_in_with_a_token_in_the_address_once(server: LiveServer) -> None:
    base = f"{server.url}/dashboard"
    with httpx.Client(base_url=base, timeout=30) as browser:
        assert browser.get(f"/flow?token={server.token_for(ALICE)}").status_code == 403
        r = browser.get(f"/flow?token={server.token}&x=1")
        assert r.status_code == 303 and r.headers["location"].endswith("/dashboard/flow?x=1")
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "path=/dashboard" in cookie
        assert browser.cookies.get(COOKIE) == server.token
        assert browser.get("/flow").status_code == 200
        with browser.stream("GET", "/events?page=agents") as events:
            assert events.status_code == 200
            assert next(events.iter_lines()).startswith("retry:")
        server.run(server.state.tokens.revoke(server.token.split("_")[1]))
        assert browser.get("/flow").status_code == 401
