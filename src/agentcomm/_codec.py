"""Payload encoding: JSON via msgspec for values, raw for bytes. Encoded once, at send.

What is encoded comes back equal, except for these documented conversions: tuples, sets and
frozensets come back as lists; msgspec Structs and dataclasses as dicts; datetimes, dates,
times, UUIDs and Decimals as strings (ISO 8601 / canonical form); enums as their values;
`bytes` nested inside a value as a base64 string (a top-level `bytes` payload stays bytes).
Refused with EncodeError instead of converted silently: NaN and infinities, dict keys that are
not strings, values nested deeper than `Limits.max_depth` and values that contain themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import BackendError, EncodeError, ValidationError
from ._records import DataKind
from ._ref_records import REF_FLAG
from ._validation import check_metadata

if TYPE_CHECKING:
    from ._settings import HubSettings

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_BYTES_LIKE = (bytes, bytearray, memoryview)  # a tuple: a union object is rebuilt per call
_ENCODE_ERRORS = (
    TypeError, ValueError, OverflowError, BufferError, RecursionError, msgspec.EncodeError,
)  # fmt: skip
_LEAVES = frozenset([str, int, bool, type(None), bytes, bytearray])
_CONTAINERS = frozenset([dict, list, tuple])
#: The nesting allowed when no hub's limits apply (see `Limits.max_depth`).
DEFAULT_MAX_DEPTH = 64


def _refuse(what: str, why: str) -> EncodeError:
    return EncodeError(f"{what} cannot be encoded: {why}.")


def check_value(what: str, value: Any, max_depth: int) -> None:
    """Raise EncodeError if `value` holds NaN or an infinity, a dict key that is not a str,
    or lists / dicts nested deeper than `max_depth` (a value that contains itself is).

    Depth first, so a value that contains itself reaches `max_depth` after that many steps.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    leaves, containers = _LEAVES, _CONTAINERS
    while stack:
        v, depth = pop()
        t = type(v)
        if t not in containers:
            if t is float:
                if v - v != 0.0:  # NaN or an infinity
                    raise _refuse(what, f"{v!r} is not a JSON number (send a string or None)")
                continue
            if t in leaves:
                continue
            try:  # a Struct, dataclass, set, datetime, builtin subclass...: as msgspec sees it
                v = msgspec.to_builtins(v, str_keys=False)
            except _ENCODE_ERRORS as exc:
                raise _refuse(what, f"{t.__name__} is not supported ({exc})") from None
            t = type(v)
            if t not in containers:
                if t is float:
                    push((v, depth))
                continue
        if depth >= max_depth:
            raise _refuse(
                what,
                f"it nests lists and dicts deeper than {max_depth} levels "
                "(Limits.max_depth) or contains itself",
            )
        if t is dict:
            for k in v:
                if type(k) is not str:
                    raise _refuse(what, f"dict keys must be str, not {type(k).__name__} {k!r:.40}")
            items = v.values()
        else:
            items = v
        depth += 1
        for x in items:
            tx = type(x)
            if tx in leaves:
                continue
            if tx is float:
                if x - x != 0.0:
                    raise _refuse(what, f"{x!r} is not a JSON number (send a string or None)")
                continue
            push((x, depth))


