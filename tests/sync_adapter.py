"""The async API made back from the blocking one, so async scenarios can drive agentcomm.sync.

`AsyncView(sync_hub)` looks like an `agentcomm.Hub` to a scenario written for the async API:
each call the async API awaits runs the blocking twin in a worker thread (so every call goes
scenario -> worker thread -> agentcomm.sync proxy -> the sync hub's loop thread). Like the
proxies, it is made from the async classes' members, not written per method.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from agentcomm._sync.introspect import Kind, Member, members
from agentcomm._sync.proxy import SyncProxy

# more threads than any scenario has calls waiting at once (`gather` of 20 requests + a server)
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sync-view")


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    call = functools.partial(fn, *map(_unview, args), **{k: _unview(v) for k, v in kwargs.items()})
    return _view(await asyncio.get_running_loop().run_in_executor(_POOL, call))


def _view(value: Any) -> Any:
    if isinstance(value, SyncProxy):
        return AsyncView(value)
    if isinstance(value, list):
        return [_view(v) for v in value]
    return value


def _unview(value: Any) -> Any:
    if isinstance(value, AsyncView):
        return value._proxy
    if isinstance(value, (list, tuple)):
        return type(value)(_unview(v) for v in value)
    return value


class AsyncView:
    """An async-looking view of a blocking proxy (see the module docstring)."""

    def __init__(self, proxy: SyncProxy) -> None:
        self._proxy = proxy
        self._members: dict[str, Member] = {m.name: m for m in members(proxy.async_class)}

    def __repr__(self) -> str:
        return f"<view {self._proxy!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncView) and self._proxy == other._proxy

    def __hash__(self) -> int:
        return hash(self._proxy)

    def __getattr__(self, name: str) -> Any:
        member = self._members.get(name)
        twin = getattr(self._proxy, name)
        if member is None or member.kind in (Kind.PROPERTY, Kind.ATTRIBUTE):
            return _view(twin)
        if member.kind is Kind.ASYNC:
            return functools.partial(_in_thread, twin)
        if member.kind is Kind.ASYNC_ITER:
            return functools.partial(_iterate, twin)
        if member.kind is Kind.ASYNC_CM:
            return lambda *a, **k: _ContextView(twin(*map(_unview, a), **k))
        return lambda *a, **k: _view(twin(*map(_unview, a), **k))  # plain: it blocks briefly

    # a plain call's result may be awaited (`await agent.subscribe(...)`): it is ready already
    def __await__(self) -> Generator[Any, None, AsyncView]:
        if False:
            yield
        return self

    async def __aenter__(self) -> Any:
        return await _in_thread(self._proxy.__enter__)

    async def __aexit__(self, *exc_info: object) -> Any:
        return await _in_thread(self._proxy.__exit__, *exc_info)

    def __aiter__(self) -> AsyncView:
        return self

    async def __anext__(self) -> Any:
        done = object()
        item = await _in_thread(next, self._proxy, done)
        if item is done:
            raise StopAsyncIteration
        return item


class _ContextView:
    """`async with` over a blocking context manager."""

    def __init__(self, manager: AbstractContextManager[Any]) -> None:
        self._manager = manager

    async def __aenter__(self) -> Any:
        return await _in_thread(self._manager.__enter__)

    async def __aexit__(self, *exc_info: object) -> Any:
        return await _in_thread(self._manager.__exit__, *exc_info)


async def _iterate(
    open_: Callable[..., Iterator[Any]], *args: Any, **kwargs: Any
) -> AsyncIterator[Any]:
    iterator = await _in_thread(open_, *args, **kwargs)
    done = object()
    try:
        while (item := await _in_thread(next, iterator, done)) is not done:
            yield item
    finally:
        await _in_thread(iterator.close)
