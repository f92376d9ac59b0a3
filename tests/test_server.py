"""The server: tokens and the authorization matrix, limits, errors, graceful stop, the
Python client's permissions, and schemathesis over /openapi.json (bounded)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import agentcomm
from agentcomm._records import Claimed
from agentcomm._server.authz import Principal, pattern_covers
from agentcomm._server.limits import ServerSettings
from agentcomm._subjects import parse_pattern
from live_server import LiveServer

ALICE = Principal(agents=["alice", "alice@*"], publish=["a.>"], subscribe=["a.>"],
                  kv={"proj": "rw"}, pools=["p-*"], leases=["src/*"])  # fmt: skip
BOB = Principal(agents=["bob"], publish=["b.>"], subscribe=["b.>"], kv={"other": "rw"},
                leases=["*"])  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}") as s:
        yield s


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Api:
    """A JSON client with one token (closed after the test)."""

    def __init__(self, server: LiveServer, token: str) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        _OPEN.append(self.http)

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, json=body, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = self(method, path, body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def apis(server: LiveServer) -> tuple[Api, Api, Api]:
    admin = Api(server, server.token)
    admin.ok("POST", "/v1/agents/alice")
    admin.ok("POST", "/v1/agents/bob")
    return admin, Api(server, server.token_for(ALICE)), Api(server, server.token_for(BOB))


def _state(admin: Api) -> Any:
    """What the store holds, as an admin sees it (compared around each denied call)."""
    queues = admin.ok("GET", "/v1/admin/queues")["queues"]
    keys = admin.ok("GET", "/v1/kv/proj")["keys"]
    values = [admin.ok("GET", f"/v1/kv/proj/{k}")["version"] for k in keys]
    topics = admin.ok("GET", "/v1/admin/stats")
    leases = admin.ok("GET", "/v1/leases")["leases"]
    pool = admin("GET", "/v1/pools/p-1")  # members, wakes, counts and the log's cursor
    return queues, keys, values, topics, leases, pool.status_code, pool.json()


def _pool_setup(admin: Api) -> None:
    """Pool p-1 with two runs of alice, a receipt under key k0 and a registered wake w1."""
    for run in ("alice@r1", "alice@r2"):
        admin.ok("POST", "/v1/pools/p-1/join", {"run": run, "agent": "alice", "topics": ["t"]})
    admin.ok("POST", "/v1/pools/p-1/send", {"sender": "alice@r1", "idempotency_key": "k0",
                                            "to": {"kind": "run", "run": "alice@r2"}})  # fmt: skip
    admin.ok(
        "POST",
        "/v1/pools/p-1/wait-for",
        {"run": "alice@r1", "filter": {"kinds": ["event"]}, "idempotency_key": "w1"},
    )


def _receipt(alice: Api) -> str:
    got = alice.ok("POST", "/v1/agents/alice/receive", {"wait": 5})["messages"]
    assert got
    return str(got[0]["receipt"])


# (name, method, path, body or a function of a fresh alice receipt)
MATRIX: list[tuple[str, str, str, Any]] = [
    ("send", "POST", "/v1/agents/alice/send", {"to": "bob", "data": 1}),
    ("send-batch", "POST", "/v1/agents/alice/send-batch",
     {"messages": [{"to": "bob", "data": 1}]}),
    ("receive", "POST", "/v1/agents/alice/receive", {"max_messages": 5}),
    ("ack", "POST", "/v1/agents/alice/ack", lambda r: {"receipt": r}),
    ("nack", "POST", "/v1/agents/alice/nack", lambda r: {"receipt": r, "delay": 0}),
    ("extend", "POST", "/v1/agents/alice/extend", lambda r: {"receipt": r, "lease": 60}),
    ("dead-letter", "POST", "/v1/agents/alice/dead-letter",
     lambda r: {"receipt": r, "reason": "x"}),
    ("schedule", "POST", "/v1/agents/alice/schedules", {"to": "bob", "data": 1, "every": 60}),
    ("publish", "POST", "/v1/agents/alice/publish", {"topic": "a.x", "data": 1}),
    ("kv-put", "PUT", "/v1/kv/proj/k", {"value": 2}),
    ("kv-get", "GET", "/v1/kv/proj/k", None),
    ("kv-delete", "DELETE", "/v1/kv/proj/k", None),
    ("kv-keys", "GET", "/v1/kv/proj", None),
    ("private-put", "PUT", "/v1/agents/alice/memory/k", {"value": 1}),
    ("private-get", "GET", "/v1/agents/alice/memory/k", None),
    ("fetch", "POST", "/v1/agents/alice/consumers/c1/fetch", {"pattern": "a.>"}),
    ("stats", "GET", "/v1/admin/stats", None),
    ("queues", "GET", "/v1/admin/queues", None),
    ("dead-letters", "GET", "/v1/admin/agents/alice/dead-letters", None),
    ("redrive", "POST", "/v1/admin/agents/alice/dead-letters/redrive", {}),
    ("token-create", "POST", "/v1/admin/tokens", {"principal": {"agents": ["x"]}}),
    ("purge", "POST", "/v1/admin/agents/alice/purge", {"dead_letters": True}),
    ("lease-acquire", "POST", "/v1/agents/alice/leases", {"patterns": ["src/a.py"]}),
    ("lease-renew", "POST", "/v1/agents/alice/leases/renew", {"ttl": 99}),
    ("lease-release", "POST", "/v1/agents/alice/leases/release", {}),
    ("pool-open", "POST", "/v1/pools/p-1", {}),
    ("pool-snapshot", "GET", "/v1/pools/p-1", None),
    ("pool-join", "POST", "/v1/pools/p-1/join", {"run": "alice@r3", "agent": "alice"}),
    ("pool-leave", "POST", "/v1/pools/p-1/leave", {"run": "alice@r2"}),
    ("pool-send", "POST", "/v1/pools/p-1/send",
     {"sender": "alice@r1", "to": {"kind": "topic", "topic": "t"}, "data": 1}),
    ("pool-receipt", "GET", "/v1/pools/p-1/receipt?key=k0", None),
    ("pool-emit", "POST", "/v1/pools/p-1/emit", {"run": "alice@r1", "type": "done"}),
    ("pool-wait-for", "POST", "/v1/pools/p-1/wait-for",
     {"run": "alice@r2", "filter": {"types": ["done"]}, "timeout": 60}),
    ("pool-wake", "GET", "/v1/pools/p-1/wake?key=w1", None),
    ("pool-wake-cancel", "POST", "/v1/pools/p-1/wake/cancel", {"key": "w1"}),
    ("pool-records", "GET", "/v1/pools/p-1/records?after=1&limit=10", None),
]  # fmt: skip
_ADMIN_ONLY = {"stats", "queues", "dead-letters", "redrive", "token-create", "purge"}


@pytest.mark.parametrize(("name", "method", "path", "body"), MATRIX, ids=[m[0] for m in MATRIX])
def test_authorization_matrix(
    apis: tuple[Api, Api, Api], name: str, method: str, path: str, body: Any
) -> None:
    admin, alice, bob = apis
    admin.ok("POST", "/v1/agents/bob/send", {"to": "alice", "data": "hi"})
    admin.ok("PUT", "/v1/kv/proj/k", {"value": 1})
    admin.ok("PUT", "/v1/agents/alice/memory/k", {"value": 1})
    admin.ok("POST", "/v1/agents/alice/leases", {"patterns": ["src/held.py"], "ttl": 60})
    if name.startswith("pool-"):
        _pool_setup(admin)
    receipt = _receipt(alice) if callable(body) else ""
    payload = body(receipt) if callable(body) else body
    # another agent's token: 403 with a typed body, and the store unchanged
    before = _state(admin)
    denied = bob(method, path, payload)
    assert denied.status_code == 403, denied.text
    assert denied.json()["error"]["type"] == "PermissionDenied"
    assert "Traceback" not in denied.text
    assert _state(admin) == before
    # the owner succeeds (an admin for the admin-only rows)
    owner = admin if name in _ADMIN_ONLY else alice
    done = owner(method, path, payload)
    assert done.status_code == 200, done.text
    if name in _POOL_ACTING:  # the owner's call changed the pool: the check above can fail
        assert _state(admin) != before


#: The pool routes that act as a run: the pool's glob alone does not allow them.
_POOL_ACTING = {"pool-join", "pool-leave", "pool-send", "pool-emit", "pool-wait-for",
                "pool-wake-cancel"}  # fmt: skip
_POOL_ROWS = [m for m in MATRIX if m[0].startswith("pool-")]


@pytest.mark.parametrize(("name", "method", "path", "body"), _POOL_ROWS,
                         ids=[m[0] for m in _POOL_ROWS])  # fmt: skip
def test_pool_routes_need_the_run_as_well_as_the_pool(
    server: LiveServer, apis: tuple[Api, Api, Api], name: str, method: str, path: str,
    body: Any,
) -> None:  # fmt: skip
    """A token holding the pool's glob but acting as other agents may read the pool and
    attach to it, but neither join, leave, send, emit, wait nor cancel as alice's runs."""
    admin = apis[0]
    _pool_setup(admin)
    other = Api(server, server.token_for(Principal(agents=["bob", "bob@*"], pools=["p-*"])))
    before = _state(admin)
    r = other(method, path, body)
    if name in _POOL_ACTING:
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "PermissionDenied"
        assert "alice" in r.json()["error"]["message"]
    else:
        assert r.status_code == 200, r.text
    assert _state(admin) == before


