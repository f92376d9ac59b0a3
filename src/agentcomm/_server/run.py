"""Run the server under uvicorn, with a graceful SIGTERM: stop taking connections, answer
long polls and end streams at once, let in-flight requests finish (bounded), close the hub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import ServerState, build_app
from .limits import ServerSettings

__all__ = ["FastHttpProtocol", "HttpProtocol", "serve"]


class _Coalescing:
    """A transport that sends what is written during one turn of the loop in one write.

    uvicorn writes a response's head and its body separately, and asyncio sends each write
    at once: two syscalls and two segments for every store call, the peer woken twice. This
    gathers the writes of one loop turn (a head and a body come in the same turn) and sends
    them together at the end of it; everything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol, sending each response's head and body in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Wrap the connection's transport (see `_Coalescing`)."""
        super().connection_made(_Coalescing(transport))  # type: ignore[arg-type]


try:  # uvicorn's C parser (httptools), when installed: `pip install agentcomm[server]`
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpTools
except ImportError:  # pragma: no cover - the server extra installs it
    FastHttpProtocol: type[asyncio.Protocol] | None = None
else:

    class FastHttpProtocol(_HttpTools):  # type: ignore[no-redef]
        """uvicorn's httptools protocol, sending each response's head and body in one write
        (it writes them separately, as the h11 one does)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Wrap the connection's transport (see `_Coalescing`)."""
            super().connection_made(_Coalescing(transport))  # type: ignore[arg-type]


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app to drain when it begins to shut down (uvicorn would
    otherwise wait for long polls and streams before the app hears of it)."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = self._state.loop
        if loop is not None:  # a signal handler: hand the stop to the event loop
            loop.call_soon_threadsafe(self._state.stop)
        super().handle_exit(sig, frame)


def serve(
    url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    settings: ServerSettings | None = None,
    log_level: str = "info",
    mounts: Mapping[str, Callable[[ServerState], ASGIApp]] | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve the store at `url` until SIGTERM / SIGINT (`agentcomm serve`), with the apps of
    `mounts` (`/mcp`, `/dashboard`: see `mounts.py`) beside `/v1`."""
    settings = settings or ServerSettings()
    app = build_app(url, settings=settings, mounts=mounts)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        http=FastHttpProtocol or HttpProtocol,
        timeout_graceful_shutdown=int(settings.shutdown_grace) or None,
        timeout_keep_alive=max(1, round(settings.keep_alive)), **uvicorn_options,
    )  # fmt: skip
    _Server(config, app.state.server).run()
