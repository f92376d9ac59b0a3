"""The Starlette application: `build_app(url)` (the hook other parts mount into)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import AgentCommError, AuthenticationFailed, ValidationError
from .._hub import Hub, connect
from .._notify import ALL
from . import (  # noqa: F401 (routes)
    routes_admin,
    routes_kv,
    routes_leases,
    routes_messages,
    routes_pools,
    routes_refs,
    routes_streams,
)
from .api import ENDPOINTS, Call, Endpoint, FieldError, Receipts
from .errors import BodyTooLarge, error_response
from .limits import RateLimiter, ServerSettings
from .openapi import openapi_document
from .rpc import events, invoke
from .schemas import Health
from .tokens import CHANNEL as TOKENS_CHANNEL
from .tokens import TokenInfo, TokenStore

__all__ = ["DRAIN_CHANNEL", "ServerState", "build_app"]

#: The wake-up channel a stopping server notifies, so long polls answer at once.
DRAIN_CHANNEL = "server-drain"
_FIELD = re.compile(r"at `\$\.?([^`\[]*)")
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]*)`")


class ServerState:
    """What every request of one server shares: the hub, the tokens, the limits."""

    def __init__(self, url: str | None, settings: ServerSettings, hub_options: Mapping[str, Any]):
        self.settings = settings
        self.hub: Hub = connect(url, **hub_options)
        self.tokens = TokenStore(self.hub._ctx.backend, self.hub._ctx.now, cache=True)
        self.receipts = Receipts(b"")
        self.limiter = RateLimiter(settings.rate, settings.burst)
        self.stopping = asyncio.Event()  # bound to a loop on first wait
        self.drain = DRAIN_CHANNEL
        self.taps: set[Callable[[list[str]], None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Lifespans of mounted apps, entered after the hub opens and left before it closes.
        self.lifespans: list[Callable[[], contextlib.AbstractAsyncContextManager[None]]] = []
        #: Called (on the loop) when the server begins to stop, e.g. to end event streams.
        self.on_stop: list[Callable[[], None]] = []

    async def open(self) -> None:
        """Open the hub and load the receipt secret."""
        await self.hub.open()
        self.loop = asyncio.get_running_loop()
        if self.hub._ctx.backend.pools is not None:  # wakes time out here, read or not
            self.hub._start_pool_wakes()
        self.receipts = Receipts(await self.tokens.secret("receipts"))
        self.hub._ctx.notifier.taps.append(self._tap)

    def _tap(self, channels: list[str]) -> None:
        if TOKENS_CHANNEL in channels or ALL in channels:  # a token written or revoked
            self.tokens.forget()
        for tap in list(self.taps):
            tap(channels)

    def stop(self) -> None:
        """Begin shutting down: long polls and streams answer now; new ones do not wait."""
        self.stopping.set()
        for hook in self.on_stop:
            hook()
        with contextlib.suppress(AgentCommError):
            self.hub._ctx.notifier.notify((self.drain,))

    async def close(self) -> None:
        """Close the hub (after the HTTP server stopped taking requests)."""
        self.stop()
        await self.hub.aclose()

    async def authenticate(self, request: Request) -> TokenInfo:
        """The request's token (401 if missing, unknown or revoked)."""
        return await self.authenticate_header(request.headers.get("authorization", ""))

    async def authenticate_header(self, header: str) -> TokenInfo:
        """The token of an `Authorization` header's value (401 if missing, unknown or revoked)."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Send a token: 'Authorization: Bearer act_...' (agentcomm token create)."
            )
        return await self.tokens.authenticate(token.strip())


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 (BodyTooLarge) once it passes `limit` bytes."""
    return b"".join([chunk async for chunk in read_stream(request, limit)])


async def read_stream(
    request: Request, limit: int, what: str = "request body"
) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk; 413 (BodyTooLarge) once it passes
    `limit` bytes, or at once if its Content-Length does."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, what)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, what)
        if chunk:
            yield chunk


