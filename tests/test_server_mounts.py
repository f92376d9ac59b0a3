"""What `agentcomm serve` mounts: the MCP tools at /mcp (the agent taken from the bearer
token, every other grant checked per tool) and the dashboard at /dashboard (admin tokens
only), on a live server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agentcomm._mcp import DEFAULT_TOOLS, EXTRA_TOOLS, McpOptions
from agentcomm._server.authz import Principal
from agentcomm._server.mounts import COOKIE, dashboard_mount, mcp_mount
from live_server import LiveServer
from store_snapshot import NAMESPACE, populate, snapshot

ALICE = Principal(agents=["alice"])
BOB = Principal(agents=["bob"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    mounts = {"/mcp": mcp_mount(McpOptions(tools="all")), "/dashboard": dashboard_mount()}
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", mounts=mounts) as s:
        yield s


async def call(client: Client, tool: str, **args: Any) -> Any:
    result = await client.call_tool(tool, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


async def error(client: Client, tool: str, **args: Any) -> str:
    """The text of the tool error the call must give."""
    result = await client.call_tool(tool, args)
    text = str(result.content[0].text)  # type: ignore[union-attr]
    assert result.is_error, text
    return text


async def refused(client: Client, tool: str, **args: Any) -> str:
    """The text of the PermissionDenied tool error the call must give."""
    text = await error(client, tool, **args)
    assert "PermissionDenied: " in text, text
    return text


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


def stored(server: LiveServer) -> Any:
    """Everything the store holds (compared around each refused call)."""

    async def take() -> Any:
        hub = server.state.hub
        return await snapshot(hub), await hub.leases.list(), await hub.consumers()

    return server.run(take())


A = ["a"]
#: tool, its arguments, a grant that is not enough, a grant that allows it, and a check of
#: the allowed call's result.
GRANTS: list[tuple[str, dict[str, Any], Principal, Principal, Callable[[Any], bool]]] = [
    ("memory_get", {"key": "k", "namespace": NAMESPACE},
     Principal(agents=A, kv={"other": "rw"}), Principal(agents=A, kv={NAMESPACE: "r"}),
     lambda r: r["value"] == {"v": 1} and r["version"] == 1),
    ("memory_put", {"key": "k", "value": 2, "namespace": NAMESPACE},
     Principal(agents=A, kv={NAMESPACE: "r"}), Principal(agents=A, kv={"n*": "rw"}),
     lambda r: r["version"] == 2),
    ("memory_delete", {"key": "k", "namespace": NAMESPACE},
     Principal(agents=A, kv={NAMESPACE: "r"}), Principal(agents=A, kv={NAMESPACE: "rw"}),
     lambda r: r["deleted"] is True),
    ("publish", {"topic": "t.y", "body": "hi"},
     Principal(agents=A, publish=["u.>"]), Principal(agents=A, publish=["t.>"]),
     lambda r: r["sequence"] > 0),
    ("read_topic", {"topic": "t.>"},
     Principal(agents=A, subscribe=["t.x"]), Principal(agents=A, subscribe=["t.>"]),
     lambda r: [m["topic"] for m in r["messages"]] == ["t.x"]),
    ("reserve_files", {"paths": ["src/a.py", "docs/**"]},
     Principal(agents=A, leases=["src/*"]), Principal(agents=A, leases=["src/*", "docs/*"]),
     lambda r: r["ok"] and {g["pattern"] for g in r["granted"]} == {"src/a.py", "docs/**"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "args", "weaker", "grant", "done"), GRANTS, ids=[g[0] for g in GRANTS]
)
async def test_mcp_tools_need_the_grant_of_their_operation(
    server: LiveServer,
    tool: str,
    args: dict[str, Any],
    weaker: Principal,
    grant: Principal,
    done: Callable[[Any], bool],
) -> None:
    server.run(populate(server.state.hub))
    only_a = server.token_for(Principal(agents=A))
    tokens = only_a, server.token_for(weaker), server.token_for(grant)
    async with mcp_clients(server, *tokens) as (bare, weak, granted):
        before = stored(server)
        for client in (bare, weak):
            assert "token create --" in await refused(client, tool, **args)
            assert stored(server) == before
        assert done(await call(granted, tool, **args))
        if tool not in ("memory_get", "read_topic"):  # the allowed write did write
            assert stored(server) != before


#: The tools that touch only the token's one agent (its inbox, messages, dead letters and
#: reservations; listings filtered): an `--agent` token needs no other grant for them.
OWN_AGENT = {
    "whoami", "list_agents", "send_message", "check_inbox", "receive", "acknowledge",
    "release", "reply", "ask", "wait_for_mail", "release_files", "renew_reservations",
    "list_reservations", "dead_letters",
}  # fmt: skip


def test_every_tool_is_either_the_agents_own_or_needs_a_grant() -> None:
    granted = {g[0] for g in GRANTS}
    assert not granted & OWN_AGENT
    assert granted | OWN_AGENT == set(DEFAULT_TOOLS) | set(EXTRA_TOOLS)


async def test_an_agent_token_uses_its_own_agents_tools(server: LiveServer) -> None:
    hub = server.state.hub
    env = server.run(populate(hub))
    server.run(env.b.send("a", "question", metadata={"thread": "q"}))
    server.run(hub.leases.acquire("a", ["src/held.py"], ttl=60))
    async with mcp_clients(server, server.token_for(Principal(agents=A))) as (a,):
        me = await call(a, "whoami")
        assert me["inbox"]["dead"] == 1 and me["reservations"][0]["pattern"] == "src/held.py"
        assert [d["reason"] for d in (await call(a, "dead_letters"))["dead"]] == ["test"]
        assert (await call(a, "wait_for_mail", timeout_seconds=0))["mail"] is True
        (msg,) = (await call(a, "receive"))["messages"]
        await call(a, "release", message_ids=[msg["id"]])
        (msg,) = (await call(a, "receive"))["messages"]
        assert (await call(a, "reply", message_id=msg["id"], body="answer"))["thread"] == "q"
        assert "b" in (await call(a, "send_message", to="b", body="hello"))["ids"]
        (renewed,) = (await call(a, "renew_reservations", ttl_seconds=120))["renewed"]
        assert renewed["expires_in_s"] > 60
        assert (await call(a, "release_files"))["released"] == ["src/held.py"]


async def test_mcp_memory_tools_default_to_a_namespace_that_needs_a_grant_too(
    server: LiveServer,
) -> None:
    server.run(populate(server.state.hub))
    tokens = (
        server.token_for(Principal(agents=A)),
        server.token_for(Principal(agents=A, kv={"shared": "rw"})),
    )
    async with mcp_clients(server, *tokens) as (bare, granted):
        before = stored(server)
        assert "'shared'" in await refused(bare, "memory_put", key="x", value=1)
        assert stored(server) == before
        assert (await call(granted, "memory_put", key="x", value=1))["version"] == 1
        assert (await call(granted, "memory_get", key="x"))["value"] == 1


async def test_mcp_listings_show_only_what_the_token_may_see(server: LiveServer) -> None:
    hub = server.state.hub
    server.run(populate(hub))
    server.run(hub.leases.acquire("b", ["docs/guide.md"], ttl=600, reason="b's edit"))
    tokens = (
        server.token_for(Principal(agents=A, leases=["src/*"])),
        server.token_for(Principal(agents=A, leases=["docs/*"])),
        server.token_for(Principal(agents=A, admin=True)),
    )
    async with mcp_clients(server, *tokens) as (a, docs, admin):
        # agents: its own for a token, every one for an admin (as GET /v1/agents)
        assert [r["name"] for r in (await call(a, "list_agents"))["agents"]] == ["a"]
        assert {r["name"] for r in (await call(admin, "list_agents"))["agents"]} == {"a", "b"}
        # a broadcast reaches the agents the token may see, and no one else
        before = stored(server)
        assert "No recipients" in await error(a, "send_message", to="*", body="x")
        assert stored(server) == before
        assert set((await call(admin, "send_message", to="*", body="all"))["ids"]) == {"b"}
        # reservations: its agent's own and those its lease grants cover (as GET /v1/leases)
        await call(a, "reserve_files", paths=["src/x.py"])
        mine = (await call(a, "list_reservations"))["reservations"]
        assert [(r["holder"], r["pattern"]) for r in mine] == [("a", "src/x.py")]
        seen = {(r["holder"], r["pattern"]) for r in (await call(docs, "list_reservations"))[
            "reservations"]}  # fmt: skip
        assert seen == {("a", "src/x.py"), ("b", "docs/guide.md")}
        # a refused reservation still names the other holder, so the agent knows whom to ask
        conflict = await call(docs, "reserve_files", paths=["docs/guide.md"])
        assert not conflict["ok"] and conflict["conflicts"][0]["holder"] == "b"


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