def test_admin_purge_empties_a_mailbox(apis: tuple[Api, Api, Api]) -> None:
    admin, alice, _ = apis
    for n in range(3):
        admin.ok("POST", "/v1/agents/bob/send", {"to": "alice", "data": n})
    alice.ok("POST", "/v1/agents/alice/receive", {"max_messages": 1})  # one in flight
    denied = alice("POST", "/v1/admin/agents/alice/purge", {})
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "PermissionDenied"
    assert admin.ok("POST", "/v1/admin/agents/alice/purge", {}) == {"agent": "alice",
                                                                     "removed": 3}  # fmt: skip
    box = next(q for q in admin.ok("GET", "/v1/admin/queues")["queues"] if q["agent"] == "alice")
    assert box["ready"] == box["in_flight"] == 0
    assert admin.ok("POST", "/v1/admin/agents/alice/purge", {})["removed"] == 0
    unknown = admin("POST", "/v1/admin/agents/nobody/purge", {})
    assert unknown.status_code == 404


def test_leases_need_the_owner_and_a_grant(apis: tuple[Api, Api, Api]) -> None:
    admin, alice, bob = apis
    got = alice.ok("POST", "/v1/agents/alice/leases",
                   {"patterns": ["src/api.py", "src/**"], "reason": "refactor"})  # fmt: skip
    assert [g["pattern"] for g in got["granted"]] == ["src/api.py", "src/**"]
    outside = alice("POST", "/v1/agents/alice/leases", {"patterns": ["src/x.py", "docs/a.md"]})
    assert outside.status_code == 403 and "docs/a.md" in outside.json()["error"]["message"]
    # bob may lease anything, as bob: the conflict names alice's lease
    clash = bob.ok("POST", "/v1/agents/bob/leases", {"patterns": ["src/api.py"]})
    assert clash["granted"] == [] and clash["conflicts"][0]["lease"]["owner"] == "alice"
    bob.ok("POST", "/v1/agents/bob/leases", {"patterns": ["docs/**"], "exclusive": False})
    # alice sees her own and those her grant covers; an admin sees all
    seen = alice.ok("GET", "/v1/leases")["leases"]
    assert {x["pattern"] for x in seen} == {"src/api.py", "src/**"}
    assert len(admin.ok("GET", "/v1/leases")["leases"]) == 3
    mine = alice.ok("GET", "/v1/leases?overlapping=src/api.py")["leases"]
    assert {x["pattern"] for x in mine} == {"src/api.py", "src/**"}
    renewed = alice.ok("POST", "/v1/agents/alice/leases/renew", {"patterns": ["src/**"],
                                                                 "ttl": 10})  # fmt: skip
    assert [x["pattern"] for x in renewed["leases"]] == ["src/**"]
    released = alice.ok("POST", "/v1/agents/alice/leases/release", {})
    assert {x["pattern"] for x in released["leases"]} == {"src/api.py", "src/**"}
    assert [x["owner"] for x in admin.ok("GET", "/v1/leases")["leases"]] == ["bob"]


