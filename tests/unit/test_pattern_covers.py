"""pattern_covers: a claim pattern allows a requested pattern only if it matches every
routing key the requested one matches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.origins import OriginPolicy, validate_origin_entry
from rabbitsocks.topics import pattern_covers, topic_matches

WORD = st.sampled_from(["a", "b", "*", "#"])
PATTERN = st.lists(WORD, min_size=1, max_size=5).map(".".join)
KEY = st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=6).map(".".join)


@pytest.mark.parametrize(
    ("allowed", "requested", "covers"),
    [
        ("chat.#", "chat.room1", True),
        ("chat.#", "chat.*", True),
        ("chat.#", "chat.#", True),
        ("chat.*", "chat.#", False),
        ("chat.*", "chat.*", True),
        ("chat.*", "chat.a.b", False),
        ("#", "anything.#", True),
        ("a.b", "a.*", False),
        ("*.b", "a.b", True),
        ("#.b", "*.*.b", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.#", False),
    ],
)
def test_examples(allowed: str, requested: str, covers: bool) -> None:
    assert pattern_covers(allowed, requested) is covers


@settings(max_examples=400)
@given(PATTERN, PATTERN, st.lists(KEY, min_size=1, max_size=10))
def test_covering_never_allows_a_key_the_claim_would_not(
    allowed: str, requested: str, keys: list[str]
) -> None:
    if pattern_covers(allowed, requested):
        for key in keys:
            if topic_matches(requested, key):
                assert topic_matches(allowed, key)


@settings(max_examples=300)
@given(PATTERN, st.lists(st.sampled_from(["a", "b", "c"]), max_size=5).map(".".join))
def test_a_literal_key_is_covered_exactly_when_it_matches(allowed: str, key: str) -> None:
    if key:  # an empty request is not a topic anyone joins
        assert pattern_covers(allowed, key) is topic_matches(allowed, key)


def test_origin_entries_are_validated() -> None:
    assert validate_origin_entry("HTTPS://App.Example.com/") == "https://app.example.com"
    for bad in ("example.com", "https://*example.com", "ftp://x", "https://a/b"):
        with pytest.raises(ValueError, match="expected"):
            validate_origin_entry(bad)


def test_origin_policy_any() -> None:
    assert OriginPolicy(["*"]).allows("https://whatever.test")
    assert not OriginPolicy(["https://a.test"]).allows("https://b.test")
