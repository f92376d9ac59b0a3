"""File globs of coordination leases: what a pattern means, and whether two can overlap.

The rules (docs/leases.md):

- a pattern is a relative path with `/` between segments; `?` matches one character other
  than `/`, `*` any run of characters other than `/`, `[abc]` / `[a-z]` / `[!abc]` one
  character of (or not of) the set, never `/`; `**` any run of characters, `/` included, and
  a whole `**/` segment zero or more whole directories (`**/x.py` matches `x.py` and
  `a/b/x.py`); any other character matches itself;
- a pattern ending with `/` means everything under that directory (`src/` is `src/**`);
  a leading `./` and repeated `/` are dropped;
- two patterns **overlap** when some path matches both. This is decided exactly: each
  pattern is a small automaton, and the overlap is a search of their product (linear in the
  product of the patterns' lengths), which also yields a path matching both (`witness`).
"""

from __future__ import annotations

import functools
from collections import deque
from typing import NamedTuple

from ._errors import ValidationError

__all__ = ["MAX_PATTERN", "matches", "normalize", "overlaps", "witness"]

#: The longest pattern accepted, in characters.
MAX_PATTERN = 1024
#: The most characters one `[...]` class may list (ranges expanded).
MAX_CLASS = 4096


class CharSet(NamedTuple):
    """A set of characters: `chars` itself, or (`negated`) every character not in `chars`."""

    chars: frozenset[str]
    negated: bool

    def meets(self, other: CharSet) -> str | None:
        """A character in both sets, or None if they are disjoint."""
        if not self.negated and not other.negated:
            common = self.chars & other.chars
            return min(common) if common else None
        if not self.negated:
            left = self.chars - other.chars
            return min(left) if left else None
        if not other.negated:
            return other.meets(self)
        excluded = self.chars | other.chars  # an infinite alphabet: some character is left
        for candidate in "abcdefghijklmnopqrstuvwxyz0123456789_":
            if candidate not in excluded:
                return candidate
        code = 0x100
        while chr(code) in excluded:
            code += 1
        return chr(code)

    def has(self, char: str) -> bool:
        """Whether `char` is in the set."""
        return (char in self.chars) != self.negated


_NOT_SLASH = CharSet(frozenset("/"), True)
_ANY = CharSet(frozenset(), True)
_SLASH = CharSet(frozenset("/"), False)


class Automaton(NamedTuple):
    """A pattern as an automaton: states 0..`final`; `moves[s]` lists (set, next state) and
    `skips[s]` the states reached from `s` without reading a character."""

    moves: tuple[tuple[tuple[CharSet, int], ...], ...]
    skips: tuple[tuple[int, ...], ...]
    final: int


def normalize(pattern: object) -> str:
    """`pattern` checked and in its canonical form (see the module rules); ValidationError
    if it is not a non-empty relative pattern of at most `MAX_PATTERN` characters."""
    if not isinstance(pattern, str):
        raise ValidationError(
            f"A file pattern must be a string such as 'src/api/*.py', not {pattern!r}."
        )
    text = pattern.strip()
    if not text or len(text) > MAX_PATTERN or "\0" in text:
        raise ValidationError(
            f"File pattern {pattern[:80]!r} must be 1-{MAX_PATTERN} characters without NUL."
        )
    if "\\" in text:
        raise ValidationError(
            f"File pattern {text[:80]!r} has a backslash: write paths with '/' (and no escapes)."
        )
    if text.startswith("/"):
        raise ValidationError(
            f"File pattern {text[:80]!r} is absolute: give it relative to the project root "
            "(e.g. 'src/api/*.py'), as every agent sharing the store names files the same way."
        )
    while text.startswith("./"):
        text = text[2:]
    while "//" in text:
        text = text.replace("//", "/")
    if text.endswith("/"):
        text += "**"
    if not text or any(part in ("..", ".") for part in text.split("/")):
        raise ValidationError(
            f"File pattern {pattern[:80]!r} has a '.' or '..' segment: name files from the "
            "project root without them."
        )
    compile_pattern(text)  # refuses a malformed class
    return text


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Automaton:
    """The automaton of a normalized pattern."""
    moves: list[list[tuple[CharSet, int]]] = []
    skips: list[list[int]] = []

    def state() -> int:
        moves.append([])
        skips.append([])
        return len(moves) - 1

    current = state()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            whole = (i - 2 == 0 or pattern[i - 3] == "/") and pattern.startswith("/", i)
            if whole:  # `**/`: zero or more whole directories, i.e. nothing or `.*/`
                inside = state()
                nxt = state()
                moves[current].append((_SLASH, nxt))
                moves[current].append((_ANY, inside))
                moves[inside].append((_ANY, inside))
                moves[inside].append((_SLASH, nxt))
                i += 1
            else:
                nxt = state()
                moves[current].append((_ANY, current))
            skips[current].append(nxt)
            current = nxt
            continue
        nxt = state()
        if c == "*":
            moves[current].append((_NOT_SLASH, current))
            skips[current].append(nxt)
            i += 1
        elif c == "?":
            moves[current].append((_NOT_SLASH, nxt))
            i += 1
        elif c == "[":
            charset, i = _charclass(pattern, i)
            moves[current].append((charset, nxt))
        else:
            moves[current].append((CharSet(frozenset(c), False), nxt))
            i += 1
        current = nxt
    return Automaton(tuple(tuple(m) for m in moves), tuple(tuple(s) for s in skips), current)