def test_a_receipt_works_only_under_its_agent(apis: tuple[Api, Api, Api]) -> None:
    admin, alice, bob = apis
    admin.ok("POST", "/v1/agents/bob/send", {"to": "alice", "data": "hi"})
    receipt = _receipt(alice)
    r = bob("POST", "/v1/agents/bob/ack", {"receipt": receipt})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ValidationError"
    forged = receipt[:-2] + ("00" if not receipt.endswith("00") else "11")
    assert alice("POST", "/v1/agents/alice/ack", {"receipt": forged}).status_code == 422
    alice.ok("POST", "/v1/agents/alice/ack", {"receipt": receipt})
    again = alice("POST", "/v1/agents/alice/ack", {"receipt": receipt})
    assert again.status_code == 409 and again.json()["error"]["type"] == "LeaseLost"


def test_send_receive_ack_request_reply(apis: tuple[Api, Api, Api]) -> None:
    _admin, alice, bob = apis
    assert bob.ok("POST", "/v1/agents/bob/send", {"to": "alice", "data": {"n": 1}})["id"]
    got = alice.ok("POST", "/v1/agents/alice/receive", {"wait": 5})["messages"]
    assert [m["data"] for m in got] == [{"n": 1}]
    alice.ok("POST", "/v1/agents/alice/ack", {"receipt": got[0]["receipt"]})

    import threading

    def responder() -> None:
        m = alice.ok("POST", "/v1/agents/alice/receive", {"wait": 10})["messages"][0]
        alice.ok("POST", "/v1/agents/alice/reply", {"receipt": m["receipt"], "data": m["data"] * 2})

    t = threading.Thread(target=responder)
    t.start()
    reply = bob.ok("POST", "/v1/agents/bob/request", {"to": "alice", "data": 21, "timeout": 10})
    t.join()
    assert reply["data"] == 42 and reply["sender"] == "alice"


def test_a_token_revoked_through_the_store_stops_at_its_next_call(server: LiveServer) -> None:
    """The server trusts a verified token briefly, and forgets it when the tokens' namespace
    changes (here through another TokenStore on the store, as `agentcomm token revoke`)."""
    from agentcomm._server.tokens import TokenStore

    token = server.token_for(BOB)
    api = Api(server, token)
    assert api("GET", "/v1/whoami").status_code == 200  # verified (and kept)
    elsewhere = TokenStore(server.state.hub._ctx.backend)
    server.run(elsewhere.revoke(token.split("_")[1]))
    assert api("GET", "/v1/whoami").status_code == 401


def test_unknown_and_revoked_tokens_answer_401_at_once(apis: tuple[Api, Api, Api],
                                                        server: LiveServer) -> None:  # fmt: skip
    admin, alice, _ = apis
    assert Api(server, "act_0000_nope-nope-nope-nope")("GET", "/v1/whoami").status_code == 401
    assert admin.http.get("/v1/whoami", headers={"Authorization": ""}).status_code == 401
    me = alice.ok("GET", "/v1/whoami")
    admin.ok("DELETE", f"/v1/admin/tokens/{me['id']}")
    r = alice("GET", "/v1/whoami")
    assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationFailed"
    assert alice("POST", "/v1/agents/alice/send", {"to": "bob", "data": 1}).status_code == 401


