"""The MCP server: agentcomm as tools for LLM agents (docs/mcp.md), on the official `mcp` SDK.

`build_server(hub, identity)` makes an `MCPServer` whose tools act as the agent `identity`
names for each call: a fixed name over stdio (`agentcomm mcp --agent NAME`, `run_stdio`), or
the name a bearer token resolves to over streamable HTTP (`http_app`, for `agentcomm serve`
to mount at `/mcp`). Results are compact JSON text; a call that cannot be done is a tool error
(`isError`) whose text says what to do.

Each call also carries `Checks`: what it may do beyond acting as its agent. Over stdio every
operation is allowed (the process opened the store itself); under `agentcomm serve` they are
the token's grants (`agentcomm._server.authz.ToolChecks`), checked before the store is
touched, so a refused call changes nothing.

What a session keeps between calls, per agent: the messages it received and has not settled
yet (so `acknowledge` / `release` / `reply` find them by id). They are released when the hub
closes (the server exits), like any unsettled delivery.
"""

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal, NamedTuple, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from starlette.types import ASGIApp

from ._agent import Agent
from ._coord_leases import _patterns
from ._errors import (
    AgentCommError,
    LeaseLost,
    PermissionDenied,
    RemoteError,
    RequestFailed,
    RequestTimeout,
    UnknownAgent,
    VersionConflict,
)
from ._hub import Hub
from ._lease_models import Lease
from ._mailbox import Message
from ._models import AgentInfo, PeekedMessage

__all__ = [
    "DEFAULT_TOOLS",
    "EXTRA_TOOLS",
    "UNCHECKED",
    "Caller",
    "Checks",
    "McpOptions",
    "build_server",
    "http_app",
    "run_stdio",
]

#: The default tool set, in the order a client lists them.
DEFAULT_TOOLS = (
    "whoami", "list_agents", "send_message", "check_inbox", "receive", "acknowledge",
    "release", "reply", "ask", "wait_for_mail", "publish", "read_topic", "memory_get",
    "memory_put", "reserve_files", "release_files", "list_reservations",
)  # fmt: skip
#: What `--tools all` adds.
EXTRA_TOOLS = ("renew_reservations", "memory_delete", "dead_letters")
#: The longest wait a tool accepts (MCP clients time calls out after a few minutes).
MAX_WAIT = 600
#: The namespace memory tools use when none is given.
SHARED_NAMESPACE = "shared"


class Checks(Protocol):
    """What a tool call may do beyond acting as its agent. A check raises PermissionDenied
    (an `AgentCommError`); a `sees_` filter says whether a listing shows an entry."""

    def read_memory(self, namespace: str) -> None:
        """Reading a shared namespace."""

    def write_memory(self, namespace: str) -> None:
        """Writing or deleting in a shared namespace."""

    def publish(self, topic: str) -> None:
        """Publishing to a topic."""

    def subscribe(self, pattern: str) -> None:
        """Reading the topics a pattern matches."""

    def take_leases(self, patterns: list[str]) -> None:
        """Reserving normalized file patterns."""

    def sees_agent(self, agent: str) -> bool:
        """Whether an agent is listed and reached by `send_message(to="*")`."""

    def sees_lease(self, owner: str, pattern: str) -> bool:
        """Whether another agent's reservation is listed."""


class _Unchecked:
    """Everything allowed: the stdio server, whose process opened the store itself."""

    def read_memory(self, namespace: str) -> None:
        return None

    def write_memory(self, namespace: str) -> None:
        return None

    def publish(self, topic: str) -> None:
        return None

    def subscribe(self, pattern: str) -> None:
        return None

    def take_leases(self, patterns: list[str]) -> None:
        return None

    def sees_agent(self, agent: str) -> bool:
        return True

    def sees_lease(self, owner: str, pattern: str) -> bool:
        return True


#: The checks of a caller that may do everything (stdio).
UNCHECKED: Checks = _Unchecked()


class Caller(NamedTuple):
    """Who a tool call acts as: the agent, and the checks its operations must pass."""

    agent: str
    checks: Checks = UNCHECKED


#: Resolves who a tool call acts as (raises ToolError when the caller is not allowed).
Identity = Callable[[Context], Caller | Awaitable[Caller]]
#: What a bearer token resolves to: an agent name (unchecked), a `Caller`, or None (invalid).
Resolved = str | Caller | None


