"""The `agentcomm` command: `demo` runs a scenario, `inspect` shows a store, `check` checks it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._backends import DEFAULT_URL
from ._backends.sqlite.wake import wake_dir_for
from ._demo import DemoEvent, DemoResult, StoreSnapshot, run_demo, snapshot
from ._errors import AgentCommError, NotFound
from ._hub import Hub, connect
from ._models import AgentInfo, CheckReport, DeadLetter, HubStats, MailboxStats, ScheduleInfo

__all__ = ["app", "main"]

DEMO_PATH = "agentcomm-demo.db"

app = typer.Typer(
    name="agentcomm",
    help="Reliable messages between the agents of a multi-agent system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_STYLES = {
    "send": "blue",
    "receive": "default",
    "ack": "green",
    "nack": "yellow",
    "dead": "bold red",
    "request": "magenta",
    "reply": "magenta",
    "schedule": "cyan",
    "tick": "cyan",
    "info": "dim",
}


class _OutputClosed(Exception):
    """Nobody reads our output any more; the demo stops."""


def main() -> None:
    """Run the `agentcomm` command line."""
    app()


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn an agentcomm error into a red message and exit code 1, without a traceback."""
    try:
        yield
    except AgentCommError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    Console(stderr=True, highlight=False).print(
        Text(f"Error: {message}", style="bold red"), soft_wrap=True
    )
    raise typer.Exit(1)


@app.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option(help=f"Store to run on; must not exist yet. [default: sqlite:///{DEMO_PATH}]"),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the store afterwards.")] = False,
) -> None:
    """Run a small multi-agent scenario and print what happens, step by step."""
    console = Console(highlight=False)
    path: Path | None
    if url is None:
        path = Path(DEMO_PATH)
        _remove_store(path)
        url = f"sqlite:///{path}"
    else:
        path = _sqlite_path(url)
        if path is not None and path.exists():
            _fail(
                f"{path} already exists; the demo needs a fresh store. "
                "Remove it or pick another --url."
            )

    def show(event: DemoEvent) -> None:
        line = Text.assemble(
            (f"+{event.at:6.3f}s  ", "dim"),
            (f"{event.who:<9} ", "bold"),
            (event.what, _STYLES.get(event.kind, "default")),
        )
        if event.detail:
            line.append(f"  ({event.detail})", style="dim")
        try:
            console.print(line)
        except SystemExit as exc:  # rich's answer to a closed pipe, e.g. `agentcomm demo | head`
            raise _OutputClosed from exc

    console.rule(f"agentcomm demo on {url}")
    try:
        with _reported():
            result = asyncio.run(run_demo(url, show))
    except _OutputClosed:
        raise typer.Exit(1) from None
    finally:
        if path is not None and not keep:
            _remove_store(path)
    _print_summary(console, result)
    if path is None:
        return
    if keep:
        console.print(f"Store kept: look at it with [bold]agentcomm inspect {url}[/]")
    else:
        console.print(f"Store {path} removed (use --keep to look at it afterwards).")


