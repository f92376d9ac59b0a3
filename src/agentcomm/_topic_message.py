"""A message received on a topic (live or durable)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ._codec import decode_metadata, decode_payload
from ._context import Context
from ._errors import RefNotFound
from ._records import TopicRecord

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = ["TopicMessage"]


class TopicMessage:
    """One message received on a topic.

    For a durable subscription, `ack()` it when done: the consumer's position advances and the
    message is not delivered again. Unacked, it is delivered again once its lease ends. On a
    live subscription `ack()` does nothing, and the live subscriptions of one hub that receive
    the same publish share one message object: treat `data` and `metadata` as read-only.
    """

    __slots__ = ("_acked", "_data", "_lease_until", "_metadata", "_record", "_sub")

    _sub: Subscription | None
    _lease_until: float
    _acked: bool
    _data: Any
    _metadata: Any

    def __init__(self, record: TopicRecord) -> None:
        # the other slots stay unset until used: this runs once per live delivery
        self._record = record

    @classmethod
    def _leased(cls, record: TopicRecord, sub: Subscription, lease_until: float) -> TopicMessage:
        msg = cls(record)
        msg._sub = sub
        msg._lease_until = lease_until
        msg._acked = False
        return msg

    @property
    def topic(self) -> str:
        """The topic it was published to."""
        return self._record.topic

    @property
    def sender(self) -> str:
        """The agent that published it."""
        return self._record.sender

    @property
    def type(self) -> str:
        """The type given at publish."""
        return self._record.type

    @property
    def data(self) -> Any:
        """The payload, decoded on first access."""
        try:
            return self._data
        except AttributeError:
            self._data = decode_payload(self._record.data, self._record.data_kind)
            return self._data

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata given at publish (empty dict if none)."""
        try:
            return self._metadata  # type: ignore[no-any-return]
        except AttributeError:
            self._metadata = decode_metadata(self._record.metadata)
            return self._metadata  # type: ignore[no-any-return]

    @property
    def sequence(self) -> int:
        """Its position in the store's topic log."""
        return self._record.seq

    @property
    def published_at(self) -> float:
        """When it was published (epoch seconds)."""
        return self._record.published_at

    @property
    def attempt(self) -> int:
        """Which delivery to a durable consumer this is, from 1 (always 1 when live)."""
        return max(self._record.attempt, 1)

    async def ack(self) -> None:
        """Durable: mark it done (written within 50 ms, with the next fetch, or at close; at
        once if the subscription is closed already)."""
        sub = getattr(self, "_sub", None)
        if sub is None or self._acked:
            return
        self._acked = True
        sub._add_ack(self._record.seq, self._record.attempt)
        if sub._closed:
            await sub._settle(release=False)

    def __repr__(self) -> str:
        return f"<TopicMessage {self.topic} #{self.sequence} from {self.sender} type={self.type!r}>"


async def resolve_record(ctx: Context, record: TopicRecord) -> TopicRecord | None:
    """A copy of `record` with the payload it refers to in its place; None if the blob is
    gone (the record left the log and released it meanwhile: it counts as missed)."""
    try:
        data, kind, _ = await ctx.refs.load(record.data, record.data_kind)
    except RefNotFound:
        return None
    return msgspec.structs.replace(record, data=data, data_kind=kind)
