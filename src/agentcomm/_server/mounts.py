"""What `agentcomm serve` mounts besides `/v1`: the MCP tools at `/mcp` and the dashboard at
`/dashboard`, each behind the server's tokens.

- `/mcp` (streamable HTTP, stateless): every request carries `Authorization: Bearer act_...`.
  The tools act as the one agent the token names exactly: its `agents` must hold exactly one
  name without glob characters (`token create --agent alice`); a token of several agents, of
  globs only, or none is refused (403), an unknown or revoked one too (401). No tool takes an
  agent name to act as, so a token reaches only its own agent's inbox. Every other grant is
  checked per tool call by `authz.ToolChecks` (shared memory, topics, file reservations, and
  which agents and reservations are listed), as on `/v1`.
- `/dashboard`: every request (pages, the event stream, static files, the redrive POST)
  needs an admin token (401 without one, 403 for a non-admin token): a bearer header, or for
  a browser `?token=act_...` once, which sets an HttpOnly cookie and redirects to the same page
  without the token in the address.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import AgentCommError, AuthenticationFailed, PermissionDenied
from .app import ServerState
from .authz import ToolChecks, need_act_as, need_admin
from .errors import error_response
from .tokens import TokenInfo

if TYPE_CHECKING:
    from .._mcp import McpOptions

__all__ = ["COOKIE", "agent_of", "dashboard_mount", "mcp_mount"]

#: The cookie a browser keeps the dashboard's admin token in.
COOKIE = "agentcomm_dashboard"
_GLOB = set("*?[]")

#: A request check: None lets the request through, a Response answers it instead.
Check = Callable[[Request], Awaitable[Response | None]]


class _Guard:
    """An ASGI app that runs `check` on every HTTP request before `app` sees it."""

    def __init__(self, app: ASGIApp, check: Check) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                answer = await self.check(Request(scope, receive))
            except Exception as exc:  # typed errors become bodies (401, 403, 429); else 500
                answer = error_response(exc)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def agent_of(info: TokenInfo) -> str:
    """The agent an MCP call made with this token acts as (PermissionDenied if not one)."""
    exact = [a for a in info.principal.agents if not _GLOB & set(a)]
    if len(exact) != 1:
        raise PermissionDenied(
            "MCP over HTTP acts as the one agent its token names exactly; this token names "
            f"{', '.join(info.principal.agents) or 'no agent'}. Use a token made with "
            "`agentcomm token create --agent NAME`."
        )
    need_act_as(info.principal, exact[0])
    return exact[0]


def mcp_mount(
    options: McpOptions | None = None, *, host_check: bool = False
) -> Callable[[ServerState], ASGIApp]:
    """A `build_app` mount factory for the MCP tools (`McpOptions` or None for the defaults);
    see the module docstring for how a token picks the agent."""
    from mcp.server.mcpserver.exceptions import ToolError

    from .._mcp import Caller, http_app

    def factory(state: ServerState) -> ASGIApp:
        async def resolve(token: str) -> Caller:
            try:  # checked per call too: a token revoked mid-session stops at its next call
                info = await state.tokens.authenticate(token)
                return Caller(agent_of(info), ToolChecks(info.principal))
            except AgentCommError as exc:
                raise ToolError(str(exc)) from exc

        async def check(request: Request) -> Response | None:
            token = _bearer(request)
            if token is None:
                raise AuthenticationFailed(
                    "Send your agent's token: 'Authorization: Bearer act_...' "
                    "(agentcomm token create --agent NAME)."
                )
            info = await state.tokens.authenticate(token)
            state.limiter.take(info.id)
            agent_of(info)
            return None

        app, lifespan = http_app(state.hub, resolve, options, path="/", host_check=host_check)
        state.lifespans.append(lifespan)
        return _Guard(app, check)

    return factory


def dashboard_mount(*, title: str = "agentcomm") -> Callable[[ServerState], ASGIApp]:
    """A `build_app` mount factory for the live dashboard, for admin tokens only (see the
    module docstring)."""
    from .._dashboard.app import build_app  # ImportError here when the extra is missing

    def factory(state: ServerState) -> ASGIApp:
        app = build_app(state.hub, title=title)
        state.on_stop.append(app.state.dashboard_feed.close)  # end open event streams at once

        async def check(request: Request) -> Response | None:
            query = request.query_params.get("token")
            token = _bearer(request) or query or request.cookies.get(COOKIE)
            if not token:
                root = request.scope.get("root_path", "") or "/"
                raise AuthenticationFailed(
                    "The dashboard needs an admin token: send 'Authorization: Bearer act_...', "
                    f"or open {root}?token=act_... once in a browser (it sets a cookie)."
                )
            info = await state.tokens.authenticate(token)
            state.limiter.take(info.id)
            need_admin(info.principal, "The dashboard")
            if query is None or _bearer(request):
                return None
            # a browser's first visit: keep the token in a cookie, drop it from the address
            clean = request.url.remove_query_params("token")
            answer = RedirectResponse(str(clean), status_code=303)
            answer.set_cookie(
                COOKIE, token, httponly=True, samesite="lax",
                path=request.scope.get("root_path", "") or "/",
                secure=request.url.scheme == "https",
            )  # fmt: skip
            return answer

        return _Guard(app, check)

    return factory
