"""The bridge: a sandboxed agent becomes an ordinary agent of a hub.

It uses only the hub's public API. Hub messages to the agent are written into inbound.db
(deduplicated by the hub message id) and stay leased in the hub, their lease extended, until
the sandbox finishes them: completed -> acked, failed (by the sandbox or the sweep) -> a dead
letter with the reason. The sandbox's messages are sent in the hub as the agent with the
outbound id as idempotency key (a crash between sending and recording sends once); a reply to a
hub request answers it; a question is asked as a hub request and its reply answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._errors import (
    AgentCommError,
    EncodeError,
    HubClosed,
    RequestTimeout,
    SandboxError,
    ValidationError,
)
from .._ids import new_id
from .._tasks import TaskRegistry
from .._validation import check_name
from .common import check_interval
from .host import Host, OutboundMessage, open_host
from .schema import Journal

if TYPE_CHECKING:
    from .._agent import Agent
    from .._hub import Hub
    from .._mailbox import Message

__all__ = ["Bridge", "bridge"]

logger = logging.getLogger("agentcomm")
CLOSE_GRACE = 3.0
#: How long a completed hub request stays held for the sandbox's reply.
REPLY_WINDOW = 60.0
_TERMINAL = ("completed", "failed", "cancelled")


class Bridge:
    """A running bridge between a hub agent and a sandbox directory (see `sandbox.bridge`)."""

    def __init__(
        self,
        hub: Hub,
        agent: str,
        path: str | os.PathLike[str],
        *,
        lease: float,
        receive_batch: int,
        host_options: dict[str, Any],
    ) -> None:
        self._hub = hub
        self._agent_name = check_name("agent", agent)
        self._lease = check_interval("lease", lease)
        self._batch = receive_batch
        self._host: Host = open_host(path, **host_options)
        self._agent: Agent | None = None
        self._tasks = TaskRegistry()
        self._closed = False
        # inbound id -> (hub message, completed at or None)
        self._held: dict[str, Message] = {}
        self._completed_at: dict[str, float] = {}
        self._changed = asyncio.Event()

    @property
    def host(self) -> Host:
        """The host side of the directory, opened by the bridge."""
        return self._host

    @property
    def agent(self) -> str:
        """The hub agent the sandbox is."""
        return self._agent_name

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> Bridge:
        """Open the host side, register the agent, and start relaying."""
        self._agent = await self._hub.agent(self._agent_name)
        await self._host
        self._tasks.spawn(self._hub_to_sandbox())
        self._tasks.spawn(self._sandbox_to_hub())
        self._tasks.spawn(self._settle())
        return self

    async def close(self) -> None:
        """Stop relaying and close the host side (bounded; the hub stays open). Messages held
        in the hub are redelivered to the next bridge when their lease ends."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await self._host.close()
        await self._tasks.aclose(CLOSE_GRACE, 1.0)

    # --- hub -> sandbox ----------------------------------------------------------------------

    async def _hub_to_sandbox(self) -> None:
        agent = self._agent
        assert agent is not None
        while not self._closed:
            try:
                got = await agent.receive_many(self._batch, timeout=0.25, lease=self._lease)
            except HubClosed:
                return
            except AgentCommError as exc:
                logger.warning("agentcomm bridge: receive failed: %s", exc)
                await self._tasks.sleep(0.5)
                continue
            for msg in got:
                await self._admit(msg)

    async def _admit(self, msg: Message) -> None:
        origin = {"hub_id": msg.id, "sender": msg.sender, "request": msg.correlation_id is not None}
        mid = new_id()
        self._held[mid] = msg  # before the write: the sandbox may answer at once
        try:
            got = await self._host._send_from_hub(mid, msg.data, msg.type, f"hub:{msg.id}", origin)
        except (ValidationError, EncodeError) as exc:
            self._drop(mid)
            with contextlib.suppress(AgentCommError):
                await msg.dead_letter(f"cannot be written into the sandbox channel: {exc}")
            return
        except SandboxError:
            self._drop(mid)
            if self._closed:
                return
            raise
        if got != mid:  # a redelivery of a message already written in
            self._drop(mid)
            self._held[got] = msg
        self._changed.set()

    # --- settling held hub messages ----------------------------------------------------------

    async def _settle(self) -> None:
        host = self._host
        last_extend = time.monotonic()
        while not self._closed:
            token = host._waker.token()
            self._changed.clear()
            try:
                if self._held:
                    await self._settle_once()
                if time.monotonic() - last_extend >= self._lease / 3:
                    last_extend = time.monotonic()
                    await self._extend()
            except HubClosed:
                return
            except AgentCommError as exc:
                if self._closed:
                    return
                logger.warning("agentcomm bridge: settling failed: %s", exc)
            waiters = {
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(host._waker.wait(token, 0.25)),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _settle_once(self) -> None:
        asked = list(self._held)
        statuses = await self._host._statuses(asked)
        now = time.monotonic()
        for mid, st in statuses.items():
            msg = self._held.get(mid)
            if msg is None or st.state not in _TERMINAL:
                continue
            if st.state == "completed":
                if msg.correlation_id is not None:  # a request: its reply may still come
                    first = self._completed_at.setdefault(mid, now)
                    if now - first < REPLY_WINDOW:
                        continue
                self._drop(mid)
                with contextlib.suppress(AgentCommError):
                    if not msg.settled:
                        await msg.ack()
            else:
                self._drop(mid)
                reason = st.reason or f"the sandbox task was {st.state}"
                with contextlib.suppress(AgentCommError):
                    if not msg.settled:
                        await msg.dead_letter(reason)
        for mid in [m for m in asked if m not in statuses]:  # pruned meanwhile
            self._drop(mid)

    def _drop(self, mid: str) -> None:
        self._held.pop(mid, None)
        self._completed_at.pop(mid, None)

    async def _extend(self) -> None:
        for mid, msg in list(self._held.items()):
            if msg.settled:
                self._drop(mid)
                continue
            try:
                await msg.extend(self._lease)
            except HubClosed:
                raise
            except AgentCommError:  # the lease passed on: the redelivery is held instead
                self._drop(mid)

    # --- sandbox -> hub ----------------------------------------------------------------------

    async def _sandbox_to_hub(self) -> None:
        while not self._closed:
            try:
                async for out in self._host.outbound():
                    if self._closed:
                        return
                    await self._route(out)
            except HubClosed:
                return
            except AgentCommError as exc:
                if self._closed:
                    return
                logger.warning("agentcomm bridge: relaying the sandbox's messages failed: %s", exc)
                await self._tasks.sleep(0.2)

    async def _route(self, out: OutboundMessage) -> None:
        agent = self._agent
        assert agent is not None
        if out.kind == "question":
            if out.to is None:
                await out.failed("a question through the bridge needs to= naming the hub agent "
                                 "that answers it")  # fmt: skip
                return
            self._tasks.spawn(self._question(out, out.to))
            return
        if out.in_reply_to is not None:
            held = self._held.get(out.in_reply_to)
            if held is not None and held.correlation_id is not None and out.to is None:
                await self._reply(out, held)
                return
            if out.to is None:
                origin = await self._host._origin(out.in_reply_to)
                if origin is None or not isinstance(origin.get("sender"), str):
                    await out.failed(f"in_reply_to {out.in_reply_to!r} is not a hub message, "
                                     "and no to= was given")  # fmt: skip
                    return
                if origin.get("request"):
                    await out.failed("the hub request it answers is no longer held by the "
                                     "bridge (it timed out, or the bridge restarted)")  # fmt: skip
                    return
                await self._send(out, origin["sender"])
                return
        if out.to is None:
            await out.failed("no recipient: send with to= (a hub agent) or in_reply_to=")
            return
        await self._send(out, out.to)

    async def _send(self, out: OutboundMessage, to: str) -> None:
        agent = self._agent
        assert agent is not None
        metadata = {"sandbox_id": out.id}
        if out.in_reply_to is not None:
            metadata["sandbox_in_reply_to"] = out.in_reply_to
        try:
            # the outbound id is the idempotency key: a resend after a crash is stored once
            await agent.send(to, out.data, type=out.kind, idempotency_key=out.id,
                             metadata=metadata)  # fmt: skip
        except HubClosed:
            raise
        except AgentCommError as exc:
            await out.failed(f"the hub refused it: {exc}")
            return
        await out.delivered()

    async def _reply(self, out: OutboundMessage, msg: Message) -> None:
        try:
            ok = await msg.reply(out.data, type=out.kind)
        except HubClosed:
            raise
        except AgentCommError as exc:
            await out.failed(f"the hub refused the reply: {exc}")
            return
        if ok:
            await out.delivered()
        else:
            await out.failed("the requester stopped waiting (its request timed out)")
        if out.in_reply_to is not None and msg.settled:
            self._drop(out.in_reply_to)

    async def _question(self, out: OutboundMessage, to: str) -> None:
        agent = self._agent
        assert agent is not None
        remaining = (out.deadline or time.time() + 300.0) - time.time()
        try:
            if remaining <= 0:
                await out.failed("the question had timed out before the bridge saw it")
                return
            reply = await agent.request(to, out.data, type="question", timeout=remaining)
            await self._host.answer(out.id, reply.data)
        except RequestTimeout:
            with contextlib.suppress(AgentCommError):
                await out.failed(f"no answer from {to!r} within {remaining:.0f} s")
        except (HubClosed, SandboxError):
            return
        except AgentCommError as exc:
            with contextlib.suppress(AgentCommError):
                await out.failed(f"the hub refused the question: {exc}")


def bridge(
    hub: Hub,
    *,
    agent: str,
    path: str | os.PathLike[str],
    lease: float = 60.0,
    receive_batch: int = 100,
    journal: Journal = "delete",
    stale_after: float = 60.0,
    retry_base: float = 5.0,
    max_tries: int = 5,
    poll_max: float = 1.0,
) -> Bridge:
    """Make the sandbox in directory `path` agent `agent` of `hub`:
    `async with sandbox.bridge(hub, agent="coder", path=...) as b: ...`.

    Messages sent to `agent` in the hub are written into inbound.db; the sandbox's messages
    with `to="planner"` are sent in the hub as `agent`; a message with `in_reply_to` set
    answers the hub request it names (or goes to the original sender); a question
    (`box.ask(..., to="planner")`) becomes a hub request whose reply answers it; a message the
    sandbox fails, or the sweep gives up on, becomes a dead letter of `agent` with the reason.
    Hub messages stay leased (`lease` seconds, extended) until the sandbox finishes them. The
    other arguments are `open_host`'s.
    """
    check_name("agent", agent)
    return Bridge(
        hub, agent, path, lease=lease, receive_batch=receive_batch,
        host_options={
            "journal": journal, "stale_after": stale_after, "retry_base": retry_base,
            "max_tries": max_tries, "poll_max": poll_max,
        },
    )  # fmt: skip
