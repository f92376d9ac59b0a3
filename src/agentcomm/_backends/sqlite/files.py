"""The SQLite file itself: where it may be opened, what a failure to open it means, its check.

Opening never creates directories and never turns an existing empty file (0 bytes: truncated,
or made by another tool) into a new store unless the URL says `create=1`; a missing file is
created as a new store. Each refusal is a `ConfigurationError` that says what to do.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time

from ..._errors import BackendError, ConfigurationError

#: What a damaged file's error message tells the user to do.
REMEDY = (
    "The file is damaged: run `agentcomm check URL` (PRAGMA integrity_check) to see what is "
    "wrong, and restore the file from a backup; `sqlite3 FILE .recover` may save what is left."
)

# another agentcomm that just created the file writes its header within microseconds
_EMPTY_GRACE = 0.3
_EMPTY_POLL = 0.02


def check_location(path: str, *, create: bool) -> None:
    """Refuse, with a ConfigurationError saying why, a path that cannot hold an agentcomm store:
    a missing or read-only directory, a read-only file, an empty file (unless `create`)."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        parent_mode = os.stat(parent).st_mode
    except FileNotFoundError:
        raise ConfigurationError(
            f"The directory {parent!r} of the SQLite file does not exist; agentcomm does not "
            "create directories. Create it first, or fix the path in the URL."
        ) from None
    except OSError as exc:
        raise location_error(path, exc) from exc
    if not stat.S_ISDIR(parent_mode):
        raise ConfigurationError(
            f"{parent!r} is not a directory, so it cannot hold the SQLite file {path!r}; "
            "fix the path in the URL."
        )
    try:
        mode, size = _stat(path)
    except FileNotFoundError:
        mode, size = None, 0
    except OSError as exc:
        raise location_error(path, exc) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"The directory {parent!r} is read-only; the SQLite store {path!r} needs to create "
            "files there (the file itself, its -wal and -shm files). Use a writable directory."
        )
    if mode is None:
        return
    if not stat.S_ISREG(mode):
        raise ConfigurationError(f"{path!r} is not a regular file; fix the path in the URL.")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigurationError(
            f"The SQLite file {path!r} is read-only; agentcomm needs to write to it. "
            "Make it writable (chmod u+rw) or use another file."
        )
    if size == 0 and not create and _stays_empty(path):
        raise ConfigurationError(
            f"The SQLite file {path!r} exists but is empty (0 bytes): it is not an agentcomm "
            "store, or it was truncated and its data is gone (restore it from a backup). To "
            "start a new store in it, add ?create=1 to the URL."
        )


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mode, st.st_size


def _stays_empty(path: str) -> bool:
    """Whether the file is still empty after a moment: one that another agentcomm process has
    just created gets its header at once."""
    deadline = time.monotonic() + _EMPTY_GRACE
    while time.monotonic() < deadline:
        time.sleep(_EMPTY_POLL)
        try:
            if os.path.getsize(path) > 0:
                return False
        except OSError:
            return False
    return True


def location_error(path: str, exc: OSError) -> ConfigurationError:
    """An OSError met while looking at or opening `path`, as a ConfigurationError."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        hint = "Use a shorter path."
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "The location is read-only or not accessible: use a writable directory."
    else:
        hint = "Check the path in the URL."
    return ConfigurationError(f"Cannot use {path!r} as a SQLite store: {reason}. {hint}")


def open_error(path: str, exc: sqlite3.Error) -> BackendError | ConfigurationError | None:
    """What an error while opening `path` means, when it is about the file; else None."""
    text = str(exc)
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return ConfigurationError(
            f"Cannot open the SQLite store {path!r} for writing ({text}): the file or its "
            "directory is read-only, or the directory is gone. Use a writable location."
        )
    if "not a database" in text:
        return BackendError(
            f"The file is not an agentcomm SQLite database ({text}): check the path in the URL "
            f"({path!r}). If it is your store, it is damaged. {REMEDY}"
        )
    if is_damaged(exc):
        return BackendError(f"Cannot open the SQLite store {path!r} ({text}). {REMEDY}")
    return None


def is_damaged(exc: BaseException) -> bool:
    """Whether a driver error says the file is not a (healthy) SQLite database."""
    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
    )


def integrity_problems(conn: sqlite3.Connection, *, limit: int = 100) -> list[str]:
    """Run `PRAGMA integrity_check`; the problems it reports (none: the file is sound)."""
    rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()]
    return [] if rows == ["ok"] else [str(r) for r in rows]
