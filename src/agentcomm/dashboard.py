"""The live dashboard of a hub: agents, queues, dead letters, topics, memory, references, pools.

    app = agentcomm.dashboard.build_dashboard_app(hub)     # a Starlette (ASGI) app
    uvicorn.run(app)                                        # or mount it in your own app

`agentcomm dashboard URL` serves it from the command line. It needs the `dashboard` extra
(`pip install 'agentcomm[dashboard]'`: Starlette, uvicorn, Jinja2). See docs/dashboard.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import ConfigurationError
from ._hub import Hub

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["build_dashboard_app"]


def build_dashboard_app(hub: Hub, *, title: str = "agentcomm") -> Starlette:
    """The dashboard of `hub` as a Starlette app, to serve or to mount under a path.

        Its pages are server-rendered and update live over server-sent events (`GET /events`)
        when the hub reports a change, at most once a second; `POST /api/redrive` requeues dead
        letters. The app never opens or closes `hub`: serve it on the event loop the hub runs
        on, and close the hub yourself (open pages then stop updating). It has no access
        control of its own: put it behind one when it is reachable by others (`agentcomm serve`
    serves it at `/dashboard` for admin tokens only).
    """
    if not isinstance(hub, Hub):
        raise ConfigurationError(
            f"build_dashboard_app() takes an agentcomm Hub (from agentcomm.connect()), not {hub!r}."
        )
    try:
        from ._dashboard.app import build_app
    except ImportError as exc:  # starlette / jinja2 missing: the dashboard is an optional extra
        missing = getattr(exc, "name", None) or "starlette/jinja2"
        raise ConfigurationError(
            f"The dashboard needs {missing!r}, which is not installed: "
            "pip install 'agentcomm[dashboard]'."
        ) from None
    return build_app(hub, title=title)
