"""Agents, mailboxes, request / reply, schedules and publishing: `/v1/agents/...`."""

from __future__ import annotations

from typing import Any

import msgspec

from .._agent import Agent, Outgoing
from .._codec import decode_metadata, decode_payload
from .._errors import NotFound, ValidationError
from .._mailbox import Message
from .._records import StoredMessage
from . import authz
from .api import Call, route
from .schemas import (
    AgentInfo,
    AgentList,
    DeadLetterBody,
    Delivered,
    Deliveries,
    Delivery,
    ExtendBody,
    NackBody,
    Ok,
    PublishBody,
    PublishResult,
    ReceiptBody,
    ReceiveBody,
    ReplyBody,
    ReplyErrorBody,
    ReplyOut,
    RequestBody,
    ScheduleBody,
    SendBatchBody,
    SendBatchResult,
    SendBody,
    SendResult,
)

TAG = "messages"


async def acting(call: Call, what: str) -> Agent:
    """The path's agent, once the token may act as it."""
    name = call.path("agent")
    authz.need_act_as(call.principal, name, what)
    return await call.server.hub.agent(name)


def _agent(info: Any) -> AgentInfo:
    return AgentInfo(**msgspec.structs.asdict(info))


def _outgoing(body: SendBody) -> Outgoing:
    return Outgoing(
        to=body.to, data=body.data, type=body.type, priority=body.priority,
        ttl=body.ttl,
        max_attempts=body.max_attempts, idempotency_key=body.idempotency_key,
        delay=body.delay, metadata=body.metadata,
    )  # fmt: skip


@route("GET", "/v1/agents", summary="List agents (all for admin, else the token's)", tag=TAG,
       response=AgentList)  # fmt: skip
async def list_agents(call: Call) -> AgentList:
    infos = await call.server.hub.agents()
    p = call.principal
    return AgentList([_agent(i) for i in infos if authz.may_see_agent(p, i.name)])


@route("POST", "/v1/agents/{agent}", summary="Register an agent (or attach to it)", tag=TAG,
       response=AgentInfo)  # fmt: skip
async def register(call: Call) -> AgentInfo:
    agent = await acting(call, "register")
    for info in await call.server.hub.agents():
        if info.name == agent.name:
            return _agent(info)
    raise NotFound(f"No agent {agent.name!r} is registered.")


@route("GET", "/v1/agents/{agent}", summary="One agent and its presence", tag=TAG,
       response=AgentInfo)  # fmt: skip
async def get_agent(call: Call) -> AgentInfo:
    name = call.path("agent")
    if not call.principal.admin:
        authz.need_act_as(call.principal, name, "inspect")
    for info in await call.server.hub.agents():
        if info.name == name:
            return _agent(info)
    raise NotFound(f"No agent {name!r} is registered.")


@route("POST", "/v1/agents/{agent}/send", summary="Send a message as the agent", tag=TAG,
       body=SendBody, response=SendResult)  # fmt: skip
async def send(call: Call) -> SendResult:
    agent = await acting(call, "send as")
    ids = await agent.send_many([_outgoing(call.body)])
    return SendResult(ids[0])


@route("POST", "/v1/agents/{agent}/send-batch", summary="Send messages in one atomic step",
       tag=TAG, body=SendBatchBody, response=SendBatchResult)  # fmt: skip
async def send_batch(call: Call) -> SendBatchResult:
    agent = await acting(call, "send as")
    return SendBatchResult(await agent.send_many([_outgoing(b) for b in call.body.messages]))


def delivery(call: Call, msg: Message) -> Delivery:
    """A received message as JSON, with its signed receipt."""
    s = msg._stored
    receipt = call.server.receipts.make(
        ["m", s.recipient, s.seq, s.attempt, s.id, s.sender, s.type, s.correlation_id,
         s.reply_to, msg._lease]
    )  # fmt: skip
    return Delivery(
        receipt=receipt, id=s.id, sender=s.sender, recipient=s.recipient, type=s.type,
        priority=s.priority, attempt=s.attempt, max_attempts=s.max_attempts,
        enqueued_at=s.enqueued_at, lease_until=msg.lease_until,
        correlation_id=s.correlation_id, reply_to=s.reply_to, data=msg.data,
        metadata=msg.metadata,
    )  # fmt: skip


@route("POST", "/v1/agents/{agent}/receive",
       summary="Lease messages; long-polls up to `wait` seconds", tag=TAG, body=ReceiveBody,
       response=Deliveries)  # fmt: skip
async def receive(call: Call) -> Deliveries:
    body: ReceiveBody = call.body
    agent = await acting(call, "receive for")
    server = call.server
    wait = min(max(body.wait, 0.0), server.settings.max_wait)
    if server.stopping.is_set():
        wait = 0.0
    from .._agent import MAX_RECEIVE
    from .._validation import check_int, check_positive

    check_int("max_messages", body.max_messages, 1, MAX_RECEIVE)
    lease = None if body.lease is None else check_positive(
        "lease", body.lease, server.hub.limits.max_delay
    )  # fmt: skip
    got = await agent._receive(
        body.max_messages, lease=lease, timeout=wait, stop=server.stopping, wake=server.drain
    )
    out = []
    for msg in got:
        # the HTTP client holds the delivery, not this hub: a shutdown must not release it
        server.hub._ctx.leases.discard(msg)
        out.append(delivery(call, msg))
    return Deliveries(out)


