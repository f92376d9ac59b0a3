"""What both sides share: argument checks, encoding, sequence numbers, the side lock."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from typing import Any

import msgspec

from .._errors import EncodeError, SandboxError, ValidationError
from .._validation import check_name, check_seconds

__all__ = [
    "SideLock",
    "check_interval",
    "check_kind",
    "decode",
    "encode",
    "next_seq",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
#: The largest payload one row carries, encoded.
MAX_PAYLOAD = 16 * 1024 * 1024


def encode(what: str, data: Any) -> bytes:
    """`data` as JSON bytes (what both files store), else EncodeError; nothing is stored."""
    try:
        raw = _encoder.encode(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"{what} cannot be encoded as JSON: {exc}.") from None
    if len(raw) > MAX_PAYLOAD:
        raise EncodeError(f"{what} is {len(raw)} bytes encoded, above {MAX_PAYLOAD}.")
    return raw


def decode(raw: bytes) -> Any:
    """A stored payload back as Python values."""
    return _decoder.decode(raw)


def check_kind(kind: object) -> str:
    """A message kind follows the agent-name rules (it becomes a hub message type)."""
    return check_name("kind", kind)


def check_interval(what: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite number of seconds, positive (or >= 0)."""
    seconds = check_seconds(what, value, positive=not allow_zero)
    if math.isinf(seconds):
        raise ValidationError(f"{what} must be a finite number of seconds.")
    return seconds


def next_seq(seen: int, parity: int) -> int:
    """The smallest number above `seen` with the side's parity (host 0 even, sandbox 1 odd)."""
    n = seen + 1
    if n % 2 != parity:
        n += 1
    return n


class SideLock:
    """One host and one sandbox process per directory: an exclusive flock on a lock file."""

    def __init__(self, directory: str, role: str) -> None:
        self.path = os.path.join(directory, f"{role}.lock")
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, else SandboxError (another process has this side open)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SandboxError(f"Cannot create {self.path}: {exc}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SandboxError(
                f"Another process has the {self.role} side of {os.path.dirname(self.path)} "
                "open; each side has one writer. Close it first."
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
