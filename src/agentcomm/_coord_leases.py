"""Coordination leases: advisory locks on file globs that agents take before editing files.

`hub.leases` (a `Leases`) checks the arguments and hands the decision to the backend, which
applies the rules of `_backends/lease_engine.py` atomically (also across processes). What a
pattern means and when two overlap is in `_globs.py`.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable

from ._context import Context
from ._errors import ValidationError
from ._globs import normalize, overlaps
from ._ids import new_id
from ._lease_models import Lease, LeaseResult, LeaseWant
from ._validation import check_bool, check_name, check_positive, check_text

__all__ = ["MAX_PATTERNS", "Leases"]

#: The most patterns one call takes.
MAX_PATTERNS = 100
#: The longest `reason`, in characters.
MAX_REASON = 1024


def _patterns(patterns: object, *, what: str = "patterns") -> list[str]:
    """Normalized, distinct patterns in the order given (ValidationError if none or too many)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Iterable):
        raise ValidationError(f"{what} takes a list of file globs such as ['src/api/*.py'].")
    out: list[str] = []
    for p in patterns:
        norm = normalize(p)
        if norm not in out:
            out.append(norm)
    if not out or len(out) > MAX_PATTERNS:
        raise ValidationError(
            f"{what} takes 1 to {MAX_PATTERNS} file globs such as ['src/api/*.py'], not {len(out)}."
        )
    return out


def _selectors(patterns: object) -> frozenset[str] | None:
    """None (every lease), or the normalized patterns and lease ids to select."""
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Iterable):
        raise ValidationError("Give a list of patterns or lease ids, or None for all of them.")
    chosen: set[str] = set()
    for p in patterns:
        if not isinstance(p, str):
            raise ValidationError(f"A pattern or lease id must be a string, not {p!r}.")
        chosen.add(p)  # a lease id, or a pattern as given
        with contextlib.suppress(ValidationError):  # else it can only be an id
            chosen.add(normalize(p))
    if len(chosen) > 2 * MAX_PATTERNS:
        raise ValidationError(f"Give at most {MAX_PATTERNS} patterns or lease ids per call.")
    return frozenset(chosen)


class Leases:
    """Coordination leases on file globs (`hub.leases`): advisory locks agents take before
    they edit files, so two agents do not edit the same ones.

    An owner (any agent name) acquires patterns such as `"src/api/*.py"` for `ttl` seconds,
    exclusively (no other owner may hold an overlapping pattern) or shared (coexists with
    other shared leases). Two patterns overlap when some path matches both: `*` and `?` never
    cross `/`, `**` does, and `dir/` means everything under `dir` (docs/leases.md). Every
    call is atomic, also across processes; a lease ends when released or at its expiry.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def __repr__(self) -> str:
        return f"<Leases of {self._ctx.url}>"

    def _ttl(self, ttl: object) -> float:
        return check_positive("ttl", ttl, self._ctx.settings.limits.max_delay)

    async def acquire(
        self,
        owner: str,
        patterns: Iterable[str] | str,
        *,
        ttl: float = 3600.0,
        exclusive: bool = True,
        reason: str | None = None,
        partial: bool = False,
    ) -> LeaseResult:
        """Take leases on `patterns` for `owner`, for `ttl` seconds from now.

        Returns the leases granted and the conflicts found (each with the other owner's lease:
        holder, pattern, expiry). By default all or nothing: if any pattern conflicts, nothing
        is granted; with `partial=True` the patterns without conflicts are granted anyway.
        A pattern `owner` already holds is renewed in place (its mode and reason updated).
        """
        check_name("owner", owner)
        wanted = _patterns(patterns)
        ttl = self._ttl(ttl)
        check_bool("exclusive", exclusive)
        check_bool("partial", partial)
        if reason is not None:
            check_text("reason", reason, longest=MAX_REASON)
        ctx = self._ctx
        ctx.check_open()
        wants = [LeaseWant(new_id(), p, exclusive) for p in wanted]
        return await ctx.lease_store.lease_acquire(
            owner, wants, ttl=ttl, reason=reason, partial=partial, now=ctx.now()
        )

    async def renew(
        self, owner: str, patterns: Iterable[str] | str | None = None, *, ttl: float = 3600.0
    ) -> builtins.list[Lease]:
        """Extend `owner`'s live leases (all, or those on `patterns` or with these lease ids)
        to end `ttl` seconds from now; returns them (an expired lease is not renewed:
        acquire it again)."""
        check_name("owner", owner)
        selectors = _selectors(patterns)
        ttl = self._ttl(ttl)
        ctx = self._ctx
        ctx.check_open()
        return await ctx.lease_store.lease_renew(owner, selectors, ttl=ttl, now=ctx.now())

    async def release(
        self, owner: str, patterns: Iterable[str] | str | None = None
    ) -> builtins.list[Lease]:
        """Release `owner`'s leases (all, or those on `patterns` or with these lease ids);
        returns the leases released."""
        check_name("owner", owner)
        selectors = _selectors(patterns)
        ctx = self._ctx
        ctx.check_open()
        return await ctx.lease_store.lease_release(owner, selectors, now=ctx.now())

    async def list(
        self, *, owner: str | None = None, overlapping: str | None = None
    ) -> builtins.list[Lease]:
        """The live leases, by owner then pattern: all, or those of `owner`, or those whose
        pattern overlaps the glob or path `overlapping` (who holds `src/api/users.py`?)."""
        if owner is not None:
            check_name("owner", owner)
        probe = None if overlapping is None else normalize(overlapping)
        ctx = self._ctx
        ctx.check_open()
        leases = await ctx.lease_store.lease_list(now=ctx.now())
        return [
            lease
            for lease in leases
            if (owner is None or lease.owner == owner)
            and (probe is None or overlaps(probe, lease.pattern))
        ]
