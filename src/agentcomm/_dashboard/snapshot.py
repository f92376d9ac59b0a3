"""What the dashboard shows, read from a hub through its public calls into plain rows.

One `collect()` reads everything once; the feed calls it at most once a second. It keeps what
only a series of snapshots can tell (publish rates, the recent message flow) in a `History`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._errors import AgentCommError, ConfigurationError, HubClosed, UnknownAgent
from .._hub import Hub
from .._kv_records import Space
from .._models import HubStats, PeekedMessage, ScheduleInfo
from .._shared_memory import SharedMemory

__all__ = ["History", "Snapshot", "collect"]

#: Agents read in detail per snapshot (the busiest first); the rest are counted only.
MAX_AGENTS = 200
#: Rows of each list read per agent.
ROWS_PER_AGENT = 20
#: Messages the flow view remembers.
FLOW_ROWS = 100
#: Keys listed per shared-memory namespace.
KEYS_PER_NAMESPACE = 50
#: The window publish rates are measured over (seconds).
RATE_WINDOW = 60.0
#: Characters of a payload preview.
PREVIEW = 400


@dataclass(frozen=True)
class AgentRow:
    """An agent with its presence and mailbox counts."""

    name: str
    state: str
    last_seen: float
    last_active: float | None
    ready: int
    delayed: int
    in_flight: int
    dead: int


@dataclass(frozen=True)
class DeadRow:
    """A dead letter with a preview of its payload."""

    agent: str
    id: str
    sender: str
    type: str
    reason: str
    attempts: int
    sent_at: float
    dead_at: float
    payload: str
    error: str | None


@dataclass(frozen=True)
class TopicRow:
    """A topic's counters and its publish rate over the last minute (records per second)."""

    name: str
    published: int
    delivered: int
    dropped: int
    subscribers: int
    last_publish: float | None
    rate: float


@dataclass(frozen=True)
class ConsumerRow:
    """A durable consumer: where it is and how far behind."""

    name: str
    pattern: str
    position: int
    head: int
    lag: int
    pending: int


@dataclass(frozen=True)
class NamespaceRow:
    """A shared-memory namespace and its first keys."""

    namespace: str
    owner: str | None
    key_count: int
    bytes: int
    writes: int
    keys: list[str]


@dataclass(frozen=True)
class WakeRow:
    """A registered (pending) wake of a pool run."""

    id: str
    run: str
    registered_at: float
    deadline: float | None


@dataclass(frozen=True)
class PoolRow:
    """A pool with its members and pending wakes."""

    name: str
    members: list[str]
    topics: list[str]
    wakes: list[WakeRow]
    counts: dict[str, int]


@dataclass
class FlowRow:
    """A message the dashboard saw: sender -> recipient, and what became of it."""

    id: str
    sender: str
    recipient: str
    type: str
    sent_at: float
    state: str
    attempt: int
    size: int
    payload: str = ""


@dataclass(frozen=True)
class RefRow:
    """The reference store's counters, with its dedupe ratio (stores per distinct blob)."""

    entries: int
    active: int
    current_bytes: int
    stored_bytes: int
    total_refs: int
    dedupe_hits: int
    dedupe_ratio: float
    compression_ratio: float


@dataclass(frozen=True)
class Snapshot:
    """Everything the pages show, as of `at` (epoch seconds)."""

    at: float
    url: str
    stats: HubStats | None
    agents: list[AgentRow]
    agents_total: int
    dead: list[DeadRow]
    dead_total: int
    topics: list[TopicRow]
    consumers: list[ConsumerRow] | None
    namespaces: list[NamespaceRow] | None
    refs: RefRow | None
    pools: list[PoolRow] | None
    flow: list[FlowRow]
    schedules: list[ScheduleInfo]
    #: What could not be read, by section (a backend without that feature, an error).
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        """Messages leased and not settled, over the agents read."""
        return sum(a.in_flight for a in self.agents)

    @property
    def queued(self) -> int:
        """Messages ready or delayed, over the agents read."""
        return sum(a.ready + a.delayed for a in self.agents)


class History:
    """What the feed remembers between snapshots: topic counters over time, recent messages."""

    def __init__(self) -> None:
        self.published: dict[str, deque[tuple[float, int]]] = {}
        self.flow: OrderedDict[str, FlowRow] = OrderedDict()

    def rate(self, topic: str, at: float, published: int) -> float:
        """Records per second published to `topic` over the last `RATE_WINDOW` seconds."""
        points = self.published.setdefault(topic, deque())
        points.append((at, published))
        while len(points) > 2 and at - points[1][0] >= RATE_WINDOW:
            points.popleft()
        first_at, first = points[0]
        if at - first_at <= 0:
            return 0.0
        return max(0, published - first) / (at - first_at)

    def see(self, rows: list[FlowRow]) -> list[FlowRow]:
        """Fold the messages now waiting or dead into the flow; those gone since are "done"."""
        present = {r.id for r in rows}
        for row in rows:
            known = self.flow.get(row.id)
            if known is None:
                self.flow[row.id] = row
            else:
                known.state, known.attempt = row.state, row.attempt
                known.payload = row.payload or known.payload
        for row in self.flow.values():
            if row.id not in present and row.state != "dead":
                row.state = "done"
        while len(self.flow) > FLOW_ROWS:
            self.flow.popitem(last=False)
        return sorted(self.flow.values(), key=lambda r: r.sent_at, reverse=True)


def preview(data: Any) -> str:
    """A short text form of a payload: JSON, or the size of bytes."""
    if isinstance(data, bytes | bytearray):
        return f"<{len(data)} bytes>"
    try:
        text = msgspec.json.encode(data).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        text = repr(data)
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


