"""A delivered message and what its consumer does with it: ack, nack, dead-letter, extend, reply."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from . import _observe
from ._codec import decode_metadata, decode_payload, encode_for, encode_metadata
from ._context import Context
from ._errors import AlreadySettled, LeaseLost, RemoteError, RequestFailed, ValidationError
from ._ids import new_id
from ._leases import LeaseKeeper
from ._records import (
    EXPIRED_REPLY_TYPE,
    ReplyStatus,
    Settle,
    SettleKind,
    StoredMessage,
    StoredReply,
)
from ._ref_records import Ref
from ._validation import check_bool, check_name, check_non_negative, check_positive, check_text

__all__ = ["Message", "Reply", "answer"]

logger = logging.getLogger("agentcomm.mailbox")

_UNSET: Any = object()
#: The span (and DEBUG line) of each settle operation.
_SPAN_NAMES = {
    SettleKind.ACK: "queue.ack",
    SettleKind.NACK: "queue.requeue",
    SettleKind.DEAD: "queue.dead_letter",
    SettleKind.EXTEND: "queue.extend",
}


class Message:
    """One delivery of a message, leased to the agent that received it.

    Settle it exactly once: `ack()` when done, `nack()` to retry later, `dead_letter()` to give
    up. Unsettled, it is delivered again once the lease ends (with `attempt` + 1).
    """

    __slots__ = (
        "_ctx", "_data", "_lease", "_lease_until", "_metadata", "_ref", "_settled", "_stored",
    )  # fmt: skip

    def __init__(
        self, ctx: Context, stored: StoredMessage, ref: Ref | None = None, lease: float = 0.0
    ) -> None:
        self._ctx = ctx
        self._stored = stored
        self._ref = ref
        self._data: Any = _UNSET
        self._metadata: Any = _UNSET
        self._settled = False
        self._lease_until = stored.lease_until
        #: The lease it was received with (seconds): what `auto_extend` renews by default.
        self._lease = lease if lease > 0 else ctx.settings.lease

    @property
    def lease_until(self) -> float:
        """When this delivery's lease ends (epoch seconds); `extend()` moves it."""
        return self._lease_until

    @property
    def id(self) -> str:
        """The message id, the same on every delivery."""
        return self._stored.id

    @property
    def sender(self) -> str:
        """The agent that sent it."""
        return self._stored.sender

    @property
    def recipient(self) -> str:
        """The agent it was sent to (the receiver)."""
        return self._stored.recipient

    @property
    def type(self) -> str:
        """The message type given at send."""
        return self._stored.type

    @property
    def priority(self) -> int:
        """Higher is delivered first."""
        return self._stored.priority

    @property
    def attempt(self) -> int:
        """Which delivery this is, from 1."""
        return self._stored.attempt

    @property
    def max_attempts(self) -> int:
        """Deliveries allowed before the message is dead-lettered."""
        return self._stored.max_attempts

    @property
    def enqueued_at(self) -> float:
        """When it was sent (epoch seconds)."""
        return self._stored.enqueued_at

    @property
    def correlation_id(self) -> str | None:
        """Set on requests: the id the reply is matched by."""
        return self._stored.correlation_id

    @property
    def reply_to(self) -> str | None:
        """Set on requests: the agent waiting for the reply."""
        return self._stored.reply_to

    @property
    def data(self) -> Any:
        """The payload, decoded on first access."""
        if self._data is _UNSET:
            self._data = decode_payload(self._stored.data, self._stored.data_kind)
        return self._data

    @property
    def payload_ref(self) -> Ref | None:
        """The reference the payload travelled by, or None if it was sent by value."""
        return self._ref

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata given at send (empty dict if none)."""
        if self._metadata is _UNSET:
            self._metadata = decode_metadata(self._stored.metadata)
        return self._metadata  # type: ignore[no-any-return]

    @property
    def settled(self) -> bool:
        """Whether this delivery was acked, nacked or dead-lettered."""
        return self._settled

    def __repr__(self) -> str:
        return (
            f"<Message id={self.id} {self.sender}->{self.recipient} type={self.type!r}"
            f" attempt={self.attempt}>"
        )

    def _span(self, name: str) -> AbstractContextManager[_observe.Setter]:
        """Record an operation on this delivery, in the sender's trace (see `_observe`)."""
        if not _observe.active():
            return _observe.NOOP
        attrs = {
            "agentcomm.agent": self.recipient, "messaging.message.id": self.id,
            "agentcomm.type": self.type, "agentcomm.attempt": self.attempt,
            "agentcomm.sender": self.sender,
        }  # fmt: skip
        return _observe.span(name, attrs, self.metadata)

    def _op(self, kind: SettleKind, until: float = 0.0, reason: str = "") -> Settle:
        s = self._stored
        return Settle(kind, s.recipient, s.seq, s.attempt, until, reason)

    async def _settle(self, op: Settle, what: str) -> None:
        ctx = self._ctx
        ctx.check_open()  # first: a close released the message, which is not "settled"
        if self._settled:
            raise AlreadySettled(f"Message {self.id} was already settled; cannot {what} it.")
        if _observe.active():
            with self._span(_SPAN_NAMES[op.kind]):
                await self._settle_now(op, what)
        else:
            await self._settle_now(op, what)

    async def _settle_now(self, op: Settle, what: str) -> None:
        ctx = self._ctx
        ctx.check_open()
        if not await ctx.mailboxes.settle(op, now=ctx.now()):
            logger.info(
                "lease lost: could not %s message %s of %r (delivery %d)",
                what, self.id, self.recipient, self.attempt,
            )  # fmt: skip
            raise LeaseLost(
                f"Cannot {what} message {self.id}: its lease ended and it was delivered again "
                "or settled elsewhere. Use a longer lease or call extend() while working."
            )
        if op.kind != SettleKind.EXTEND:
            self._settled = True
            ctx.leases.discard(self)
        await ctx.presence.note(self.recipient, active=True)

    def _ack_op(self) -> Settle:
        if self._settled:
            raise AlreadySettled(f"Message {self.id} was already settled; cannot ack it.")
        return self._op(SettleKind.ACK)

    async def ack(self) -> None:
        """Mark the message done; it is never delivered again."""
        await self._settle(self._op(SettleKind.ACK), "ack")

    async def nack(self, delay: float | None = None) -> None:
        """Give the message back for a retry after `delay` seconds (default: the hub's backoff).

        On the last allowed attempt it goes to dead letters instead.
        """
        if delay is None:
            delay = self._ctx.settings.backoff.delay(self.attempt)
        else:
            delay = check_non_negative("delay", delay, self._ctx.settings.limits.max_delay)
        await self._settle(self._op(SettleKind.NACK, until=self._ctx.now() + delay), "nack")

    async def dead_letter(self, reason: str) -> None:
        """Give up on the message: it moves to dead letters with `reason`."""
        reason = check_text("reason", reason)
        await self._settle(self._op(SettleKind.DEAD, reason=reason), "dead-letter")

    async def extend(self, lease: float) -> None:
        """Keep the lease for `lease` more seconds from now."""
        lease = check_positive("lease", lease, self._ctx.settings.limits.max_delay)
        until = self._ctx.now() + lease
        await self._settle(self._op(SettleKind.EXTEND, until=until), "extend")
        self._lease_until = until

    def auto_extend(self, *, lease: float | None = None, every: float | None = None) -> LeaseKeeper:
        """Keep this delivery's lease while a block runs, for work longer than the lease:

            async with msg.auto_extend():
                result = await slow_llm_call(msg.data)
            await msg.ack()

        Every `every` seconds (default: a third of `lease`) the lease is extended to `lease`
        seconds from then (default: the lease the message was received with). Extending stops
        when the block ends, the message is settled, or the hub closes; if the lease was lost
        anyway (e.g. the process stalled for longer than the lease), `keeper.lost` is True and
        settling the message raises LeaseLost. `agent.serve` does this for every handler.
        """
        settings = self._ctx.settings
        lease = self._lease if lease is None else check_positive(
            "lease", lease, settings.limits.max_delay
        )  # fmt: skip
        if every is None:
            every = lease / 3
        else:
            every = check_positive("every", every, lease)
            if every >= lease:
                raise ValidationError(
                    f"every= ({every:g} s) must be shorter than the lease ({lease:g} s), or the "
                    "lease ends before it is extended."
                )
        return LeaseKeeper(self, lease, every)

    async def reply(
        self,
        data: Any,
        *,
        type: str = "reply",
        metadata: dict[str, Any] | None = None,
        ack: bool = True,
    ) -> bool:
        """Answer a request; by default also ack it, in the same step.

        Returns False when the requester no longer waits (it timed out); such a reply is
        discarded and counted in `HubStats.late_replies`.
        """
        return await self._reply(data, type, metadata, ack, ReplyStatus.OK)

    async def reply_error(
        self,
        message: str,
        data: Any = None,
        *,
        type: str = "error",
        metadata: dict[str, Any] | None = None,
        ack: bool = True,
    ) -> bool:
        """Answer a request with an error: the requester's `request()` raises `RemoteError`
        with this `type`, `message` and `data` (any encodable value). By default also acks
        the request, in the same step; returns False as `reply` does.
        """
        message = check_text("message", message)
        return await self._reply(
            {"message": message, "data": data}, type, metadata, ack, ReplyStatus.ERROR
        )

    async def _reply(
        self, data: Any, type: str, metadata: dict[str, Any] | None, ack: bool, status: int
    ) -> bool:
        cid = self.correlation_id
        if cid is None or self.reply_to is None:
            raise ValidationError(
                f"Message {self.id} is not a request (it has no correlation id); "
                "send a new message to its sender instead."
            )
        check_name("type", type)
        check_bool("ack", ack)
        settings = self._ctx.settings
        meta = encode_metadata(metadata, settings)
        payload, kind = encode_for(settings, type, data)
        reply = StoredReply(
            id=new_id(),
            sender=self.recipient,
            type=type,
            data=payload,
            data_kind=kind,
            metadata=meta,
            sent_at=self._ctx.now(),
            status=status,
        )
        settle = self._op(SettleKind.ACK) if ack and not self._settled else None
        ctx = self._ctx
        ctx.check_open()
        with self._span("queue.reply") as note:
            # the reply slot holds its own reference after the post (if the requester waits)
            async with ctx.refs.hold() as hold:
                reply.data, reply.data_kind = await hold.promote(type, payload, kind)
                delivered = await ctx.mailboxes.post_reply(cid, reply, settle, now=reply.sent_at)
            note("agentcomm.reply.delivered", delivered)
        if settle is not None:
            self._settled = True
            ctx.leases.discard(self)
        return delivered