class McpOptions:
    """Settings of an MCP server: the tool profile, when a gone agent counts as retired, and
    how long message bodies are shown in listings."""

    def __init__(
        self,
        *,
        tools: Literal["default", "all"] = "default",
        retire_after: float = 3600.0,
        preview_chars: int = 500,
    ) -> None:
        self.tools = tools
        self.retire_after = retire_after
        self.preview_chars = preview_chars


def _json(value: Any) -> str:
    """Compact JSON for a model to read."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _text(body: Any) -> str:
    return body if isinstance(body, str) else _json(body)


def _cut(body: Any, limit: int) -> tuple[Any, bool]:
    """The body, or its text cut to `limit` characters when longer (True: it was cut)."""
    if isinstance(body, str | int | float | bool) or body is None:
        if isinstance(body, str) and len(body) > limit:
            return body[:limit] + "…", True
        return body, False
    text = _json(body)
    if len(text) > limit:
        return text[:limit] + "…", True
    return body, False


def _tool_error(exc: AgentCommError) -> ToolError:
    """An agentcomm error as a tool error whose text tells a model what to do."""
    if isinstance(exc, PermissionDenied):
        return ToolError(f"PermissionDenied: {exc} Nothing was changed.")
    if isinstance(exc, UnknownAgent):
        return ToolError(
            f"No agent named {exc.name!r}. Call list_agents to see who exists (names are exact)."
        )
    if isinstance(exc, VersionConflict):
        return ToolError(
            f"Key {exc.key!r} is at version {exc.actual}, not {exc.expected} (0 means absent). "
            f"Call memory_get, merge your change into what is there, and memory_put again with "
            f"expected_version={exc.actual}."
        )
    return ToolError(str(exc))


class _Session:
    """One agent's state in this server: its handle and the deliveries it holds."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.received: dict[str, Message] = {}


