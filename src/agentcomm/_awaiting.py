"""Coroutines that explain themselves when used without `await`.

`@awaitable` wraps an `async def` method so that calling it returns a `Pending`: a coroutine
like any other (`await`, `asyncio.create_task`, `gather` and `wait_for` accept it), whose
misuse — `hub.agent("cli").send(...)` or `agent.receive().data` without `await` — raises
`AsyncMisuse` saying what to write instead of Python's "coroutine.send() takes exactly one
argument" or "'coroutine' object has no attribute 'data'".
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from ._errors import AsyncMisuse

__all__ = ["Pending", "awaitable", "misuse"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def misuse(call: str, what: str) -> AsyncMisuse:
    """The error for `what` done on the result of the async call `call` without `await`."""
    return AsyncMisuse(
        f"{call}() is async: it returns a coroutine, which has no {what}. Await it first "
        f"(`result = await {call}(...)`), or in blocking code (scripts, notebooks, threads) "
        "use the blocking API: `with agentcomm.sync.connect(url) as hub: ...`."
    )


class Pending(Coroutine[Any, Any, _T]):
    """The coroutine an `@awaitable` method returns: await it for the result."""

    __slots__ = ("_call", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, _T], call: str) -> None:
        self._coro = coro
        self._call = call

    def __await__(self) -> Generator[Any, None, _T]:
        return self._coro.__await__()

    if TYPE_CHECKING:  # what type checkers see: `hub.agent("a").send("b", 1)` is flagged

        def send(self, value: Any) -> Any:
            """Coroutine protocol: resume the call."""

    else:

        def send(self, value: Any, *args: Any, **kwargs: Any) -> Any:
            """Coroutine protocol: resume the call (an event loop sends None)."""
            created = inspect.getcoroutinestate(self._coro) == "CORO_CREATED"
            if args or kwargs or (value is not None and created):
                self._fail(".send() method")
            return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Coroutine protocol: raise in the call."""
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        """Coroutine protocol: abandon the call."""
        self._coro.close()

    if not TYPE_CHECKING:  # at runtime only, so that type checkers flag `receive().data`

        def __getattr__(self, name: str) -> Any:
            # asyncio and debuggers probe the coroutine's own attributes (a task's repr asks
            # `hasattr(coro, "gi_frame")`): theirs, or AttributeError, never AsyncMisuse
            if name.startswith(("_", "cr_", "gi_", "ag_")):
                return getattr(self._coro, name)
            self._fail(f"attribute {name!r}")

    def __repr__(self) -> str:
        return f"<coroutine {self._call}() (await it)>"

    def _fail(self, what: str) -> NoReturn:
        self._coro.close()  # it can no longer be awaited usefully: no "never awaited" noise
        raise misuse(self._call, what)


def awaitable(fn: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, Pending[_T]]:
    """Make the async method `fn` return a `Pending` that explains a missing `await`."""
    owner, _, method = fn.__qualname__.rpartition(".")
    call = f"{owner.lower()}.{method}" if owner else method

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Pending[_T]:
        return Pending(fn(*args, **kwargs), call)

    return wrapper
