"""Agent pools on Redis: each operation one call of the `POOLS` script (`pools_lua.py`, which
lists the keys and implements the rules of `pool_engine.py`).

What Python encodes for the script: a member as a msgpack array (run, agent, topics, policy
refs, joined at), which the script reads with cmsgpack and stores as is; a wake's fixed part
(id, pool, run, filter, idempotency key, resume, registered at, deadline) as msgpack the script
never reads, and its filter again in a form the script reads (`_lua_filter`); and, for a
message or an event, its metadata's scalar entries (`meta_index`), which is what a filter's
`metadata` compares. Records and receipts are written by the script in the msgpack layout of
`StoredPoolRecord` and `ReceiptRecord`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..._ids import new_id
from ..._pool_records import (
    FilterSpec,
    MemberRecord,
    NewPoolMessage,
    PoolPage,
    PoolSnapshotRecord,
    ReceiptRecord,
    StoredPoolRecord,
    WakeRecord,
    WakeSpec,
)
from ..._ref_records import ref_id_in
from ..._settings import Retention
from ..contracts import PoolStore
from .errors import text
from .pools_lua import POOLS
from .scripts import Scripts, num

_PRUNE_BATCH = 10_000

_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(StoredPoolRecord)
_receipt_decoder = msgspec.msgpack.Decoder(ReceiptRecord)
_member_decoder = msgspec.msgpack.Decoder(tuple[str, str, list[str], list[str], float])
_WakeFixed = tuple[str, str, str, FilterSpec, str | None, str, float, float | None]
_wake_decoder = msgspec.msgpack.Decoder(_WakeFixed)
_meta_decoder = msgspec.json.Decoder(dict[str, Any])


def _scalar(key: str, value: object) -> str | None:
    """One metadata entry as the script compares it: the key (length-prefixed) and the
    value's type and value; None for a value no filter can equal (a float, a list, a dict)."""
    if value is None:
        tag = "n"
    elif isinstance(value, bool):
        tag = "b1" if value else "b0"
    elif isinstance(value, int):
        tag = f"i{value}"
    elif isinstance(value, str):
        tag = "s" + value
    else:
        return None
    return f"{len(key)}:{key}{tag}"


def meta_index(metadata: bytes | None) -> list[str]:
    """The scalar entries of a record's JSON metadata (see `_scalar`): a filter's `metadata`
    matches when each of its pairs is among them, as `pool_engine.matches` compares (equal
    value, same type)."""
    if not metadata:
        return []
    out: list[str] = []
    for key, value in _meta_decoder.decode(metadata).items():
        entry = _scalar(key, value)
        if entry is not None:
            out.append(entry)
    return out


def _lua_filter(f: FilterSpec) -> bytes:
    """A filter as the script reads it (sets absent for "any")."""
    raw: dict[str, Any] = {}
    for name, values in (
        ("k", f.kinds), ("r", f.runs), ("s", f.senders), ("a", f.agents), ("y", f.types),
        ("t", f.topics),
    ):  # fmt: skip
        if values is not None:
            raw[name] = list(values)
    if f.to_me:
        raw["me"] = True
    if f.metadata is not None:
        entries = [_scalar(k, v) for k, v in f.metadata.items()]
        # a value no record can hold (never sent by the feature layer) matches nothing
        raw["m"] = [e if e is not None else "\0" for e in entries]
    return _encoder.encode(raw)


def _member(blob: bytes) -> MemberRecord:
    run, agent, topics, refs, joined_at = _member_decoder.decode(blob)
    return MemberRecord(run, agent, topics, refs, joined_at)


def _wake(reply: list[Any]) -> WakeRecord:
    fixed, status, registered_seq, trigger_seq, finished_at = reply
    wake_id, pool, run, filt, key, resume, registered_at, deadline = _wake_decoder.decode(fixed)
    return WakeRecord(
        wake_id, pool, run, filt, key, resume, text(status), registered_at, deadline,
        int(registered_seq), None if trigger_seq is None else int(trigger_seq),
        None if finished_at is None else float(finished_at),
    )  # fmt: skip


def _flag(value: object) -> str:
    return "0" if value is None else "1"


