"""What the async API looks like, read from the classes themselves.

One description serves the runtime proxies (`proxy.py`), the typed stubs (`stubgen.py`) and the
test that every async member has a blocking twin: nothing here lists methods by hand.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ASYNC_KINDS",
    "PROTOCOL",
    "Kind",
    "Member",
    "init_attributes",
    "is_async_function",
    "members",
    "needs_proxy",
    "proxied_classes",
]

#: Async protocol methods and their blocking twins.
PROTOCOL = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}


class Kind(enum.Enum):
    """How a member is used in the async API."""

    ASYNC = "async"  # `await obj.m(...)`
    ASYNC_ITER = "async-iter"  # `async for x in obj.m(...)`
    ASYNC_CM = "async-cm"  # `async with obj.m(...) as x` (an @asynccontextmanager method)
    PLAIN = "plain"  # `obj.m(...)` (its result awaited by the sync twin when awaitable)
    PROPERTY = "property"  # `obj.p`
    ATTRIBUTE = "attribute"  # an instance attribute (a slot)


#: The kinds of member that need a blocking twin.
ASYNC_KINDS = frozenset({Kind.ASYNC, Kind.ASYNC_ITER, Kind.ASYNC_CM})


@dataclass(frozen=True)
class Member:
    """One public member of an async class and the name of its blocking twin."""

    name: str
    sync_name: str
    kind: Kind
    obj: Any  # the function, the property or the slot descriptor

    @property
    def function(self) -> Callable[..., Any]:
        """The function behind a method or a property getter."""
        fn = self.obj.fget if isinstance(self.obj, property) else self.obj
        assert callable(fn)
        return fn


def is_async_function(fn: object) -> bool:
    """Whether calling `fn` gives a coroutine (also through `functools.wraps` decorators)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))  # type: ignore[arg-type]


def _kind(raw: object) -> Kind | None:
    if isinstance(raw, property):
        return Kind.PROPERTY
    if inspect.ismemberdescriptor(raw):
        return Kind.ATTRIBUTE
    if not inspect.isfunction(raw):
        return None  # constants, class methods, static methods, nested classes
    if inspect.isasyncgenfunction(raw):
        return Kind.ASYNC_ITER
    if inspect.isasyncgenfunction(inspect.unwrap(raw)):  # @contextlib.asynccontextmanager
        return Kind.ASYNC_CM
    if is_async_function(raw):
        return Kind.ASYNC
    return Kind.PLAIN


def members(cls: type) -> Iterator[Member]:
    """The public members of `cls` (and its async protocol methods), in name order; public
    attributes its `__init__` sets (`self.refs = ...`) count as attributes."""
    names = set(dir(cls))
    for name in sorted(names | set(init_attributes(cls))):
        if name.startswith("_") and name not in PROTOCOL:
            continue
        if name not in names:
            yield Member(name, name, Kind.ATTRIBUTE, None)
            continue
        raw = inspect.getattr_static(cls, name)
        kind = _kind(raw)
        if kind is None:
            continue
        yield Member(name, PROTOCOL.get(name, name), kind, raw)


@functools.cache
def init_attributes(cls: type) -> dict[str, ast.stmt]:
    """The public attributes `cls.__init__` assigns to `self`, with the assigning statement."""
    init = vars(cls).get("__init__")
    if not inspect.isfunction(init):
        return {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return {}
    found: dict[str, ast.stmt] = {}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    and not t.attr.startswith("_")
                ):
                    found.setdefault(t.attr, node)  # type: ignore[arg-type]
    return found


def needs_proxy(cls: type) -> bool:
    """Whether instances of `cls` need a blocking proxy: it has an async member."""
    if issubclass(cls, BaseException) or not cls.__module__.startswith("agentcomm"):
        return False
    return any(m.kind in ASYNC_KINDS for m in members(cls))


def proxied_classes() -> list[type]:
    """The public classes of `agentcomm` that get a blocking twin in `agentcomm.sync`."""
    import agentcomm

    found = [vars(agentcomm).get(name) for name in agentcomm.__all__]
    return [obj for obj in found if isinstance(obj, type) and needs_proxy(obj)]
