"""The small framework every `/v1` route is declared with.

`@route(method, path, body=Struct, response=Type)` registers an `Endpoint`; `app.py` turns the
registry into Starlette routes (each call: authenticate, rate-limit, read the body within the
size limit, decode and validate it, run the handler, encode its result) and `openapi.py` into
the OpenAPI document, from the same declared types.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request

from .._errors import ValidationError
from .tokens import TokenInfo

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["ENDPOINTS", "Call", "Endpoint", "FieldError", "Receipts", "route"]


class FieldError(ValidationError):
    """A ValidationError naming the request field at fault (the `field` of its 422 body)."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Call:
    """One authenticated request, as a handler sees it."""

    request: Request
    server: ServerState
    token: TokenInfo
    body: Any = None

    @property
    def principal(self) -> Any:
        """The token's permissions (`authz.Principal`)."""
        return self.token.principal

    def path(self, name: str) -> str:
        """A path parameter."""
        return str(self.request.path_params[name])

    def query(self, name: str, default: str | None = None) -> str | None:
        """A query parameter."""
        return self.request.query_params.get(name, default)

    def query_float(self, name: str, default: float) -> float:
        """A numeric query parameter (422 naming it if it is not a number)."""
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            raise FieldError(
                f"Query parameter {name} must be a number, not {raw!r}.", name
            ) from None

    def query_int(self, name: str, default: int) -> int:
        """A whole-number query parameter (422 naming it if it is not one)."""
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise FieldError(
                f"Query parameter {name} must be a whole number, not {raw!r}.", name
            ) from None


Handler = Callable[[Call], Awaitable[Any]]


@dataclass
class Endpoint:
    """A declared route."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type | None = None
    response: Any = None
    #: "json" (default), "sse" (a Server-Sent Events stream), "bytes" (raw body or response)
    kind: str = "json"
    query: list[tuple[str, str, str]] = field(default_factory=list)
    public: bool = False
    #: The handler reads the raw request body itself (streamed; `body` is None then).
    raw_body: bool = False


ENDPOINTS: list[Endpoint] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    body: type | None = None,
    response: Any = None,
    kind: str = "json",
    query: list[tuple[str, str, str]] | None = None,
    raw_body: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare a `/v1` route (see the module docstring). `query` lists (name, JSON type,
    description) of its query parameters; `raw_body`: the handler reads the request body
    itself, as bytes (not bounded by `max_body`)."""

    def register(fn: Handler) -> Handler:
        ep = Endpoint(method, path, fn, summary, tag, body, response, kind, query or [])
        ep.raw_body = raw_body
        ENDPOINTS.append(ep)
        return fn

    return register


class Receipts:
    """Signed delivery receipts: what a JSON client hands back to settle a delivery.

    A receipt carries what settling needs (agent, seq, attempt, ids) and an HMAC made with a
    secret kept in the store, so it survives a server restart and cannot be forged.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def make(self, fields: list[Any]) -> str:
        """A receipt for `fields` (plain values)."""
        raw = msgspec.json.encode(fields)
        sig = hmac.new(self._secret, raw, hashlib.sha256).hexdigest()[:32]
        return raw.hex() + "." + sig

    def read(self, receipt: object) -> list[Any]:
        """The fields of a receipt this server made (ValidationError otherwise)."""
        if isinstance(receipt, str) and receipt.count(".") == 1 and len(receipt) < 4096:
            body, sig = receipt.split(".")
            try:
                raw = bytes.fromhex(body)
            except ValueError:
                raw = b""
            good = hmac.new(self._secret, raw, hashlib.sha256).hexdigest()[:32]
            if raw and hmac.compare_digest(good, sig):
                out: list[Any] = msgspec.json.decode(raw)
                return out
        raise ValidationError("receipt is not one this server issued; use the one received.")


async def first_of(aw: Awaitable[Any], stop: asyncio.Event) -> Any:
    """Await `aw` unless `stop` is set first (then None). A step left pending is cancelled
    and awaited (up to 1 s) before this returns, also when this is cancelled (the client
    left), so a generator whose `__anext__` it was can be closed after."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=1.0)  # bounded: a step may swallow a cancel
    return None if task.cancelled() or not task.done() else task.result()
