"""The STOMP codec (rabbitsocks.stomp.frames): parsing, escaping, limits, negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbitsocks.errors import ProtocolError
from rabbitsocks.stomp.frames import (
    Frame,
    FrameParser,
    StompError,
    encode_frame,
    escape,
    negotiate_heartbeat,
    negotiate_version,
    unescape,
)


def parser(version: str = "1.2", max_frame_size: int = 4096, max_headers: int = 10) -> FrameParser:
    p = FrameParser(max_frame_size=max_frame_size, max_headers=max_headers)
    p.version = version
    return p


# --- parsing ------------------------------------------------------------------------------


def test_one_frame() -> None:
    frames = parser().feed(b"SEND\ndestination:/topic/a\n\nhello\x00")
    assert frames == [Frame("SEND", {"destination": "/topic/a"}, b"hello")]


def test_crlf_eols_and_heart_beats_between_frames() -> None:
    data = b"\n\r\nSEND\r\ndestination:/queue/q\r\n\r\nbody\x00\n\n\r\nDISCONNECT\n\n\x00\n"
    assert parser().feed(data) == [
        Frame("SEND", {"destination": "/queue/q"}, b"body"),
        Frame("DISCONNECT", {}, b""),
    ]


def test_heart_beats_alone_are_no_frames() -> None:
    p = parser()
    assert p.feed(b"\n") == []
    assert p.feed(b"\r\n\n") == []
    assert p.buffered == 0


def test_content_length_body_may_hold_nul() -> None:
    body = b"a\x00b\x00\x00c"
    data = b"SEND\ndestination:/topic/a\ncontent-length:6\n\n" + body + b"\x00"
    assert parser().feed(data)[0].body == body


def test_content_length_zero() -> None:
    assert parser().feed(b"SEND\ncontent-length:0\n\n\x00")[0].body == b""


def test_content_length_must_be_followed_by_nul() -> None:
    with pytest.raises(StompError, match="no NUL after the 2 octets"):
        parser().feed(b"SEND\ncontent-length:2\n\nabc\x00")


@pytest.mark.parametrize("value", ["-1", "x", "1.5", " 3", "\u0663"])
def test_content_length_must_be_a_number(value: str) -> None:
    data = f"SEND\ncontent-length:{value}\n\n\x00".encode()
    with pytest.raises(StompError, match="content-length must be a number"):
        parser().feed(data)


def test_frames_split_across_messages_byte_by_byte() -> None:
    data = b"SEND\ndestination:/topic/a\ncontent-length:3\n\nx\x00y\x00MESSAGE\n\nz\x00"
    p = parser()
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += p.feed(data[i : i + 1])
    assert frames == [
        Frame("SEND", {"destination": "/topic/a", "content-length": "3"}, b"x\x00y"),
        Frame("MESSAGE", {}, b"z"),
    ]
    assert p.buffered == 0


def test_several_frames_in_one_message_and_a_partial_one() -> None:
    p = parser()
    assert p.feed(b"BEGIN\ntransaction:t\n\n\x00COMMIT\ntransaction:t\n\n\x00ABO") == [
        Frame("BEGIN", {"transaction": "t"}),
        Frame("COMMIT", {"transaction": "t"}),
    ]
    assert p.buffered == 3
    assert p.feed(b"RT\ntransaction:t\n\n\x00") == [Frame("ABORT", {"transaction": "t"})]


def test_repeated_header_first_wins() -> None:
    frame = parser().feed(b"SEND\nfoo:first\nfoo:second\n\n\x00")[0]
    assert frame.headers == {"foo": "first"}


def test_value_may_contain_colons_in_1_0() -> None:
    frame = parser("1.0").feed(b"SEND\nurl: http://x:80/\n\n\x00")[0]
    assert frame.headers == {"url": "http://x:80/"}  # 1.0: leading spaces trimmed


def test_escapes_1_2() -> None:
    data = b"SEND\na\\cb:line\\nbreak\\r\\\\back\n\n\x00"
    assert parser("1.2").feed(data)[0].headers == {"a:b": "line\nbreak\r\\back"}


def test_escapes_1_1_have_no_cr() -> None:
    with pytest.raises(StompError, match=r"undefined escape sequence \\r \(STOMP 1.1\)"):
        parser("1.1").feed(b"SEND\na:x\\r\n\n\x00")


@pytest.mark.parametrize("raw", [b"a:\\t", b"a:x\\", b"a\\x:1"])
def test_undefined_escape_is_fatal_in_1_2(raw: bytes) -> None:
    with pytest.raises(StompError, match="undefined escape sequence"):
        parser("1.2").feed(b"SEND\n" + raw + b"\n\n\x00")


def test_connect_frames_are_not_unescaped() -> None:
    frame = parser("1.2").feed(b"CONNECT\npasscode:a\\b\n\n\x00")[0]
    assert frame.headers == {"passcode": "a\\b"}


def test_1_0_has_no_escaping() -> None:
    assert parser("1.0").feed(b"SEND\na:x\\ny\n\n\x00")[0].headers == {"a": "x\\ny"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SEND\nno colon here\n\n\x00", "expected 'name:value'"),
        (b"SEND\n:value\n\n\x00", "expected 'name:value'"),
        (b"SEND\na:\xff\n\n\x00", "must be UTF-8"),
        (b"\xc3\x28\n\n\x00", "must be UTF-8"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(StompError, match=match):
        parser().feed(data)


def test_too_many_headers() -> None:
    headers = "".join(f"h{i}:v\n" for i in range(11)).encode()
    with pytest.raises(StompError, match="at most 10 headers, this one has 11"):
        parser(max_headers=10).feed(b"SEND\n" + headers + b"\n\x00")


def test_headers_larger_than_the_limit_without_their_end() -> None:
    p = parser(max_frame_size=100)
    p.feed(b"SEND\n" + b"x" * 50)
    with pytest.raises(StompError, match="the headers exceed 100 octets"):
        p.feed(b"y" * 60)


def test_body_larger_than_the_limit_without_nul() -> None:
    p = parser(max_frame_size=100)
    p.feed(b"SEND\n\n" + b"x" * 90)
    with pytest.raises(StompError, match="the frame exceeds 100 octets"):
        p.feed(b"x" * 20)


def test_content_length_larger_than_the_limit_is_refused_before_the_body() -> None:
    with pytest.raises(StompError, match="the frame exceeds 100 octets"):
        parser(max_frame_size=100).feed(b"SEND\ncontent-length:1000\n\n")


def test_frame_of_exactly_the_limit() -> None:
    head = b"SEND\n\n"
    body = b"x" * (100 - len(head))
    assert parser(max_frame_size=100).feed(head + body + b"\x00")[0].body == body


def test_stomp_error_is_a_protocol_error() -> None:
    error = StompError("Bad", "detail", receipt="r1")
    assert isinstance(error, ProtocolError)
    assert (error.message, error.detail, error.receipt, str(error)) == (
        "Bad",
        "detail",
        "r1",
        "Bad: detail",
    )


# --- serializing ---------------------------------------------------------------------------


def test_encode_adds_content_length_for_bodies() -> None:
    assert encode_frame("MESSAGE", [("a", "b")], b"x\x00y") == (
        b"MESSAGE\na:b\ncontent-length:3\n\nx\x00y\x00"
    )
    assert encode_frame("RECEIPT", [("receipt-id", "1")]) == b"RECEIPT\nreceipt-id:1\n\n\x00"


def test_encode_escapes_per_version() -> None:
    headers = [("k:1", "a\nb\r\\c")]
    assert encode_frame("MESSAGE", headers, version="1.2") == (
        b"MESSAGE\nk\\c1:a\\nb\\r\\\\c\n\n\x00"
    )
    assert encode_frame("MESSAGE", headers, version="1.1") == (
        b"MESSAGE\nk\\c1:a\\nb\r\\\\c\n\n\x00"
    )
    # 1.0 has no escaping: an EOL would end the header, so it is flattened.
    assert encode_frame("MESSAGE", headers, version="1.0") == b"MESSAGE\nk:1:a b \\c\n\n\x00"


def test_connected_is_not_escaped() -> None:
    assert encode_frame("CONNECTED", [("server", "a:b")], version="1.2") == (
        b"CONNECTED\nserver:a:b\n\n\x00"
    )


@settings(max_examples=200)
@given(
    st.sampled_from(["1.1", "1.2"]),
    st.lists(
        st.tuples(
            st.text(min_size=1).filter(lambda t: t != "content-length" and "\r" not in t), st.text()
        ),
        max_size=5,
    ),
    st.binary(max_size=50),
)
def test_round_trip(version: str, headers: list[tuple[str, str]], body: bytes) -> None:
    if version == "1.1":  # 1.1 cannot carry a CR
        headers = [(k, v.replace("\r", "")) for k, v in headers]
    data = encode_frame("MESSAGE", headers, body, version=version, content_length=True)
    p = parser(version, max_frame_size=1 << 20, max_headers=10)
    (frame,) = p.feed(data)
    expected: dict[str, str] = {}
    for name, value in headers:
        expected.setdefault(name, value)
    expected.setdefault("content-length", str(len(body)))
    assert frame == Frame("MESSAGE", expected, body)


@given(st.text(), st.sampled_from(["1.1", "1.2"]))
def test_escape_unescape(text: str, version: str) -> None:
    if version == "1.1":
        text = text.replace("\r", "")
    assert unescape(escape(text, version), version) == text


# --- negotiation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "version"),
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.0,1.1", "1.1"),
        ("1.1, 1.2,1.0", "1.2"),
        ("1.2,2.0", "1.2"),
    ],
)
def test_negotiate_version(header: str | None, version: str) -> None:
    assert negotiate_version(header) == version


def test_no_common_version() -> None:
    with pytest.raises(StompError, match=r"supported protocol versions are 1\.0,1\.1,1\.2"):
        negotiate_version("2.0,3.0")


@pytest.mark.parametrize(
    ("header", "ours", "negotiated"),
    [
        (None, (10000, 10000), (0, 0)),
        ("0,0", (10000, 10000), (0, 0)),
        ("10000,10000", (10000, 10000), (10000, 10000)),
        ("1000,500", (10000, 10000), (10000, 10000)),  # never faster than ours
        ("60000,20000", (10000, 10000), (20000, 60000)),  # slower when the client asks
        ("5000,0", (10000, 10000), (0, 10000)),  # the client wants none from us
        ("5000,5000", (0, 10000), (0, 10000)),  # we send none
        ("5000,5000", (10000, 0), (10000, 0)),  # we check none
    ],
)
def test_negotiate_heartbeat(
    header: str | None, ours: tuple[int, int], negotiated: tuple[int, int]
) -> None:
    assert negotiate_heartbeat(header, *ours) == negotiated


@pytest.mark.parametrize("header", ["", "1", "1,2,3", "a,b", "-1,0", "1.5,2"])
def test_invalid_heartbeat(header: str) -> None:
    with pytest.raises(StompError, match="heart-beat must be 'cx,cy'"):
        negotiate_heartbeat(header, 10000, 10000)