def _decode(raw: bytes, body_type: type) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=body_type)
    except msgspec.ValidationError as exc:
        raise FieldError(str(exc), _field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise FieldError(f"The body is not valid JSON: {exc}", None) from None


def _field_of(message: str) -> str | None:
    """The body field a msgspec error is about: `to.run` for "Object missing required field
    `run` - at `$.to`", `filter.kinds` for "... - at `$.filter.kinds[0]`"."""
    at = _FIELD.search(message)
    where = at.group(1) if at else ""
    named = _NAMED.search(message)
    if named:
        return f"{where}.{named.group(1)}" if where else named.group(1)
    return where or None


def _failure(exc: BaseException) -> Response:
    if isinstance(exc, ClientDisconnect):  # nobody reads the answer: not a server error
        return Response(status_code=400)
    if isinstance(exc, BodyTooLarge):
        return error_response(exc, status=413, field="body")
    if isinstance(exc, FieldError):
        return error_response(exc, field=exc.field)
    return error_response(exc)


def _json_endpoint(ep: Endpoint) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        server: ServerState = request.app.state.server
        try:
            token = await server.authenticate(request)
            server.limiter.take(token.id)
            call = Call(request, server, token)
            if ep.body is not None:
                call.body = _decode(await read_body(request, server.settings.max_body), ep.body)
            result = await ep.handler(call)
            if isinstance(result, Response):
                return result
            return Response(msgspec.json.encode(result), media_type="application/json")
        except Exception as exc:  # typed errors become bodies; anything else a bare 500
            return _failure(exc)

    return handle


class _StoreCall:
    """`POST /v1/store/{feature}/{method}` as a plain ASGI app: the Python client's every call
    comes here, so it reads the scope itself instead of building Starlette's request objects,
    with the same checks as every route (token, rate limit, body limit, authorization)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _store_call(scope, receive, send)


async def _store_call(scope: Scope, receive: Receive, send: Send) -> None:
    server: ServerState = scope["app"].state.server
    feature, method = scope["path_params"]["feature"], scope["path_params"]["method"]
    try:
        authorization, declared = "", None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        token = await server.authenticate_header(authorization)
        server.limiter.take(token.id)
        raw = await _read_raw(receive, declared, server.settings.max_body)
        call = Call(Request(scope, receive), server, token)
        query = scope.get("query_string", b"")
        wait = _seconds(
            dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("wait")
            if query else None
        )  # fmt: skip
        result = await invoke(call, feature, method, raw, wait)
    except Exception as exc:
        await _failure(exc)(scope, receive, send)
        return
    await send({
        "type": "http.response.start", "status": 200,
        "headers": [(b"content-length", str(len(result)).encode()),
                    (b"content-type", b"application/msgpack")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": result})


async def _read_raw(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from the ASGI `receive` (as `read_body`, without a Starlette request)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, "request body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, "request body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_STORE_PREFIX = "/v1/store/"


class _App(Starlette):
    """The Starlette app, with the store calls' route taken before Starlette's middleware
    and router: the same handler either way, without their cost on the hot path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http" and scope["method"] == "POST"
            and not scope.get("root_path") and scope["path"].startswith(_STORE_PREFIX)
        ):  # fmt: skip
            feature, _, method = scope["path"][len(_STORE_PREFIX) :].partition("/")
            if feature and method and "/" not in method:
                scope["app"] = self
                scope["path_params"] = {"feature": feature, "method": method}
                await _store_call(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _seconds(raw: str | None) -> float:
    """A `?wait=` query parameter (0 when absent)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"Query parameter wait must be seconds, not {raw!r}.") from None
    if not value >= 0 or value == float("inf"):
        raise ValidationError(f"Query parameter wait must be seconds >= 0, not {raw!r}.")
    return value


async def _events(request: Request) -> Response:
    server: ServerState = request.app.state.server
    try:
        token = await server.authenticate(request)
        server.limiter.take(token.id)
    except Exception as exc:
        return _failure(exc)
    return StreamingResponse(
        events(Call(request, server, token)), media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


async def _health(request: Request) -> Response:
    server: ServerState = request.app.state.server
    backend = type(server.hub._ctx.backend).__name__.removesuffix("Backend").lower()
    return Response(msgspec.json.encode(Health("ok", backend)), media_type="application/json")


class _AtRoot:
    """A mounted app answering at its mount path itself (`/mcp` as `/mcp/`, no redirect)."""

    def __init__(self, path: str, app: ASGIApp) -> None:
        self.path, self.app = path, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        scope = {**scope, "root_path": root + self.path, "path": root + self.path + "/"}
        await self.app(scope, receive, send)


def build_app(
    url: str | None = None,
    *,
    settings: ServerSettings | None = None,
    hub_options: Mapping[str, Any] | None = None,
    mounts: Mapping[str, Callable[[ServerState], ASGIApp]] | None = None,
) -> Starlette:
    """The agentcomm server as an ASGI app over the store at `url` (default as `connect()`).

    `mounts` maps a path (e.g. "/mcp", "/dashboard") to a factory given the `ServerState`
    (its `hub`, `tokens` and `authenticate`) that returns the ASGI app to mount there; it
    answers at `path` itself and under `path/`. Mounted apps check their own requests (e.g.
    `await state.authenticate(request)` and `authz.need_admin`); a factory that needs a
    lifespan appends it to `state.lifespans` (entered once the hub is open, left before it
    closes) and a stop hook to `state.on_stop`. The hub opens with the app's lifespan and
    closes after the last request.
    """
    server = ServerState(url, settings or ServerSettings(), hub_options or {})
    routes: list[BaseRoute] = [
        Route("/healthz", _health, methods=["GET"]),
        Route(
            "/openapi.json",
            lambda r: Response(openapi_document(), media_type="application/json"),
            methods=["GET"],
        ),
        Route("/v1/store/events", _events, methods=["GET"]),
        Route("/v1/store/{feature}/{method}", _StoreCall(), methods=["POST"]),
    ]
    for ep in ENDPOINTS:
        routes.append(Route(ep.path, _json_endpoint(ep), methods=[ep.method]))
    for path, factory in (mounts or {}).items():
        sub = factory(server)
        routes += [Route(path, _AtRoot(path, sub)), Mount(path, app=sub)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.open()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for mounted in server.lifespans:
                    await stack.enter_async_context(mounted())
                yield
        finally:
            await server.close()

    app = _App(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
