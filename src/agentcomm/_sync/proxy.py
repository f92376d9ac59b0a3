"""Blocking proxies of the async objects, made from the classes at import time.

Every public member of an async class becomes a member of its proxy class (see `members`):
a method runs on the hub's loop thread and the caller blocks for its result; a result that is
awaitable (`agent.subscribe(...)`) is awaited there; an async iterator comes back as a blocking
generator; `__aenter__` / `__aexit__` / `__aiter__` / `__anext__` get `__enter__` / `__exit__`
/ `__iter__` / `__next__` twins, `aclose` a `close` twin. Results that are agentcomm objects
with async members are wrapped in their proxies; proxies given as arguments are unwrapped.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import threading
import types
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, ClassVar

from .._errors import AgentCommError
from .introspect import Kind, Member, members, needs_proxy
from .runner import LoopThread

__all__ = ["SyncProxy", "connect", "proxy_class", "unwrap", "wrap"]


class SyncProxy:
    """Base of the blocking proxies: holds the async object and the loop thread it runs on."""

    __slots__ = ("__weakref__", "_owner", "_runner", "_target")
    #: The async class this proxy class stands for.
    async_class: ClassVar[type]

    def __init__(self, target: Any, runner: LoopThread, *, owner: bool = False) -> None:
        self._target = target
        self._runner = runner
        self._owner = owner  # the hub `connect()` made: closing it ends the loop thread

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SyncProxy):
            return bool(self._target == other._target)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._target)

    def __getattr__(self, name: str) -> Any:
        # what the class did not list: attributes an object sets on itself later
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._target, name)
        if inspect.ismethod(value):
            return functools.partial(self._call, value)
        return wrap(value, self._runner)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        args = tuple(unwrap(a) for a in args)
        kwargs = {k: unwrap(v) for k, v in kwargs.items()}
        result = self._runner.run(_invoke(fn, args, kwargs))
        if result is self._target:
            return self
        return wrap(result, self._runner)

    def _closing(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`aclose()` / `__aexit__()`: the owner hub also ends its loop thread afterwards.
        Like the async `aclose()`, idempotent: after the hub closed it does nothing."""
        if self._runner.closed:
            return None
        try:
            return self._call(fn, *args)
        finally:
            if self._owner:
                _open_hubs.discard(self)
                self._runner.close()


async def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call `fn` on the loop thread; an awaitable result is awaited (once)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _next(iterator: AsyncIterator[Any]) -> Any:
    return await iterator.__anext__()


def _iterate(iterator: AsyncIterator[Any], runner: LoopThread) -> Generator[Any, None, None]:
    """A blocking generator over an async iterator; closing it closes the async one."""
    try:
        while True:
            try:
                item = runner.run(_next(iterator))
            except StopAsyncIteration:
                return
            yield wrap(item, runner)
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None and not runner.closed and not runner.in_loop_thread():
            with contextlib.suppress(AgentCommError):
                runner.run(_invoke(close, (), {}))


_SCALARS = (str, bytes, int, float, bool, type(None))
_proxy_classes: dict[type, type[SyncProxy] | None] = {}
_classes_lock = threading.Lock()


def proxy_class(cls: type) -> type[SyncProxy]:
    """The blocking proxy class of the async class `cls` (made once)."""
    made = _proxy_for(cls)
    if made is None:
        raise TypeError(f"{cls.__name__} has no async members; it needs no blocking proxy.")
    return made


def _proxy_for(cls: type) -> type[SyncProxy] | None:
    try:
        return _proxy_classes[cls]
    except KeyError:
        pass
    with _classes_lock:
        if cls not in _proxy_classes:
            _proxy_classes[cls] = _make_class(cls) if needs_proxy(cls) else None
        return _proxy_classes[cls]


def _make_class(cls: type) -> type[SyncProxy]:
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": "agentcomm.sync",
        "__qualname__": cls.__name__,
        "__doc__": f"Blocking twin of `agentcomm.{cls.__name__}` (see agentcomm.sync).\n\n"
        + (inspect.getdoc(cls) or ""),
        "async_class": cls,
    }
    for member in members(cls):
        namespace[member.sync_name] = _twin(member)
        if member.name == "aclose":
            namespace["close"] = _twin(member, "close")
    return type(cls.__name__, (SyncProxy,), namespace)