class RedisPools(PoolStore):
    """Agent pools on Redis."""

    def __init__(self, scripts: Scripts, retention: Retention) -> None:
        self._scripts = scripts
        self._script = scripts.register(POOLS)
        self._retention = retention

    async def _op(self, op: str, now: float, *args: Any, token: str | None = None) -> Any:
        return await self._scripts.run(self._script, op, now, args, token)

    async def pool_open(
        self, name: str, config: bytes | None, default: bytes, *, now: float
    ) -> bytes:
        stored: bytes = await self._op(
            "open", now, name, _flag(config), config or b"", default, token=new_id()
        )
        return stored

    async def pool_join(self, pool: str, member: MemberRecord, *, now: float) -> StoredPoolRecord:
        m = member
        blob = _encoder.encode((m.run, m.agent, m.topics, m.policy_refs, float(m.joined_at)))
        return _record_decoder.decode(await self._op("join", now, pool, blob, token=new_id()))

    async def pool_leave(self, pool: str, run: str, *, now: float) -> StoredPoolRecord:
        return _record_decoder.decode(await self._op("leave", now, pool, run, token=new_id()))

    async def pool_send(self, message: NewPoolMessage, *, now: float) -> ReceiptRecord:
        m = message
        blob, duplicate = await self._op(
            "send", now, m.pool, m.message_id, m.sender, m.to_kind, m.to_value, m.type, m.data,
            int(m.data_kind), _flag(m.metadata), m.metadata or b"", _encoder.encode(m.policy_refs),
            _encoder.encode(sorted(set(m.policy_refs))), _flag(m.idempotency_key),
            m.idempotency_key or "", "" if m.expires_at is None else num(m.expires_at),
            int(m.priority), int(m.max_attempts), _encoder.encode(meta_index(m.metadata)),
            ref_id_in(m.data, m.data_kind) or "", token=m.message_id,
        )  # fmt: skip
        receipt = _receipt_decoder.decode(blob)
        receipt.duplicate = bool(duplicate)
        return receipt

    async def pool_emit(
        self,
        pool: str,
        run: str,
        type: str,
        data: bytes,
        data_kind: int,
        metadata: bytes | None,
        *,
        now: float,
    ) -> StoredPoolRecord:
        blob = await self._op(
            "emit", now, pool, run, type, data, int(data_kind), _flag(metadata), metadata or b"",
            _encoder.encode(meta_index(metadata)), token=new_id(),
        )  # fmt: skip
        return _record_decoder.decode(blob)

    async def pool_receipt(
        self, pool: str, *, message_id: str | None, key: str | None
    ) -> ReceiptRecord | None:
        if key is not None:
            blob = await self._op("receipt", 0.0, pool, "k", key)
        elif message_id is not None:
            blob = await self._op("receipt", 0.0, pool, "m", message_id)
        else:
            return None
        return None if blob is None else _receipt_decoder.decode(blob)

    async def pool_wait_for(self, spec: WakeSpec, *, now: float) -> WakeRecord:
        s = spec
        fixed = _encoder.encode(
            (s.id, s.pool, s.run, s.filter, s.idempotency_key, s.resume, float(s.registered_at),
             None if s.deadline is None else float(s.deadline))
        )  # fmt: skip
        reply = await self._op(
            "wait_for", now, s.pool, s.id, s.run, _flag(s.idempotency_key),
            s.idempotency_key or "", "1" if s.replay else "0",
            "" if s.deadline is None else num(s.deadline), fixed, _lua_filter(s.filter),
            token=s.id,
        )  # fmt: skip
        return _wake(reply)

    async def pool_wake(
        self, pool: str, *, wake_id: str | None, key: str | None, now: float
    ) -> WakeRecord | None:
        if key is not None:
            reply = await self._op("wake", now, pool, "k", key)
        elif wake_id is not None:
            reply = await self._op("wake", now, pool, "i", wake_id)
        else:
            return None
        return None if reply is None else _wake(reply)

    async def pool_cancel_wake(self, pool: str, wake_id: str, *, now: float) -> bool:
        return bool(await self._op("cancel", now, pool, wake_id, token=new_id()))

    async def pool_snapshot(self, pool: str, *, now: float) -> PoolSnapshotRecord:
        row, members, wakes = await self._op("snapshot", now, pool)
        fields = {text(row[i]): row[i + 1] for i in range(0, len(row), 2)}
        counts = {
            name.removeprefix("c:"): int(value)
            for name, value in fields.items()
            if name.startswith("c:")
        }
        return PoolSnapshotRecord(
            fields["cfg"], float(fields["at"]), [_member(b) for b in members],
            [_wake(w) for w in wakes], int(fields["head"]), counts,
        )  # fmt: skip

    async def pool_records(self, pool: str, after: int, *, limit: int) -> PoolPage:
        blobs, head, oldest = await self._op("records", 0.0, pool, int(after), int(limit))
        return PoolPage([_record_decoder.decode(b) for b in blobs], int(head), int(oldest))

    async def pool_expire_wakes(self, *, now: float) -> float | None:
        first = await self._op("expire", now)
        return None if first is None else float(first)

    async def pool_names(self) -> list[str]:
        s = self._scripts
        return sorted(text(m) for m in await s.command(s.client.smembers(s.prefix + "pl:all")))

    async def prune(self, now: float) -> int:
        """Trim each pool's log to the retention limits and drop receipts and finished wakes
        older than the dedupe window; returns the log records deleted."""
        r = self._retention
        dropped = await self._op(
            "prune", now, int(r.pool_max_count), num(now - r.pool_max_age),
            num(now - r.dedupe_window), _PRUNE_BATCH,
        )  # fmt: skip
        return int(dropped)
