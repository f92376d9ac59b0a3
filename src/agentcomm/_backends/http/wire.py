"""The connections of the store calls: HTTP/1.1 keep-alive over asyncio streams, parsed by h11.

A store call is one small POST and its answer. Through `httpx.AsyncClient` each cost about
2 ms of CPU in the client (its request building, cookie and redirect layers, httpcore, anyio),
four to five times what the bytes need; this pool sends the request in one write and parses
with h11 (the parser httpx itself uses). Idle connections are reused while younger than
`keepalive` seconds (below the server's keep-alive timeout) and not closed by the server, as
httpcore does; nothing is retried. The event stream stays on httpx.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

import h11

__all__ = ["Pool", "WireError"]

_READ = 65536


class WireError(Exception):
    """A connection failed, timed out or carried something that is not HTTP/1.1."""


class _Conn:
    __slots__ = ("idle_since", "parser", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to one server, for POSTs with a body."""

    def __init__(
        self,
        base: str,
        headers: dict[str, str],
        *,
        timeout: float,
        connect_timeout: float,
        keepalive: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Connections to `base` (http:// or https://, verified by `tls`, default: the
        system's trust store), sending `headers` with every request; an idle connection is
        reused for `keepalive` seconds."""
        parts = urlsplit(base)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = [("Host", parts.netloc), *headers.items()]
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._ssl = tls
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._closed = False

    async def _connect(self) -> _Conn:
        if self._https and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, limit=_READ
                )
        except (OSError, TimeoutError) as exc:
            raise WireError(f"cannot connect: {exc!r}") from None
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if (now - conn.idle_since < self._keepalive and not conn.reader.at_eof()
                    and not conn.writer.is_closing()):  # fmt: skip
                return conn
            conn.close()
        return None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST `body` to `path` (under the base URL's path); returns (status, body)."""
        if self._closed:
            raise WireError("the pool is closed")
        conn = self._take_idle() or await self._connect()
        self._busy.add(conn)
        reusable = False
        try:
            async with asyncio.timeout(self._timeout):
                status, answer, reusable = await self._exchange(conn, path, body, content_type)
            return status, answer
        except TimeoutError:
            raise WireError(f"no answer within {self._timeout:g} s") from None
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            raise WireError(repr(exc)) from None
        finally:
            self._busy.discard(conn)
            if reusable and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def _exchange(
        self, conn: _Conn, path: str, body: bytes, content_type: str
    ) -> tuple[int, bytes, bool]:
        p = conn.parser
        headers = [*self._headers, ("Content-Type", content_type),
                   ("Content-Length", str(len(body)))]  # fmt: skip
        request = h11.Request(method="POST", target=self._prefix + path, headers=headers)
        out = [p.send(request), p.send(h11.Data(data=body)), p.send(h11.EndOfMessage())]
        conn.writer.write(b"".join(b for b in out if b))  # one write: one segment on loopback
        status = 0
        chunks: list[bytes] = []
        while True:
            event = p.next_event()
            if event is h11.NEED_DATA:
                data = await conn.reader.read(_READ)
                p.receive_data(data)  # b"" (the server closed) makes h11 raise or end
                if not data and p.their_state is not h11.DONE:
                    raise asyncio.IncompleteReadError(b"", None)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise asyncio.IncompleteReadError(b"", None)
        reusable = p.our_state is h11.DONE and p.their_state is h11.DONE
        if reusable:
            p.start_next_cycle()
        return status, b"".join(chunks), reusable

    async def aclose(self) -> None:
        """Close every connection; calls in flight fail with WireError."""
        self._closed = True
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
