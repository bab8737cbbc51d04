"""Topic validation and AMQP 0-9-1 topic matching (rabbitsocks.topics)."""

from __future__ import annotations

import functools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.errors import InvalidTopic, ProtocolError
from rabbitsocks.topics import TopicTrie, is_pattern, topic_matches, validate_topic

# --- a reference matcher, written for obviousness, not speed ---------------------------------


def split_words(topic: str) -> tuple[str, ...]:
    # RabbitMQ: the empty key has no words; otherwise split on every dot.
    return tuple(topic.split(".")) if topic else ()


def reference_matches(pattern: str, key: str) -> bool:
    """AMQP 0-9-1 topic matching, straight from the definition, memoised on positions."""
    p, k = split_words(pattern), split_words(key)

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":  # zero words, or one word and '#' again
            return match(i + 1, j) or (j < len(k) and match(i, j + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def regex_matches(pattern: str, key: str) -> bool:
    """A second reference: the pattern translated to a regular expression over words."""
    # Every word is followed by a '.' on both sides, so '#' is "zero or more words".
    parts = []
    for word in split_words(pattern):
        if word == "#":
            parts.append(r"(?:[^.]*\.)*")
        elif word == "*":
            parts.append(r"[^.]*\.")
        else:
            parts.append(re.escape(word) + r"\.")
    subject = "".join(w + "." for w in split_words(key))
    return re.fullmatch("".join(parts), subject) is not None


# Small alphabets, so that generated patterns and keys collide often. Keys hold '*' and '#'
# too: in a routing key they are plain words (RabbitMQ only gives them a meaning in
# bindings), and a trie must not confuse them with its wildcard edges.
PATTERN_WORDS = st.sampled_from(["a", "b", "", "*", "#"])
KEY_WORDS = st.sampled_from(["a", "b", "", "c", "*", "#"])
patterns = st.lists(PATTERN_WORDS, max_size=7).map(".".join)
keys = st.lists(KEY_WORDS, max_size=8).map(".".join)


# --- validate_topic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "a.b.c",
        "a..b",
        ".a",
        "a.",
        ".",
        "caf\u00e9.\u2603",
        "x" * 255,
        "\u00e9" * 127,  # 254 bytes
        "a-b_c:d/e@f",
        " spaced words ",
    ],
)
@pytest.mark.parametrize("wildcards", [True, False])
def test_valid_routing_keys(topic: str, wildcards: bool) -> None:
    assert validate_topic(topic, wildcards=wildcards) is topic


@pytest.mark.parametrize("topic", ["*", "#", "a.*", "#.a", "a.#.b", "*.*", "#.#", "..#.."])
def test_valid_patterns(topic: str) -> None:
    assert validate_topic(topic, wildcards=True) == topic


@pytest.mark.parametrize(
    ("topic", "wildcards", "reason"),
    [
        (None, True, "topic is not a string"),
        (b"a.b", True, "topic is not a string"),
        (42, False, "topic is not a string"),
        (["a"], False, "topic is not a string"),
        ("", True, "topic is empty"),
        ("", False, "topic is empty"),
        ("x" * 256, True, "topic is longer than 255 bytes"),
        ("\u00e9" * 128, True, "topic is longer than 255 bytes"),  # 128 chars, 256 bytes
        ("\U0001f407" * 64, False, "topic is longer than 255 bytes"),  # 64 chars, 256 bytes
        ("a\x00b", True, "topic contains a control character"),
        ("a\nb", False, "topic contains a control character"),
        ("\x1f", True, "topic contains a control character"),
        ("a\x7f", True, "topic contains a control character"),
        ("a\ud800", True, "topic is not valid UTF-8"),
        ("\udfff.b", False, "topic is not valid UTF-8"),
        ("a.*", False, "wildcards are not allowed"),
        ("#", False, "wildcards are not allowed"),
        ("a.#.b", False, "wildcards are not allowed"),
        ("a*", True, "'*' and '#' must be whole words"),
        ("a.b#", True, "'*' and '#' must be whole words"),
        ("**", True, "'*' and '#' must be whole words"),
        ("#*", False, "'*' and '#' must be whole words"),
        # Ambiguity is the stronger complaint, wherever the wildcard word is.
        ("*.a*", False, "'*' and '#' must be whole words"),
        ("a#.#", False, "'*' and '#' must be whole words"),
    ],
)
def test_invalid_topics(topic: object, wildcards: bool, reason: str) -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic(topic, wildcards=wildcards)
    assert str(info.value) == reason
    assert isinstance(info.value, ProtocolError)


