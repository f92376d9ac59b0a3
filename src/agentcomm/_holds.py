"""The reference holder: the tier policy applied to payloads on their way to the backend.

A payload that travels by reference is stored first, with one reference held for the caller,
and replaced by the blob's id; the backend row that stores the id takes a reference of its
own. `RefHolder.hold()` is the one place that pairs the two: the caller's hold is released
after the backend call, whatever its outcome. These transient holds belong to a holder of the
hub's own (`RefHolder.holder`, under the reserved `agentcomm:` prefix), so no user's
`release` can drop them.

    async with ctx.refs.hold() as hold:
        data, kind = await hold.promote(type, data, kind)
        await ctx.mailboxes.enqueue(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import TracebackType

from ._context import Context
from ._errors import AgentCommError
from ._ref_records import INTERNAL_HOLDER, REF_FLAG, Ref
from ._references import RefStore, read_blob

__all__ = ["Hold", "RefHolder"]


class Hold:
    """The references stored for one backend call, held until it is done: an async context
    manager that releases them when the block ends (by then the rows that need them hold
    their own)."""

    __slots__ = ("_held", "_holder")

    def __init__(self, holder: RefHolder) -> None:
        self._holder = holder
        # id(encoded payload) -> (payload, blob id); the payload is kept so its id stays unique
        self._held: dict[int, tuple[bytes, str]] = {}

    @property
    def promoted(self) -> bool:
        """Whether any payload was stored by reference."""
        return bool(self._held)

    async def promote(self, type: str | None, data: bytes, kind: int) -> tuple[bytes, int]:
        """Apply the tier policy of `type` (None: shared memory) to an encoded payload: either
        unchanged, or stored (with a reference held) and replaced by its id.

        One payload object promoted twice (one value sent to many recipients) is hashed and
        stored once.
        """
        if kind & REF_FLAG or not self._holder.ctx.settings.policies.by_reference(type, len(data)):
            return data, kind
        seen = self._held.get(id(data))
        if seen is None:
            holder = self._holder
            storing = asyncio.ensure_future(holder.store._store_as(holder.holder, data))
            try:
                # shielded: a cancel must not lose the reference the store takes for us
                ref = await asyncio.shield(storing)
            except asyncio.CancelledError:
                storing.add_done_callback(holder._release_when_stored)
                raise
            seen = self._held[id(data)] = (data, ref.id)
        return seen[1].encode("ascii"), kind | REF_FLAG

    async def __aenter__(self) -> Hold:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            await self._release()

    async def _release(self) -> None:
        ctx = self._holder.ctx
        ctx.check_open()
        for _, ref_id in self._held.values():
            await ctx.references.ref_adjust(ref_id, -1, holder=self._holder.holder, now=ctx.now())


class RefHolder:
    """Promotes payloads for the feature layer and resolves the ones stored by reference."""

    def __init__(self, ctx: Context, store: RefStore) -> None:
        self.ctx = ctx
        self.store = store
        #: The holder of this hub's transient holds (not a name `RefConfig.holder` accepts).
        self.holder = f"{INTERNAL_HOLDER}hold-{uuid.uuid4().hex}"

    def by_value(self, type: str | None, data: bytes, kind: int) -> bool:
        """Whether the tier policy leaves this encoded payload inline: then a hot path may
        call the backend directly, without a `Hold` (nothing would be held)."""
        return bool(kind & REF_FLAG) or not self.ctx.settings.policies.by_reference(type, len(data))

    def hold(self) -> Hold:
        """A `Hold` for one backend call (`async with`); its references are released when the
        block ends (by then the rows that need them hold their own)."""
        return Hold(self)

    def _release_when_stored(self, storing: asyncio.Future[Ref]) -> None:
        if storing.cancelled() or storing.exception() is not None:
            return
        ref_id = storing.result().id
        with contextlib.suppress(AgentCommError):
            self.ctx.check_open()
            release = self.ctx.references.ref_adjust(
                ref_id, -1, holder=self.holder, now=self.ctx.now()
            )
            self.ctx.spawn(release)

    async def load(self, data: bytes, kind: int) -> tuple[bytes, int, Ref | None]:
        """The payload a stored one stands for: (original bytes, kind, Ref or None)."""
        if not kind & REF_FLAG:
            return data, kind, None
        self.ctx.check_open()
        ref, original = await read_blob(self.ctx, data.decode("ascii"))
        return original, kind & ~REF_FLAG, ref

    async def release(self, ref_id: str) -> None:
        """Drop the reference a removed row handed over (a taken reply slot's)."""
        self.ctx.check_open()
        await self.ctx.references.ref_adjust(ref_id, -1, holder=None, now=self.ctx.now())