def test_limits_413_422_429(tmp_path: Path) -> None:
    settings = ServerSettings(max_body=1000, rate=5, burst=5)
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", settings) as server:
        api = Api(server, server.token)
        big = api("POST", "/v1/agents/a/send", {"to": "a", "data": "x" * 2000})
        assert big.status_code == 413 and big.json()["error"]["field"] == "body"
        bad = api("POST", "/v1/agents/a/receive", {"max_messages": "many"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "max_messages"
        codes = [api("GET", "/v1/whoami").status_code for _ in range(20)]
        assert 429 in codes
        limited = api("GET", "/v1/whoami")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_store_calls_check_token_body_size_and_rate(tmp_path: Path) -> None:
    """`POST /v1/store/...` (taken before Starlette's router) keeps every check of a route."""
    settings = ServerSettings(max_body=1000, rate=5, burst=5)
    msgpack = {"Content-Type": "application/msgpack"}
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", settings) as server:
        anon = httpx.Client(base_url=server.url, timeout=30)
        _OPEN.append(anon)
        body = msgspec.msgpack.encode({"agent": "a", "max_messages": 1, "lease": 30.0})
        r = anon.post("/v1/store/mailboxes/claim", content=body, headers=msgpack)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationFailed"
        alice = Api(server, server.token_for(ALICE))
        r = alice.http.post("/v1/store/mailboxes/claim", content=body, headers=msgpack)
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDenied"
        api = Api(server, server.token)
        big = msgspec.msgpack.encode({"agent": "x" * 2000})
        declared = api.http.post("/v1/store/mailboxes/claim", content=big, headers=msgpack)
        chunked = api.http.post("/v1/store/mailboxes/claim", content=iter([big[:900], big[900:]]))
        for r in (declared, chunked):
            assert r.status_code == 413 and r.json()["error"]["field"] == "body"
        r = api.http.post("/v1/store/mailboxes/no_such_call", content=body, headers=msgpack)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
        assert api.http.get("/v1/store/mailboxes/claim").status_code == 405
        codes = [api.http.post("/v1/store/mailboxes/claim", content=body).status_code
                 for _ in range(20)]  # fmt: skip
        assert 429 in codes
        limited = api.http.post("/v1/store/mailboxes/claim", content=body)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_a_stopping_server_answers_long_polls_at_once(server: LiveServer) -> None:
    api = Api(server, server.token)
    api.ok("POST", "/v1/agents/a")
    result: list[int] = []

    import threading

    t = threading.Thread(target=lambda: result.append(
        api("POST", "/v1/agents/a/receive", {"wait": 50}).status_code))  # fmt: skip
    t.start()
    import time

    time.sleep(0.5)
    assert server.state.loop is not None
    server.state.loop.call_soon_threadsafe(server.state.stop)
    t.join(10)
    assert result == [200]


async def test_a_waiting_claim_answers_when_its_message_comes(server: LiveServer) -> None:
    async with agentcomm.connect(server.url, token=server.token) as hub:
        a = await hub.agent("a")
        backend = hub._ctx.backend
        claim = asyncio.ensure_future(
            backend.claim_waiting("a", max_messages=1, lease=30, now=0, wait=30)
        )
        await asyncio.sleep(0.3)
        assert not claim.done()  # the server waits: an empty claim would have answered
        mid = await a.send("a", 7)
        claimed = await asyncio.wait_for(claim, 30)
        assert [m.id for m in claimed.messages] == [mid]  # woken, not ended by its wait


async def test_a_stopping_server_answers_waiting_store_calls_at_once(server: LiveServer) -> None:
    async with agentcomm.connect(server.url, token=server.token) as hub:
        await hub.agent("a")
        backend = hub._ctx.backend
        waits = [
            backend.claim_waiting("a", max_messages=1, lease=30, now=0, wait=30),
            backend.take_reply_waiting("no-such-request", wait=30),
        ]
        calls = [asyncio.ensure_future(w) for w in waits]
        await asyncio.sleep(0.3)
        assert server.state.loop is not None
        server.state.loop.call_soon_threadsafe(server.state.stop)
        # answered before their wait (5 s at most on the client) could end them
        claimed, reply = await asyncio.wait_for(asyncio.gather(*calls), 4)
        assert isinstance(claimed, Claimed) and claimed.messages == [] and reply is None


class _Recorder(asyncio.Transport):
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


async def test_a_responses_writes_of_one_loop_turn_go_out_in_one_write() -> None:
    from agentcomm._server.run import _Coalescing

    inner = _Recorder()
    transport = _Coalescing(inner)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"body"))
    assert inner.writes == [] and transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    transport.close()  # flushes first
    assert inner.writes[-1] == b"next"


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_the_client_works_over_either_http_parser(tmp_path: Path, parser: str) -> None:
    from agentcomm._server.run import FastHttpProtocol, HttpProtocol

    if parser == "httptools" and FastHttpProtocol is None:
        pytest.skip("httptools is not installed")
    protocol = HttpProtocol if parser == "h11" else FastHttpProtocol
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", http=protocol) as server:
        async with agentcomm.connect(server.url, token=server.token) as hub:
            a, b = await hub.agent("a"), await hub.agent("b")
            for i in range(3):
                await a.send("b", {"i": i, "pad": "x" * 70_000 * i})  # up to 140 kB bodies
                msg = await b.receive(timeout=10)
                assert msg is not None and msg.data["i"] == i
                await msg.ack()


def test_a_bad_wait_is_refused(server: LiveServer) -> None:
    api = Api(server, server.token)
    body = msgspec.msgpack.encode({"agent": "a", "max_messages": 1, "lease": 30.0})
    for wait in ("soon", "-1", "inf"):
        r = api.http.post(f"/v1/store/mailboxes/claim?wait={wait}", content=body,
                          headers={"Content-Type": "application/msgpack"})  # fmt: skip
        assert r.status_code == 422 and "wait" in r.json()["error"]["message"]


