"""`agentcomm dashboard [URL] --port 8701`: serve the live dashboard of a store."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from .._errors import AgentCommError, ConfigurationError
from .._hub import connect

__all__ = ["dashboard", "register", "serve"]


async def serve(url: str | None, host: str, port: int, *, ready: Any = None) -> None:
    """Open `url`, serve its dashboard on host:port until SIGINT / SIGTERM, close the hub."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigurationError(
            "agentcomm dashboard needs 'uvicorn', which is not installed: "
            "pip install 'agentcomm[dashboard]'."
        ) from None
    from ..dashboard import build_dashboard_app

    async with connect(url) as hub:
        app = build_dashboard_app(hub)
        feed = app.state.dashboard_feed

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                feed.close()  # end the open event streams now, not after the grace period
                super().handle_exit(sig, frame)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # SIGINT / SIGTERM stop the server, then the hub closes and the command exits
                # 0 (uvicorn's own handling raises the signal again afterwards, and SIGTERM's
                # default action would end the process before the hub is closed)
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                loop = asyncio.get_running_loop()
                stops = (signal.SIGINT, signal.SIGTERM)
                for sig in stops:
                    loop.add_signal_handler(sig, self.handle_exit, sig, None)
                try:
                    yield
                finally:
                    for sig in stops:
                        loop.remove_signal_handler(sig)

        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        server = Server(config)
        if ready is not None:
            ready(server)
        await server.serve()
        feed.close()


def dashboard(
    url: Annotated[
        str | None,
        typer.Argument(
            help="Store to show (default: $AGENTCOMM_URL, else sqlite:///agentcomm.db)."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8701,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
) -> None:
    """Serve a live dashboard of a store in the browser (needs the `dashboard` extra)."""
    typer.echo(f"agentcomm dashboard of {url or 'the default store'} on http://{host}:{port}/")
    try:
        asyncio.run(serve(url, host, port))
    except AgentCommError as exc:
        typer.secho(f"Error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add the `dashboard` command to the `agentcomm` command line."""
    app.command()(dashboard)
