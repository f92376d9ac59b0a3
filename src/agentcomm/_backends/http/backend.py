"""A backend that is an agentcomm server: `connect("http://host:8700", token=...)`.

The client's hub runs the feature layer as over any backend (validation, encoding, ids, the
tier policy for large payloads, waiting), and each contract call is a `POST
/v1/store/{feature}/{method}` to the server, which checks the token's permissions and runs it
on the server's own backend with the server's clock. Wake-ups come back over one
Server-Sent Events stream (`/v1/store/events`): a wait here wakes on the server's commits. The
server runs the housekeeping (schedules firing, retention, pool wake timeouts); this
backend's hub starts none of it (`housekeeping_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from ... import _errors
from ..._errors import (
    AgentCommError,
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    HubClosed,
)
from ..._models import CheckReport, HubStats, PruneReport
from ..._notify import Notifier
from ..._records import Claimed, StoredReply
from ..._settings import Retention
from .. import contracts
from .calls import CALLS, StoreCall, from_wire

__all__ = ["HttpBackend"]

logger = logging.getLogger("agentcomm.http")
#: Seconds one store call may take before it fails with BackendUnavailable.
CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 10.0
_CLOSE_GRACE = 2.0


def _error(status: int, body: bytes) -> AgentCommError:
    """The error a server's error body names, rebuilt with its attributes."""
    try:
        detail = msgspec.json.decode(body)["error"]
        name, message = str(detail["type"]), str(detail["message"])
        attrs = detail.get("attrs") or {}
    except (msgspec.DecodeError, KeyError, TypeError):
        return BackendError(f"The server answered {status} without an error body.")
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, AgentCommError)):
        cls = BackendError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(attrs, dict):
        exc.__dict__.update(attrs)
    return exc


class _Link:
    """The HTTP connections of one backend: the store calls' pool and httpx for the stream."""

    def __init__(self, base: str, token: str | None) -> None:
        import httpx

        from . import wire  # h11 comes with httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.httpx = httpx
        self.closed = False
        self.base = base
        # one trust store for both (httpx's: SSL_CERT_FILE or certifi); plain http has no
        # certificates to check, so it skips loading a CA bundle (~60 ms)
        tls = httpx.create_ssl_context() if base.startswith("https://") else None
        self.client = httpx.AsyncClient(
            base_url=base, headers=headers, verify=tls if tls is not None else False,
            timeout=httpx.Timeout(CALL_TIMEOUT, connect=CONNECT_TIMEOUT),
            # idle connections close well before the server's keep-alive (30 s) ends them, so
            # a call never goes out on a connection the server is closing
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
        )  # fmt: skip
        self.wire_error = wire.WireError
        self.pool = wire.Pool(
            base, headers, tls=tls, timeout=CALL_TIMEOUT, connect_timeout=CONNECT_TIMEOUT,
            keepalive=KEEPALIVE_EXPIRY,
        )  # fmt: skip

    async def call(self, spec: StoreCall, args: dict[str, Any], wait: float = 0.0) -> Any:
        """Run one store call; with `wait`, the server may wait that long for a result (see
        `HttpBackend.claim_waiting`)."""
        payload = msgspec.msgpack.encode(spec.args_type(**args))
        path = f"/v1/store/{spec.feature}/{spec.name}"
        if wait > 0:
            path += f"?wait={wait:.3f}"
        try:
            status, body = await self.pool.post(path, payload, "application/msgpack")
        except self.wire_error as exc:
            if self.closed:  # the hub closed while the call was in flight
                raise HubClosed("The hub was closed during the call.") from None
            raise BackendUnavailable(
                f"The agentcomm server at {self.base} cannot be reached ({exc}); "
                "is `agentcomm serve` running?"
            ) from None
        if status != 200:
            raise _error(status, body)
        return from_wire(spec.result_decoder.decode(body))

    async def aclose(self) -> None:
        """Close the pool and the stream's client."""
        self.closed = True
        await self.pool.aclose()
        await self.client.aclose()


def _remote(feature: str, base: type) -> type:
    """A subclass of contract `base` whose every method is a store call."""
    methods: dict[str, Any] = {}
    for (feat, name), spec in CALLS.items():
        if feat != feature:
            continue

        def make(spec: StoreCall) -> Any:
            async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                bound = spec.signature.bind(self, *args, **kwargs)
                values = dict(bound.arguments)
                values.pop("self")
                values.pop("now", None)
                return await self._link.call(spec, values)

            method.__name__ = spec.name
            return method

        methods[name] = make(spec)

    def __init__(self: Any, link: _Link) -> None:
        self._link = link

    methods["__init__"] = __init__
    return type(f"Http{base.__name__}", (base,), methods)


_MAILBOXES = _remote("mailboxes", contracts.MailboxStore)
_TOPICS = _remote("topics", contracts.TopicStore)
_SHARED = _remote("shared_memory", contracts.SharedMemoryStore)
_REFS = _remote("references", contracts.ReferenceStore)
_POOLS = _remote("pools", contracts.PoolStore)
_LEASES = _remote("leases", contracts.LeaseStore)


