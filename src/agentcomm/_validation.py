"""Argument checks for the public API, in one place; each raises a ValidationError that names
the argument and says what is allowed. Every public call runs them before anything is stored."""

from __future__ import annotations

import math
import os
import re
from datetime import datetime
from typing import Any

from ._errors import EncodeError, InvalidName, ValidationError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}")
_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
#: The largest count (limit, batch size, attempts...) any call accepts: a signed 32-bit int.
MAX_COUNT = 2**31 - 1
#: The largest version or sequence number: what a signed 64-bit column holds.
MAX_SEQUENCE = 2**63 - 1
#: The longest free-text argument (dead-letter reason, content type, idempotency key...).
MAX_TEXT = 4096


def check_name(what: str, name: object) -> str:
    """Agent and type names: 1-128 chars of letters, digits and `_ . : @ -`, not starting
    with punctuation other than `_`."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidName(
            f"Invalid {what} {_show(name)}: use 1-128 letters, digits or '_ . : @ -', "
            "starting with a letter, digit or '_'."
        )
    return name


def _show(value: object) -> str:
    """A short repr for messages: a huge argument must not make a huge error."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the actual problem
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _real(what: str, value: object, allowed: str) -> float:
    """`value` as a float if it is an int or float (not bool), else ValidationError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be {allowed}, not {_show(value)}.")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        raise ValidationError(f"{what} must be {allowed}, not an int this large.") from None


def check_seconds(
    what: str,
    value: object,
    *,
    positive: bool = False,
    maximum: float | None = None,
    allow_inf: bool = False,
) -> float:
    """A finite number of seconds: > 0 with `positive`, else >= 0; at most `maximum`.
    `allow_inf` also accepts `math.inf` (meaning "never")."""
    bound = "> 0" if positive else ">= 0"
    most = "" if maximum is None else f" and <= {maximum:g}"
    allowed = f"a finite number of seconds {bound}{most}" + (" (or math.inf)" if allow_inf else "")
    seconds = _real(what, value, allowed)
    if math.isnan(seconds) or (math.isinf(seconds) and not (allow_inf and seconds > 0)):
        raise ValidationError(f"{what} must be {allowed}, not {_show(value)}.")
    if (seconds <= 0 if positive else seconds < 0) or (
        maximum is not None and not math.isinf(seconds) and seconds > maximum
    ):
        raise ValidationError(f"{what} must be {allowed}, not {_show(value)}.")
    return seconds


def check_positive(what: str, value: object, maximum: float | None = None) -> float:
    """A finite number of seconds > 0 (at most `maximum`)."""
    return check_seconds(what, value, positive=True, maximum=maximum)


def check_non_negative(what: str, value: object, maximum: float | None = None) -> float:
    """A finite number of seconds >= 0 (at most `maximum`)."""
    return check_seconds(what, value, maximum=maximum)


def check_timestamp(what: str, value: object) -> float:
    """A point in time: an aware datetime, a naive one (taken as local time, as
    `datetime.timestamp` does), or finite epoch seconds. Returns epoch seconds."""
    if isinstance(value, datetime):
        try:
            return value.timestamp()
        except (ValueError, OverflowError, OSError) as exc:
            raise ValidationError(
                f"{what} {_show(value)} is outside the range of epoch timestamps ({exc})."
            ) from None
    seconds = _real(what, value, "a datetime or finite epoch seconds")
    if not math.isfinite(seconds):
        raise ValidationError(f"{what} must be a datetime or finite epoch seconds, not {value!r}.")
    return seconds


def check_int(what: str, value: object, low: int, high: int) -> int:
    """An int (not bool) with `low <= value <= high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{what} must be an int from {low} to {high}, not {_show(value)}.")
    return value


def check_priority(value: object) -> int:
    """An int in the signed 32-bit range; higher is delivered first."""
    return check_int("priority", value, *_PRIORITY_RANGE)


def check_attempts(value: object) -> int:
    """max_attempts: an int from 1 to 2**31 - 1."""
    return check_int("max_attempts", value, 1, MAX_COUNT)


def check_bool(what: str, value: object) -> bool:
    """A bool (True or False; not 0/1)."""
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be True or False, not {_show(value)}.")
    return value


def check_text(what: str, value: object, *, longest: int = MAX_TEXT, empty: bool = True) -> str:
    """A str of at most `longest` characters that can be stored (UTF-8 encodable)."""
    if not isinstance(value, str) or len(value) > longest or (not empty and not value):
        need = "a string" if empty else "a non-empty string"
        raise ValidationError(f"{what} must be {need} of <= {longest} chars, not {_show(value)}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains characters UTF-8 cannot encode.") from None
    return value


def check_path(what: str, value: object) -> str:
    """A file system path (str or os.PathLike) without NUL characters."""
    try:
        path = os.fspath(value)  # type: ignore[call-overload]
    except TypeError:
        raise ValidationError(
            f"{what} must be a path (str or os.PathLike), not {_show(value)}."
        ) from None
    if not isinstance(path, str) or "\0" in path:
        raise ValidationError(
            f"{what} must be a str path without NUL characters, not {_show(value)}."
        )
    return path


def check_metadata(value: object) -> dict[str, Any] | None:
    """Metadata: None or a dict with str keys (its values are checked when encoded)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise EncodeError(f"metadata must be a dict with str keys, not {_show(value)}.")
    return value
