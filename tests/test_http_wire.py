"""The store calls' connection pool (`_backends/http/wire.py`) against a small h11 server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h11
import pytest

from agentcomm._backends.http.wire import Pool, WireError


class EchoServer:
    """Answers each POST with its path and body; `close_after` requests per connection."""

    def __init__(self, close_after: int = 0) -> None:
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/base"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                target, body = b"", b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        target = event.target
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                served += 1
                out = target + b" " + body
                last = served == self.close_after
                headers = [("Content-Length", str(len(out)))]
                if last:
                    headers.append(("Connection", "close"))
                head = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                writer.write(head + (conn.send(h11.Data(data=out)) or b""))
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if last:
                    return
                conn.start_next_cycle()
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    server.server.close()


def pool(url: str) -> Pool:
    return Pool(url, {"Authorization": "Bearer t"}, timeout=10, connect_timeout=10, keepalive=10)


async def test_calls_reuse_one_connection(echo: EchoServer) -> None:
    p = pool(echo.url)
    for i in range(3):
        status, body = await p.post("/v1/x", b"%d" % i, "application/msgpack")
        assert (status, body) == (200, b"/base/v1/x %d" % i)
    assert echo.connections == 1
    await p.aclose()


async def test_a_connection_the_server_closed_is_not_reused(echo: EchoServer) -> None:
    echo.close_after = 1
    p = pool(echo.url)
    assert await p.post("/a", b"1", "application/msgpack") == (200, b"/base/a 1")
    assert await p.post("/b", b"2", "application/msgpack") == (200, b"/base/b 2")
    assert echo.connections == 2
    await p.aclose()


async def test_concurrent_calls_open_more_connections(echo: EchoServer) -> None:
    p = pool(echo.url)
    got = await asyncio.gather(*(p.post("/c", b"%d" % i, "x") for i in range(4)))
    assert sorted(got) == [(200, b"/base/c %d" % i) for i in range(4)]
    assert 1 <= echo.connections <= 4
    await p.aclose()


async def test_failures_are_wire_errors(echo: EchoServer) -> None:
    url = echo.url
    p = pool(url)
    await p.aclose()
    with pytest.raises(WireError):
        await p.post("/a", b"", "x")
    assert echo.server is not None
    echo.server.close()
    await echo.server.wait_closed()
    with pytest.raises(WireError, match="cannot connect"):
        await pool(url).post("/a", b"", "x")