async def _optional(section: str, notes: dict[str, str], call: Any) -> Any:
    """Await `call`; a backend that lacks the feature or an error leaves a note, not a crash."""
    try:
        return await call
    except HubClosed:
        raise
    except ConfigurationError as exc:
        notes[section] = str(exc)
    except AgentCommError as exc:
        notes[section] = f"{type(exc).__name__}: {exc}"
    return None


async def _agent_rows(hub: Hub, names: list[str]) -> tuple[list[Any], list[Any], list[Any]]:
    async def one(name: str) -> tuple[Any, Any, Any]:
        try:
            return await asyncio.gather(
                hub.mailbox_stats(name),
                hub.peek(name, limit=ROWS_PER_AGENT),
                hub.dead_letters(name, limit=ROWS_PER_AGENT),
            )
        except UnknownAgent:  # removed since it was listed
            return None, [], []

    done = await asyncio.gather(*(one(n) for n in names))
    return [d[0] for d in done], [d[1] for d in done], [d[2] for d in done]


async def _consumers(hub: Hub, notes: dict[str, str]) -> list[ConsumerRow] | None:
    found = await _optional("consumers", notes, hub.consumers())
    if found is None:
        return None
    return [ConsumerRow(c.name, c.pattern, c.position, c.head, c.lag, c.pending) for c in found]


async def _namespaces(hub: Hub, notes: dict[str, str]) -> list[NamespaceRow] | None:
    found = await _optional("shared memory", notes, hub.namespaces())
    if found is None:
        return None
    rows = []
    for n in found:
        # a private namespace is read through its space: reading never writes, so no agent
        # handle (which would record presence) is needed
        space = Space(n.owner or "", n.namespace)
        keys = await _optional(
            "shared memory", notes, SharedMemory(hub._ctx, space, by=None).keys()
        )
        rows.append(
            NamespaceRow(
                n.namespace, n.owner, n.keys, n.bytes, n.writes, (keys or [])[:KEYS_PER_NAMESPACE]
            )
        )
    return rows


async def _pools(hub: Hub, notes: dict[str, str]) -> list[PoolRow] | None:
    found = await _optional("pools", notes, hub.pools())
    if found is None:
        return None
    return [
        PoolRow(
            p.name,
            [m.run for m in p.members],
            list(p.topics),
            [WakeRow(w.id, w.run, w.registered_at, w.deadline) for w in p.pending_wakes],
            dict(p.counts),
        )
        for p in found
    ]


async def collect(hub: Hub, history: History) -> Snapshot:
    """Read the hub's state once (raises HubClosed once the hub is closed)."""
    notes: dict[str, str] = {}
    at = time.time()
    infos = await hub.agents()
    infos.sort(key=lambda a: (a.last_active or 0.0, a.last_seen), reverse=True)
    names = [a.name for a in infos[:MAX_AGENTS]]
    if len(infos) > MAX_AGENTS:
        notes["agents"] = f"showing the {MAX_AGENTS} most recently active of {len(infos)} agents"
    stats, pending, dead = await _agent_rows(hub, names)
    agents = [
        AgentRow(
            info.name,
            info.state,
            info.last_seen,
            info.last_active,
            s.ready,
            s.delayed,
            s.in_flight,
            s.dead,
        )
        for info, s in zip(infos, stats, strict=False)
        if s is not None
    ]
    dead_rows = [
        DeadRow(
            d.recipient,
            d.id,
            d.sender,
            d.type,
            d.reason,
            d.attempts,
            d.enqueued_at,
            d.dead_at,
            "" if d.error else preview(d.data),
            d.error,
        )
        for letters in dead
        for d in letters
    ]
    dead_rows.sort(key=lambda d: d.dead_at, reverse=True)
    waiting: list[PeekedMessage] = [p for rows in pending for p in rows]
    flow = history.see(
        [
            FlowRow(
                p.id,
                p.sender,
                p.recipient,
                p.type,
                p.enqueued_at,
                p.state,
                p.attempt,
                p.size,
                p.error or preview(p.data),
            )
            for p in waiting
        ]
        + [
            FlowRow(d.id, d.sender, d.agent, d.type, d.sent_at, "dead", d.attempts, 0, d.payload)
            for d in dead_rows
        ]
    )
    topic_stats = await _optional("topics", notes, hub.topics()) or []
    topics = [
        TopicRow(
            t.name,
            t.published,
            t.delivered,
            t.dropped,
            t.subscribers,
            t.last_publish,
            history.rate(t.name, at, t.published),
        )
        for t in topic_stats
    ]
    ref_stats = await _optional("refs", notes, hub.refs.stats())
    refs = None
    if ref_stats is not None:
        refs = RefRow(
            entries=ref_stats.entries,
            active=ref_stats.active_refs,
            current_bytes=ref_stats.current_bytes,
            stored_bytes=ref_stats.stored_bytes,
            total_refs=ref_stats.total_refs,
            dedupe_hits=ref_stats.dedupe_hits,
            dedupe_ratio=(ref_stats.total_refs + ref_stats.dedupe_hits) / ref_stats.total_refs
            if ref_stats.total_refs
            else 1.0,
            compression_ratio=ref_stats.current_bytes / ref_stats.stored_bytes
            if ref_stats.stored_bytes
            else 1.0,
        )
    return Snapshot(
        at=at,
        url=hub.url,
        stats=await _optional("stats", notes, hub.stats()),
        agents=agents,
        agents_total=len(infos),
        dead=dead_rows,
        dead_total=sum(a.dead for a in agents),
        topics=topics,
        consumers=await _consumers(hub, notes),
        namespaces=await _namespaces(hub, notes),
        refs=refs,
        pools=await _pools(hub, notes),
        flow=flow,
        schedules=await _optional("schedules", notes, hub.schedules()) or [],
        notes=notes,
    )