class AgentTools:
    """The tools, each acting as the agent its call resolves to."""

    def __init__(self, hub: Hub, identity: Identity, options: McpOptions) -> None:
        self.hub = hub
        self._identity = identity
        self.options = options
        self._sessions: dict[str, _Session] = {}

    # --- plumbing ------------------------------------------------------------------------------

    async def _session(
        self, ctx: Context, check: Callable[[Checks], object] | None = None
    ) -> _Session:
        """The calling agent's session, once `check` passed; the call counts as its
        activity."""
        return (await self._caller(ctx, check))[0]

    async def _caller(
        self, ctx: Context, check: Callable[[Checks], object] | None = None
    ) -> tuple[_Session, Checks]:
        """The calling agent's session and checks. `check(checks)` runs before anything
        touches the store (not even presence), so a refused call changes nothing."""
        caller = self._identity(ctx)
        if not isinstance(caller, Caller):
            caller = await caller
        name = caller.agent
        session = self._sessions.get(name)
        try:
            if check is not None:
                check(caller.checks)
            if session is None:
                session = self._sessions[name] = _Session(await self.hub.agent(name))
            await self.hub._ctx.presence.note(name, active=True)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return session, caller.checks

    def _now(self) -> float:
        return self.hub._ctx.now()

    def _retired(self, info: AgentInfo, now: float) -> bool:
        return info.state == "gone" and now - info.last_seen >= self.options.retire_after

    def _message(self, msg: Message | PeekedMessage, now: float, *, full: bool) -> dict[str, Any]:
        """A message as a model reads it: id, sender, type, age, thread, body (cut to a preview
        in listings)."""
        if isinstance(msg, Message):
            body, metadata, request = msg.data, msg.metadata, msg.correlation_id is not None
        else:
            body, metadata, request = msg.data, msg.metadata or {}, msg.correlation_id is not None
        limit = 20 * self.options.preview_chars if full else self.options.preview_chars
        shown, cut = _cut(body, limit)
        out: dict[str, Any] = {
            "id": msg.id,
            "from": msg.sender,
            "type": msg.type,
            "age_s": max(0, round(now - msg.enqueued_at)),
        }
        thread = metadata.get("thread")
        if thread is not None:
            out["thread"] = thread
        if msg.priority:
            out["priority"] = msg.priority
        if request:
            out["request"] = True  # answer it with reply
        if isinstance(msg, PeekedMessage):
            if msg.state != "ready":
                out["state"] = msg.state
            if msg.error is not None:
                out["error"] = msg.error
        out["body"] = shown
        if cut:
            out["truncated"] = True
        return out

    def _lease(self, lease: Lease, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pattern": lease.pattern,
            "holder": lease.owner,
            "exclusive": lease.exclusive,
            "expires_in_s": max(0, round(lease.expires_at - now)),
        }
        if lease.reason:
            out["reason"] = lease.reason
        return out

    def _held(self, session: _Session, ids: list[str]) -> list[Message]:
        unknown = [i for i in ids if i not in session.received]
        if unknown:
            raise ToolError(
                f"Not holding message(s) {', '.join(unknown[:10])}: only messages taken with "
                "receive in this session can be settled or replied to (check_inbox only "
                "peeks). Call receive first; a message whose lease ended is back in the queue."
            )
        return [session.received[i] for i in ids]

    # --- identity and agents -------------------------------------------------------------------

    async def whoami(self, ctx: Context) -> str:
        """Your agent name, what waits in your inbox, and the files you have reserved."""
        session = await self._session(ctx)
        name = session.agent.name
        try:
            stats = await self.hub.mailbox_stats(name)
            leases = await self.hub.leases.list(owner=name)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        return _json({
            "agent": name,
            "inbox": {"ready": stats.ready, "delayed": stats.delayed,
                      "in_flight": stats.in_flight, "dead": stats.dead},
            "reservations": [self._lease(x, now) for x in leases],
        })  # fmt: skip

    async def list_agents(
        self,
        ctx: Context,
        include_retired: Annotated[
            bool, Field(description="Also list agents retired after a long absence.")
        ] = False,
    ) -> str:
        """Agents on this store and their presence: active (acted recently), idle (running,
        quiet) or gone (no process seen lately); agents gone for long are retired and skipped
        by broadcasts until they act again."""
        session, checks = await self._caller(ctx)
        try:
            infos = await self.hub.agents()
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        out = []
        for info in infos:
            if not checks.sees_agent(info.name):
                continue
            retired = self._retired(info, now)
            if retired and not include_retired:
                continue
            row: dict[str, Any] = {
                "name": info.name,
                "state": "retired" if retired else info.state,
                "last_seen_s": max(0, round(now - info.last_seen)),
            }
            if info.name == session.agent.name:
                row["you"] = True
            out.append(row)
        return _json({"agents": out})

    # --- messages -----------------------------------------------------------------------------

    async def send_message(
        self,
        ctx: Context,
        to: Annotated[
            str | list[str],
            Field(
                description="Recipient agent name, a list of names, or '*' for every agent "
                "that is not retired (except you)."
            ),
        ],
        body: Annotated[str, Field(description="The message text (markdown is fine).")],
        type: Annotated[
            str, Field(description="A short kind for the recipient, e.g. 'message', 'handoff'.")
        ] = "message",
        priority: Annotated[int, Field(description="Higher is delivered first.")] = 0,
        thread: Annotated[
            str | None, Field(description="A conversation id to group messages; kept on replies.")
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(description="Repeat the same key to make a retried send deliver only once."),
        ] = None,
    ) -> str:
        """Send a message to another agent's inbox (it stays there until received and
        acknowledged). Returns the message id per recipient."""
        session, checks = await self._caller(ctx)
        me = session.agent.name
        try:
            skipped: list[str] = []
            if to == "*":
                now = self._now()
                recipients = []
                for info in await self.hub.agents():
                    if info.name == me or not checks.sees_agent(info.name):
                        continue
                    if self._retired(info, now):
                        skipped.append(info.name)
                    else:
                        recipients.append(info.name)
            else:
                recipients = [to] if isinstance(to, str) else list(dict.fromkeys(to))
            if not recipients:
                raise ToolError("No recipients: give an agent name (list_agents shows them).")
            metadata = None if thread is None else {"thread": thread}
            ids = {}
            for name in recipients:
                if await self.hub._ctx.mailboxes.get_agent(name) is None:
                    raise UnknownAgent(name)
            for name in recipients:
                ids[name] = await session.agent.send(
                    name, body, type=type, priority=priority, metadata=metadata,
                    idempotency_key=idempotency_key,
                )  # fmt: skip
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        out: dict[str, Any] = {"ids": ids}
        if skipped:
            out["skipped_retired"] = skipped
        return _json(out)

    async def check_inbox(
        self,
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=200, description="Most messages to list.")] = 20,
        thread: Annotated[str | None, Field(description="Only messages of this thread.")] = None,
    ) -> str:
        """Look at your inbox without taking anything: ids, senders, types, age in seconds,
        thread and the body (a preview when long). Nothing is consumed; use receive to take
        messages to work on."""
        session = await self._session(ctx)
        name = session.agent.name
        try:
            listed = await self.hub.peek(name, limit=max(limit, 200))
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        if thread is not None:
            listed = [p for p in listed if (p.metadata or {}).get("thread") == thread]
        held = session.received
        shown = [
            {**self._message(p, now, full=False), **({"held_by_you": True} if p.id in held else {})}
            for p in listed[:limit]
        ]
        return _json({"messages": shown, "more": len(listed) > limit})

    async def receive(
        self,
        ctx: Context,
        max_messages: Annotated[int, Field(ge=1, le=50)] = 1,
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT, description="How long to wait for a message.")
        ] = 0,
        lease_seconds: Annotated[
            float,
            Field(
                gt=0,
                le=86400,
                description="How long the messages are yours; unacknowledged "
                "ones go back to the queue after it.",
            ),
        ] = 600,
    ) -> str:
        """Take messages from your inbox to work on, best first. Each is leased to you: call
        acknowledge when done (or reply), or release to put it back; one not acknowledged
        within lease_seconds is delivered again."""
        session = await self._session(ctx)
        try:
            got = await session.agent.receive_many(
                max_messages, timeout=wait_seconds, lease=lease_seconds
            )
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        for msg in got:
            session.received[msg.id] = msg
        out = []
        for msg in got:
            row = self._message(msg, now, full=True)
            if msg.attempt > 1:
                row["attempt"] = msg.attempt
            out.append(row)
        return _json({"messages": out})

    async def acknowledge(
        self,
        ctx: Context,
        message_ids: Annotated[list[str], Field(min_length=1, description="Received ids.")],
    ) -> str:
        """Mark received messages done: they are removed for good."""
        session = await self._session(ctx)
        msgs = self._held(session, message_ids)
        try:
            await session.agent.ack_many(msgs)
        except LeaseLost as exc:
            for m in msgs:
                if m.settled:
                    session.received.pop(m.id, None)
            raise ToolError(
                f"{exc} They are back in the queue: receive them again (or another worker has)."
            ) from exc
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        for m in msgs:
            session.received.pop(m.id, None)
        return _json({"acknowledged": message_ids})

    async def release(
        self,
        ctx: Context,
        message_ids: Annotated[list[str], Field(min_length=1, description="Received ids.")],
        delay_seconds: Annotated[
            float, Field(ge=0, le=86400, description="Deliver again after this long.")
        ] = 0,
    ) -> str:
        """Put received messages back in the queue unfinished (a negative acknowledgement).
        Each release counts as a delivery attempt; after the last one a message is
        dead-lettered."""
        session = await self._session(ctx)
        msgs = self._held(session, message_ids)
        released = []
        try:
            for m in msgs:
                await m.nack(delay=delay_seconds)
                session.received.pop(m.id, None)
                released.append(m.id)
        except LeaseLost as exc:
            session.received.pop(m.id, None)
            raise ToolError(f"{exc} Released so far: {released}.") from exc
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"released": released})

    async def reply(
        self,
        ctx: Context,
        message_id: Annotated[str, Field(description="The id of a message you received.")],
        body: Annotated[str, Field(description="Your answer.")],
        type: Annotated[str, Field(description="A short kind, e.g. 'reply', 'done'.")] = "reply",
    ) -> str:
        """Answer a message you received and acknowledge it. A request (ask) gets its answer;
        any other message gets a reply message in the same thread."""
        session = await self._session(ctx)
        (msg,) = self._held(session, [message_id])
        try:
            if msg.correlation_id is not None:
                delivered = await msg.reply(body, type=type)
                session.received.pop(msg.id, None)
                return _json({"replied_to": msg.id, "delivered": delivered})
            thread = msg.metadata.get("thread") or msg.id
            sent = await session.agent.send(
                msg.sender, body, type=type,
                metadata={"thread": thread, "in_reply_to": msg.id},
            )  # fmt: skip
            await msg.ack()
            session.received.pop(msg.id, None)
        except LeaseLost as exc:
            session.received.pop(msg.id, None)
            raise ToolError(f"{exc} Your reply was sent if an id is given below.") from exc
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"replied_to": msg.id, "id": sent, "thread": thread})

    async def ask(
        self,
        ctx: Context,
        to: Annotated[str, Field(description="The agent to ask.")],
        body: Annotated[str, Field(description="The question or request.")],
        timeout_seconds: Annotated[float, Field(gt=0, le=MAX_WAIT)] = 120,
        type: Annotated[str, Field(description="A short kind for the recipient.")] = "request",
        thread: Annotated[str | None, Field(description="A conversation id.")] = None,
    ) -> str:
        """Ask another agent and wait for its answer (it sees a request in its inbox and
        answers with reply). Fails after timeout_seconds without an answer."""
        session = await self._session(ctx)
        metadata = None if thread is None else {"thread": thread}
        try:
            answer = await session.agent.request(
                to, body, type=type, timeout=timeout_seconds, metadata=metadata
            )
        except RequestTimeout as exc:
            raise ToolError(
                f"No answer from {to!r} within {timeout_seconds:g} s; "
                + ("it was received but not answered yet. " if exc.received
                   else "it was never received: is that agent running? (list_agents) ")
                + "Ask again with a longer timeout, or send_message and check back later."
            ) from exc  # fmt: skip
        except RemoteError as exc:
            raise ToolError(f"{to!r} answered with an error: {exc}") from exc
        except RequestFailed as exc:
            raise ToolError(f"The request to {to!r} failed: {exc}") from exc
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"from": answer.sender, "type": answer.type, "body": answer.data})

    async def wait_for_mail(
        self,
        ctx: Context,
        timeout_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT)] = 60,
    ) -> str:
        """Block until a message is in your inbox (or the timeout passes), without taking it:
        cheaper than checking again and again. Then check_inbox or receive."""
        session = await self._session(ctx)
        name = session.agent.name
        try:
            mail = await self.hub.wait_for_mail(name, timeout=timeout_seconds)
            ready = (await self.hub.mailbox_stats(name)).ready if mail else 0
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"mail": mail, "ready": ready})

    # --- topics ------------------------------------------------------------------------------

    async def publish(
        self,
        ctx: Context,
        topic: Annotated[str, Field(description="Dot-separated, e.g. 'build.status'.")],
        body: Annotated[str, Field(description="What to announce.")],
        type: Annotated[str, Field(description="A short kind.")] = "event",
    ) -> str:
        """Announce something on a topic: every agent reading the topic sees it (nobody's
        inbox fills up)."""
        session = await self._session(ctx, lambda c: c.publish(topic))
        try:
            result = await session.agent.publish(topic, body, type=type)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"sequence": result.sequence})

    async def read_topic(
        self,
        ctx: Context,
        topic: Annotated[
            str, Field(description="A topic or pattern: '*' is one token, '>' the rest.")
        ],
        max_messages: Annotated[int, Field(ge=1, le=100)] = 20,
        wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT)] = 0,
    ) -> str:
        """Read what was published on a topic since your last read of it (your position is
        kept across sessions; the first read starts at the oldest kept)."""
        session = await self._session(ctx, lambda c: c.subscribe(topic))
        digest = hashlib.sha256(topic.encode()).hexdigest()[:16]
        durable = f"mcp.{session.agent.name}.{digest}"[:128]
        out: list[dict[str, Any]] = []
        try:
            sub = await session.agent.subscribe(
                topic, durable=durable, start="all", buffer=max_messages
            )
            try:
                timeout = wait_seconds
                while len(out) < max_messages:
                    got = await sub.next(timeout=timeout)
                    if got is None:
                        break
                    timeout = 0
                    out.append({"topic": got.topic, "from": got.sender, "type": got.type,
                                "sequence": got.sequence, "body": got.data})  # fmt: skip
                    await got.ack()
            finally:
                await sub.aclose()
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"messages": out})

    # --- shared memory -------------------------------------------------------------------------

    async def memory_get(
        self,
        ctx: Context,
        key: Annotated[str, Field(description="The key to read.")],
        namespace: Annotated[str, Field(description="A shared namespace.")] = SHARED_NAMESPACE,
    ) -> str:
        """Read a key of shared memory: its value and version (version 0: absent)."""
        session = await self._session(ctx, lambda c: c.read_memory(namespace))
        try:
            entry = await session.agent.memory(namespace).get(key)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        if entry is None:
            return _json({"key": key, "version": 0, "value": None})
        return _json({"key": key, "version": entry.version, "value": entry.value,
                      "updated_by": entry.updated_by})  # fmt: skip

    async def memory_put(
        self,
        ctx: Context,
        key: Annotated[str, Field(description="The key to write.")],
        value: Annotated[Any, Field(description="Any JSON value.")],
        expected_version: Annotated[
            int | None,
            Field(
                ge=0,
                description="Write only if the key is at this version (0: absent); "
                "use the version memory_get returned, so you never overwrite a change.",
            ),
        ] = None,
        namespace: Annotated[str, Field(description="A shared namespace.")] = SHARED_NAMESPACE,
    ) -> str:
        """Write a key of shared memory; returns its new version."""
        session = await self._session(ctx, lambda c: c.write_memory(namespace))
        try:
            entry = await session.agent.memory(namespace).put(
                key, value, expected_version=expected_version
            )
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"key": key, "version": entry.version})

    async def memory_delete(
        self,
        ctx: Context,
        key: str,
        expected_version: Annotated[int | None, Field(ge=0)] = None,
        namespace: str = SHARED_NAMESPACE,
    ) -> str:
        """Delete a key of shared memory (checked against expected_version when given)."""
        session = await self._session(ctx, lambda c: c.write_memory(namespace))
        try:
            deleted = await session.agent.memory(namespace).delete(
                key, expected_version=expected_version
            )
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"key": key, "deleted": deleted})

    # --- file reservations ---------------------------------------------------------------------

    async def reserve_files(
        self,
        ctx: Context,
        paths: Annotated[
            list[str],
            Field(
                min_length=1,
                description="Paths or globs from the project root: "
                "'src/api/*.py' ('*' stays in one directory), 'src/**' (everything under).",
            ),
        ],
        ttl_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600,
        exclusive: Annotated[
            bool, Field(description="False: a shared reservation others may share (reading).")
        ] = True,
        reason: Annotated[str | None, Field(description="What you are doing, for others.")] = None,
    ) -> str:
        """Reserve files before editing them, so other agents do not edit the same ones. All
        or nothing: if another agent holds an overlapping reservation, nothing is reserved and
        the conflicts say who holds what until when (ask them, or wait)."""
        patterns: list[str] = []

        def check(checks: Checks) -> None:
            patterns.extend(_patterns(paths, what="paths"))
            checks.take_leases(patterns)

        session = await self._session(ctx, check)
        try:
            result = await self.hub.leases.acquire(
                session.agent.name, patterns, ttl=ttl_seconds, exclusive=exclusive,
                reason=reason,
            )  # fmt: skip
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        return _json({
            "ok": result.ok,
            "granted": [self._lease(x, now) for x in result.granted],
            "conflicts": [{"path": c.pattern, **self._lease(c.lease, now)}
                          for c in result.conflicts],
        })  # fmt: skip

    async def release_files(
        self,
        ctx: Context,
        paths: Annotated[
            list[str] | None, Field(description="The patterns to release; omit for all yours.")
        ] = None,
    ) -> str:
        """Release your file reservations when done editing."""
        session = await self._session(ctx)
        try:
            gone = await self.hub.leases.release(session.agent.name, paths)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"released": [x.pattern for x in gone]})

    async def renew_reservations(
        self,
        ctx: Context,
        paths: list[str] | None = None,
        ttl_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600,
    ) -> str:
        """Extend your file reservations (all, or those on paths) to end ttl_seconds from now."""
        session = await self._session(ctx)
        try:
            renewed = await self.hub.leases.renew(session.agent.name, paths, ttl=ttl_seconds)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        return _json({"renewed": [self._lease(x, now) for x in renewed]})

    async def list_reservations(
        self,
        ctx: Context,
        path: Annotated[
            str | None, Field(description="Only reservations overlapping this path or glob.")
        ] = None,
    ) -> str:
        """Who has reserved which files, until when and why."""
        _, checks = await self._caller(ctx)
        try:
            leases = await self.hub.leases.list(overlapping=path)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        now = self._now()
        shown = [x for x in leases if checks.sees_lease(x.owner, x.pattern)]
        return _json({"reservations": [self._lease(x, now) for x in shown]})

    async def dead_letters(
        self, ctx: Context, limit: Annotated[int, Field(ge=1, le=100)] = 20
    ) -> str:
        """Your messages that could not be delivered (attempts used up), with the reason."""
        session = await self._session(ctx)
        try:
            letters = await self.hub.dead_letters(session.agent.name, limit=limit)
        except AgentCommError as exc:
            raise _tool_error(exc) from exc
        return _json({"dead": [
            {"id": d.id, "from": d.sender, "type": d.type, "reason": d.reason,
             "body": _cut(d.data, self.options.preview_chars)[0]}
            for d in letters
        ]})  # fmt: skip