def _twin(member: Member, sync_name: str | None = None) -> Any:
    name = member.name
    if member.kind in (Kind.PROPERTY, Kind.ATTRIBUTE):
        doc = inspect.getdoc(member.obj) if member.kind is Kind.PROPERTY else None

        def get(self: SyncProxy) -> Any:
            return wrap(getattr(self._target, name), self._runner)

        return property(get, doc=doc)
    if name == "__anext__":

        def method(self: SyncProxy, /, *args: Any, **kwargs: Any) -> Any:
            try:
                return self._call(self._target.__anext__)
            except StopAsyncIteration:
                raise StopIteration from None

    elif name in ("aclose", "__aexit__"):

        def method(self: SyncProxy, /, *args: Any, **kwargs: Any) -> Any:
            return self._closing(getattr(self._target, name), *args, **kwargs)

    else:

        def method(self: SyncProxy, /, *args: Any, **kwargs: Any) -> Any:
            return self._call(getattr(self._target, name), *args, **kwargs)

    method.__name__ = method.__qualname__ = sync_name or member.sync_name
    method.__doc__ = inspect.getdoc(member.obj)
    with contextlib.suppress(TypeError, ValueError):
        method.__signature__ = inspect.signature(member.obj)  # type: ignore[attr-defined]
    return method


def wrap(value: Any, runner: LoopThread) -> Any:
    """`value` as the blocking API returns it: agentcomm objects in their proxies, async
    iterators as blocking generators, lists / tuples / dicts of those with their items wrapped
    (one level; anything else, payloads included, is returned as it is)."""
    if isinstance(value, _SCALARS):
        return value
    made = _proxy_for(type(value))
    if made is not None:
        return made(value, runner)
    if isinstance(value, (list, tuple)):
        items = [wrap(v, runner) for v in value]
        if any(a is not b for a, b in zip(items, value, strict=True)):
            return items if isinstance(value, list) else tuple(items)
        return value
    if isinstance(value, dict):
        out = {k: wrap(v, runner) for k, v in value.items()}
        return out if any(out[k] is not v for k, v in value.items()) else value
    if isinstance(value, AsyncIterator):
        return _iterate(value, runner)
    if isinstance(value, contextlib.AbstractAsyncContextManager):
        return SyncContext(value, runner)
    return value


class SyncContext(contextlib.AbstractContextManager[Any]):
    """A blocking context manager over an async one (`with msg.auto_extend(): ...`)."""

    __slots__ = ("_manager", "_runner")

    def __init__(self, manager: contextlib.AbstractAsyncContextManager[Any], runner: LoopThread):
        self._manager = manager
        self._runner = runner

    def __enter__(self) -> Any:
        return wrap(self._runner.run(_invoke(self._manager.__aenter__, (), {})), self._runner)

    def __exit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = self._runner.run(_invoke(self._manager.__aexit__, exc_info, {}))
        return result


def unwrap(value: Any) -> Any:
    """An argument as the async API takes it: proxies replaced by their async objects (also
    in lists, tuples, sets, dict values and generators, one level)."""
    if isinstance(value, SyncProxy):
        return value._target
    if isinstance(value, (list, tuple, set, frozenset)) and any(
        isinstance(v, SyncProxy) for v in value
    ):
        return type(value)(unwrap(v) for v in value)
    if isinstance(value, dict) and any(isinstance(v, SyncProxy) for v in value.values()):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, types.GeneratorType):
        return (unwrap(v) for v in value)
    return value


#: Hubs opened by `connect()` and not closed yet: closed when the interpreter exits (held
#: strongly: a hub dropped while its agents are still in use must stay open).
_open_hubs: set[SyncProxy] = set()


@atexit.register
def _close_open_hubs() -> None:
    for hub in list(_open_hubs):
        with contextlib.suppress(Exception):
            hub.aclose()


def connect(*args: Any, **kwargs: Any) -> Any:
    """Open a blocking hub: `agentcomm.connect(*args, **kwargs)` run on a loop thread it owns."""
    import agentcomm

    runner = LoopThread()
    try:
        hub = runner.run(_invoke(agentcomm.connect, args, kwargs))
    except BaseException:
        runner.close()
        raise
    proxy = proxy_class(type(hub))(hub, runner, owner=True)
    _open_hubs.add(proxy)
    return proxy
