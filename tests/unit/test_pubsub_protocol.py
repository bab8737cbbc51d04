"""The RoadRunner command parser and frame encoders (rabbitsocks.pubsub.protocol)."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.errors import ProtocolError
from rabbitsocks.pubsub.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    Command,
    encode_error,
    encode_join_failed,
    encode_joined,
    encode_leave_failed,
    encode_left,
    encode_message,
    parse_command,
)

# --- parse_command: valid commands ------------------------------------------------------------


def test_parse_roadrunner_join() -> None:
    frame = '{"command":"join","broker":"amqp","topics":["foo","foo2"],"payload":""}'
    assert parse_command(frame) == Command("join", ("foo", "foo2"), "amqp")


def test_parse_leave_without_optional_keys() -> None:
    assert parse_command('{"command":"leave","topics":["a.*"]}') == Command("leave", ("a.*",))


def test_parse_bytes_as_utf8_text() -> None:
    frame = '{"command":"join","topics":["caf\u00e9"]}'.encode()
    assert parse_command(frame) == Command("join", ("caf\u00e9",), None)


def test_topics_deduplicated_in_order() -> None:
    command = parse_command('{"command":"join","topics":["b","a","b","c","a"]}')
    assert command.topics == ("b", "a", "c")


def test_topics_are_not_validated_here() -> None:
    # Invalid topics are the hub's business (it answers #join per topic), not a protocol error.
    frame = '{"command":"join","topics":["","a*",".","\\u0000","' + "x" * 300 + '"]}'
    assert len(parse_command(frame).topics) == 5


@pytest.mark.parametrize(
    "frame",
    [
        '{"command":"join","topics":[],"payload":null}',
        '{"command":"join","topics":[],"broker":null}',
        '{"command":"join","topics":[],"extra":{"deep":[1,2,{"x":null}]},"v":2}',
        ' \n{"topics":[],"command":"join"}\t',
        '{"command":"leave","topics":[],"payload":"aGVsbG8="}',
    ],
)
def test_optional_and_unknown_keys(frame: str) -> None:
    assert parse_command(frame).topics == ()


def test_duplicate_keys_last_wins() -> None:
    command = parse_command('{"command":"leave","command":"join","topics":["a"]}')
    assert command.command == "join"


def test_command_is_frozen_with_slots() -> None:
    command = parse_command('{"command":"join","topics":["a"]}')
    with pytest.raises(AttributeError):
        command.topics = ()  # type: ignore[misc]
    assert not hasattr(command, "__dict__")


# --- parse_command: every error ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"command":"join","topics":["\xff"]}', "frame is not valid UTF-8"),
        (b"\xc3", "frame is not valid UTF-8"),
        (b'{"command":"join","topics":["\xed\xa0\x80"]}', "frame is not valid UTF-8"),
        ('{"command":"join","topics":["\ud800"]}', "frame is not valid UTF-8"),
        ("", "frame is not valid JSON"),
        (b"", "frame is not valid JSON"),
        ("{", "frame is not valid JSON"),
        ("{'command':'join'}", "frame is not valid JSON"),
        ('{"command":"join","topics":[]} x', "frame is not valid JSON"),
        ('{"command":"join","topics":[NaN]}', "frame is not valid JSON"),
        ('{"command":"join","topics":["\\ud800"]}', "frame is not valid JSON"),
        (b'\xef\xbb\xbf{"command":"join","topics":[]}', "frame is not valid JSON"),
        ("[]", "frame is not a JSON object"),
        ('"join"', "frame is not a JSON object"),
        ("null", "frame is not a JSON object"),
        ("42", "frame is not a JSON object"),
        ('{"topics":[]}', "missing command"),
        ('{"command":null,"topics":[]}', "missing command"),
        ('{"command":1,"topics":[]}', "command is not a string"),
        ('{"command":["join"],"topics":[]}', "command is not a string"),
        ('{"command":"publish","topics":[]}', "unknown command 'publish'"),
        ('{"command":"JOIN","topics":[]}', "unknown command 'JOIN'"),
        ('{"command":"' + "x" * 100 + '","topics":[]}', f"unknown command '{'x' * 40}...'"),
        ('{"command":"join"}', "missing topics"),
        ('{"command":"join","topics":null}', "missing topics"),
        ('{"command":"join","topics":"foo"}', "topics is not a list"),
        ('{"command":"join","topics":{"foo":1}}', "topics is not a list"),
        ('{"command":"join","topics":["a",1]}', "topics must be strings"),
        ('{"command":"join","topics":[null]}', "topics must be strings"),
        ('{"command":"join","topics":[["a"]]}', "topics must be strings"),
        ('{"command":"join","topics":[],"broker":1}', "broker is not a string"),
        ('{"command":"join","topics":[],"broker":["amqp"]}', "broker is not a string"),
        ('{"command":"join","topics":[],"payload":1}', "payload is not a string"),
        ('{"command":"join","topics":[],"payload":{}}', "payload is not a string"),
        (bytearray(b"{}"), "frame is neither text nor bytes"),
        (None, "frame is neither text nor bytes"),
    ],
)
def test_parse_errors(frame: Any, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(frame)
    assert str(info.value) == reason


def test_too_many_topics() -> None:
    frame = orjson.dumps({"command": "join", "topics": ["t"] * 4})
    assert parse_command(frame, max_topics_in_command=4).topics == ("t",)
    with pytest.raises(ProtocolError) as info:
        parse_command(frame, max_topics_in_command=3)
    # Duplicates count: the limit bounds the work of one frame.
    assert str(info.value) == "too many topics in one command (max 3)"


def test_default_topic_limit_is_1000() -> None:
    parse_command(orjson.dumps({"command": "join", "topics": [str(i) for i in range(1000)]}))
    with pytest.raises(ProtocolError, match=r"\(max 1000\)"):
        parse_command(orjson.dumps({"command": "join", "topics": [str(i) for i in range(1001)]}))


def test_default_frame_size_fits_the_default_topic_limit() -> None:
    worst = ['\\"' * 127 + "x"] * 1000  # 255-byte topics made of escapes: 383 bytes in JSON
    frame = orjson.dumps({"command": "join", "topics": worst})
    assert len(frame) <= DEFAULT_MAX_FRAME_SIZE
    assert len(parse_command(frame).topics) == 1


@pytest.mark.parametrize("as_bytes", [True, False])
def test_frame_size_limit_in_utf8_bytes(as_bytes: bool) -> None:
    text = '{"command":"join","topics":["\u00e9\u00e9"]}'  # 34 characters, 36 bytes
    frame: str | bytes = text.encode() if as_bytes else text
    assert parse_command(frame, max_frame_size=36).topics == ("\u00e9\u00e9",)
    with pytest.raises(ProtocolError) as info:
        parse_command(frame, max_frame_size=35)
    assert str(info.value) == "frame is larger than 35 bytes"


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="larger than"):
        parse_command("[" * 100, max_frame_size=99)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
@pytest.mark.parametrize("as_bytes", [True, False])
def test_json_bomb_is_a_protocol_error(opener: str, as_bytes: bool) -> None:
    bomb = opener * 100_000
    with pytest.raises(ProtocolError) as info:
        parse_command(bomb.encode() if as_bytes else bomb)
    assert str(info.value) == "frame is not valid JSON"


def test_deep_but_allowed_nesting_is_never_walked() -> None:
    # 1,000 levels is within orjson's limit and deeper than Python's recursion limit for
    # repr and ==: the parser must not touch it, neither in an ignored key nor in topics.
    deep = "[" * 1000 + "]" * 1000
    assert parse_command('{"command":"join","topics":["a"],"x":' + deep + "}").topics == ("a",)
    with pytest.raises(ProtocolError) as info:
        parse_command('{"command":"join","topics":[' + deep + "]}")
    assert str(info.value) == "topics must be strings"
    for key in ("command", "broker", "payload"):
        frame = '{"command":"join","topics":[],"' + key + '":' + deep + "}"
        with pytest.raises(ProtocolError):
            parse_command(frame)


# --- encoders: exact frames -------------------------------------------------------------------


def test_encode_joined_and_left() -> None:
    assert encode_joined(["foo", "foo2"]) == '{"topic":"@join","payload":["foo","foo2"]}'
    assert encode_joined(()) == '{"topic":"@join","payload":[]}'
    assert encode_left(("a.*",)) == '{"topic":"@leave","payload":["a.*"]}'
    assert encode_left(t for t in ["x", "y"]) == '{"topic":"@leave","payload":["x","y"]}'


def test_encode_failures() -> None:
    assert (
        encode_join_failed(["a*"], "'*' and '#' must be whole words")
        == '{"topic":"#join","payload":["a*"],"reason":"\'*\' and \'#\' must be whole words"}'
    )
    assert encode_join_failed(["a"], None) == '{"topic":"#join","payload":["a"]}'
    assert (
        encode_leave_failed(["b"], "not joined")
        == '{"topic":"#leave","payload":["b"],"reason":"not joined"}'
    )
    assert encode_leave_failed(["b"], None) == '{"topic":"#leave","payload":["b"]}'


def test_encode_error() -> None:
    assert (
        encode_error("frame is not valid JSON")
        == '{"topic":"#error","payload":"frame is not valid JSON"}'
    )


def test_encoders_refuse_a_bare_string() -> None:
    with pytest.raises(TypeError):
        encode_joined("foo")


def test_encoders_escape_what_json_requires_and_nothing_else() -> None:
    assert encode_joined(['q"b\\s', "caf\u00e9\u2603", "\x00\n"]) == (
        '{"topic":"@join","payload":["q\\"b\\\\s","caf\u00e9\u2603","\\u0000\\n"]}'
    )


def test_encode_message_text() -> None:
    assert (
        encode_message("sensors.1.temp", b'{"t":21.5}')
        == '{"topic":"sensors.1.temp","payload":"{\\"t\\":21.5}"}'
    )
    assert encode_message("a", b"") == '{"topic":"a","payload":""}'
    assert (
        encode_message("caf\u00e9", "\u00e9\U0001f407".encode())
        == '{"topic":"caf\u00e9","payload":"\u00e9\U0001f407"}'
    )


def test_encode_message_binary_as_base64() -> None:
    body = bytes(range(256))
    frame = encode_message("raw", body)
    expected_b64 = base64.b64encode(body).decode()
    assert frame == '{"topic":"raw","payload":"' + expected_b64 + '","encoding":"base64"}'


@pytest.mark.parametrize(
    "body",
    [b"\xff", b"\xc3", b"ok\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"],
    ids=["ff", "truncated", "stray-continuation", "surrogate", "above-10ffff", "overlong"],
)
def test_encode_message_invalid_utf8_goes_base64(body: bytes) -> None:
    decoded = json.loads(encode_message("k", body))
    assert decoded["encoding"] == "base64"
    assert base64.b64decode(decoded["payload"]) == body


@given(st.text(), st.binary())
def test_encode_message_round_trips(key: str, body: bytes) -> None:
    decoded = orjson.loads(encode_message(key, body))
    assert decoded["topic"] == key
    if decoded.get("encoding") == "base64":
        assert set(decoded) == {"topic", "payload", "encoding"}
        assert base64.b64decode(decoded["payload"], validate=True) == body
        with pytest.raises(UnicodeDecodeError):
            body.decode()
    else:
        assert set(decoded) == {"topic", "payload"}
        assert decoded["payload"].encode() == body


@given(st.text())
def test_encode_message_text_round_trips(text: str) -> None:
    assert orjson.loads(encode_message("k", text.encode())) == {"topic": "k", "payload": text}


# --- parse_command: properties -----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson can write
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def parses_or_refuses(frame: Any) -> Command | None:
    reason = None
    try:
        return parse_command(frame, max_topics_in_command=10, max_frame_size=4096)
    except ProtocolError as exc:
        reason = str(exc)
    assert reason  # always a reason
    return None


@given(st.text() | st.binary())
@settings(max_examples=1000)
def test_arbitrary_frames_only_raise_protocol_error(frame: str | bytes) -> None:
    parses_or_refuses(frame)


@given(json_values)
@settings(max_examples=500)
def test_arbitrary_json_only_raises_protocol_error(value: Any) -> None:
    parses_or_refuses(orjson.dumps(value))


command_objects = st.fixed_dictionaries(
    {"command": st.sampled_from(["join", "leave"]) | json_values},
    optional={
        "topics": st.lists(st.text(), max_size=12) | json_values,
        "broker": st.text() | json_values,
        "payload": st.text() | json_values,
        "other": json_values,
    },
)


@given(command_objects)
@settings(max_examples=500)
def test_near_commands_only_raise_protocol_error(value: dict[str, Any]) -> None:
    parses_or_refuses(orjson.dumps(value))


@given(
    st.sampled_from(["join", "leave"]),
    st.lists(st.text(), max_size=10),
    st.none() | st.text(),
    st.none() | st.text(),
    st.dictionaries(
        st.text().filter(lambda k: k not in {"command", "topics", "broker", "payload"}),
        json_values,
        max_size=3,
    ),
    st.booleans(),
    st.booleans(),
)
def test_valid_commands_round_trip(
    name: str,
    topics: list[str],
    broker: str | None,
    payload: str | None,
    extra: dict[str, Any],
    ascii_only: bool,
    as_bytes: bool,
) -> None:
    obj: dict[str, Any] = {"command": name, "topics": topics, **extra}
    if broker is not None:
        obj["broker"] = broker
    if payload is not None:
        obj["payload"] = payload
    # The stdlib with ensure_ascii exercises \\uXXXX escapes, surrogate pairs included.
    text = json.dumps(obj, ensure_ascii=ascii_only)
    frame: str | bytes = text.encode() if as_bytes else text
    command = parses_or_refuses(frame)
    assert command == Command(name, tuple(dict.fromkeys(topics)), broker)  # type: ignore[arg-type]
