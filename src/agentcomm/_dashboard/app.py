"""The dashboard's Starlette app: server-rendered pages, an SSE stream of page updates, redrive.

Each page is a template whose live part (`partials/<page>.html`) is rendered again for every
new snapshot and pushed to the page over `GET /events?page=<page>` (server-sent events); a
small script swaps it in. `POST /api/redrive` requeues dead letters.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._errors import AgentCommError, ValidationError
from .._hub import Hub
from .feed import Feed, FeedClosed
from .snapshot import Snapshot

__all__ = ["PAGES", "build_app"]

#: (page id, title, path) in menu order.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("agents", "Agents", "/"),
    ("flow", "Flow", "/flow"),
    ("dead", "Dead letters", "/dead-letters"),
    ("topics", "Topics", "/topics"),
    ("memory", "Shared memory", "/memory"),
    ("refs", "References", "/refs"),
    ("pools", "Pools", "/pools"),
)
_PAGE_IDS = {p[0] for p in PAGES}
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE = 15.0


def redacted(url: str) -> str:
    """`url` without a password (Redis URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _clock(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(ts: float | None, now: float) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m {s % 60:02.0f}s"
    if s < 86400:
        return f"{s // 3600:.0f}h {s % 3600 // 60:02.0f}m"
    return f"{s // 86400:.0f}d {s % 86400 // 3600:.0f}h"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agentcomm._dashboard", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["size"] = _size
    env.filters["clock"] = _clock
    env.filters["age"] = _age
    return env


class _Pages:
    def __init__(self, hub: Hub, title: str) -> None:
        self.hub = hub
        self.title = title
        self.feed = Feed(hub)
        self.env = _environment()

    def context(self, request: Request, page: str, snap: Snapshot) -> dict[str, Any]:
        return {
            "base": request.scope.get("root_path", "").rstrip("/"),
            "page": page,
            "pages": PAGES,
            "title": self.title,
            "url": redacted(snap.url),
            "snap": snap,
        }

    def partial(self, request: Request, page: str, snap: Snapshot) -> str:
        return self.env.get_template(f"partials/{page}.html").render(
            self.context(request, page, snap)
        )

    def handler(self, page: str) -> Any:
        async def handle(request: Request) -> Response:
            return await self.page(request, page)

        return handle

    async def page(self, request: Request, page: str) -> Response:
        try:
            snap = await self.feed.current()
        except FeedClosed:
            return HTMLResponse("The hub is closed.", status_code=503)
        html = self.env.get_template("page.html").render(
            self.context(request, page, snap) | {"live": self.partial(request, page, snap)}
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def events(self, request: Request) -> Response:
        page = request.query_params.get("page", "agents")
        if page not in _PAGE_IDS:
            return JSONResponse({"error": f"unknown page {page!r}"}, status_code=404)
        since = request.query_params.get("since", "")
        version = int(since) if since.isdigit() else 0

        async def stream() -> AsyncIterator[str]:
            nonlocal version
            last = ""
            yield "retry: 2000\n\n"
            try:
                async with self.feed.watching():
                    while True:
                        snap = await self.feed.next(version, KEEPALIVE)
                        if snap is None:
                            yield ": keep-alive\n\n"
                            continue
                        version = self.feed.version
                        html = self.partial(request, page, snap)
                        if html == last:
                            continue
                        last = html
                        data = json.dumps({"version": version, "at": snap.at, "html": html})
                        yield f"event: update\ndata: {data}\n\n"
            except FeedClosed:
                yield 'event: closed\ndata: "closed"\n\n'

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def redrive(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, status_code=415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("agent"), str):
            return JSONResponse(
                {"error": 'send {"agent": NAME} and optionally "ids": [MESSAGE_ID, ...]'},
                status_code=400,
            )
        ids = body.get("ids")
        try:
            if ids is not None and not isinstance(ids, list):
                raise ValidationError("ids must be a list of message ids.")
            count = await self.hub.requeue_dead_letters(body["agent"], ids)
        except AgentCommError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"requeued": count, "at": time.time()})

    async def snapshot_json(self, request: Request) -> Response:
        try:
            snap = await self.feed.current()
        except FeedClosed:
            return JSONResponse({"error": "the hub is closed"}, status_code=503)
        return JSONResponse(
            {
                "at": snap.at,
                "agents": [a.__dict__ for a in snap.agents],
                "dead_total": snap.dead_total,
                "flow": [f.__dict__ for f in snap.flow],
            }
        )


def build_app(hub: Hub, *, title: str = "agentcomm") -> Starlette:
    """The dashboard of `hub` as a Starlette app (see `agentcomm.dashboard`)."""
    pages = _Pages(hub, title)
    routes: list[Route | Mount] = [
        Route(path, pages.handler(page), name=page, methods=["GET"]) for page, _, path in PAGES
    ]
    routes += [
        Route("/events", pages.events, methods=["GET"]),
        Route("/api/redrive", pages.redrive, methods=["POST"]),
        Route("/api/snapshot", pages.snapshot_json, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("agentcomm._dashboard", "static")]), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard_feed = pages.feed
    return app