class Reply:
    """The answer to a request."""

    __slots__ = ("_correlation_id", "_stored")

    def __init__(self, correlation_id: str, stored: StoredReply) -> None:
        self._correlation_id = correlation_id
        self._stored = stored

    @property
    def correlation_id(self) -> str:
        """The id of the request this answers."""
        return self._correlation_id

    @property
    def id(self) -> str:
        """The reply's own id."""
        return self._stored.id

    @property
    def sender(self) -> str:
        """The agent that replied."""
        return self._stored.sender

    @property
    def type(self) -> str:
        """The reply's type."""
        return self._stored.type

    @property
    def data(self) -> Any:
        """The reply payload."""
        return decode_payload(self._stored.data, self._stored.data_kind)

    @property
    def metadata(self) -> dict[str, Any]:
        """The reply metadata (empty dict if none)."""
        return decode_metadata(self._stored.metadata)

    @property
    def sent_at(self) -> float:
        """When the reply was sent (epoch seconds)."""
        return self._stored.sent_at

    def __repr__(self) -> str:
        return f"<Reply to {self.correlation_id} from {self.sender} type={self.type!r}>"


def answer(correlation_id: str, stored: StoredReply, to: str) -> Reply:
    """The requester's view of what its reply slot held: a `Reply`, or the error it stands for
    (`RemoteError` for an error reply, `RequestFailed` for a failed request)."""
    if stored.status == ReplyStatus.OK:
        return Reply(correlation_id, stored)
    if stored.status == ReplyStatus.ERROR:
        body = decode_payload(stored.data, stored.data_kind)
        if not isinstance(body, dict):
            body = {"message": str(body), "data": None}
        raise RemoteError(
            str(body.get("message", "")), type=stored.type, data=body.get("data"),
            sender=stored.sender,
        )  # fmt: skip
    expired = stored.type == EXPIRED_REPLY_TYPE
    what = "expired" if expired else "was dead-lettered"
    raise RequestFailed(
        f"Request {correlation_id} to {to!r} {what} after {stored.attempts} delivery(ies): "
        f"{stored.reason}. hub.dead_letters({to!r}) lists it (unless it expired); retry with "
        "a new request, or raise max_attempts= if the responder fails transiently.",
        reason=stored.reason, attempts=stored.attempts, expired=expired, recipient=to,
        correlation_id=correlation_id,
    )  # fmt: skip