def message_of(call: Call, receipt: str) -> Message:
    """The delivery a receipt names, once it is the path agent's and the token may act as it."""
    fields = call.server.receipts.read(receipt)
    if len(fields) != 10 or fields[0] != "m":
        raise ValidationError("receipt is not a message receipt.")
    _, recipient, seq, attempt, mid, sender, type_, cid, reply_to, lease = fields
    if recipient != call.path("agent"):
        raise ValidationError(f"receipt belongs to agent {recipient!r}, not this path's.")
    authz.need_act_as(call.principal, recipient, "settle messages of")
    stored = StoredMessage(
        seq=seq, id=mid, sender=sender, recipient=recipient, type=type_, priority=0,
        data=b"null", data_kind=0, metadata=None, attempt=attempt, max_attempts=0,
        enqueued_at=0.0, lease_until=0.0, correlation_id=cid, reply_to=reply_to,
    )  # fmt: skip
    return Message(call.server.hub._ctx, stored, None, lease)


@route("POST", "/v1/agents/{agent}/ack", summary="Ack a delivery", tag=TAG, body=ReceiptBody,
       response=Ok)  # fmt: skip
async def ack(call: Call) -> Ok:
    await message_of(call, call.body.receipt).ack()
    return Ok()


@route("POST", "/v1/agents/{agent}/nack", summary="Retry a delivery later", tag=TAG,
       body=NackBody, response=Ok)  # fmt: skip
async def nack(call: Call) -> Ok:
    await message_of(call, call.body.receipt).nack(call.body.delay)
    return Ok()


@route("POST", "/v1/agents/{agent}/extend", summary="Extend a delivery's lease", tag=TAG,
       body=ExtendBody, response=Ok)  # fmt: skip
async def extend(call: Call) -> Ok:
    await message_of(call, call.body.receipt).extend(call.body.lease)
    return Ok()


@route("POST", "/v1/agents/{agent}/dead-letter", summary="Dead-letter a delivery", tag=TAG,
       body=DeadLetterBody, response=Ok)  # fmt: skip
async def dead_letter(call: Call) -> Ok:
    await message_of(call, call.body.receipt).dead_letter(call.body.reason)
    return Ok()


@route("POST", "/v1/agents/{agent}/reply", summary="Answer a request delivery", tag=TAG,
       body=ReplyBody, response=Delivered)  # fmt: skip
async def reply(call: Call) -> Delivered:
    b: ReplyBody = call.body
    msg = message_of(call, b.receipt)
    return Delivered(await msg.reply(b.data, type=b.type, metadata=b.metadata, ack=b.ack))


@route("POST", "/v1/agents/{agent}/reply-error", summary="Answer a request with an error",
       tag=TAG, body=ReplyErrorBody, response=Delivered)  # fmt: skip
async def reply_error(call: Call) -> Delivered:
    b: ReplyErrorBody = call.body
    msg = message_of(call, b.receipt)
    return Delivered(await msg.reply_error(b.message, b.data, type=b.type, ack=b.ack))


@route("POST", "/v1/agents/{agent}/request",
       summary="Send a request and wait for its reply (up to `timeout`)", tag=TAG,
       body=RequestBody, response=ReplyOut)  # fmt: skip
async def request(call: Call) -> ReplyOut:
    b: RequestBody = call.body
    agent = await acting(call, "send requests as")
    timeout = b.timeout
    if isinstance(timeout, int | float) and timeout > call.server.settings.max_wait:
        timeout = call.server.settings.max_wait
    r = await agent.request(
        b.to, b.data, type=b.type, timeout=timeout, priority=b.priority,
        max_attempts=b.max_attempts, metadata=b.metadata,
    )  # fmt: skip
    return ReplyOut(
        correlation_id=r.correlation_id, id=r.id, sender=r.sender, type=r.type, data=r.data,
        metadata=r.metadata, sent_at=r.sent_at,
    )  # fmt: skip


@route("POST", "/v1/agents/{agent}/schedules", summary="Schedule a recurring message",
       tag=TAG, body=ScheduleBody, response=SendResult)  # fmt: skip
async def schedule(call: Call) -> SendResult:
    b: ScheduleBody = call.body
    agent = await acting(call, "schedule as")
    sid = await agent.schedule(
        b.to, b.data, type=b.type, cron=b.cron, every=b.every, priority=b.priority, ttl=b.ttl,
        metadata=b.metadata,
    )  # fmt: skip
    return SendResult(sid)


@route("DELETE", "/v1/agents/{agent}/schedules/{schedule_id}",
       summary="Cancel a schedule the agent made", tag=TAG, response=Ok)  # fmt: skip
async def cancel_schedule(call: Call) -> Ok:
    name = call.path("agent")
    authz.need_act_as(call.principal, name, "cancel schedules of")
    sid = call.path("schedule_id")
    hub = call.server.hub
    if not any(s.id == sid and s.sender == name for s in await hub.schedules()):
        raise NotFound(f"Agent {name!r} has no schedule {sid!r}.")
    await hub.cancel_schedule(sid)
    return Ok()


@route("POST", "/v1/agents/{agent}/publish", summary="Publish to a topic as the agent",
       tag="topics", body=PublishBody, response=PublishResult)  # fmt: skip
async def publish(call: Call) -> PublishResult:
    b: PublishBody = call.body
    authz.need_publish(call.principal, b.topic)
    agent = await acting(call, "publish as")
    return await agent.publish(b.topic, b.data, type=b.type, metadata=b.metadata)


def decoded(data: bytes, kind: int, metadata: bytes | None) -> tuple[Any, dict[str, Any]]:
    """A stored payload and metadata as JSON values."""
    return decode_payload(data, kind), decode_metadata(metadata)