class HttpBackend(contracts.Backend):
    """The contracts over an agentcomm server (see the module docstring)."""

    housekeeping_elsewhere = True
    #: Safety re-check while waiting: the event stream normally wakes waits at once.
    recheck_interval = 5.0
    #: Receives and requests wait on the server, in their call, this long at most (well
    #: under `CALL_TIMEOUT`); the event stream wakes every other wait.
    remote_wait = 5.0

    def __init__(self, url: str, retention: Retention, token: str | None) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigurationError(f"An http:// URL needs a host, e.g. http://127.0.0.1:8700, "
                                     f"not {url!r}.")  # fmt: skip
        try:
            import h11  # noqa: F401
            import httpx  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "connect('http://...') needs httpx: pip install 'agentcomm[client]'."
            ) from None
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._token = token
        self.retention = retention
        self.notifier = Notifier()
        self._link: _Link | None = None
        self._closed = False
        self._events: asyncio.Task[None] | None = None
        self._response: Any = None

    def _features(self, link: _Link) -> None:
        self.mailboxes = _MAILBOXES(link)
        self.topics = _TOPICS(link)
        self.shared_memory = _SHARED(link)
        self.references = _REFS(link)
        self.pools = _POOLS(link)
        self.leases = _LEASES(link)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    async def open(self) -> None:
        """Connect, check the token, and start following the server's wake-ups."""
        link = self._link = _Link(self._base, self._token)
        self._features(link)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._events = asyncio.ensure_future(self._follow(ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT + 5)
        except (AgentCommError, TimeoutError) as exc:
            await self.close()
            if isinstance(exc, AgentCommError):
                raise
            raise BackendUnavailable(
                f"The agentcomm server at {self._base} did not answer."
            ) from None

    async def _follow(self, ready: asyncio.Future[None]) -> None:
        """Forward the server's wake-ups to this backend's notifier, reconnecting as needed;
        ends on the closed flag (close() also ends the stream it reads)."""
        assert self._link is not None
        client = self._link.client
        delay = 0.1
        while not self._closed:
            try:
                async with client.stream("GET", "/v1/store/events", timeout=None) as resp:
                    self._response = resp
                    if resp.status_code != 200:
                        exc = _error(resp.status_code, await resp.aread())
                        if not ready.done():
                            ready.set_exception(exc)
                            return
                        raise exc
                    async for line in resp.aiter_lines():
                        if self._closed:
                            break
                        if line.startswith(": ready"):
                            delay = 0.1
                            if not ready.done():
                                ready.set_result(None)
                            else:  # reconnected: what was missed meanwhile, re-check
                                self.notifier.wake_all()
                        elif line.startswith("data: "):
                            self.notifier.notify(msgspec.json.decode(line[6:]))
            except AuthenticationFailed:
                logger.error("the agentcomm server no longer accepts this token")
            except (self._link.httpx.HTTPError, AgentCommError, msgspec.DecodeError) as exc:
                if not ready.done():
                    ready.set_exception(BackendUnavailable(
                        f"The agentcomm server at {self._base} cannot be reached ({exc!r}); "
                        "is `agentcomm serve` running?"))  # fmt: skip
                    return
            finally:
                self._response = None
            if self._closed:
                return
            self.notifier.wake_all()  # waits re-check while the stream is down
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Stop following wake-ups and close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._response is not None:
            with contextlib.suppress(Exception):
                await self._response.aclose()
        if self._events is not None:
            done, _ = await asyncio.wait((self._events,), timeout=_CLOSE_GRACE)
            if not done:
                self._events.cancel()
                await asyncio.wait((self._events,), timeout=1.0)
        if self._link is not None:
            await self._link.aclose()

    async def claim_waiting(
        self,
        agent: str,
        *,
        max_messages: int,
        lease: float,
        now: float,
        wait: float,
        also: tuple[str, ...] = (),
    ) -> Claimed:
        """A claim the server answers once a message is claimed or `wait` seconds passed:
        a receive that has to wait costs this one call, not a wake-up and another claim
        (the server hears no channel of `also`: the hub does not wait here when it must)."""
        args = {"agent": agent, "max_messages": max_messages, "lease": lease}
        return await self._checked_link().call(  # type: ignore[no-any-return]
            CALLS[("mailboxes", "claim")], args, wait=min(wait, self.remote_wait)
        )

    async def take_reply_waiting(self, correlation_id: str, *, wait: float) -> StoredReply | None:
        """A take of the reply the server answers once the reply is there or `wait` seconds
        passed: a request costs its send and this call."""
        args = {"correlation_id": correlation_id, "abandon": False}
        return await self._checked_link().call(  # type: ignore[no-any-return]
            CALLS[("mailboxes", "take_reply")], args, wait=min(wait, self.remote_wait)
        )

    def _checked_link(self) -> _Link:
        if self._link is None:
            raise BackendError("The http backend is not open.")
        return self._link

    async def _backend_call(self, name: str) -> Any:
        if self._link is None:
            raise BackendError("The http backend is not open.")
        return await self._link.call(CALLS[("backend", name)], {})

    async def prune(self, now: float) -> PruneReport:
        """A retention pass on the server (an admin token's)."""
        report: PruneReport = await self._backend_call("prune")
        return report

    async def stats(self) -> HubStats:
        """The server store's counters (an admin token's)."""
        stats: HubStats = await self._backend_call("stats")
        return stats

    async def check(self) -> CheckReport:
        """Damage checks run where the store is: `agentcomm check` on the server's URL."""
        return CheckReport("http", "nothing to check (run agentcomm check on the server)", [])