def test_length_limit_counts_bytes_not_characters() -> None:
    assert validate_topic("\u00e9" * 127 + "a", wildcards=False)  # 255 bytes
    with pytest.raises(InvalidTopic):
        validate_topic("\u00e9" * 127 + "ab", wildcards=False)  # 256 bytes


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("a.b", False),
        ("*", True),
        ("#", True),
        ("a.*.b", True),
        ("a.#", True),
        ("a*", False),  # a literal character to RabbitMQ
        ("a.b#", False),
        ("", False),
    ],
)
def test_is_pattern(topic: str, expected: bool) -> None:
    assert is_pattern(topic) is expected


# --- matching: the examples of the AMQP and RabbitMQ documentation, and the corners ----------

MATCH_CASES = [
    # '#' matches zero or more words, the empty key included.
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b", False),
    ("a.#", "", False),
    ("#.a", "a", True),
    ("#.a", "b.a", True),
    ("#.a", "a.b", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    # '*' matches exactly one word, an empty one included, but not the empty key.
    ("*", "a", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("*", ".", False),
    ("*.*", ".", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    ("*.b", ".b", True),
    ("*.#", "a", True),
    ("*.#", "", False),
    ("#.*", "a.b.c", True),
    ("*.*.#", "a", False),
    # Empty words are words.
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.*.b", "a..b", True),
    ("a.b", "a.b.", False),
    # Literal words, and wildcards only as whole words.
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("a", "*", False),
    ("a", "#", False),
    ("", "", True),
    ("", "a", False),
    # From the RabbitMQ tutorial 5.
    ("*.orange.*", "quick.orange.rabbit", True),
    ("*.*.rabbit", "lazy.orange.elephant", False),
    ("lazy.#", "lazy.orange.male.rabbit", True),
    ("*.orange.*", "quick.orange.male.rabbit", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), MATCH_CASES)
def test_topic_matches(pattern: str, key: str, expected: bool) -> None:
    assert reference_matches(pattern, key) is expected  # the reference agrees with the docs
    assert topic_matches(pattern, key) is expected


@pytest.mark.parametrize(("pattern", "key", "expected"), MATCH_CASES)
def test_trie_single_pattern(pattern: str, key: str, expected: bool) -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, "v")
    assert trie.match(key) == ({"v"} if expected else set())
    assert trie.matches_any(key) is expected


def test_many_hashes_stay_linear() -> None:
    # Naive backtracking over '#.a.#.a...' against a key of 'a's is exponential; this would
    # not finish. The trie keeps each node once per word.
    pattern = ".".join(["#", "a"] * 12 + ["#", "b"])
    key = ".".join(["a"] * 200)
    trie: TopicTrie[int] = TopicTrie()
    trie.add(pattern, 1)
    trie.add("#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.c", 2)
    assert trie.match(key) == set()
    assert trie.match(key + ".b") == {1}
    assert trie.match(key + ".c") == {2}
    assert not topic_matches(pattern, key)
    assert topic_matches(pattern, key + ".b")


# --- TopicTrie as a multimap ------------------------------------------------------------------


def test_trie_each_value_once_across_patterns() -> None:
    trie: TopicTrie[str] = TopicTrie()
    for pattern in ("a.b", "a.*", "#", "a.#", "#.b"):
        trie.add(pattern, "conn1")
    trie.add("a.*", "conn2")
    trie.add("c", "conn3")
    assert trie.match("a.b") == {"conn1", "conn2"}
    assert trie.match("c") == {"conn1", "conn3"}
    assert len(trie) == 7


def test_trie_add_is_idempotent_and_discard_of_unknown_is_a_no_op() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.*", 1)
    trie.add("a.*", 1)
    assert len(trie) == 1
    trie.discard("a.*", 2)
    trie.discard("a.#", 1)
    trie.discard("a.*.b", 1)
    trie.discard("a", 1)
    trie.discard("zzz", 1)
    assert len(trie) == 1
    trie.discard("a.*", 1)
    assert len(trie) == 0
    assert not trie
    assert node_count(trie) == 1  # the root


def test_trie_contains_and_patterns() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for pattern in ("a", "a.b", "a.*", "#", "a.#.b", "a..b", ".", ""):
        trie.add(pattern, 1)
    assert set(trie.patterns()) == {"a", "a.b", "a.*", "#", "a.#.b", "a..b", ".", ""}
    assert "a.*" in trie
    assert "a.#" not in trie  # a prefix of a pattern is not a pattern
    assert "a.#.b.c" not in trie
    assert "a.c" not in trie
    assert 1 not in trie
    trie.discard("a.*", 1)
    assert "a.*" not in trie
    assert "a" in trie


def test_discarding_a_prefix_keeps_longer_patterns() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.#", 1)
    trie.add("a.#.b", 2)
    trie.discard("a.#", 1)
    assert trie.match("a.x.b") == {2}
    assert trie.match("a") == set()
    trie.discard("a.#.b", 2)
    assert node_count(trie) == 1


def test_match_returns_a_fresh_set() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a", 1)
    trie.add("a.*", 1)
    trie.match("a").add(99)
    trie.match("a.b").add(99)
    assert trie.match("a") == {1}
    assert trie.match("a.b") == {1}


def node_count(trie: TopicTrie[int]) -> int:
    """Trie nodes reachable from the root, to prove that discard leaves no garbage.

    Reaches into private slots on purpose: a leak is invisible through the public API.
    """
    count = 0
    stack = [trie._root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend((node.children or {}).values())
        stack.extend(child for child in (node.star_child, node.hash_child) if child is not None)
    return count


# --- properties --------------------------------------------------------------------------------


@given(patterns, keys)
@settings(max_examples=2000)
def test_topic_matches_agrees_with_references(pattern: str, key: str) -> None:
    expected = reference_matches(pattern, key)
    assert regex_matches(pattern, key) is expected
    assert topic_matches(pattern, key) is expected


@given(st.lists(st.tuples(patterns, st.integers(0, 5)), max_size=25), st.lists(keys, max_size=20))
@settings(max_examples=500)
def test_trie_match_agrees_with_reference(
    entries: list[tuple[str, int]], probes: list[str]
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    for pattern, value in entries:
        trie.add(pattern, value)
    # Probe with the patterns themselves too: they are keys where wildcards are literal.
    for key in [*probes, *(pattern for pattern, _ in entries)]:
        expected = {value for pattern, value in entries if reference_matches(pattern, key)}
        assert trie.match(key) == expected
        assert trie.matches_any(key) is bool(expected)


@given(st.lists(st.tuples(st.booleans(), patterns, st.integers(0, 3)), max_size=60), keys)
@settings(max_examples=500)
def test_trie_add_discard_agrees_with_a_dict_of_sets(
    operations: list[tuple[bool, str, int]], key: str
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    model: dict[str, set[int]] = {}
    for add, pattern, value in operations:
        if add:
            trie.add(pattern, value)
            model.setdefault(pattern, set()).add(value)
        else:
            trie.discard(pattern, value)
            model.get(pattern, set()).discard(value)
            if not model.get(pattern, True):
                del model[pattern]
        assert len(trie) == sum(len(values) for values in model.values())
    assert sorted(trie.patterns()) == sorted(model)
    for pattern in model:
        assert pattern in trie
    expected = {
        v for pattern, values in model.items() if reference_matches(pattern, key) for v in values
    }
    assert trie.match(key) == expected

    for pattern, values in list(model.items()):
        for value in values:
            trie.discard(pattern, value)
    assert len(trie) == 0
    assert list(trie.patterns()) == []
    assert node_count(trie) == 1
    assert trie.match(key) == set()


@given(
    st.text(st.sampled_from("a.*#\x00\x1f\x7f\u00e9\ud800") | st.characters(), max_size=300),
    st.booleans(),
)
def test_validate_topic_accepts_only_what_it_should(topic: str, wildcards: bool) -> None:
    try:
        assert validate_topic(topic, wildcards=wildcards) is topic
    except InvalidTopic:
        ok = False
    else:
        ok = True
    words = topic.split(".")
    expected = (
        0 < len(topic.encode("utf-8", "surrogatepass")) <= 255
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in topic)
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in topic)
        and all(w in ("*", "#") or ("*" not in w and "#" not in w) for w in words)
        and (wildcards or not any(w in ("*", "#") for w in words))
    )
    assert ok is expected
