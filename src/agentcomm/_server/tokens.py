"""Bearer tokens, kept in the store as hashes only.

They live in the reserved shared-memory namespace `authz.RESERVED_NAMESPACE` of the store the
server serves: a feature every backend already has (atomic conditional writes, visible to
every process at once, with no new tables or contracts). The namespace's name is not a valid
namespace name, so no hub can open it, and the server refuses it to every token.

A token reads `act_<id>_<secret>`; the store keeps, under key `token.<id>`, the SHA-256 of the
secret (a 256-bit random value, so a plain hash suffices) and the token's `Principal`.

The server (`cache=True`) keeps tokens it verified for at most `CACHE_SECONDS`, and forgets
them all whenever the namespace's wake-up channel (`CHANNEL`) fires: a revocation, in this
process or another (the store's notifications cross processes), holds for the next request.
Without the cache (the CLI) every check reads the record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import msgspec

from .._backends.contracts import Backend, SharedMemoryStore
from .._errors import AuthenticationFailed, ConfigurationError, NotFound, ValidationError
from .._kv_records import KVWrite, Space
from .._records import DataKind
from .authz import RESERVED_NAMESPACE, Principal, check_principal

__all__ = ["CACHE_SECONDS", "CHANNEL", "TokenInfo", "TokenStore"]

SPACE = Space("", RESERVED_NAMESPACE)
#: The wake-up channel of every write to the tokens' namespace.
CHANNEL = SPACE.channel
#: The longest a verified token is trusted without reading its record (a safety net: a
#: write to the namespace forgets every verified token at once).
CACHE_SECONDS = 1.0
_PREFIX = "act_"
_TOKEN_KEY = "token."


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored token, without its secret."""

    id: str
    label: str
    principal: Principal
    created_at: float


class _Stored(msgspec.Struct, kw_only=True):
    id: str
    label: str
    hash: str
    principal: Principal
    created_at: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Create, list, revoke and check tokens in a backend's reserved namespace."""

    def __init__(
        self, backend: Backend, clock: Callable[[], float] = time.time, *, cache: bool = False
    ) -> None:
        kv = backend.shared_memory
        if kv is None:
            raise ConfigurationError("The server keeps its tokens in shared memory, which this "
                                     "backend lacks.")  # fmt: skip
        self._kv: SharedMemoryStore = kv
        self._clock = clock
        self._cache = cache
        #: token -> (its record, when it was verified: time.monotonic())
        self._verified: dict[str, tuple[TokenInfo, float]] = {}
        self._generation = 0  # counts forget(): a read that a forget overtook is not kept

    def forget(self) -> None:
        """Drop every verified token (call on each wake-up of `CHANNEL`)."""
        self._verified.clear()
        self._generation += 1

    async def create(
        self, principal: Principal, label: str = "", *, token: str | None = None
    ) -> tuple[str, TokenInfo]:
        """Store a new token; returns the token (shown once) and its record. `token` imports
        a token made elsewhere (`act_<hex id>_<secret>`) instead of making one."""
        check_principal(principal)
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        if token is not None:
            token_id, _, secret = token.removeprefix(_PREFIX).partition("_")
            if not token.startswith(_PREFIX) or not token_id.isalnum() or len(secret) < 16:
                raise ValidationError("token must read act_<id>_<secret of 16+ characters>.")
        stored = _Stored(
            id=token_id, label=label, hash=_hash(secret), principal=principal,
            created_at=self._clock(),
        )  # fmt: skip
        write = KVWrite(
            key=_TOKEN_KEY + token_id, data=msgspec.json.encode(stored),
            data_kind=DataKind.JSON, expected_version=0, expires_at=None, by=None,
        )  # fmt: skip
        await self._kv.kv_put(SPACE, write, now=self._clock())
        return f"{_PREFIX}{token_id}_{secret}", _info(stored)

    async def list(self) -> list[TokenInfo]:
        """Every live token, by id."""
        snap = await self._kv.kv_scan(SPACE, _TOKEN_KEY, now=self._clock())
        return [_info(msgspec.json.decode(r.data, type=_Stored)) for r in snap.records]

    async def revoke(self, token_id: str) -> None:
        """Delete a token: the next request carrying it answers 401. NotFound if none."""
        out = await self._kv.kv_delete(
            SPACE, _TOKEN_KEY + token_id, expected_version=None, by=None, now=self._clock()
        )
        self.forget()
        if out.version == 0:
            raise NotFound(f"No token with id {token_id!r}; `agentcomm token list` shows them.")

    async def authenticate(self, token: str) -> TokenInfo:
        """The token's record, or AuthenticationFailed (unknown, revoked or malformed)."""
        body = token[len(_PREFIX) :] if token.startswith(_PREFIX) else ""
        token_id, _, secret = body.partition("_")
        if not token_id or not secret or len(token) > 200 or not token_id.isalnum():
            raise AuthenticationFailed("Malformed token: send 'Authorization: Bearer act_...'.")
        if self._cache:
            hit = self._verified.get(token)
            if hit is not None and time.monotonic() - hit[1] < CACHE_SECONDS:
                return hit[0]
        verified_at, generation = time.monotonic(), self._generation
        record = await self._kv.kv_get(SPACE, _TOKEN_KEY + token_id, now=self._clock())
        if record is not None:
            stored = msgspec.json.decode(record.data, type=_Stored)
            if hmac.compare_digest(stored.hash, _hash(secret)):
                info = _info(stored)
                if self._cache and generation == self._generation:
                    if len(self._verified) > 10_000:
                        self._verified.clear()
                    self._verified[token] = (info, verified_at)
                return info
        raise AuthenticationFailed(
            "Unknown or revoked token; ask an admin for one (agentcomm token create)."
        )

    async def secret(self, name: str) -> bytes:
        """A random server secret stored under `name` (made on first use, kept thereafter)."""
        key = "secret." + name
        record = await self._kv.kv_get(SPACE, key, now=self._clock())
        if record is None:
            value = secrets.token_bytes(32)
            write = KVWrite(
                key=key, data=value, data_kind=DataKind.BYTES, expected_version=0,
                expires_at=None, by=None,
            )  # fmt: skip
            out = await self._kv.kv_put(SPACE, write, now=self._clock())
            if not out.conflict:
                return value
            record = await self._kv.kv_get(SPACE, key, now=self._clock())
            assert record is not None
        return record.data

    async def remember_consumer(self, name: str, pattern: str) -> None:
        """Record durable consumer `name`'s pattern (checked on each of its fetches)."""
        write = KVWrite(
            key="consumer." + name, data=pattern.encode(), data_kind=DataKind.BYTES,
            expected_version=None, expires_at=None, by=None,
        )  # fmt: skip
        current = await self.consumer_pattern(name)
        if current != pattern:
            await self._kv.kv_put(SPACE, write, now=self._clock())

    async def consumer_pattern(self, name: str) -> str | None:
        """The pattern durable consumer `name` was opened with through the server."""
        record = await self._kv.kv_get(SPACE, "consumer." + name, now=self._clock())
        return None if record is None else record.data.decode()


def _info(stored: _Stored) -> TokenInfo:
    return TokenInfo(
        id=stored.id, label=stored.label, principal=stored.principal,
        created_at=stored.created_at,
    )  # fmt: skip
