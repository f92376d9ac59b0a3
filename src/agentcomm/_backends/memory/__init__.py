"""The in-memory backend (`memory://`): the whole contract on Python data structures, for tests
and one process. One module per feature, composed by the core in `backend.py`."""

from __future__ import annotations

from .backend import MemoryBackend

__all__ = ["MemoryBackend"]