def _charclass(pattern: str, start: int) -> tuple[CharSet, int]:
    """The class starting at `pattern[start] == '['` and the index after it."""
    i = start + 1
    negated = i < len(pattern) and pattern[i] in "!^"
    if negated:
        i += 1
    chars: set[str] = set()
    first = True
    while i < len(pattern) and (pattern[i] != "]" or first):
        first = False
        c = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            lo, hi = ord(c), ord(pattern[i + 2])
            if hi < lo or hi - lo >= MAX_CLASS:
                raise ValidationError(
                    f"File pattern {pattern[:80]!r} has a bad range {c}-{pattern[i + 2]}."
                )
            chars.update(chr(x) for x in range(lo, hi + 1))
            i += 3
        else:
            chars.add(c)
            i += 1
        if len(chars) > MAX_CLASS:
            raise ValidationError(f"File pattern {pattern[:80]!r} has too large a class.")
    if i >= len(pattern):
        raise ValidationError(
            f"File pattern {pattern[:80]!r} has a '[' without its ']': close the class, or "
            "use '?' for any one character."
        )
    chars.add("/") if negated else chars.discard("/")
    if not negated and not chars:
        raise ValidationError(f"File pattern {pattern[:80]!r} has a class that matches nothing.")
    return CharSet(frozenset(chars), negated), i + 1


def _closure(a: Automaton, states: set[int]) -> frozenset[int]:
    todo = list(states)
    seen = set(states)
    while todo:
        for nxt in a.skips[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


def matches(pattern: str, path: str) -> bool:
    """Whether normalized `pattern` matches `path`."""
    a = compile_pattern(pattern)
    current = _closure(a, {0})
    for char in path:
        step = {nxt for s in current for cs, nxt in a.moves[s] if cs.has(char)}
        if not step:
            return False
        current = _closure(a, step)
    return a.final in current


@functools.lru_cache(maxsize=16384)
def witness(first: str, second: str) -> str | None:
    """A path both normalized patterns match, or None if there is none (they do not overlap).

    A breadth-first search of pairs of states (one per pattern), following the pairs of moves
    whose character sets meet; the path is the characters along the way.
    """
    a, b = compile_pattern(first), compile_pattern(second)
    start = (0, 0)
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        pair = queue.popleft()
        closed_a = _closure(a, {pair[0]})
        closed_b = _closure(b, {pair[1]})
        if a.final in closed_a and b.final in closed_b:
            out: list[str] = []
            node: tuple[int, int] | None = pair
            while node is not None:
                step = parent[node]
                if step is None:
                    break
                node, char = step
                out.append(char)
            return "".join(reversed(out))
        for sa in closed_a:
            for set_a, next_a in a.moves[sa]:
                for sb in closed_b:
                    for set_b, next_b in b.moves[sb]:
                        common = set_a.meets(set_b)
                        if common is None:
                            continue
                        nxt = (next_a, next_b)
                        if nxt not in parent:
                            parent[nxt] = (pair, common)
                            queue.append(nxt)
    return None


def overlaps(first: str, second: str) -> bool:
    """Whether some path matches both normalized patterns."""
    if first == second:
        return True
    return witness(first, second) is not None
