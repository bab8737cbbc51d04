"""Topics: validation and AMQP 0-9-1 topic-exchange matching, with no I/O.

Theory of operation
-------------------
A topic is a RabbitMQ routing key (the ``routing-key`` of AMQP 0-9-1 ``basic.publish``, a
``shortstr``): at most 255 octets of UTF-8. A topic exchange (AMQP 0-9-1 section 3.1.3.3)
reads it as zero or more *words* separated by ``.``. The specification restricts words to
letters and digits; RabbitMQ accepts any bytes and so do we, empty words included:
``a..b`` is ``["a", "", "b"]`` and ``a.`` is ``["a", ""]``, while the empty key is *no*
words at all (RabbitMQ's ``split_topic_key(<<>>) -> []``).

A binding key (a subscription *pattern*) is read the same way, and two words are special
when they stand alone:

* ``*`` matches exactly one word, whatever it is, an empty word included;
* ``#`` matches zero or more words.

So ``#`` matches every key, the empty one included; ``a.#`` matches ``a``, ``a.b`` and
``a.b.c``; ``#.a`` matches ``a``; ``*`` matches ``x`` but neither ``a.b`` nor the empty key,
and ``a.*`` matches ``a.``, whose second word is empty. A ``*`` or ``#`` inside a longer
word (``a*``) is a plain character to RabbitMQ; ``validate_topic`` refuses such words
because a browser that writes them almost certainly means a wildcard.

Matching runs a pattern as a non-deterministic automaton over the key's words: a literal
word or ``*`` moves on by one word, ``#`` may be skipped (zero words) or eat a word and stay.
``topic_matches`` does this for one pattern with the two-pointer backtracking of glob
matching (``#`` plays the part of glob's ``*``), O(len(pattern) * len(key)) at worst.
``TopicTrie`` does it for many patterns at once: patterns share their prefixes in a trie,
and matching keeps the *set* of trie nodes alive after each word, so that a node is visited
at most once per word however many ``#`` there are (no exponential blow-up on ``#.#.#`` or
``#.a.#.a.#``). RabbitMQ routes a topic exchange with a trie too.

Nothing here validates on the hot path: ``TopicTrie`` and ``topic_matches`` trust their
input, and callers run ``validate_topic`` once when a topic enters the system (a join, a
publish).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from rabbitsocks.errors import InvalidTopic

__all__ = [
    "MAX_TOPIC_BYTES",
    "TopicTrie",
    "is_pattern",
    "pattern_covers",
    "patterns_overlap",
    "topic_matches",
    "validate_topic",
]

#: AMQP 0-9-1 ``shortstr``: a one-octet length, so a routing key is at most 255 bytes.
MAX_TOPIC_BYTES = 255

# C0 controls and DEL. RabbitMQ would accept them, but nothing legitimate puts a NUL or an
# escape sequence in a topic, and they turn logs and management UI listings into traps.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")

T = TypeVar("T", bound=Hashable)


def _words(topic: str) -> list[str]:
    # RabbitMQ reads the empty key as no words at all, not as one empty word.
    return topic.split(".") if topic else []


def validate_topic(topic: object, *, wildcards: bool) -> str:
    """Return ``topic`` if it is a valid routing key, or pattern when ``wildcards`` is true.

    Raises ``InvalidTopic`` with a short reason otherwise. Publish routing keys, and joins
    on listeners without wildcards, are checked with ``wildcards=False``.
    """
    if not isinstance(topic, str):
        raise InvalidTopic("topic is not a string")
    if not topic:
        raise InvalidTopic("topic is empty")
    if topic.isascii():  # O(1) in CPython: the flag is stored on the string
        size = len(topic)
    else:
        try:
            size = len(topic.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate, e.g. from "\ud800" in Python code
            raise InvalidTopic("topic is not valid UTF-8") from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    if _CONTROL_CHARS.search(topic) is not None:
        raise InvalidTopic("topic contains a control character")
    if "*" in topic or "#" in topic:
        has_wildcard = False
        for word in topic.split("."):
            if word == "*" or word == "#":
                has_wildcard = True
            elif "*" in word or "#" in word:
                raise InvalidTopic("'*' and '#' must be whole words")
        if has_wildcard and not wildcards:
            raise InvalidTopic("wildcards are not allowed")
    return topic


def is_pattern(topic: str) -> bool:
    """Whether ``topic`` has a ``*`` or ``#`` word, i.e. may match more than one key."""
    if "*" not in topic and "#" not in topic:
        return False
    return any(word == "*" or word == "#" for word in topic.split("."))


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether the binding key ``pattern`` matches ``routing_key`` (AMQP topic rules)."""
    if "*" not in pattern and "#" not in pattern:
        # No wildcard word can be present: word-wise equality is string equality.
        return pattern == routing_key
    p = _words(pattern)
    k = _words(routing_key)
    np, nk = len(p), len(k)
    pi = ki = 0
    # Where the last '#' was seen, and the key index it was last resumed at. Only the last
    # '#' needs remembering: letting it eat one more word covers every choice an earlier
    # '#' could have made, as in glob matching.
    hash_pi = -1
    hash_ki = 0
    while ki < nk:
        if pi < np:
            word = p[pi]
            if word == "#":
                hash_pi, hash_ki = pi, ki
                pi += 1
                continue
            if word == "*" or word == k[ki]:
                pi += 1
                ki += 1
                continue
        if hash_pi < 0:
            return False
        hash_ki += 1
        pi, ki = hash_pi + 1, hash_ki
    # The key is used up: what is left of the pattern must be able to match zero words.
    while pi < np and p[pi] == "#":
        pi += 1
    return pi == np


def pattern_covers(allowed: str, requested: str) -> bool:
    """Whether every routing key matched by ``requested`` is matched by ``allowed``.

    Used to authorise joins: a token allowing ``chat.#`` covers ``chat.room1`` and
    ``chat.*``, but ``chat.*`` does not cover ``chat.#`` (which also matches
    ``chat.a.b``). Both arguments are valid patterns (see ``validate_topic``).
    """
    have, want = _words(allowed), _words(requested)
    memo: dict[tuple[int, int], bool] = {}

    def covers(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(have):
            result = j == len(want)
        elif have[i] == "#":
            # "#" absorbs zero words, or one more word of ``requested`` (wildcards too).
            result = covers(i + 1, j) or (j < len(want) and covers(i, j + 1))
        elif j == len(want) or want[j] == "#":
            result = False  # only a "#" can cover a "#" (or the end)
        elif have[i] == "*" or have[i] == want[j]:
            # "*" covers any one word, "*" included; a literal only covers itself.
            result = covers(i + 1, j + 1)
        else:
            result = False
        memo[key] = result
        return result

    return covers(0, 0)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some routing key is matched by both patterns (both valid, see
    ``validate_topic``): ``chat.*`` and ``*.1`` overlap (``chat.1``), ``a.*`` and ``a`` do not.
    """
    x, y = _words(a), _words(b)
    memo: dict[tuple[int, int], bool] = {}

    def overlap(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(x) and j == len(y):
            result = True
        elif i < len(x) and x[i] == "#":
            # "#" stands for no more words, or for the next word of the other pattern
            # (whatever it is: a literal, "*", or the other's "#" giving one word).
            result = overlap(i + 1, j) or (j < len(y) and overlap(i, j + 1))
        elif j < len(y) and y[j] == "#":
            result = overlap(i, j + 1) or (i < len(x) and overlap(i + 1, j))
        elif i == len(x) or j == len(y):
            result = False  # one needs another word, the other has none left
        else:
            result = (x[i] == "*" or y[j] == "*" or x[i] == y[j]) and overlap(i + 1, j + 1)
        memo[key] = result
        return result

    return overlap(0, 0)


class _Node(Generic[T]):
    """One trie node: the patterns that share the words on the path from the root."""

    __slots__ = ("children", "hash_child", "loops", "star_child", "values")

    def __init__(self, loops: bool) -> None:
        # Literal words only; '*' and '#' edges have their own slots so that matching
        # never mistakes a literal '*' in a routing key for the wildcard.
        self.children: dict[str, _Node[T]] | None = None
        self.star_child: _Node[T] | None = None
        self.hash_child: _Node[T] | None = None
        # True for a node reached through a '#' edge: it may consume any word and stay.
        self.loops = loops
        # The values of the patterns that end here.
        self.values: set[T] | None = None

    def is_empty(self) -> bool:
        return (
            not self.values
            and not self.children
            and self.star_child is None
            and self.hash_child is None
        )


class TopicTrie(Generic[T]):
    """A multimap from AMQP topic patterns to values, for fan-out by routing key.

    ``match(key)`` returns every value one of whose patterns matches ``key``, each once.
    Patterns are not validated here (see ``validate_topic``); a ``*`` or ``#`` is a
    wildcard only as a whole word, as in RabbitMQ.
    """

    # Patterns without a wildcard word match one key only, so they live in a dict and cost
    # one lookup; only the others go into the trie, which ``match`` skips when it is empty.
    __slots__ = ("_exact", "_root", "_size")

    def __init__(self) -> None:
        self._exact: dict[str, set[T]] = {}
        self._root: _Node[T] = _Node(loops=False)
        self._size = 0

    def __len__(self) -> int:
        """The number of (pattern, value) pairs."""
        return self._size

    def __contains__(self, pattern: object) -> bool:
        """Whether at least one value is registered under exactly ``pattern``."""
        if not isinstance(pattern, str):
            return False
        if not is_pattern(pattern):
            return pattern in self._exact
        node = self._find(pattern)
        return node is not None and node.values is not None

    def add(self, pattern: str, value: T) -> None:
        """Register ``value`` under ``pattern``; adding the same pair twice is a no-op."""
        if not is_pattern(pattern):
            values = self._exact.get(pattern)
            if values is None:
                values = self._exact[pattern] = set()
        else:
            node = self._root
            for word in _words(pattern):
                if word == "#":
                    child = node.hash_child
                    if child is None:
                        child = node.hash_child = _Node(loops=True)
                elif word == "*":
                    child = node.star_child
                    if child is None:
                        child = node.star_child = _Node(loops=False)
                else:
                    children = node.children
                    if children is None:
                        children = node.children = {}
                    child = children.get(word)
                    if child is None:
                        child = children[word] = _Node(loops=False)
                node = child
            values = node.values
            if values is None:
                values = node.values = set()
        if value not in values:
            values.add(value)
            self._size += 1

    def discard(self, pattern: str, value: T) -> None:
        """Unregister ``value`` from ``pattern`` if present; prunes what is left empty."""
        if not is_pattern(pattern):
            values = self._exact.get(pattern)
            if values is not None and value in values:
                values.remove(value)
                self._size -= 1
                if not values:
                    del self._exact[pattern]
            return
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        for word in _words(pattern):
            assert node is not None
            path.append((node, word))
            node = self._step(node, word)
            if node is None:
                return
        assert node is not None
        values = node.values
        if values is None or value not in values:
            return
        values.remove(value)
        self._size -= 1
        if not values:
            node.values = None
        # Walk back up, detaching every node that no longer leads to a pattern.
        while path and node.is_empty():
            parent, word = path.pop()
            if word == "#":
                parent.hash_child = None
            elif word == "*":
                parent.star_child = None
            else:
                children = parent.children
                assert children is not None
                del children[word]
                if not children:
                    parent.children = None
            node = parent

    def patterns(self) -> Iterator[str]:
        """The patterns that have at least one value, in no particular order."""
        yield from self._exact
        # An explicit stack: a 255-byte pattern can be 256 words deep (255 dots).
        stack: list[tuple[_Node[T], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, words = stack.pop()
            if node.values is not None:
                yield ".".join(words)
            if node.children is not None:
                stack.extend((child, (*words, w)) for w, child in node.children.items())
            if node.star_child is not None:
                stack.append((node.star_child, (*words, "*")))
            if node.hash_child is not None:
                stack.append((node.hash_child, (*words, "#")))

    def match(self, routing_key: str) -> set[T]:
        """Every value with at least one pattern matching ``routing_key``, each once."""
        exact = self._exact.get(routing_key)
        result: set[T] = set() if exact is None else exact.copy()
        root = self._root
        if root.children is None and root.star_child is None and root.hash_child is None:
            return result
        for node in self._final_nodes(routing_key):
            if node.values is not None:
                result |= node.values
        return result

    def matches_any(self, routing_key: str) -> bool:
        """Whether any pattern matches ``routing_key``."""
        if routing_key in self._exact:
            return True
        root = self._root
        if root.children is None and root.star_child is None and root.hash_child is None:
            return False
        return any(node.values is not None for node in self._final_nodes(routing_key))

    def _step(self, node: _Node[T], word: str) -> _Node[T] | None:
        if word == "#":
            return node.hash_child
        if word == "*":
            return node.star_child
        return node.children.get(word) if node.children is not None else None

    def _find(self, pattern: str) -> _Node[T] | None:
        node: _Node[T] | None = self._root
        for word in _words(pattern):
            assert node is not None
            node = self._step(node, word)
            if node is None:
                return None
        return node

    def _final_nodes(self, routing_key: str) -> list[_Node[T]]:
        """The trie nodes alive once every word of ``routing_key`` is consumed."""
        # Simulate the automaton: ``live`` holds the nodes reachable after the words read so
        # far. Entering a node also enters its '#' child, and that one's, since '#' may
        # match zero words. A node must be live at most once per word (the memo per
        # (node, word index) that keeps '#' from going exponential), but only '#' nodes can
        # be reached twice: any other node has a single edge in, from a parent that is
        # itself live at most once. So only those are deduplicated, and a walk that meets
        # no '#' never builds a set.
        live: list[_Node[T]] = [self._root]
        if self._root.hash_child is not None:
            _enter_hashes(self._root.hash_child, live, set())
        for word in routing_key.split(".") if routing_key else ():
            if len(live) == 1:
                # A single path through literal words: a plain dict walk.
                current = live[0]
                if not current.loops and current.star_child is None:
                    children = current.children
                    child = children.get(word) if children is not None else None
                    if child is None:
                        return []
                    if child.hash_child is None:
                        live = [child]
                        continue
            following: list[_Node[T]] = []
            seen: set[_Node[T]] | None = None
            for current in live:
                if current.loops:  # '#' eats this word and stays
                    if seen is None:
                        seen = set()
                    _enter_hashes(current, following, seen)
                children = current.children
                if children is not None:
                    child = children.get(word)
                    if child is not None:
                        following.append(child)
                        if child.hash_child is not None:
                            if seen is None:
                                seen = set()
                            _enter_hashes(child.hash_child, following, seen)
                child = current.star_child
                if child is not None:
                    following.append(child)
                    if child.hash_child is not None:
                        if seen is None:
                            seen = set()
                        _enter_hashes(child.hash_child, following, seen)
            if not following:
                return following
            live = following
        return live


def _enter_hashes(node: _Node[T] | None, live: list[_Node[T]], seen: set[_Node[T]]) -> None:
    """Make ``node``, a '#' node, live with the chain of '#' nodes below it, each once."""
    while node is not None and node not in seen:
        seen.add(node)
        live.append(node)
        node = node.hash_child