def test_references_upload_and_download_checksummed(server: LiveServer) -> None:
    api = Api(server, server.token)
    blob = bytes(range(256)) * 1000
    ref = api.http.post("/v1/refs", content=blob)
    assert ref.status_code == 200, ref.text
    ref_id = ref.json()["id"]
    got = api.http.get(f"/v1/refs/{ref_id}")
    assert got.content == blob and got.headers["X-Checksum"] == ref_id
    bad = api.http.post("/v1/refs", content=b"x", headers={"X-Checksum": "sha256:00"})
    assert bad.json()["error"]["type"] == "IntegrityError"
    assert api.http.get("/v1/refs/sha256:" + "0" * 64).status_code == 404


_MIB = 1024 * 1024


def _stored(db: Path) -> tuple[int, int, int]:
    """Rows of blobs, uploads (staged or committed) and chunks in a SQLite store."""
    with sqlite3.connect(db) as conn:
        blobs, uploads, chunks = (conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                                  for t in ("refs", "ref_blobs", "ref_chunks"))  # fmt: skip
    return int(blobs), int(uploads), int(chunks)


def _body(data: bytes, piece: int = 50_000) -> Iterator[bytes]:
    """`data` as a chunked request body (no Content-Length)."""
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def test_references_stream_past_max_body_and_back(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    settings = ServerSettings(max_body=64 * 1024, max_blob=6 * _MIB)
    with LiveServer(f"sqlite:///{db}", settings) as server:
        api = Api(server, server.token)
        staged: list[int] = []
        refs = server.state.hub._ctx.backend.references
        assert refs is not None
        stage = refs.ref_stage

        async def counting(upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
            staged.append(len(chunk))
            return await stage(upload, n, chunk, now=now)

        refs.ref_stage = counting  # type: ignore[method-assign]
        noise = random.Random(7).randbytes(3 * _MIB + 12345)  # incompressible: stored as is
        text = b"".join(b"line %d of a log\n" % i for i in range(300_000))  # compressible
        for blob in (noise, text):
            staged.clear()
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            up = api.http.post("/v1/refs", content=_body(blob), headers={"X-Checksum": digest})
            assert up.status_code == 200, up.text
            out = up.json()
            assert out["id"] == digest and out["size"] == len(blob)
            # read and stored piece by piece, each a fraction of the blob
            assert len(staged) == -(-len(blob) // _MIB) and max(staged) <= _MIB + 64
            with api.http.stream("GET", f"/v1/refs/{digest}") as got:
                assert got.headers["X-Checksum"] == digest
                assert int(got.headers["Content-Length"]) == len(blob)
                assert b"".join(got.iter_bytes()) == blob
        assert out["compression"] == "zstd" and out["stored_size"] < len(text) // 4
        assert _stored(db)[0] == 2
        # a blob of one piece is stored whole, with a Content-Length body too
        small = api.http.post("/v1/refs?content_type=text/plain", content=b"x" * 100_000)
        assert small.status_code == 200 and small.json()["content_type"] == "text/plain"


def test_references_refused_uploads_store_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    settings = ServerSettings(max_body=64 * 1024, max_blob=3 * _MIB)
    with LiveServer(f"sqlite:///{db}", settings) as server:
        api = Api(server, server.token)
        before = _stored(db)
        blob = random.Random(8).randbytes(2 * _MIB + 1)
        wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
        bad = api.http.post("/v1/refs", content=_body(blob), headers={"X-Checksum": wrong})
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "IntegrityError"
        assert _stored(db) == before
        # over max_blob: streamed (found out while reading) and declared (refused at once)
        big = random.Random(9).randbytes(3 * _MIB + 1)
        over = api.http.post("/v1/refs", content=_body(big))
        assert over.status_code == 413 and over.json()["error"]["field"] == "body"
        assert _stored(db) == before
        declared = api.http.post("/v1/refs", content=big)
        assert declared.status_code == 413 and _stored(db) == before
        digest = "sha256:" + hashlib.sha256(big).hexdigest()
        assert api.http.get(f"/v1/refs/{digest}").status_code == 404
        assert api.http.get("/v1/refs/sha256:nothex").status_code == 422


def test_a_damaged_blob_downloads_short_of_its_length(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with LiveServer(f"sqlite:///{db}") as server:
        api = Api(server, server.token)
        blob = random.Random(10).randbytes(3 * _MIB)  # three stored chunks, uncompressed
        ref_id = api.http.post("/v1/refs", content=blob).json()["id"]
        with sqlite3.connect(db) as conn:  # flip one byte of the middle chunk
            key, data = conn.execute("SELECT key, data FROM ref_chunks ORDER BY key").fetchall()[1]
            conn.execute("UPDATE ref_chunks SET data = ? WHERE key = ?",
                         (bytes([data[0] ^ 1]) + data[1:], key))  # fmt: skip
        got = bytearray()
        with pytest.raises(httpx.HTTPError), api.http.stream("GET", f"/v1/refs/{ref_id}") as r:
            assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(blob)
            for piece in r.iter_bytes():
                got += piece
        assert len(got) < len(blob)


def test_pattern_covers() -> None:
    def covers(a: str, b: str) -> bool:
        return pattern_covers(parse_pattern(a), parse_pattern(b))

    assert covers(">", "a.b") and covers("a.>", "a.*.c") and covers("a.*", "a.b")
    assert not covers("a.*", "a.>") and not covers("a.b", "a.*") and not covers("a.>", "a")


async def test_python_client_is_held_to_its_token(server: LiveServer) -> None:
    token = server.token_for(BOB)
    async with agentcomm.connect(server.url, token=server.token) as admin:
        await admin.agent("alice")
    async with agentcomm.connect(server.url, token=token) as hub:
        bob = await hub.agent("bob")
        with pytest.raises(agentcomm.PermissionDenied):
            await hub.agent("alice")
        with pytest.raises(agentcomm.PermissionDenied):
            await (await _as(hub, "alice")).send("bob", 1)
        with pytest.raises(agentcomm.PermissionDenied):
            await (await _as(hub, "alice")).receive(timeout=0)
        with pytest.raises(agentcomm.PermissionDenied):
            await hub.memory("proj").put("k", 1)
        with pytest.raises(agentcomm.PermissionDenied):
            await bob.publish("a.x", 1)
        await bob.publish("b.x", 1)
        await hub.memory("other").put("k", 1)
        assert [a.name for a in await hub.agents()] == ["bob"]
        with pytest.raises(agentcomm.PermissionDenied):
            await hub.leases.acquire("alice", ["src/x.py"])
        with pytest.raises(agentcomm.PermissionDenied):
            await hub.leases.release("alice")
        assert (await hub.leases.acquire("bob", ["lib/x.py"])).ok
    async with agentcomm.connect(server.url, token=server.token_for(ALICE)) as hub:
        with pytest.raises(agentcomm.PermissionDenied):
            await hub.leases.acquire("alice", ["docs/x.md"])
        assert await hub.leases.list() == []  # bob's lib/x.py: not alice's, nor her grant's
        assert (await hub.leases.acquire("alice", ["src/y.py"])).ok
        assert [x.pattern for x in await hub.leases.list()] == ["src/y.py"]
    with pytest.raises(agentcomm.AuthenticationFailed):
        await agentcomm.connect(server.url, token="act_00_nope-nope-nope-nope-nope")


async def test_python_client_cancels_only_its_own_runs_wakes(server: LiveServer) -> None:
    """The store call that cancels a wake needs the wake's run, as the JSON route does."""
    mallory = Principal(agents=["bob"], pools=["p-*"])
    async with agentcomm.connect(server.url, token=server.token_for(ALICE)) as hub:
        pool = await hub.pool("p-one")
        await pool.join("alice@1", agent="alice")
        wake = await pool.wait_for("alice@1", agentcomm.EventFilter(kinds=["event"]))
    async with agentcomm.connect(server.url, token=server.token_for(mallory)) as hub:
        theirs = await (await hub.pool("p-one")).wake(wake.id)
        assert theirs is not None and theirs.status == "registered"
        with pytest.raises(agentcomm.PermissionDenied):
            await theirs.cancel()
    async with agentcomm.connect(server.url, token=server.token_for(ALICE)) as hub:
        mine = await (await hub.pool("p-one")).wake(wake.id)
        assert mine is not None and mine.status == "registered"  # unchanged by the refusal
        assert await mine.cancel() is True


async def _as(hub: agentcomm.Hub, name: str) -> agentcomm.Agent:
    from agentcomm._agent import Agent

    return Agent(hub._ctx, name)


def test_openapi_describes_every_route(server: LiveServer) -> None:
    with httpx.Client() as client:
        doc = client.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/agents/{agent}/receive" in doc["paths"]
    assert "ErrorBody" in doc["components"]["schemas"]
    for path in doc["paths"].values():
        for op in path.values():
            assert "200" in op["responses"]


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    """Every JSON operation, fuzzed from the OpenAPI document (8 cases each): no 5xx, and
    every response conforms to its schema. Long polls are bounded by the server's max_wait."""
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", ServerSettings(max_wait=0.2)) as server:
        _fuzz(server)


def _fuzz(server: LiveServer) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]  # fmt: skip

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {server.token}"}
    failures: list[str] = []

    def run(operation: Any) -> None:
        @settings(max_examples=8, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{operation.method} {operation.path}: {response.status_code}")
            case.validate_response(response, checks=checks)

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        if (
            operation.path.endswith(("/subscribe", "/messages", "/watch"))
            or "kv-watch" in operation.path
        ):
            continue  # streams never end by themselves; covered by their own tests
        run(operation)
    assert failures == []


def _sse_records(response: httpx.Response, until_seq: int) -> list[Any]:
    """The records of a pool watch stream, up to the one with seq `until_seq`."""
    import json

    got: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            got.append(json.loads(line[6:]))
            if got[-1]["seq"] >= until_seq:
                break
    return got


def test_pool_flow_over_json(apis: tuple[Api, Api, Api]) -> None:
    """Open, join two runs, send with a key (deduplicated), receipts, the recipient's
    mailbox, a wake fired by an event while long-polling, snapshot, records and the watch
    stream (the same records, and resumable from Last-Event-ID), leave."""
    import threading

    _admin, alice, _bob = apis
    p = "/v1/pools/p-flow"
    snap = alice.ok("POST", p, {"config": {"required_policy_refs": ["ok"]}})
    assert snap["config"]["required_policy_refs"] == ["ok"] and snap["members"] == []
    conflict = alice("POST", p, {"config": {}})
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "PoolConfigConflict"
    for run, topics in (("alice@lead", []), ("alice@critic", ["code"])):
        join = {"run": run, "agent": "alice", "topics": topics, "policy_refs": ["ok"]}
        member = alice.ok("POST", p + "/join", join)
        assert member["run"] == run and member["topics"] == topics
    cursor = alice.ok("GET", p)["cursor"]

    review = {"sender": "alice@lead", "to": {"kind": "topic", "topic": "code"},
              "type": "review", "data": {"diff": "+x"}, "policy_refs": ["ok"],
              "idempotency_key": "rev/17"}  # fmt: skip
    first = alice.ok("POST", p + "/send", review)
    assert first["status"] == "delivered" and first["delivered_to"] == ["alice@critic"]
    assert first["duplicate"] is False
    again = alice.ok("POST", p + "/send", review)
    assert again["duplicate"] is True and again["message_id"] == first["message_id"]
    unrefd = alice.ok("POST", p + "/send", {"sender": "alice@lead", "to": {"kind": "pool"}})
    assert unrefd["status"] == "failed" and unrefd["reason"] and unrefd["delivered_to"] == []
    by_key = alice.ok("GET", p + "/receipt?key=rev%2F17")
    assert by_key == alice.ok("GET", p + f"/receipt?key={first['message_id']}")
    assert by_key["message_id"] == first["message_id"] and by_key["status"] == "delivered"
    missing = alice("GET", p + "/receipt?key=nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"

    got = alice.ok("POST", "/v1/agents/alice@critic/receive", {"wait": 5})["messages"]
    assert [m["data"] for m in got] == [{"diff": "+x"}] and got[0]["type"] == "review"
    assert got[0]["metadata"]["pool.name"] == "p-flow"
    assert got[0]["metadata"]["pool.message_id"] == first["message_id"]

    verdicts = {"run": "alice@lead", "filter": {"kinds": ["event"], "types": ["verdict"]},
                "idempotency_key": "v1", "resume": "full", "timeout": 60}  # fmt: skip
    wake = alice.ok("POST", p + "/wait-for", verdicts)
    assert wake["status"] == "registered" and wake["filter"]["types"] == ["verdict"]
    assert alice.ok("POST", p + "/wait-for", verdicts)["id"] == wake["id"]
    polled: list[Any] = []
    poll = threading.Thread(
        target=lambda: polled.append(alice.ok("GET", p + "/wake?key=v1&wait=20"))
    )
    poll.start()  # answers when the event below triggers the wake (at once if it came first)
    event = alice.ok("POST", p + "/emit", {"run": "alice@critic", "type": "verdict",
                                           "data": {"ok": True}})  # fmt: skip
    poll.join(30)
    assert not poll.is_alive() and polled[0]["status"] == "triggered"
    assert polled[0]["trigger_seq"] == event["seq"]
    assert polled[0]["record"]["data"] == {"ok": True}
    assert polled[0]["record"]["run"] == "alice@critic"
    assert alice.ok("GET", p + f"/wake?key={wake['id']}")["status"] == "triggered"
    assert alice.ok("POST", p + "/wake/cancel", {"key": "v1"}) == {"cancelled": False}

    snap = alice.ok("GET", p)
    assert [m["run"] for m in snap["members"]] == ["alice@critic", "alice@lead"]
    assert snap["topics"] == ["code"] and snap["pending_wakes"] == []
    assert snap["counts"]["duplicates"] == 1 and snap["counts"]["events"] == 1
    records = alice.ok("GET", p + f"/records?after={cursor}")["records"]
    assert [r["seq"] for r in records] == list(range(cursor + 1, snap["cursor"] + 1))
    message = next(r for r in records if r["message_id"] == first["message_id"])
    assert message["kind"] == "message" and message["data"] == {"diff": "+x"}
    assert message["to"] == {"kind": "topic", "topic": "code"}
    assert message["receipt"]["delivered_to"] == ["alice@critic"]
    assert any(r["kind"] == "wake_triggered" and r["trigger_seq"] == event["seq"]
               for r in records)  # fmt: skip
    page = alice.ok("GET", p + f"/records?after={cursor}&limit=2")["records"]
    assert page == records[:2]

    with alice.http.stream("GET", p + f"/watch?after={cursor}") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert _sse_records(stream, snap["cursor"]) == records
    last = str(snap["cursor"] - 1)
    with alice.http.stream("GET", p + "/watch", headers={"Last-Event-ID": last}) as stream:
        assert _sse_records(stream, snap["cursor"]) == records[-1:]

    alice.ok("POST", p + "/leave", {"run": "alice@critic"})
    assert [m["run"] for m in alice.ok("GET", p)["members"]] == ["alice@lead"]
    gone = alice("POST", p + "/leave", {"run": "alice@critic"})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotAMember"


def test_pool_wake_long_poll_answers_when_the_wake_times_out(apis: tuple[Api, Api, Api]) -> None:
    _admin, alice, _bob = apis
    p = "/v1/pools/p-timeout"
    alice.ok("POST", p + "/join", {"run": "alice@1", "agent": "alice"})
    wake = alice.ok("POST", p + "/wait-for", {"run": "alice@1", "timeout": 0.3,
                                              "filter": {"kinds": ["event"]}})  # fmt: skip
    got = alice.ok("GET", p + f"/wake?key={wake['id']}&wait=20")
    assert got["status"] == "timed_out" and got["record"] is None


def test_pool_watch_and_wake_need_the_pool(apis: tuple[Api, Api, Api]) -> None:
    admin, _alice, bob = apis
    _pool_setup(admin)
    for path in ("/v1/pools/p-1/watch", "/v1/pools/p-1/wake?key=w1&wait=5"):
        r = bob("GET", path)
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDenied"
    missing = admin("GET", "/v1/pools/p-none/watch")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"


_INVALID: list[tuple[str, str, Any, str]] = [
    ("POST", "/join", {"run": "bad run", "agent": "alice"}, "run"),
    ("POST", "/join", {"agent": "alice"}, "run"),
    ("POST", "/join", {"run": "alice@2", "agent": "alice", "topics": ["ok", ""]}, "topics"),
    ("POST", "/join", {"run": "alice@2\n", "agent": "alice"}, "run"),
    ("POST", "/send", {"sender": "alice@1", "to": {"kind": "nowhere"}}, "to.kind"),
    ("POST", "/send", {"sender": "alice@1", "to": {"kind": "run"}}, "to.run"),
    ("POST", "/send", {"sender": "alice@1", "to": {"kind": "pool"}, "priority": 2**40},
     "priority"),
    ("POST", "/send", {"sender": "alice@1", "to": {"kind": "pool"},
                       "metadata": {"pool.seq": 1}}, "metadata"),
    ("POST", "/send", {"sender": "alice@1", "to": {"kind": "pool"}, "idempotency_key": ""},
     "idempotency_key"),
    ("POST", "/emit", {"run": "alice@1", "type": "x", "extra": 1}, "extra"),
    ("POST", "/wait-for", {"run": "alice@1", "filter": {"kinds": ["bogus"]}}, "filter.kinds"),
    ("POST", "/wait-for", {"run": "alice@1", "filter": {"metadata": {"k": 1.5}}},
     "filter.metadata"),
    ("POST", "/wait-for", {"run": "alice@1", "timeout": -1}, "timeout"),
    ("POST", "/wait-for", {"run": "alice@1", "resume": "all"}, "resume"),
    ("GET", "/records?limit=0", None, "limit"),
    ("GET", "/records?after=x", None, "after"),
    ("GET", "/records?as_run=-x", None, "as_run"),
    ("GET", "/wake", None, "key"),
    ("GET", "/wake?key=w&wait=soon", None, "wait"),
    ("GET", "/receipt", None, "key"),
]  # fmt: skip


def test_pool_validation_errors_name_the_field(apis: tuple[Api, Api, Api]) -> None:
    """Each bad request answers 422 (ValidationError) naming the field, and stores nothing."""
    _admin, alice, _bob = apis
    p = "/v1/pools/p-v"
    alice.ok("POST", p + "/join", {"run": "alice@1", "agent": "alice"})
    before = alice.ok("GET", p)
    for method, path, body, field in _INVALID:
        r = alice(method, p + path, body)
        assert r.status_code == 422, (path, body, r.text)
        error = r.json()["error"]
        assert error["type"] == "ValidationError" and error["field"] == field, (body, error)
    bad_name = alice("GET", "/v1/pools/-v")
    assert bad_name.status_code == 422 and bad_name.json()["error"]["field"] == "pool"
    assert alice.ok("GET", p) == before
    # a rejected join does not create the pool it names
    r = alice("POST", "/v1/pools/p-new/join", {"run": "alice@1\n", "agent": "alice"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "run"
    assert alice("GET", "/v1/pools/p-new").status_code == 404


def test_a_stopping_server_ends_pool_watches_and_wake_polls(server: LiveServer) -> None:
    import threading
    import time

    api = Api(server, server.token)
    p = "/v1/pools/p-stop"
    api.ok("POST", p + "/join", {"run": "r1", "agent": "a"})
    api.ok("POST", p + "/wait-for", {"run": "r1", "filter": {"kinds": ["event"]},
                                     "idempotency_key": "w"})  # fmt: skip
    watching = threading.Event()
    seqs: list[int] = []
    polled: list[str] = []

    def watch() -> None:
        with api.http.stream("GET", p + "/watch") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    seqs.append(int(line.split('"seq":')[1].split(",")[0]))
                    watching.set()

    threads = [
        threading.Thread(target=watch),
        threading.Thread(
            target=lambda: polled.append(api.ok("GET", p + "/wake?key=w&wait=50")["status"])
        ),
    ]
    for t in threads:
        t.start()
    assert watching.wait(10)
    time.sleep(0.5)  # the wake poll is waiting by now (if not, it answers at once anyway)
    assert server.state.loop is not None
    server.state.loop.call_soon_threadsafe(server.state.stop)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert seqs == [1, 2, 3] and polled == ["registered"]


async def test_the_server_times_out_pool_wakes_that_nobody_reads(server: LiveServer) -> None:
    """Wakes registered through the Python client's store calls time out on the server's own
    pass: a watcher gets the `wake_timed_out` record without anyone reading the wake."""
    async with agentcomm.connect(server.url, token=server.token) as hub:
        pool = await hub.pool("p-expire")
        await pool.join("r1", agent="a")
        cursor = (await pool.snapshot()).cursor
        await pool.wait_for("r1", agentcomm.EventFilter(kinds={"event"}), timeout=0.3)
    api = Api(server, server.token)
    with api.http.stream("GET", f"/v1/pools/p-expire/watch?after={cursor}",
                         timeout=httpx.Timeout(10.0)) as stream:  # fmt: skip
        kinds = []
        for line in stream.iter_lines():  # a read timeout (10 s) fails the test
            if line.startswith("data: "):
                kinds.append(line.split('"kind":"')[1].split('"')[0])
                if kinds[-1] != "wake_registered":
                    break
    assert kinds == ["wake_registered", "wake_timed_out"]
