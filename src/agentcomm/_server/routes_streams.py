"""Durable topic consumers (fetch + ack) and the Server-Sent Events streams: live topic
subscriptions, shared-memory watches and an agent's messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.responses import StreamingResponse

from .._codec import decode_metadata, decode_payload
from .._errors import ValidationError
from .._kv_records import Space
from .._records import ConsumerSpec, TopicRecord
from .._subjects import consumer_channel, parse_pattern, wake_channel
from .._validation import check_int, check_name, check_positive
from . import authz
from .api import Call, first_of, route
from .routes_messages import acting, delivery
from .schemas import AckTopicBody, FetchBody, Ok, TopicDeliveries, TopicDelivery

TAG = "topics"


async def _topic_delivery(call: Call, name: str, r: TopicRecord) -> TopicDelivery:
    ctx = call.server.hub._ctx
    data, kind, _ = await ctx.refs.load(r.data, r.data_kind)
    return TopicDelivery(
        receipt=call.server.receipts.make(["t", name, r.seq, r.attempt]), sequence=r.seq,
        topic=r.topic, sender=r.sender, type=r.type, attempt=r.attempt,
        published_at=r.published_at, data=decode_payload(data, kind),
        metadata=decode_metadata(r.metadata),
    )  # fmt: skip


@route("POST", "/v1/agents/{agent}/consumers/{name}/fetch",
       summary="Lease records of a durable consumer; long-polls up to `wait` seconds",
       tag=TAG, body=FetchBody, response=TopicDeliveries)  # fmt: skip
async def fetch(call: Call) -> TopicDeliveries:
    b: FetchBody = call.body
    server = call.server
    name = check_name("consumer name", call.path("name"))
    authz.need_subscribe(call.principal, b.pattern)
    await acting(call, "subscribe as")
    check_int("max_messages", b.max_messages, 1, 1000)
    lease = server.hub.lease if b.lease is None else check_positive(
        "lease", b.lease, server.hub.limits.max_delay
    )  # fmt: skip
    ctx = server.hub._ctx
    spec = ConsumerSpec(name=name, pattern=b.pattern, senders=None, types=None, metadata=None,
                        start=b.start)  # fmt: skip
    await ctx.topics.open_consumer(spec, now=ctx.now())
    await server.tokens.remember_consumer(name, b.pattern)
    wait = 0.0 if server.stopping.is_set() else min(max(b.wait, 0.0), server.settings.max_wait)
    channels = (wake_channel(parse_pattern(b.pattern)), consumer_channel(name), server.drain)
    with ctx.wakeups(*channels, timeout=wait) as wakeups:
        while True:
            wakeups.rearm()
            claim = await ctx.topics.claim_topic(
                name, acks=[], releases=[], max_messages=b.max_messages, lease=lease,
                now=ctx.now(),
            )  # fmt: skip
            if claim.records or server.stopping.is_set():
                break
            if not await wakeups.wait(claim.next_wake):
                break
    out = [await _topic_delivery(call, name, r) for r in claim.records]
    return TopicDeliveries(out, claim.lost)


@route("POST", "/v1/agents/{agent}/consumers/{name}/ack",
       summary="Ack records of a durable consumer", tag=TAG, body=AckTopicBody,
       response=Ok)  # fmt: skip
async def ack_topic(call: Call) -> Ok:
    name = check_name("consumer name", call.path("name"))
    await acting(call, "subscribe as")
    server = call.server
    pattern = await server.tokens.consumer_pattern(name)
    if pattern is None:
        raise ValidationError(f"No durable consumer {name!r} was opened through this server.")
    authz.need_subscribe(call.principal, pattern)
    acks = []
    for receipt in call.body.receipts:
        fields = server.receipts.read(receipt)
        if len(fields) != 4 or fields[0] != "t" or fields[1] != name:
            raise ValidationError(f"receipt is not one of consumer {name!r}.")
        acks.append((int(fields[2]), int(fields[3])))
    ctx = server.hub._ctx
    await ctx.topics.claim_topic(name, acks=acks, releases=[], max_messages=0, lease=0.0,
                                 now=ctx.now())  # fmt: skip
    return Ok()


def _sse(events: AsyncIterator[Any]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b": ready\n\n"
        async for event in events:
            yield b"data: " + msgspec.json.encode(event) + b"\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})  # fmt: skip


_PATTERN_Q = [("pattern", "string", "The topic pattern, e.g. `workflow.>`.")]


@route("GET", "/v1/agents/{agent}/subscribe",
       summary="Live topic messages (Server-Sent Events, one JSON object per event)", tag=TAG,
       kind="sse", query=_PATTERN_Q)  # fmt: skip
async def subscribe(call: Call) -> StreamingResponse:
    pattern = call.query("pattern") or ""
    authz.need_subscribe(call.principal, pattern)
    agent = await acting(call, "subscribe as")
    sub = await agent.subscribe(pattern)
    server = call.server

    async def events() -> AsyncIterator[Any]:
        try:
            while not server.stopping.is_set():
                msg = await first_of(sub.next(timeout=15.0), server.stopping)
                if msg is None:
                    continue
                yield {"sequence": msg.sequence, "topic": msg.topic, "sender": msg.sender,
                       "type": msg.type, "data": msg.data, "metadata": msg.metadata}  # fmt: skip
        finally:
            await sub.aclose()

    return _sse(events())


@route("GET", "/v1/kv-watch/{namespace}",
       summary="Changes of a shared namespace (Server-Sent Events)", tag="memory", kind="sse",
       query=[("pattern", "string", "A glob the keys match (default `*`).")])  # fmt: skip
async def watch(call: Call) -> StreamingResponse:
    namespace = check_name("namespace", call.path("namespace"))
    authz.need_kv(call.principal, Space("", namespace), write=False)
    memory = call.server.hub.memory(namespace)
    changes = memory.watch(call.query("pattern") or "*")
    server = call.server

    async def events() -> AsyncIterator[Any]:
        try:
            while not server.stopping.is_set():
                change = await first_of(changes.__anext__(), server.stopping)
                if change is None:
                    return
                yield msgspec.structs.asdict(change)
        except StopAsyncIteration:
            return
        finally:
            await changes.aclose()

    return _sse(events())


@route("GET", "/v1/agents/{agent}/messages",
       summary="The agent's messages as they arrive, each leased (Server-Sent Events); "
       "settle each with its receipt", tag="messages", kind="sse",
       query=[("lease", "number", "Seconds each delivery is leased for.")])  # fmt: skip
async def messages(call: Call) -> StreamingResponse:
    agent = await acting(call, "receive for")
    server = call.server
    lease = check_positive("lease", call.query_float("lease", server.hub.lease),
                           server.hub.limits.max_delay)  # fmt: skip

    async def events() -> AsyncIterator[Any]:
        while not server.stopping.is_set():
            got = await agent._receive(1, lease=lease, timeout=15.0, stop=server.stopping,
                                       wake=server.drain)  # fmt: skip
            for msg in got:
                server.hub._ctx.leases.discard(msg)
                yield delivery(call, msg)

    return _sse(events())