INSTRUCTIONS = """\
agentcomm connects you with the other agents working on this project. Your inbox keeps what \
others send you until you acknowledge it: check_inbox looks without taking, receive takes \
messages to work on (acknowledge or reply when done), wait_for_mail blocks until mail arrives \
instead of checking again and again. Before editing files, reserve_files them (and \
release_files when done) so two agents never edit the same files."""


def build_server(
    hub: Hub, identity: Identity, options: McpOptions | None = None, *, name: str = "agentcomm"
) -> MCPServer:
    """An MCP server whose tools act on `hub` as the agent `identity(ctx)` names per call."""
    options = options or McpOptions()
    tools = AgentTools(hub, identity, options)
    server: MCPServer = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")
    names = DEFAULT_TOOLS + (EXTRA_TOOLS if options.tools == "all" else ())
    for tool in names:
        server.add_tool(getattr(tools, tool), name=tool, structured_output=False)
    return server


def fixed(name: str) -> Identity:
    """The identity of a stdio server: every call acts as `name`."""

    def identity(ctx: Context) -> Caller:
        return Caller(name)

    return identity


async def run_stdio(url: str | None, agent: str, options: McpOptions, **connect: Any) -> None:
    """Serve MCP over stdin / stdout as `agent` on the store at `url` until stdin closes: the
    agent is registered at start, its presence refreshed while the server runs, and the
    messages it received and did not settle are released at exit."""
    from ._hub import connect as open_hub

    async with open_hub(url, **connect) as hub:
        await hub.agent(agent)
        ctx = hub._ctx

        async def heartbeat() -> None:
            while await ctx.tasks.sleep(ctx.settings.presence.interval):
                await ctx.presence.note(agent, active=False)

        ctx.spawn(heartbeat())
        await build_server(hub, fixed(agent), options).run_stdio_async()