def encode_payload(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[bytes, int]:
    """Encode a payload; `bytes`-like values are stored as they are. Raises EncodeError for
    what cannot come back equal or as documented (see the module docstring)."""
    if isinstance(value, _BYTES_LIKE):
        try:
            return bytes(value), DataKind.BYTES
        except (BufferError, TypeError, ValueError) as exc:
            raise _refuse("The payload", f"its buffer cannot be read ({exc})") from None
    try:
        data = _encoder.encode(value)
    except _ENCODE_ERRORS as exc:
        check_value("The payload", value, max_depth)  # the precise reason, where it has one
        raise EncodeError(
            f"Payload of type {type(value).__name__} cannot be encoded ({exc}). "
            "Send JSON-compatible values, msgspec Structs, dataclasses or bytes."
        ) from None
    if not _flat(value) and not _round_trips(data, value, max_depth):
        check_value("The payload", value, max_depth)
    return data, DataKind.JSON


def _flat(value: Any) -> bool:
    """The fastest check, for the common payload: a leaf, or one dict or list of leaves (str
    keys; str, int, bool, None or finite float values) that encodes exactly as it is."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)
            if tv is str or tv is int or tv is bool or v is None:
                continue
            if tv is not float or v - v != 0.0:
                return False
        return True
    if t is list:
        for v in value:
            tv = type(v)
            if tv is str or tv is int or tv is bool or v is None:
                continue
            if tv is not float or v - v != 0.0:
                return False
        return True
    if t is str or t is int or t is bool or value is None:
        return True
    return t is float and value - value == 0.0


def _round_trips(data: bytes, value: Any, max_depth: int) -> bool:
    """The fast check: True when `data` certainly decodes back to `value` within `max_depth`.

    Nesting is at most the number of brackets, and a decoded value equal to the original had
    no NaN, infinity, non-str key or converted type. False only means "look closer"
    (`check_value` then refuses or accepts, e.g. a tuple, which is documented to become a list).
    """
    if data.count(b"[") + data.count(b"{") > max_depth:
        return False
    try:
        return bool(_decoder.decode(data) == value)
    except (msgspec.DecodeError, RecursionError):
        return False


def encode_for(settings: HubSettings, type: str | None, value: Any) -> tuple[bytes, int]:
    """Encode a payload of message type `type` (None: shared memory) within the hub's limits."""
    data, kind = encode_payload(value, settings.limits.max_depth)
    check_size(settings, type, data)
    return data, kind


def check_size(settings: HubSettings, type: str | None, data: bytes) -> None:
    """Refuse an encoded payload above `Limits.max_payload` that would be stored inline."""
    limit = settings.limits.max_payload
    if len(data) > limit and not settings.policies.by_reference(type, len(data)):
        raise ValidationError(
            f"The payload is {len(data)} bytes encoded, more than the {limit} bytes a payload "
            "stored by value may have (Limits.max_payload). Store it by reference (a tier "
            "policy of 'reference' or AutoPromote for its type) or send less."
        )


class StoredRef(msgspec.Struct, frozen=True):
    """A payload stored by reference that was not resolved (see `RefStore`)."""

    id: str
    kind: int


def decode_payload(data: bytes, kind: int) -> Any:
    """Decode what `encode_payload` produced; a payload held by reference stays a StoredRef."""
    try:
        if kind & REF_FLAG:
            return StoredRef(data.decode("ascii"), kind & ~REF_FLAG)
        if kind == DataKind.BYTES:
            return data
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, AttributeError) as exc:
        raise undecodable("payload", exc) from exc


def encode_metadata(
    metadata: dict[str, Any] | None, settings: HubSettings | None = None
) -> bytes | None:
    """Encode a metadata mapping (string keys, JSON values) within the hub's limits; None or
    empty stores nothing."""
    if not check_metadata(metadata):
        return None
    assert metadata is not None
    depth = DEFAULT_MAX_DEPTH if settings is None else settings.limits.max_depth
    check_value("metadata", metadata, depth)
    try:
        data = _encoder.encode(metadata)
    except _ENCODE_ERRORS as exc:
        raise EncodeError(f"metadata cannot be encoded ({exc}).") from None
    if settings is not None and len(data) > settings.limits.max_metadata:
        raise EncodeError(
            f"metadata is {len(data)} bytes encoded, more than the "
            f"{settings.limits.max_metadata} bytes allowed (Limits.max_metadata); "
            "put large values in the payload."
        )
    return data


def decode_metadata(data: bytes | None) -> dict[str, Any]:
    """Decode what `encode_metadata` produced."""
    if data is None:
        return {}
    try:
        result = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise undecodable("metadata", exc) from exc
    if not isinstance(result, dict):
        raise undecodable("metadata", TypeError(f"a {type(result).__name__}, not a mapping"))
    return result


def undecodable(what: str, exc: BaseException) -> BackendError:
    """The error for a stored value that cannot be decoded (not written by agentcomm, or
    damaged)."""
    return BackendError(
        f"A stored {what} cannot be decoded ({type(exc).__name__}: {exc}): it was not written "
        "by agentcomm, or the store is damaged. Remove the entry (dead-letter the message, "
        "delete the key) and run `agentcomm check URL`."
    )
