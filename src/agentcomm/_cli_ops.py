"""The operator commands of `agentcomm`: look at a store and act on it, each a thin layer over
public hub calls. Every command takes `--url` (default as `connect()`: $AGENTCOMM_URL, else
sqlite:///agentcomm.db) and `--json` (one JSON document, or one JSON line per event or refresh
for `tail` and `--watch`); without `--json` it prints tables.

`register(app)` adds them to the `agentcomm` app (see `_cli.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console, RenderableType
from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from ._cli import _existing, _fail, _reported, _schedules_table, _span, _when
from ._errors import AgentCommError, ValidationError
from ._hub import Hub
from ._models import DeadLetter, PeekedMessage
from ._pools import PoolSnapshot

__all__ = ["print_prefix_hint", "register"]

Url = Annotated[
    str | None,
    typer.Option("--url", help="Store URL. [default: $AGENTCOMM_URL, else sqlite:///agentcomm.db]"),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Watch = Annotated[bool, typer.Option("--watch", help="Refresh until interrupted (Ctrl-C).")]
Interval = Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between refreshes.")]
Count = Annotated[
    int | None, typer.Option("--count", min=1, help="Stop after this many refreshes or events.")
]
Limit = Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Most rows to list.")]

#: Characters of a payload shown in a table.
PREVIEW = 60

_json = msgspec.json.Encoder(enc_hook=repr)


def _echo_json(obj: Any) -> None:
    typer.echo(_json.encode(_builtins(obj)).decode())


def _builtins(obj: Any) -> Any:
    """`obj` as JSON-ready values (structs as dicts; anything unknown as its repr)."""
    return msgspec.to_builtins(obj, enc_hook=repr)


def _preview(data: Any, width: int = PREVIEW) -> str:
    try:
        shown = _json.encode(data).decode()
    except (TypeError, ValueError, OverflowError):
        shown = repr(data)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _console() -> Console:
    return Console(highlight=False)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    with _reported(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())  # type: ignore[arg-type]


#: What a listing command builds from the hub: its JSON value and its table.
Build = Callable[[Hub], Awaitable[tuple[Any, RenderableType]]]


def _show(
    url: str | None,
    as_json: bool,
    build: Build,
    *,
    watch: bool = False,
    interval: float = 2.0,
    count: int | None = None,
) -> None:
    """Print what `build` makes once, or every `interval` seconds with `watch`."""
    console = _console()

    async def main() -> None:
        async with _existing(url) as hub:
            shown = 0
            while True:
                data, table = await build(hub)
                if as_json:
                    _echo_json(data)
                else:
                    if watch:
                        console.clear()
                    console.print(table)
                shown += 1
                if not watch or (count is not None and shown >= count):
                    return
                await asyncio.sleep(interval)

    _run(main)


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left")
    return table


def _none(table: Table) -> Table:
    if not table.rows:
        table.add_row("(none)", *([""] * (len(table.columns) - 1)))
    return table


def _age(ts: float | None) -> str:
    return "" if ts is None else _span(max(time.time() - ts, 0.0))


# --- agents and mailboxes ------------------------------------------------------------------------


def agents(
    url: Url = None,
    as_json: AsJson = False,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """List agents with their state and queue depths (ready, delayed, in flight, dead)."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        rows = []
        table = _table(
            "Agents",
            "agent",
            "state",
            "last seen",
            "ready",
            "delayed",
            "in flight",
            "dead",
            right=("ready", "delayed", "in flight", "dead"),
        )
        for a in await hub.agents():
            box = await hub.mailbox_stats(a.name)
            rows.append(
                {
                    **_builtins(a),
                    "ready": box.ready,
                    "delayed": box.delayed,
                    "in_flight": box.in_flight,
                    "dead": box.dead,
                }
            )
            dead = Text(str(box.dead), style="red" if box.dead else "")
            table.add_row(
                a.name,
                a.state,
                _when(a.last_seen),
                str(box.ready),
                str(box.delayed),
                str(box.in_flight),
                dead,
            )
        return rows, _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