def bearer(resolve: Callable[[str], Resolved | Awaitable[Resolved]]) -> Identity:
    """The identity of an HTTP call: the agent its bearer token resolves to (`resolve(token)`
    returns the agent name, a `Caller` with the token's checks, or None for a token that is
    not valid; a bare name is not checked further)."""

    async def identity(ctx: Context) -> Caller:
        headers: Mapping[str, str] = ctx.headers or {}
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ToolError("Send an 'Authorization: Bearer <token>' header naming your agent.")
        got = resolve(token.strip())
        if not isinstance(got, str | Caller | None):
            got = await got
        if got is None:
            raise ToolError("The bearer token is not valid here; ask for a token of your agent.")
        return Caller(got) if isinstance(got, str) else got

    return identity


def http_app(
    hub: Hub,
    resolve: Callable[[str], Resolved | Awaitable[Resolved]],
    options: McpOptions | None = None,
    *,
    path: str = "/",
    host_check: bool = True,
) -> tuple[ASGIApp, Callable[[], contextlib.AbstractAsyncContextManager[None]]]:
    """A streamable-HTTP MCP app on an open `hub`, each call acting as the agent its bearer
    token resolves to (with that token's checks when `resolve` returns a `Caller`), and the
    lifespan to run around it (the SDK's session manager).

    Mount it where the tools should be (`Mount("/mcp", app)` with `path="/"`) and enter the
    lifespan in the host application's own (`async with lifespan(): ...`). `host_check=False`
    turns off the SDK's DNS-rebinding guard (which accepts only localhost Host headers): safe
    when every request must carry a bearer token, as under `agentcomm serve`.
    """
    from mcp.server.transport_security import TransportSecuritySettings

    server = build_server(hub, bearer(resolve), options)
    security = (
        None if host_check else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    app = server.streamable_http_app(
        streamable_http_path=path, stateless_http=True, transport_security=security
    )

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    return app, lifespan
