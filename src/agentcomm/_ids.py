"""Message and object ids: 32 hex chars, unique without a syscall per id.

A random 64-bit prefix per process (renewed in a forked child) followed by a 64-bit counter.
uuid4 reads the OS random source on every call, which costs microseconds on the send path.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A new unique id."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"
