"""A live agentcomm server for tests: uvicorn in a thread of the test process, on a free port
of 127.0.0.1, over a given store, with a known all-permissions admin token."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from agentcomm._server.app import ServerState, build_app
from agentcomm._server.authz import Principal
from agentcomm._server.limits import ServerSettings
from agentcomm._server.run import FastHttpProtocol, HttpProtocol

#: The token every test server accepts (all permissions, admin).
ADMIN_TOKEN = "act_feedfacecafe_test-secret-0123456789abcdef"
EVERYTHING = Principal(
    agents=["*"], publish=[">"], subscribe=[">"], kv={"*": "rw"}, pools=["*"], leases=["*"],
    admin=True,
)  # fmt: skip


class LiveServer:
    """`with LiveServer("memory://x") as server: server.url, server.token`."""

    def __init__(
        self,
        store_url: str,
        settings: ServerSettings | None = None,
        mounts: Mapping[str, Callable[[ServerState], ASGIApp]] | None = None,
        hub_options: Mapping[str, Any] | None = None,
        http: type[asyncio.Protocol] | None = None,
    ) -> None:
        self.store_url = store_url
        self.app = build_app(
            store_url, settings=settings or ServerSettings(max_wait=60.0), mounts=mounts,
            hub_options=hub_options,
        )  # fmt: skip
        self.state: ServerState = self.app.state.server
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5,
                                timeout_keep_alive=30,
                                http=http or FastHttpProtocol or HttpProtocol)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""
        self.token = ADMIN_TOKEN

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.run(self.state.tokens.create(EVERYTHING, "tests", token=ADMIN_TOKEN))
        return self

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self.state.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.state.loop).result(30)

    def token_for(self, principal: Principal) -> str:
        """A new token with `principal`."""
        token, _ = self.run(self.state.tokens.create(principal))
        return str(token)

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state.loop is not None:
            self.state.loop.call_soon_threadsafe(self.state.stop)
        self.server.should_exit = True
        self.thread.join(30)
