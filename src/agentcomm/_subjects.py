"""Topic names and patterns: parsing, filters, and the subject tree that indexes subscriptions.

A topic name is dot-separated tokens (`workflow.build.started`). In a pattern, `*` stands for
exactly one token and `>`, allowed only last, for one or more trailing tokens. This module is
pure (no I/O) so that backends can evaluate durable consumers' filters with it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from ._codec import decode_metadata
from ._errors import InvalidTopic

__all__ = [
    "TOPICS_CHANNEL",
    "SubjectTree",
    "TopicFilter",
    "consumer_channel",
    "parse_pattern",
    "parse_topic",
    "topic_channel",
    "wake_channel",
]

#: The notification channel a backend touches whenever the topic log grows.
TOPICS_CHANNEL = "topics"


def topic_channel(topic: str) -> str:
    """The channel also touched by a publish to `topic`: one per first token, so a durable
    consumer whose pattern starts with a literal token wakes only for its part of the tree."""
    return "topics:" + topic.partition(".")[0]


def consumer_channel(name: str) -> str:
    """The channel touched when durable consumer `name` is rewound or gets deliveries back."""
    return "topic-consumer:" + name


def wake_channel(tokens: tuple[str, ...]) -> str:
    """The publish channel a subscription with these pattern tokens must listen on."""
    first = tokens[0]
    return TOPICS_CHANNEL if first in ("*", ">") else "topics:" + first


MAX_TOPIC_LENGTH = 256
_TOKEN = re.compile(r"[^\s.*>\x00-\x1f\x7f]+")
_CACHE_LIMIT = 4096
_topic_cache: dict[str, tuple[str, ...]] = {}

T = TypeVar("T")


def _split(what: str, text: object) -> list[str]:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(f"A topic {what} must be a non-empty string, not {text!r}.")
    if len(text) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"Topic {what} {text[:40]!r}... is longer than {MAX_TOPIC_LENGTH}.")
    tokens = text.split(".")
    if "" in tokens:
        raise InvalidTopic(
            f"Topic {what} {text!r} has an empty token: use dot-separated non-empty tokens, "
            "e.g. 'workflow.build.started'."
        )
    return tokens


def parse_topic(name: object) -> tuple[str, ...]:
    """Split a topic name that is published to into tokens; raise InvalidTopic if malformed."""
    if type(name) is str:
        cached = _topic_cache.get(name)
        if cached is not None:
            return cached
    tokens = _split("name", name)
    for token in tokens:
        if _TOKEN.fullmatch(token) is None:
            raise InvalidTopic(
                f"Invalid topic name {name!r}: token {token!r} may not contain whitespace or "
                "the wildcards '*' and '>' (wildcards belong in subscription patterns)."
            )
    result = tuple(tokens)
    if len(_topic_cache) >= _CACHE_LIMIT:
        _topic_cache.clear()
    _topic_cache[".".join(result)] = result
    return result


def parse_pattern(pattern: object) -> tuple[str, ...]:
    """Split a subscription pattern into tokens; raise InvalidTopic if malformed."""
    tokens = _split("pattern", pattern)
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if i != last:
                raise InvalidTopic(
                    f"Invalid pattern {pattern!r}: '>' matches all remaining tokens, so it must "
                    "be the last token (e.g. 'workflow.>')."
                )
            continue
        if _TOKEN.fullmatch(token) is None:
            raise InvalidTopic(
                f"Invalid pattern {pattern!r}: token {token!r} must be '*', '>' or a literal "
                "token without whitespace or wildcard characters."
            )
    return tuple(tokens)


def pattern_regex(tokens: Iterable[str]) -> re.Pattern[str]:
    """A regular expression that fully matches the topic names a parsed pattern matches."""
    parts = []
    for token in tokens:
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\.".join(parts))


def is_literal(tokens: tuple[str, ...]) -> bool:
    """Whether a parsed pattern has no wildcard (it matches exactly one topic)."""
    return "*" not in tokens and ">" not in tokens


class TopicFilter:
    """A pattern plus the filters of a subscription, all of which must match (AND)."""

    __slots__ = ("_regex", "metadata", "pattern", "senders", "tokens", "types")

    def __init__(
        self,
        pattern: str,
        senders: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.pattern = pattern
        self.tokens = parse_pattern(pattern)
        self.senders = None if senders is None else frozenset(senders)
        self.types = None if types is None else frozenset(types)
        self.metadata = dict(metadata) if metadata else None
        self._regex = pattern_regex(self.tokens)

    @property
    def has_filters(self) -> bool:
        """Whether anything besides the pattern is checked."""
        return self.senders is not None or self.types is not None or self.metadata is not None

    def accepts(self, sender: str, type: str, metadata: Mapping[str, Any] | None) -> bool:
        """The sender, type and metadata filters (the pattern is checked elsewhere)."""
        if self.senders is not None and sender not in self.senders:
            return False
        if self.types is not None and type not in self.types:
            return False
        wanted = self.metadata
        if wanted is not None:
            if not metadata:
                return False
            for key, value in wanted.items():
                if key not in metadata or metadata[key] != value:
                    return False
        return True

    def matches(self, topic: str, sender: str, type: str, metadata: bytes | None) -> bool:
        """Pattern and filters against an encoded record."""
        if self._regex.fullmatch(topic) is None:
            return False
        if not self.has_filters:
            return True
        return self.accepts(sender, type, decode_metadata(metadata) if self.metadata else None)

    def matches_topic(self, topic: str) -> bool:
        """The pattern alone."""
        return self._regex.fullmatch(topic) is not None


class _Node(Generic[T]):
    __slots__ = ("children", "here", "star", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.here: dict[T, None] = {}  # patterns ending at this node
        self.tail: dict[T, None] = {}  # patterns ending with '>' below this node

    def empty(self) -> bool:
        return not (self.children or self.star or self.here or self.tail)


class SubjectTree(Generic[T]):
    """Items indexed by pattern: a trie of literal tokens with `*` and `>` branches.

    `match` visits only the branches a topic can follow, so its cost does not grow with the
    number of subscriptions on unrelated topics. Results are cached per topic until the tree
    changes.
    """

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._cache: dict[str, tuple[T, ...]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def insert(self, tokens: tuple[str, ...], item: T) -> None:
        """Add `item` under a parsed pattern."""
        node = self._root
        for token in tokens:
            if token == ">":
                node.tail[item] = None
                break
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                node = child
        else:
            node.here[item] = None
        self._size += 1
        self._cache.clear()

    def remove(self, tokens: tuple[str, ...], item: T) -> bool:
        """Remove `item` from under a parsed pattern, pruning emptied branches."""
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        members: dict[T, None] | None = None
        for token in tokens:
            assert node is not None
            if token == ">":
                members = node.tail
                break
            path.append((node, token))
            node = node.star if token == "*" else node.children.get(token)
            if node is None:
                return False
        else:
            assert node is not None
            members = node.here
        if item not in members:
            return False
        del members[item]
        self._size -= 1
        self._cache.clear()
        for parent, token in reversed(path):
            child = parent.star if token == "*" else parent.children[token]
            if child is None or not child.empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
        return True

    def match(self, topic: str, tokens: tuple[str, ...]) -> tuple[T, ...]:
        """Every item whose pattern matches the topic (given as name and parsed tokens)."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        out: list[T] = []
        _walk(self._root, tokens, 0, out)
        result = tuple(out)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def items(self) -> list[T]:
        """Every item in the tree."""
        out: list[T] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            out.extend(node.here)
            out.extend(node.tail)
            stack.extend(node.children.values())
            if node.star is not None:
                stack.append(node.star)
        return out


def _walk(node: _Node[T], tokens: tuple[str, ...], i: int, out: list[T]) -> None:
    if i == len(tokens):
        out.extend(node.here)
        return
    if node.tail:
        out.extend(node.tail)
    child = node.children.get(tokens[i])
    if child is not None:
        _walk(child, tokens, i + 1, out)
    if node.star is not None:
        _walk(node.star, tokens, i + 1, out)
