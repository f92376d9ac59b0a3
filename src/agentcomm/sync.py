"""The blocking agentcomm API, for scripts, notebooks and threads.

    with agentcomm.sync.connect("sqlite:///agentcomm.db") as hub:
        agent = hub.agent("cli")
        agent.send("worker", {"task": 1})

The same API as `agentcomm`, without `await`: each hub runs the async implementation on an
event loop in a thread of its own (ended when the hub closes), and every method blocks until it
is done there. It works in a thread that runs an event loop of its own (Jupyter) too. The
classes here are made from the async ones (see docs/sync.md); `sync.pyi` gives type checkers
their signatures.
"""

from ._sync.introspect import proxied_classes as _proxied_classes
from ._sync.proxy import connect as connect
from ._sync.proxy import proxy_class as _proxy_class

for _cls in _proxied_classes():
    globals()[_cls.__name__] = _proxy_class(_cls)

__all__ = sorted(["connect", *(_c.__name__ for _c in _proxied_classes())])

del _cls
