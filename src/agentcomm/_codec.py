"""Payload encoding: JSON via msgspec for values, raw for bytes. Encoded once, at send."""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import BackendError, EncodeError
from ._records import DataKind
from ._ref_records import REF_FLAG

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_BYTES_LIKE = (bytes, bytearray, memoryview)  # a tuple: a union object is rebuilt per call


def encode_payload(value: Any) -> tuple[bytes, int]:
    """Encode a payload; `bytes`-like values are stored as they are."""
    if isinstance(value, _BYTES_LIKE):
        return bytes(value), DataKind.BYTES
    try:
        return _encoder.encode(value), DataKind.JSON
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise EncodeError(
            f"Payload of type {type(value).__name__} cannot be encoded ({exc}). "
            "Send JSON-compatible values, msgspec Structs, dataclasses or bytes."
        ) from exc


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


def encode_metadata(metadata: dict[str, Any] | None) -> bytes | None:
    """Encode a metadata mapping (string keys, JSON values); None or empty stores nothing."""
    if not metadata:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise EncodeError("metadata must be a dict with string keys.")
    try:
        return _encoder.encode(metadata)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise EncodeError(f"metadata cannot be encoded ({exc}).") from exc


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
