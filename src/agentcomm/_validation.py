"""Argument checks for the public API; each raises a ValidationError saying what to fix."""

from __future__ import annotations

import math
import re

from ._errors import InvalidName, ValidationError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}")
_PRIORITY_RANGE = (-(2**31), 2**31 - 1)


def check_name(what: str, name: object) -> str:
    """Agent and type names: 1-128 chars of letters, digits and `_ . : @ -`, not starting
    with punctuation other than `_`."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidName(
            f"Invalid {what} {name!r}: use 1-128 letters, digits or '_ . : @ -', "
            "starting with a letter, digit or '_'."
        )
    return name


def check_positive(what: str, value: float) -> float:
    """A finite number > 0."""
    if not isinstance(value, int | float) or not value > 0 or math.isnan(value):
        raise ValidationError(f"{what} must be a positive number of seconds, not {value!r}.")
    return float(value)


def check_non_negative(what: str, value: float) -> float:
    """A number >= 0."""
    if not isinstance(value, int | float) or not value >= 0:
        raise ValidationError(f"{what} must be a number of seconds >= 0, not {value!r}.")
    return float(value)


def check_priority(value: int) -> int:
    """An int in the signed 32-bit range; higher is delivered first."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"priority must be an int, not {value!r}.")
    if not _PRIORITY_RANGE[0] <= value <= _PRIORITY_RANGE[1]:
        raise ValidationError("priority must fit in a signed 32-bit integer.")
    return value


def check_attempts(value: int) -> int:
    """max_attempts: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"max_attempts must be an int >= 1, not {value!r}.")
    return value
