"""Coordination leases on Redis: the `lease_engine` rules applied to a snapshot, committed by
one call of the `LEASES` script that first checks the snapshot is still current (see
`leases_lua.py`); a change in between makes the operation read and decide again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from ..._errors import BackendError
from ..._ids import new_id
from ..._lease_models import Lease, LeaseResult, LeaseWant
from .. import lease_engine
from ..contracts import LeaseStore
from .leases_lua import LEASES
from .scripts import Scripts

T = TypeVar("T")

#: Snapshots an operation decides on before it gives up (each lost race means another
#: process changed the leases in between; one round trip each).
MAX_ROUNDS = 200

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Lease)


class RedisLeases(LeaseStore):
    """Coordination leases on Redis."""

    def __init__(self, scripts: Scripts) -> None:
        self._scripts = scripts
        self._script = scripts.register(LEASES)

    async def _read(self, now: float) -> tuple[bytes, list[Lease]]:
        version, flat = await self._scripts.call(self._script, "read", now, ())
        records = []
        for raw in flat[1::2]:
            try:
                records.append(_decoder.decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._scripts.report_undecodable("leases", [str(exc)])
        return version, records

    async def _apply(
        self,
        now: float,
        decide: Callable[[list[Lease]], tuple[T, lease_engine.LeaseChanges]],
    ) -> T:
        for _ in range(MAX_ROUNDS):
            version, records = await self._read(now)
            result, changes = decide(records)
            if changes.empty:
                return result
            args: list[bytes | str | int] = [version, len(changes.delete), *changes.delete]
            for lease in changes.put:
                args += [lease.id, _encoder.encode(lease)]
            if await self._scripts.run(self._script, "commit", now, args, token=new_id()):
                return result
        raise BackendError(
            f"The leases changed {MAX_ROUNDS} times while this call decided on them; "
            "other processes are changing them very fast. Retry the call."
        )

    async def lease_acquire(
        self,
        owner: str,
        wants: Sequence[LeaseWant],
        *,
        ttl: float,
        reason: str | None,
        partial: bool,
        now: float,
    ) -> LeaseResult:
        return await self._apply(
            now,
            lambda records: lease_engine.acquire(
                records, owner, wants, ttl=ttl, reason=reason, partial=partial, now=now
            ),
        )

    async def lease_renew(
        self, owner: str, selectors: frozenset[str] | None, *, ttl: float, now: float
    ) -> list[Lease]:
        return await self._apply(
            now, lambda records: lease_engine.renew(records, owner, selectors, ttl=ttl, now=now)
        )

    async def lease_release(
        self, owner: str, selectors: frozenset[str] | None, *, now: float
    ) -> list[Lease]:
        return await self._apply(
            now, lambda records: lease_engine.release(records, owner, selectors, now=now)
        )

    async def lease_list(self, *, now: float) -> list[Lease]:
        _, records = await self._read(now)
        return lease_engine.alive(records, now)
