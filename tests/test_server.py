"""The server: tokens and the authorization matrix, limits, errors, graceful stop, the
Python client's permissions, and schemathesis over /openapi.json (bounded)."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import agentcomm
from agentcomm._server.authz import Principal, pattern_covers
from agentcomm._server.limits import ServerSettings
from agentcomm._subjects import parse_pattern
from live_server import LiveServer

ALICE = Principal(agents=["alice"], publish=["a.>"], subscribe=["a.>"], kv={"proj": "rw"},
                  pools=["p-*"], leases=["src/*"])  # fmt: skip
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
    return queues, keys, values, topics, leases


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
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                     for t in ("refs", "ref_blobs", "ref_chunks"))  # fmt: skip


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
        if operation.path.endswith(("/subscribe", "/messages")) or "kv-watch" in operation.path:
            continue  # streams never end by themselves; covered by their own tests
        run(operation)
    assert failures == []
