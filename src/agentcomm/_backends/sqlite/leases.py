"""Coordination leases on SQLite: the `lease_engine` rules applied in one write transaction.

Table `coord_leases`, one row per lease, (owner, pattern) unique. An operation reads every
lease and writes its changes inside the writer's `BEGIN IMMEDIATE` transaction, so the
conflict check and the grant are atomic, also across processes. (Globs cannot be indexed for
overlap: the live leases of a store are expected to number in the hundreds, not millions.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..._lease_models import Lease, LeaseResult, LeaseWant
from .. import lease_engine
from ..contracts import LeaseStore
from .access import Access
from .schema import FeatureSchema

T = TypeVar("T")

_DDL = """
CREATE TABLE IF NOT EXISTS coord_leases (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    exclusive   INTEGER NOT NULL,
    reason      TEXT,
    acquired_at REAL NOT NULL,
    expires_at  REAL NOT NULL,
    UNIQUE (owner, pattern)
) WITHOUT ROWID
"""
#: The lease table and its versions.
SCHEMA = FeatureSchema("leases", _DDL)

_COLS = "id, owner, pattern, exclusive, reason, acquired_at, expires_at"


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6])


def _all(conn: sqlite3.Connection) -> list[Lease]:
    return [_lease(r) for r in conn.execute(f"SELECT {_COLS} FROM coord_leases")]


class SQLiteLeases(LeaseStore):
    """Coordination leases on SQLite."""

    def __init__(self, db: Access) -> None:
        self._db = db

    async def _apply(
        self, decide: Callable[[list[Lease]], tuple[T, lease_engine.LeaseChanges]]
    ) -> T:
        def op(conn: sqlite3.Connection, touched: set[str]) -> T:
            result, changes = decide(_all(conn))
            conn.executemany(
                "DELETE FROM coord_leases WHERE id = ?", [(i,) for i in changes.delete]
            )
            conn.executemany(
                f"INSERT OR REPLACE INTO coord_leases ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (x.id, x.owner, x.pattern, int(x.exclusive), x.reason, x.acquired_at,
                     x.expires_at)
                    for x in changes.put
                ],
            )  # fmt: skip
            if not changes.empty:
                touched.add(lease_engine.LEASES_CHANNEL)
            return result

        result: T = await self._db.do(op)
        return result

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
            lambda records: lease_engine.acquire(
                records, owner, wants, ttl=ttl, reason=reason, partial=partial, now=now
            )
        )

    async def lease_renew(
        self, owner: str, selectors: frozenset[str] | None, *, ttl: float, now: float
    ) -> list[Lease]:
        return await self._apply(
            lambda records: lease_engine.renew(records, owner, selectors, ttl=ttl, now=now)
        )

    async def lease_release(
        self, owner: str, selectors: frozenset[str] | None, *, now: float
    ) -> list[Lease]:
        return await self._apply(
            lambda records: lease_engine.release(records, owner, selectors, now=now)
        )

    async def lease_list(self, *, now: float) -> list[Lease]:
        def op(conn: sqlite3.Connection, touched: set[str]) -> list[Lease]:
            return _all(conn)

        records: list[Lease] = await self._db.read(op)
        return lease_engine.alive(records, now)