def _peek_row(table: Table, m: PeekedMessage) -> None:
    payload = Text(m.error, style="red") if m.error else _preview(m.data)
    table.add_row(
        m.id,
        m.state,
        m.sender,
        m.type,
        _age(m.enqueued_at),
        f"{m.attempt}/{m.max_attempts}",
        str(m.size),
        payload,
    )


def _peek_table(title: str) -> Table:
    return _table(
        title,
        "id",
        "state",
        "from",
        "type",
        "age",
        "attempts",
        "size",
        "payload",
        right=("attempts", "size"),
    )


def peek(
    agent: Annotated[str, typer.Argument(help="The agent whose mailbox to look into.")],
    url: Url = None,
    as_json: AsJson = False,
    limit: Limit = 100,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """Show an agent's ready, delayed and in-flight messages with their payloads, best first,
    without consuming them."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        messages = await hub.peek(agent, limit=limit)
        box = await hub.mailbox_stats(agent)
        total = box.ready + box.delayed + box.in_flight
        more = max(total - len(messages), 0)
        table = _peek_table(f"Mailbox of {agent}")
        for m in messages:
            _peek_row(table, m)
        if more:
            table.caption = f"{more} more not shown (raise --limit)"
        data = {"agent": agent, "total": total, "more": more, "messages": messages}
        return data, _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


def tail(
    agent: Annotated[
        str | None, typer.Argument(help="Follow the messages arriving in this agent's mailbox.")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Follow publishes to topics matching PATTERN.")
    ] = None,
    url: Url = None,
    as_json: AsJson = False,
    count: Count = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between mailbox looks.")
    ] = 0.5,
) -> None:
    """Follow live: an agent's mailbox (its messages as they arrive, not consumed) or the
    publishes to topics matching `--topic` (`*` one token, `>` the rest). Ctrl-C stops."""
    if (agent is None) == (topic is None):
        _fail("Give an AGENT to follow its mailbox, or --topic PATTERN to follow topics.")
    console = _console()
    seen = 0

    def done() -> bool:
        nonlocal seen
        seen += 1
        return count is not None and seen >= count

    async def follow_topic(hub: Hub, pattern: str) -> None:
        async with hub.subscribe(pattern) as sub:
            async for msg in sub:
                if as_json:
                    _echo_json(
                        {
                            "sequence": msg.sequence,
                            "topic": msg.topic,
                            "sender": msg.sender,
                            "type": msg.type,
                            "published_at": msg.published_at,
                            "data": msg.data,
                            "metadata": msg.metadata,
                        }
                    )
                else:
                    console.print(
                        Text.assemble(
                            (time.strftime("%H:%M:%S ", time.localtime(msg.published_at)), "dim"),
                            (f"{msg.topic} ", "bold"),
                            f"{msg.sender} ",
                            (f"{msg.type} ", "cyan"),
                            _preview(msg.data, 120),
                        ),
                        soft_wrap=True,
                    )
                if done():
                    return

    async def follow_mailbox(hub: Hub, name: str) -> None:
        known: set[str] = set()
        while True:
            for m in await hub.peek(name, limit=10_000):
                if m.id in known:
                    continue
                known.add(m.id)
                if as_json:
                    _echo_json(m)
                else:
                    console.print(
                        Text.assemble(
                            (time.strftime("%H:%M:%S ", time.localtime(m.enqueued_at)), "dim"),
                            (f"{m.sender} -> {m.recipient} ", "bold"),
                            (f"{m.type} ", "cyan"),
                            (f"[{m.state}] ", "dim"),
                            _preview(m.data, 120),
                        ),
                        soft_wrap=True,
                    )
                if done():
                    return
            await asyncio.sleep(interval)

    async def main() -> None:
        async with _existing(url) as hub:
            if topic is not None:
                await follow_topic(hub, topic)
            else:
                assert agent is not None
                await follow_mailbox(hub, agent)

    _run(main)


def _dead_row(table: Table, d: DeadLetter) -> None:
    payload = Text(d.error, style="red") if d.error else _preview(d.data)
    table.add_row(
        d.id,
        d.recipient,
        d.sender,
        d.type,
        Text(d.reason, style="red"),
        str(d.attempts),
        _age(d.dead_at),
        payload,
    )


def dead_letters(
    agent: Annotated[str | None, typer.Argument(help="Only this agent's. [default: all]")] = None,
    url: Url = None,
    as_json: AsJson = False,
    limit: Limit = 100,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """List dead letters with their reason and payload, oldest first, and how many more there
    are beyond `--limit` (per agent)."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        names = [agent] if agent is not None else [a.name for a in await hub.agents()]
        table = _table(
            "Dead letters",
            "id",
            "agent",
            "from",
            "type",
            "reason",
            "attempts",
            "dead for",
            "payload",
            right=("attempts",),
        )
        letters: list[DeadLetter] = []
        total = 0
        for name in names:
            dead = (await hub.mailbox_stats(name)).dead
            total += dead
            if dead:
                letters += await hub.dead_letters(name, limit=limit)
        for d in letters:
            _dead_row(table, d)
        more = max(total - len(letters), 0)
        if more:
            table.caption = f"{more} more not shown (raise --limit)"
        return {"total": total, "more": more, "letters": letters}, _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


def redrive(
    agent: Annotated[str, typer.Argument(help="The agent whose dead letters to deliver again.")],
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="A dead letter's id (repeat for more).")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter of AGENT.")] = False,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Deliver dead letters again with fresh attempts: those given by `--id`, or `--all`."""
    if bool(ids) == everything:
        _fail("Say which dead letters to redrive: --id ID (repeatable) or --all.")

    async def main() -> None:
        async with _existing(url) as hub:
            n = await hub.requeue_dead_letters(agent, None if everything else list(ids or ()))
        if as_json:
            _echo_json({"agent": agent, "requeued": n})
        else:
            _console().print(f"{n} dead letter(s) of {agent} requeued.")
        if ids and n < len(ids):
            raise typer.Exit(1)  # some ids were not dead letters of AGENT

    _run(main)


def purge(
    agent: Annotated[str, typer.Argument(help="The agent whose mailbox to empty.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
    with_dead: Annotated[
        bool, typer.Option("--dead-letters", help="Remove its dead letters too.")
    ] = False,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Remove every ready, delayed and in-flight message of AGENT (with `--dead-letters`, its
    dead letters too). Needs `--yes`."""

    async def main() -> None:
        async with _existing(url) as hub:
            if not yes:
                box = await hub.mailbox_stats(agent)
                n = box.ready + box.delayed + box.in_flight + (box.dead if with_dead else 0)
                _fail(f"This removes {n} message(s) of {agent} for good; add --yes to do it.")
            removed = await hub.purge(agent, dead_letters=with_dead)
        if as_json:
            _echo_json({"agent": agent, "removed": removed})
        else:
            _console().print(f"{removed} message(s) of {agent} removed.")

    _run(main)


def delete(
    message_id: Annotated[str, typer.Argument(help="The id of the message to remove.")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="Its recipient. [default: look in every one]")
    ] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Remove one message (ready, delayed, in flight or dead) by id; exit 1 if none has it."""

    async def main() -> None:
        async with _existing(url) as hub:
            names = [agent] if agent is not None else [a.name for a in await hub.agents()]
            found = None
            for name in names:
                if await hub.delete_message(name, message_id):
                    found = name
                    break
        if as_json:
            _echo_json({"id": message_id, "agent": found, "deleted": found is not None})
        elif found is not None:
            _console().print(f"Message {message_id} removed from {found}'s mailbox.")
        if found is None:
            if not as_json:
                where = f"{agent}'s mailbox" if agent else "any mailbox"
                _fail(f"No message {message_id} in {where} (acked, expired or never sent?).")
            raise typer.Exit(1)

    _run(main)


# --- schedules -----------------------------------------------------------------------------------


def schedules(url: Url = None, as_json: AsJson = False) -> None:
    """List schedules, soonest first."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        found = await hub.schedules()
        return found, _schedules_table(found)

    _show(url, as_json, build)


def cancel_schedule(
    schedule_id: Annotated[str, typer.Argument(help="The schedule's id (see `schedules`).")],
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a schedule; exit 1 if there is none with that id."""

    async def main() -> None:
        async with _existing(url) as hub:
            cancelled = await hub.cancel_schedule(schedule_id)
        if as_json:
            _echo_json({"id": schedule_id, "cancelled": cancelled})
        elif cancelled:
            _console().print(f"Schedule {schedule_id} cancelled.")
        if not cancelled:
            if not as_json:
                _fail(f"No schedule {schedule_id}; list them with `agentcomm schedules`.")
            raise typer.Exit(1)

    _run(main)


# --- topics --------------------------------------------------------------------------------------


def topics(
    url: Url = None,
    as_json: AsJson = False,
    window: Annotated[
        float,
        typer.Option("--window", min=0.0, help="Seconds to measure publish rates over (0: none)."),
    ] = 1.0,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """List topics: publishes and their rate, deliveries, drops, subscribers (durable consumers
    and this command's hub), records retained in the log, last publish."""
    last: dict[str, tuple[int, float]] = {}

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        if not last and window > 0:  # the first sample: rates need two
            last.update({t.name: (t.published, time.monotonic()) for t in await hub.topics()})
            await asyncio.sleep(window)
        now = time.monotonic()
        rows = []
        table = _table(
            "Topics",
            "topic",
            "published",
            "per s",
            "delivered",
            "dropped",
            "subscribers",
            "retained",
            "last publish",
            right=("published", "per s", "delivered", "dropped", "subscribers", "retained"),
        )
        for t in await hub.topics():
            before = last.get(t.name)
            rate = None
            if window > 0:
                published, at = before if before is not None else (0, now - window)
                rate = (t.published - published) / max(now - at, 1e-9)
            last[t.name] = (t.published, now)
            rows.append({**_builtins(t), "rate": rate})
            table.add_row(
                t.name,
                str(t.published),
                "" if rate is None else f"{rate:.1f}",
                str(t.delivered),
                str(t.dropped),
                str(t.subscribers),
                str(t.retained),
                "" if t.last_publish is None else _when(t.last_publish),
            )
        return rows, _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


def consumers(
    url: Url = None,
    as_json: AsJson = False,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """List durable topic consumers: position in the log, lag (records still to receive),
    pending (leased, not acked), lost to retention."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        found = await hub.consumers()
        table = _table(
            "Durable consumers",
            "consumer",
            "pattern",
            "position",
            "head",
            "lag",
            "pending",
            "lost",
            right=("position", "head", "lag", "pending", "lost"),
        )
        for c in found:
            lag = Text(str(c.lag), style="yellow" if c.lag else "")
            table.add_row(
                c.name, c.pattern, str(c.position), str(c.head), lag, str(c.pending), str(c.lost)
            )
        return found, _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


# --- shared memory -------------------------------------------------------------------------------

KV_ACTIONS = ("keys", "get", "put", "delete", "watch")


def _value(text: str) -> Any:
    """A value given on the command line: JSON if it parses, else the text itself."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def kv(
    namespace: Annotated[
        str | None, typer.Argument(help="A shared namespace. [default: list the namespaces]")
    ] = None,
    action: Annotated[str, typer.Argument(help="keys | get | put | delete | watch")] = "keys",
    key: Annotated[
        str | None, typer.Argument(help="The key (for keys and watch: a glob pattern).")
    ] = None,
    value: Annotated[str | None, typer.Argument(help="For put: JSON, else taken as text.")] = None,
    url: Url = None,
    as_json: AsJson = False,
    limit: Limit = 1000,
    count: Count = None,
) -> None:
    """Shared memory: list namespaces, or in NAMESPACE list keys, get, put or delete a key, or
    watch changes (Ctrl-C stops)."""
    if action not in KV_ACTIONS:
        _fail(f"Unknown kv action {action!r}; use one of: {', '.join(KV_ACTIONS)}.")
    if namespace is None:
        _show(url, as_json, _namespaces)
        return
    if action in ("get", "put", "delete") and key is None:
        _fail(f"kv {namespace} {action} needs a KEY.")
    if action == "put" and value is None:
        _fail(f"kv {namespace} put {key} needs a VALUE (JSON, else taken as text).")
    console = _console()

    async def main() -> None:
        async with _existing(url) as hub:
            memory = hub.memory(namespace)
            if action == "keys":
                await _kv_keys(hub, namespace, key or "*", limit, as_json, console)
            elif action == "get":
                assert key is not None
                entry = await memory.get(key)
                if as_json:
                    _echo_json(entry)
                elif entry is not None:
                    console.print(_json.encode(_builtins(entry.value)).decode(), soft_wrap=True)
                if entry is None:
                    if not as_json:
                        _fail(f"No key {key!r} in namespace {namespace!r}.")
                    raise typer.Exit(1)
            elif action == "put":
                assert key is not None and value is not None
                entry = await memory.put(key, _value(value))
                if as_json:
                    _echo_json(entry)
                else:
                    console.print(f"{namespace}/{key} = version {entry.version}")
            elif action == "delete":
                assert key is not None
                deleted = await memory.delete(key)
                if as_json:
                    _echo_json({"namespace": namespace, "key": key, "deleted": deleted})
                else:
                    console.print(f"{namespace}/{key} {'deleted' if deleted else 'not found'}")
            else:
                seen = 0
                async for change in memory.watch(key or "*"):
                    if as_json:
                        _echo_json(change)
                    else:
                        console.print(
                            f"{change.kind:7} {change.key} v{change.version} "
                            f"{_preview(change.value, 120)}",
                            soft_wrap=True,
                        )
                    seen += 1
                    if count is not None and seen >= count:
                        return

    _run(main)


async def _namespaces(hub: Hub) -> tuple[Any, RenderableType]:
    found = await hub.namespaces()
    table = _table(
        "Shared memory",
        "namespace",
        "owner",
        "keys",
        "bytes",
        "writes",
        "conflicts",
        right=("keys", "bytes", "writes", "conflicts"),
    )
    for n in found:
        table.add_row(
            n.namespace or "(private)",
            n.owner or "",
            str(n.keys),
            str(n.bytes),
            str(n.writes),
            str(n.conflicts),
        )
    return found, _none(table)


async def _kv_keys(
    hub: Hub, namespace: str, pattern: str, limit: int, as_json: bool, console: Console
) -> None:
    memory = hub.memory(namespace)
    names = await memory.keys(pattern)
    entries = [e for e in [await memory.get(k) for k in names[:limit]] if e is not None]
    more = max(len(names) - limit, 0)
    if as_json:
        _echo_json({"namespace": namespace, "total": len(names), "more": more, "entries": entries})
        return
    table = _table(
        f"Keys of {namespace}", "key", "version", "updated", "by", "value", right=("version",)
    )
    for e in entries:
        table.add_row(
            e.key, str(e.version), _when(e.updated_at), e.updated_by or "", _preview(e.value)
        )
    if more:
        table.caption = f"{more} more not shown (raise --limit)"
    console.print(_none(table))


# --- references, pools, prefixes -----------------------------------------------------------------


def refs(
    action: Annotated[str, typer.Argument(help="list (with the stats) | gc")] = "list",
    url: Url = None,
    as_json: AsJson = False,
    limit: Limit = 100,
) -> None:
    """The reference store: its stats (bytes, dedupe ratio) and blobs, or `gc` to evict the
    unreferenced ones now."""
    if action not in ("list", "gc"):
        _fail(f"Unknown refs action {action!r}; use list or gc.")

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        if action == "gc":
            evicted = await hub.refs.gc()
            table = _table("Evicted", "ref", "size", right=("size",))
            for r in evicted:
                table.add_row(r.id, str(r.size))
            return {"evicted": evicted}, _none(table)
        stats = await hub.refs.stats()
        blobs = await hub.refs.list_refs()
        stores = stats.total_refs + stats.dedupe_hits
        ratio = stores / stats.total_refs if stats.total_refs else None
        summary = _table(
            "References", *(n.replace("_", " ") for n in stats.__struct_fields__), "dedupe ratio"
        )
        summary.add_row(
            *(str(getattr(stats, n)) for n in stats.__struct_fields__),
            "" if ratio is None else f"{ratio:.2f}",
        )
        table = _table(
            "Blobs",
            "ref",
            "size",
            "stored",
            "compression",
            "refcount",
            "age",
            right=("size", "stored", "refcount"),
        )
        for r in blobs[:limit]:
            table.add_row(
                r.id,
                str(r.size),
                str(r.stored_size),
                r.compression,
                str(r.refcount),
                _age(r.created_at),
            )
        more = max(len(blobs) - limit, 0)
        if more:
            table.caption = f"{more} more not shown (raise --limit)"
        data = {
            "stats": stats,
            "dedupe_ratio": ratio,
            "total": len(blobs),
            "more": more,
            "refs": blobs[:limit],
        }
        return data, RichGroup(summary, _none(table))

    _show(url, as_json, build)


def _pool_json(p: PoolSnapshot) -> dict[str, Any]:
    return {
        "name": p.name,
        "config": p.config,
        "created_at": p.created_at,
        "members": p.members,
        "topics": p.topics,
        "counts": p.counts,
        "cursor": p.cursor,
        "pending_wakes": [
            {
                "id": w.id,
                "run": w.run,
                "status": w.status,
                "registered_at": w.registered_at,
                "deadline": w.deadline,
                "idempotency_key": w.idempotency_key,
            }
            for w in p.pending_wakes
        ],
    }


def pools(
    url: Url = None,
    as_json: AsJson = False,
    watch: Watch = False,
    interval: Interval = 2.0,
    count: Count = None,
) -> None:
    """List agent pools: members, topics, pending wakes and counts."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        found = await hub.pools()
        table = _table(
            "Pools",
            "pool",
            "members",
            "topics",
            "pending wakes",
            "records",
            "messages",
            "failed",
            right=("members", "pending wakes", "records", "messages", "failed"),
        )
        for p in found:
            c = p.counts
            table.add_row(
                p.name,
                str(len(p.members)),
                ", ".join(p.topics),
                str(len(p.pending_wakes)),
                str(c["records"]),
                str(c["messages"]),
                str(c["failed"]),
            )
        return [_pool_json(p) for p in found], _none(table)

    _show(url, as_json, build, watch=watch, interval=interval, count=count)


def prefixes(url: Url = None, as_json: AsJson = False) -> None:
    """Redis: list the key prefixes on the server that hold agentcomm data."""

    async def build(hub: Hub) -> tuple[Any, RenderableType]:
        found = await hub.prefixes()
        own = _own_prefix(hub.url)
        table = _table("Prefixes", "prefix", "keys", "", right=("keys",))
        for name, keys in found.items():
            table.add_row(name, str(keys), "(this URL)" if name == own else "")
        return found, _none(table)

    _show(url, as_json, build)


def _own_prefix(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query).get("prefix", ["agentcomm"])[-1]


async def prefix_hint(hub: Hub) -> str | None:
    """For an empty Redis store: which other prefixes on the server hold data (None when the
    store is not Redis, holds data, or no other prefix does)."""
    if not hub.url.lower().startswith(("redis://", "rediss://")):
        return None
    try:
        found = await hub.prefixes()
    except AgentCommError:
        return None
    own = _own_prefix(hub.url)
    if found.get(own):
        return None
    others = [p for p in found if p != own]
    if not others:
        return f"No agentcomm data under prefix {own!r}, nor under any other prefix here."
    shown = ", ".join(repr(p) for p in others[:10])
    return (
        f"Nothing under prefix {own!r}, but these prefixes hold agentcomm data: {shown}. "
        "Add ?prefix=<name> to the URL."
    )


def print_prefix_hint(console: Console, url: str | None) -> None:
    """Print `prefix_hint` for the store at `url` (used by `inspect`)."""

    async def main() -> str | None:
        async with _existing(url) as hub:
            return await prefix_hint(hub)

    with contextlib.suppress(AgentCommError, ValidationError):
        hint = asyncio.run(main())
        if hint:
            console.print(Text(hint, style="yellow"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the operator commands to `app`."""
    for name, fn in (
        ("agents", agents),
        ("peek", peek),
        ("tail", tail),
        ("dead-letters", dead_letters),
        ("redrive", redrive),
        ("purge", purge),
        ("delete", delete),
        ("schedules", schedules),
        ("cancel-schedule", cancel_schedule),
        ("topics", topics),
        ("consumers", consumers),
        ("kv", kv),
        ("refs", refs),
        ("pools", pools),
        ("prefixes", prefixes),
    ):
        app.command(name)(fn)
