"""Run the server under uvicorn, with a graceful SIGTERM: stop taking connections, answer
long polls and end streams at once, let in-flight requests finish (bounded), close the hub."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .app import ServerState, build_app
from .limits import ServerSettings

__all__ = ["serve"]


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
        timeout_graceful_shutdown=int(settings.shutdown_grace) or None,
        timeout_keep_alive=max(1, round(settings.keep_alive)), **uvicorn_options,
    )  # fmt: skip
    _Server(config, app.state.server).run()
