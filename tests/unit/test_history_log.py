"""The pure pieces of history: the bounded log, pattern overlap, positions in commands,
and the frames that carry them."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.errors import ProtocolError
from rabbitsocks.messages import Delivery
from rabbitsocks.pubsub.history import HistoryLog, Position
from rabbitsocks.pubsub.protocol import (
    encode_delivery,
    encode_gap,
    encode_message,
    encode_resumed,
    parse_command,
)
from rabbitsocks.topics import patterns_overlap, topic_matches


def entry(offset: int, body: bytes = b"x", key: str = "chat.1") -> Delivery:
    return Delivery(key, body, stream=0, offset=offset, epoch="e")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- HistoryLog ---------------------------------------------------------------------------


def test_log_keeps_entries_after_base_in_order() -> None:
    log = HistoryLog(None, None, None)
    log.reset(-1)
    for offset in (0, 1, 5, 6):  # offsets may skip (markers, other entries)
        log.append(entry(offset))
    assert [d.offset for d in log.after(-1)] == [0, 1, 5, 6]
    assert [d.offset for d in log.after(1)] == [5, 6]
    assert [d.offset for d in log.after(3)] == [5, 6]
    assert log.after(6) == []
    assert log.covers(-1)
    assert log.covers(4)
    assert log.last == 6


def test_log_bounded_by_count_moves_base_to_the_last_dropped() -> None:
    log = HistoryLog(3, None, None)
    log.reset(-1)
    for offset in range(5):
        log.append(entry(offset))
    assert [d.offset for d in log.after(1)] == [2, 3, 4]
    assert log.base == 1
    assert log.covers(1)
    assert not log.covers(0)


def test_log_bounded_by_bytes_of_bodies_and_keys() -> None:
    log = HistoryLog(None, 30, None)
    log.reset(-1)
    for offset in range(4):
        log.append(entry(offset, b"0123456789", "k"))  # 11 bytes each
    assert [d.offset for d in log.after(-1)] == [2, 3]
    assert log.bytes == 22
    assert log.base == 1


def test_log_bounded_by_age() -> None:
    clock = Clock()
    log = HistoryLog(None, None, 10.0, clock)
    log.reset(-1)
    log.append(entry(0))
    clock.now += 6
    log.append(entry(1))
    clock.now += 6  # entry 0 is 12 s old
    assert [d.offset for d in log.after(-1)] == [1]
    assert log.base == 0
    assert not log.covers(-1)


def test_markers_advance_last_and_an_empty_log_keeps_base_at_last() -> None:
    log = HistoryLog(2, None, None)
    log.reset(9)
    log.advance(10)  # a marker: nothing to hold, and nothing before it is missing
    assert (log.base, log.last) == (10, 10)
    log.append(entry(11))
    log.advance(12)
    assert (log.base, log.last) == (10, 12)
    assert [d.offset for d in log.after(10)] == [11]


def test_older_entries_read_back_go_in_front_as_far_as_bounds_allow() -> None:
    log = HistoryLog(4, None, None)
    log.reset(9)
    log.append(entry(10))
    log.append(entry(11))
    # Read back from the broker: every message after 5 up to the log's base (9); what the
    # log has already (10) is not taken twice.
    log.prepend([entry(6), entry(8), entry(9), entry(10)], 5)
    assert [d.offset for d in log.after(6)] == [8, 9, 10, 11]
    assert log.base == 6  # 6 did not fit in 4: dropped, so the log is complete after 6
    log.prepend([entry(3)], 2)  # all there is in (2, 6]: it does not fit either
    assert log.base == 3
    assert [d.offset for d in log.after(3)] == [8, 9, 10, 11]
    log.prepend([entry(7)], 9)  # not older than the log's base: nothing to do
    assert len(log) == 4


def test_log_compacts_what_it_dropped() -> None:
    log = HistoryLog(10, None, None)
    log.reset(-1)
    for offset in range(5000):
        log.append(entry(offset))
    assert len(log) == 10
    assert len(log._offsets) < 3000  # dropped entries do not pile up
    assert [d.offset for d in log.after(4994)] == [4995, 4996, 4997, 4998, 4999]


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=60),
    st.integers(1, 20),
    st.integers(-1, 150),
)
def test_after_is_every_kept_entry_past_the_offset(
    steps: list[int], keep: int, offset: int
) -> None:
    log = HistoryLog(keep, None, None)
    log.reset(-1)
    offsets = list(itertools.accumulate(steps))
    for o in offsets:
        log.append(entry(o))
    kept = offsets[-keep:]
    base = offsets[-keep - 1] if len(offsets) > keep else -1
    assert log.base == base
    assert log.covers(offset) is (offset >= base)
    if log.covers(offset):
        assert [d.offset for d in log.after(offset)] == [o for o in kept if o > offset]


# --- patterns_overlap -----------------------------------------------------------------------

WORD = st.sampled_from(["a", "b", "*", "#"])
PATTERN = st.lists(WORD, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("chat.*", "*.1", True),
        ("a.*", "a", False),
        ("#", "x", True),
        ("a.#", "b.#", False),
        ("#.a", "b.#", True),
        ("*.*", "a", False),
        ("a.#.b", "a.c.#", True),
        ("chat.#", "news.*", False),
    ],
)
def test_overlap_examples(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def _keys(max_words: int) -> list[str]:
    words = ["a", "b", "z"]
    return [".".join(k) for n in range(max_words + 1) for k in itertools.product(words, repeat=n)]


KEYS = _keys(5)


@settings(max_examples=300)
@given(PATTERN, PATTERN)
def test_overlap_is_exactly_a_key_matched_by_both(a: str, b: str) -> None:
    # Keys of up to 5 words over the patterns' literals and one other word are enough
    # witnesses for patterns of up to 4 words.
    witness = any(topic_matches(a, k) and topic_matches(b, k) for k in KEYS)
    assert patterns_overlap(a, b) is witness


# --- positions in a join --------------------------------------------------------------------


def test_since_gives_positions_or_reasons() -> None:
    command = parse_command(
        orjson.dumps(
            {
                "command": "join",
                "topics": ["a", "b", "c", "d", "e", "f", "g", "h"],
                "since": {
                    "a": {"offset": 7, "epoch": "k3j9"},
                    "b": {"offset": -2, "epoch": "k3j9"},
                    "c": {"offset": 1.0, "epoch": "k3j9"},
                    "d": {"offset": True, "epoch": "k3j9"},
                    "e": {"offset": 1, "epoch": ""},
                    "f": {"offset": 1},
                    "g": {"offset": 2**63, "epoch": "x"},
                    "h": {"offset": -1, "epoch": "x"},  # before the first entry
                },
            }
        )
    )
    assert command.since == {
        "a": Position(7, "k3j9"),
        "b": "invalid position: offset out of range",
        "c": "invalid position: offset is not an integer",
        "d": "invalid position: offset is not an integer",
        "e": "invalid position: epoch is not a string of 1 to 64 characters",
        "f": 'invalid position: expected {"offset": integer, "epoch": string}',
        "g": "invalid position: offset out of range",
        "h": Position(-1, "x"),
    }


def test_since_must_be_an_object_about_the_topics() -> None:
    with pytest.raises(ProtocolError, match="since is not an object"):
        parse_command('{"command":"join","topics":["a"],"since":[]}')
    with pytest.raises(ProtocolError, match="since names a topic that is not in topics"):
        parse_command('{"command":"join","topics":["a"],"since":{"b":{"offset":1,"epoch":"e"}}}')
    # A leave ignores it; a join without it has none.
    assert parse_command('{"command":"leave","topics":["a"],"since":5}').since is None
    assert parse_command('{"command":"join","topics":["a"]}').since is None
    with pytest.raises(ProtocolError, match="not valid JSON"):  # orjson: 64-bit integers
        parse_command('{"command":"join","topics":["a"],"since":{"a":{"offset":1e999}}}')


# --- frames -------------------------------------------------------------------------------


def test_a_message_without_history_is_byte_for_byte_what_it_was() -> None:
    frame = encode_delivery(Delivery("news", b"hi"))
    assert frame is not None
    assert frame.data == '{"topic":"news","payload":"hi"}'
    assert frame.data == encode_message("news", b"hi")


def test_a_message_with_history_carries_its_position() -> None:
    frame = encode_delivery(Delivery("chat.1", b"hi", stream=0, offset=12, epoch="k3j9"))
    assert frame is not None
    assert frame.data == '{"topic":"chat.1","payload":"hi","offset":12,"epoch":"k3j9"}'
    frame = encode_delivery(Delivery("chat.1", b"\xff", stream=0, offset=3, epoch="k3j9"))
    assert frame is not None
    assert frame.data == (
        '{"topic":"chat.1","payload":"/w==","encoding":"base64","offset":3,"epoch":"k3j9"}'
    )


def test_resume_and_gap_frames() -> None:
    assert encode_resumed(["a"], None) == '{"topic":"@resume","payload":["a"],"recovered":true}'
    assert encode_resumed(["a", "b"], "epoch changed") == (
        '{"topic":"@resume","payload":["a","b"],"recovered":false,"reason":"epoch changed"}'
    )
    assert encode_gap(["news.*"], 1, 2) == ('{"topic":"#gap","payload":["news.*"],"from":1,"to":2}')