@app.command()
def inspect(
    url: Annotated[
        str | None,
        typer.Argument(help="Store URL. [default: $AGENTCOMM_URL, else sqlite:///agentcomm.db]"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a store's agents, queue depths, in-flight messages, dead letters and schedules."""
    console = Console(highlight=False)
    with _reported():
        snap = asyncio.run(_snapshot(url))
    if as_json:
        typer.echo(msgspec.json.encode(snap, enc_hook=repr).decode())
        return
    console.print(Text(f"agentcomm store {snap.url}", style="bold"))
    _print_store(console, snap)
    if not snap.agents:  # Redis: the data may be under another prefix
        from ._cli_ops import print_prefix_hint

        print_prefix_hint(console, url)


async def _snapshot(url: str | None) -> StoreSnapshot:
    async with _existing(url) as hub:
        return await snapshot(hub)


def _existing(url: str | None) -> Hub:
    """A hub on the store at `url` that does nothing by itself (no schedules fired, no pruning);
    NotFound if it is a SQLite file that does not exist (opening would create it)."""
    hub = connect(url, background=False)
    path = _sqlite_path(hub.url)
    if path is not None and not path.is_file():
        raise NotFound(f"No agentcomm store at {path} ({hub.url}); check the path or the URL.")
    return hub


@app.command()
def check(
    url: Annotated[
        str | None,
        typer.Argument(help="Store URL. [default: $AGENTCOMM_URL, else sqlite:///agentcomm.db]"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a store for damage (SQLite: PRAGMA integrity_check); exit 1 if anything is wrong."""
    try:
        shown, report = asyncio.run(_check(url))
    except AgentCommError as exc:  # a store that cannot even be opened is the problem found
        shown = url or os.environ.get("AGENTCOMM_URL") or DEFAULT_URL
        scheme = urlsplit(shown).scheme.lower() or "?"
        report = CheckReport(scheme, "opening the store", [str(exc)])
    if as_json:
        typer.echo(json.dumps({"url": shown, "ok": report.ok, **msgspec.to_builtins(report)}))
    else:
        console = Console(highlight=False)
        if report.ok:
            console.print(f"{shown}: ok ({report.checked})")
        else:
            console.print(
                Text(f"{shown}: {len(report.problems)} problem(s) found", style="bold red")
            )
            for problem in report.problems:
                console.print(f"  - {problem}", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


async def _check(url: str | None) -> tuple[str, CheckReport]:
    async with _existing(url) as hub:
        return hub.url, await hub.check()


def _sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite:// URL (as the backend reads it); None for other schemes."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        return None
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    return Path(raw) if raw and raw != ":memory:" else None


def _remove_store(path: Path) -> None:
    """Delete a SQLite store: the file, its WAL and shared-memory files, its wake directory."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not there, or another hub still listens in it
        os.rmdir(wake_dir_for(str(path)))


def _print_summary(console: Console, result: DemoResult) -> None:
    console.rule(f"summary after {result.elapsed:.2f} s")
    _print_store(console, result.store)


def _print_store(console: Console, snap: StoreSnapshot) -> None:
    console.print(_agents_table(snap.agents, snap.mailboxes))
    console.print(_dead_table(snap.dead_letters))
    console.print(_schedules_table(snap.schedules))
    console.print(_stats_table(snap.stats))


def _when(ts: float) -> str:
    moment = datetime.fromtimestamp(ts).astimezone()
    same_day = moment.date() == datetime.now().astimezone().date()
    shown = moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")
    ago = time.time() - ts
    return f"{shown}, in {_span(-ago)}" if ago < 0 else f"{shown}, {_span(ago)} ago"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _agents_table(agents: list[AgentInfo], mailboxes: list[MailboxStats]) -> Table:
    table = Table(title="Agents", title_justify="left")
    table.add_column("agent", style="bold", no_wrap=True)
    table.add_column("last seen")
    for name in ("ready", "delayed", "in flight", "dead"):
        table.add_column(name, justify="right")
    for agent, box in zip(agents, mailboxes, strict=True):
        dead = Text(str(box.dead), style="red" if box.dead else "")
        table.add_row(
            agent.name,
            _when(agent.last_seen),
            str(box.ready),
            str(box.delayed),
            str(box.in_flight),
            dead,
        )
    if not agents:
        table.add_row("(none)", "", "", "", "", "")
    return table


def _dead_table(dead_letters: list[DeadLetter]) -> Table:
    table = Table(title="Dead letters", title_justify="left")
    table.add_column("id", no_wrap=True)
    for name in ("recipient", "type", "reason"):
        table.add_column(name)
    table.add_column("attempts", justify="right")
    for d in dead_letters:
        table.add_row(d.id, d.recipient, d.type, Text(d.reason, style="red"), str(d.attempts))
    if not dead_letters:
        table.add_row("(none)", "", "", "", "")
    return table


def _schedules_table(schedules: list[ScheduleInfo]) -> Table:
    table = Table(title="Schedules", title_justify="left")
    table.add_column("id", no_wrap=True)
    for name in ("from", "to", "type", "rule", "next run"):
        table.add_column(name)
    table.add_column("runs", justify="right")
    for s in schedules:
        if s.error is not None:  # parked: shown with its error, cancel it to remove it
            table.add_row(s.id, s.sender, s.recipient, s.type, Text(s.error, style="red"),
                          "never (parked)", str(s.runs))  # fmt: skip
            continue
        rule = f"cron {s.cron}" if s.cron is not None else f"every {s.every:g} s"
        table.add_row(s.id, s.sender, s.recipient, s.type, rule, _when(s.next_run), str(s.runs))
    if not schedules:
        table.add_row("(none)", "", "", "", "", "", "")
    return table


def _stats_table(stats: HubStats) -> Table:
    table = Table(title="Hub stats", title_justify="left")
    fields = HubStats.__struct_fields__
    for name in fields:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row(*(str(getattr(stats, name)) for name in fields))
    return table


# --- agents on the command line: the MCP server and the inbox hook -------------------------------


@app.command(name="mcp")
def mcp_command(
    url: Annotated[
        str | None,
        typer.Argument(help="Store URL. [default: $AGENTCOMM_URL, else sqlite:///agentcomm.db]"),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="The agent this server acts as. [default: $AGENTCOMM_AGENT]"),
    ] = None,
    tools: Annotated[
        str, typer.Option(help="Tool profile: 'default' (about a dozen) or 'all'.")
    ] = "default",
    retire_after: Annotated[
        float,
        typer.Option(help="Seconds an agent must be gone to be retired (skipped by broadcasts)."),
    ] = 3600.0,
) -> None:
    """Serve agentcomm as MCP tools over stdio, as one agent (for a coding agent's config)."""
    try:
        from ._mcp import McpOptions, run_stdio
    except ImportError as exc:
        _fail(f"The MCP server needs the mcp extra: pip install 'agentcomm[mcp]' ({exc}).")
        return
    name = agent or os.environ.get("AGENTCOMM_AGENT")
    if not name:
        _fail("Name the agent: --agent NAME, or set $AGENTCOMM_AGENT.")
        return
    if tools not in ("default", "all"):
        _fail(f"--tools takes 'default' or 'all', not {tools!r}.")
    options = McpOptions(tools="all" if tools == "all" else "default", retire_after=retire_after)
    with _reported():
        asyncio.run(run_stdio(url, name, options))


@app.command(name="inbox")
def inbox_command(
    url: Annotated[
        str | None,
        typer.Argument(help="Store URL. [default: $AGENTCOMM_URL, else sqlite:///agentcomm.db]"),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="Whose inbox. [default: $AGENTCOMM_AGENT]"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wait: Annotated[
        float, typer.Option(help="Wait up to this many seconds for mail to arrive.")
    ] = 0.0,
    limit: Annotated[int, typer.Option(help="Most messages to show.")] = 20,
) -> None:
    """Show an agent's unread mail without consuming it; exit 0 if there is mail, 1 if not.

    Made for a coding agent's hooks (session start, after a tool call) to tell the model.
    """
    name = agent or os.environ.get("AGENTCOMM_AGENT")
    if not name:
        _fail("Name the agent: --agent NAME, or set $AGENTCOMM_AGENT.")
        return
    with _reported():
        listed = asyncio.run(_inbox(url, name, wait, limit))
    now = time.time()
    if as_json:
        typer.echo(json.dumps({"agent": name, "count": len(listed), "messages": listed},
                              separators=(",", ":"), ensure_ascii=False, default=str))  # fmt: skip
    else:
        console = Console(highlight=False)
        if not listed:
            console.print(f"No mail for {name}.")
        for m in listed:
            thread = f"  thread {m['thread']}" if m.get("thread") else ""
            age = _span(now - m["sent_at"])
            console.print(f"{m['id']}  from {m['from']}  {m['type']}  {age} ago{thread}",
                          soft_wrap=True)  # fmt: skip
            console.print(f"  {m['preview']}", soft_wrap=True)
    if not listed:
        raise typer.Exit(1)


async def _inbox(url: str | None, agent: str, wait: float, limit: int) -> list[dict[str, Any]]:
    async with _existing(url) as hub:
        if wait > 0:
            await hub.wait_for_mail(agent, timeout=wait)
        listed = await hub.peek(agent, limit=max(1, min(limit, 1000)))
    out: list[dict[str, Any]] = []
    for p in listed:
        if p.state != "ready" and not p.visible_at <= time.time():
            continue  # leased by someone, or delayed: not unread mail now
        body = p.data if isinstance(p.data, str) else json.dumps(p.data, default=str)
        out.append({
            "id": p.id, "from": p.sender, "type": p.type, "sent_at": p.enqueued_at,
            "thread": (p.metadata or {}).get("thread"), "request": p.correlation_id is not None,
            "preview": body if len(body) <= 300 else body[:300] + "…",
        })  # fmt: skip
    return out


def _register_commands() -> None:
    """The command groups kept in their own modules (operators: `_cli_ops.py`; the dashboard:
    `_dashboard/command.py`)."""
    from ._cli_ops import register as register_ops
    from ._dashboard.command import register as register_dashboard

    register_ops(app)
    register_dashboard(app)


_register_commands()


# --- the server: `agentcomm serve` and `agentcomm token ...` -----------------------------------

token_app = typer.Typer(help="Bearer tokens of the agentcomm server (kept in the store as hashes).")
app.add_typer(token_app, name="token")


@app.command()
def serve(
    url: Annotated[
        str | None,
        typer.Argument(help="Store URL (default: $AGENTCOMM_URL, else the default file)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes (413 above).")] = 8
    * 1024
    * 1024,
    max_blob: Annotated[
        int, typer.Option(help="Largest blob POST /v1/refs takes, in bytes (413 above).")
    ] = 1024 * 1024 * 1024,
    max_wait: Annotated[float, typer.Option(help="Longest long poll, in seconds.")] = 60.0,
    rate: Annotated[
        float, typer.Option(help="Requests/s per token on average (0: unlimited).")
    ] = 0.0,
    burst: Annotated[int, typer.Option(help="Requests per token in a burst.")] = 200,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    mcp: Annotated[
        bool, typer.Option("--mcp/--no-mcp", help="Serve the MCP tools at /mcp (docs/mcp.md).")
    ] = True,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="Serve the live dashboard at /dashboard, for admin tokens (docs/dashboard.md).",
        ),
    ] = True,
) -> None:
    """Serve the store over HTTP (`/v1`, docs/server.md), the MCP tools at `/mcp` and the
    dashboard at `/dashboard`, until SIGTERM or Ctrl-C."""
    try:
        from ._server.limits import ServerSettings
        from ._server.run import serve as run
    except ImportError as exc:
        if exc.name not in ("starlette", "uvicorn", "httpx"):
            raise
        _fail(f"agentcomm serve needs {exc.name!r}: pip install 'agentcomm[server]'.")
        return
    settings = ServerSettings(
        max_body=max_body, max_blob=max_blob, max_wait=max_wait, rate=rate, burst=burst
    )
    mounts: dict[str, Any] = {}
    try:
        from ._server.mounts import dashboard_mount, mcp_mount

        if mcp:
            mounts["/mcp"] = mcp_mount()
        if dashboard:
            mounts["/dashboard"] = dashboard_mount()
    except ImportError as exc:
        flag = "--no-mcp" if mcp and exc.name and exc.name.startswith("mcp") else "--no-dashboard"
        _fail(f"agentcomm serve needs {exc.name!r} for {flag.removeprefix('--no-')}: pip install "
              f"'agentcomm[mcp,dashboard]', or pass {flag}.")  # fmt: skip
        return
    tls: dict[str, Any] = {}
    if ssl_certfile:
        tls = {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    with _reported():
        run(url, host=host, port=port, settings=settings, mounts=mounts, **tls)


def _tokens_run(url: str | None, work: Any) -> Any:
    from ._server.tokens import TokenStore

    async def go() -> Any:
        async with connect(url, background=False) as hub:
            return await work(TokenStore(hub._ctx.backend))

    with _reported():
        return asyncio.run(go())


@token_app.command("create")
def token_create(
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="Agent name or glob to act as (repeat).")
    ] = None,
    publish: Annotated[
        list[str] | None, typer.Option("--publish", help="Topic pattern to publish within.")
    ] = None,
    subscribe: Annotated[
        list[str] | None, typer.Option("--subscribe", help="Topic pattern to subscribe within.")
    ] = None,
    kv: Annotated[
        list[str] | None, typer.Option("--kv", help="NAMESPACE:r or NAMESPACE:rw (glob allowed).")
    ] = None,
    pool: Annotated[list[str] | None, typer.Option("--pool", help="Pool name or glob.")] = None,
    lease: Annotated[
        list[str] | None,
        typer.Option("--lease", help="Glob over the file patterns it may lease (src/api/*)."),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="Inspect, redrive, purge, tokens.")
    ] = False,
    label: Annotated[str, typer.Option(help="A note to recognize the token by.")] = "",
    url: Annotated[str | None, typer.Option(help="Store URL (default as connect()).")] = None,
) -> None:
    """Create a token and print it once (the store keeps only its hash)."""
    from ._server.authz import Principal

    spaces = {}
    for item in kv or []:
        name, _, access = item.rpartition(":")
        if not name or access not in ("r", "rw"):
            _fail(f"--kv takes NAMESPACE:r or NAMESPACE:rw, not {item!r}.")
        spaces[name] = access
    principal = Principal(
        agents=agent or [], publish=publish or [], subscribe=subscribe or [], kv=spaces,
        pools=pool or [], leases=lease or [], admin=admin,
    )  # fmt: skip
    token, info = _tokens_run(url, lambda store: store.create(principal, label))
    Console(stderr=True).print(f"token {info.id} created; it is shown once:")
    print(token)


@token_app.command("list")
def token_list(
    url: Annotated[str | None, typer.Option(help="Store URL (default as connect()).")] = None,
) -> None:
    """List the tokens (never their secrets)."""
    infos = _tokens_run(url, lambda store: store.list())
    table = Table("id", "label", "agents", "publish", "subscribe", "kv", "pools", "leases",
                  "admin", "created")  # fmt: skip
    for i in infos:
        p = i.principal
        table.add_row(
            i.id, i.label, " ".join(p.agents), " ".join(p.publish), " ".join(p.subscribe),
            " ".join(f"{k}:{v}" for k, v in p.kv.items()), " ".join(p.pools),
            " ".join(p.leases), "yes" if p.admin else "", _when(i.created_at),
        )  # fmt: skip
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (token list shows them).")],
    url: Annotated[str | None, typer.Option(help="Store URL (default as connect()).")] = None,
) -> None:
    """Revoke a token: the next request carrying it answers 401."""
    _tokens_run(url, lambda store: store.revoke(token_id))
    Console(stderr=True).print(f"token {token_id} revoked")
