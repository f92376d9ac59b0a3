"""Shared-memory records exchanged between the feature layer and the backends (still encoded)."""

from __future__ import annotations

from enum import IntEnum

import msgspec

#: Versions a key keeps by default (its current value only).
DEFAULT_HISTORY = 1
#: Changes a namespace's change log keeps by default for watchers that fall behind.
DEFAULT_CHANGE_LOG = 10_000
#: Seconds a deleted or expired key's tombstone is kept, so its version keeps counting up if the
#: key is written again; after that a new write starts at version 1.
TOMBSTONE_KEEP = 86400.0


class ChangeKind(IntEnum):
    """What a change-log entry records. Values are stored on disk: do not renumber."""

    PUT = 0
    DELETE = 1
    EXPIRE = 2


class Space(msgspec.Struct, frozen=True):
    """Where keys live: a shared namespace (`owner == ""`) or an agent's private one.

    The owner is its own component, never a prefix of the namespace, so no name can reach
    another owner's keys (agent names are never empty).
    """

    owner: str
    namespace: str

    @property
    def channel(self) -> str:
        """The notification channel of this space (names never contain `/`)."""
        return f"kv:{self.owner}/{self.namespace}"


class KVRecord(msgspec.Struct):
    """A live value of a key (or a past version of it), encoded."""

    key: str
    version: int
    data: bytes
    data_kind: int
    created_at: float
    updated_at: float
    updated_by: str | None
    expires_at: float | None


class KVWrite(msgspec.Struct):
    """A put to store. `history` and `change_log`, when set, become the namespace's settings."""

    key: str
    data: bytes
    data_kind: int
    expected_version: int | None
    expires_at: float | None
    by: str | None
    history: int | None = None
    change_log: int | None = None


class KVOutcome(msgspec.Struct):
    """The result of a put or delete.

    On a conflict nothing was written and `version` is the key's actual version (0: absent).
    Otherwise `version` is the version written, 0 for a delete of an absent key.
    """

    conflict: bool
    version: int
    record: KVRecord | None = None


class KVChangeRecord(msgspec.Struct):
    """One entry of a namespace's change log; `data` is None for deletes and expiries."""

    seq: int
    kind: int
    key: str
    version: int
    data: bytes | None
    data_kind: int
    at: float
    by: str | None


class KVChanges(msgspec.Struct):
    """Changes after a position, with the log's bounds: seqs <= `floor` were pruned."""

    changes: list[KVChangeRecord]
    floor: int
    last_seq: int
    next_expiry: float | None


class KVSnapshot(msgspec.Struct):
    """Live entries of a space and the change-log position they reflect, read atomically."""

    records: list[KVRecord]
    last_seq: int


class KVCounts(msgspec.Struct):
    """Store-wide counts of one space."""

    keys: int
    bytes: int
    writes: int
    conflicts: int
