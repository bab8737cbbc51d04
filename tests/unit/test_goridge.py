"""The goridge frame codec, against frames built here from the format description.

The description (spiral/goridge ``pkg/frame/frame.md``): byte 0 is version << 4 | header
length in 32-bit words; byte 1 the flags; bytes 2-5 the payload length (u32 LE); bytes 6-9
the CRC32 (IEEE) of bytes 0-5 (u32 LE); bytes 10-11 zero; then the options (u32 LE each);
then the payload. RPC: options (seq, method length), payload method + body.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from rabbitsocks.errors import ProtocolError
from rabbitsocks.rpc.goridge import (
    Flag,
    Frame,
    FrameDecoder,
    FrameError,
    decode_call,
    encode_call,
    encode_error,
    encode_frame,
)
from rabbitsocks.rpc.pb import Message, Request, Response

VECTORS = Path(__file__).parent.parent / "vectors" / "goridge-broadcast-publish.txt"


def build_frame(
    flags: int,
    options: tuple[int, ...],
    payload: bytes,
    *,
    version: int = 1,
    words: int | None = None,
    length: int | None = None,
    crc: int | None = None,
) -> bytes:
    """A frame laid out byte by byte from the description, with knobs to break it."""
    hl = 3 + len(options) if words is None else words
    head = bytes([version << 4 | hl, flags]) + struct.pack(
        "<I", len(payload) if length is None else length
    )
    checksum = zlib.crc32(head) if crc is None else crc
    return (
        head
        + struct.pack("<I", checksum)
        + b"\x00\x00"
        + b"".join(struct.pack("<I", option) for option in options)
        + payload
    )


def load_vectors() -> tuple[bytes, bytes]:
    lines = [
        line.strip()
        for line in VECTORS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    request_hex, reply_hex = lines[:2]
    return bytes.fromhex(request_hex), bytes.fromhex(reply_hex)


def test_flag_values_are_goridges() -> None:
    assert int(Flag.CONTROL) == 0x01
    assert int(Flag.CODEC_RAW) == 0x04
    assert int(Flag.CODEC_JSON) == 0x08
    assert int(Flag.CODEC_MSGPACK) == 0x10
    assert int(Flag.CODEC_GOB) == 0x20
    assert int(Flag.ERROR) == 0x40
    assert int(Flag.CODEC_PROTO) == 0x80


def test_encode_call_is_byte_exact() -> None:
    body = b"\x08\x01"
    expected = build_frame(0x80, (7, 17), b"broadcast.Publish" + body)
    assert expected[0] == 0x15  # version 1, five words: three fixed plus two options
    assert encode_call(7, "broadcast.Publish", body) == expected


def test_encode_frame_without_options_has_three_words() -> None:
    frame = encode_frame(Frame(Flag.CODEC_RAW, (), b"abc"))
    assert frame == build_frame(0x04, (), b"abc")
    assert frame[0] == 0x13
    assert len(frame) == 12 + 3


def test_encode_error_sets_error_flag_and_echoes_method() -> None:
    frame = encode_error(3, "broadcast.Publish", "invalid request: no topics")
    payload = b"broadcast.Publish" + b"invalid request: no topics"
    assert frame == build_frame(0x80 | 0x40, (3, 17), payload)


def test_captured_php_request_decodes() -> None:
    request_bytes, _ = load_vectors()
    decoder = FrameDecoder(max_payload=1 << 20)
    decoder.feed(request_bytes)
    frame = decoder.next_frame()
    assert frame is not None
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    assert frame.flags == Flag.CODEC_PROTO
    call = decode_call(frame)
    assert call.seq == 1
    assert call.method == "broadcast.Publish"
    assert call.codec is Flag.CODEC_PROTO
    request = Request.FromString(call.body)
    assert request == Request(messages=[Message(topics=["chat.room1"], payload=b'hello {"x":1}')])
    assert request.messages[0].command == ""


def test_our_reply_to_the_captured_request_is_byte_exact() -> None:
    request_bytes, reply_bytes = load_vectors()
    decoder = FrameDecoder(max_payload=1 << 20)
    decoder.feed(request_bytes)
    frame = decoder.next_frame()
    assert frame is not None
    call = decode_call(frame)
    assert call.codec is not None
    reply = encode_call(call.seq, call.method, Response(ok=True).SerializeToString(), call.codec)
    assert reply == reply_bytes


def test_captured_request_reencodes_identically() -> None:
    request_bytes, _ = load_vectors()
    decoder = FrameDecoder(max_payload=1 << 20)
    decoder.feed(request_bytes)
    frame = decoder.next_frame()
    assert frame is not None
    assert encode_frame(frame) == request_bytes


def test_decoder_fed_one_byte_at_a_time() -> None:
    wire = encode_call(1, "m.M", b"body")
    decoder = FrameDecoder(max_payload=100)
    for byte in wire[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.feed(wire[-1:])
    frame = decoder.next_frame()
    assert frame == Frame(Flag.CODEC_PROTO, (1, 3), b"m.Mbody")


def test_decoder_splits_several_frames_in_one_chunk() -> None:
    wire = encode_call(1, "a.A", b"1") + encode_call(1, "b.B", b"22") + encode_call(2, "c.C", b"")
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(wire[:-2])
    calls = []
    while (frame := decoder.next_frame()) is not None:
        calls.append(decode_call(frame))
    assert [(c.seq, c.method, c.body) for c in calls] == [(1, "a.A", b"1"), (1, "b.B", b"22")]
    decoder.feed(wire[-2:])
    frame = decoder.next_frame()
    assert frame is not None
    assert decode_call(frame).method == "c.C"


def test_empty_body_and_empty_method() -> None:
    decoder = FrameDecoder(max_payload=0)
    decoder.feed(encode_call(9, "", b""))
    frame = decoder.next_frame()
    assert frame is not None
    call = decode_call(frame)
    assert (call.seq, call.method, call.body) == (9, "", b"")


def test_bad_crc_is_fatal_and_stays_fatal() -> None:
    wire = bytearray(encode_call(1, "a.A", b"x"))
    wire[6] ^= 0xFF
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(bytes(wire))
    with pytest.raises(FrameError, match="CRC") as info:
        decoder.next_frame()
    assert info.value.seq is None
    assert isinstance(info.value, ProtocolError)
    decoder.feed(encode_call(2, "a.A", b"x"))
    with pytest.raises(FrameError, match="CRC"):
        decoder.next_frame()


def test_a_changed_length_breaks_the_crc() -> None:
    wire = bytearray(encode_call(1, "a.A", b"x"))
    wire[2] += 1  # the CRC covers bytes 0-5, the length included
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(bytes(wire))
    with pytest.raises(FrameError, match="CRC"):
        decoder.next_frame()


def test_unsupported_version() -> None:
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(build_frame(0x80, (1, 0), b"", version=2))
    with pytest.raises(FrameError, match="version 2"):
        decoder.next_frame()


@pytest.mark.parametrize("words", [0, 2, 14, 15])
def test_impossible_header_length(words: int) -> None:
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(build_frame(0x80, (), b"", words=words) + bytes(64))
    with pytest.raises(FrameError, match="header length"):
        decoder.next_frame()


def test_ten_options_are_the_most() -> None:
    options = tuple(range(10))
    wire = encode_frame(Frame(Flag.CODEC_RAW, options, b"p"))
    assert wire[0] == 0x1D
    decoder = FrameDecoder(max_payload=1)
    decoder.feed(wire)
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.options == options
    with pytest.raises(ValueError, match="at most 10"):
        Frame(Flag.CODEC_RAW, tuple(range(11)), b"")


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_payload=1000)
    decoder.feed(build_frame(0x80, (42, 17), b"", length=0xFFFFFFFF))
    with pytest.raises(FrameError, match="exceeds the limit of 1000") as info:
        decoder.next_frame()
    assert info.value.seq == 42


def test_length_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_payload=10)
    decoder.feed(encode_call(1, "m", bytes(9)))
    assert decoder.next_frame() is not None


def test_eof_mid_frame() -> None:
    wire = encode_call(1, "a.A", b"xyz")
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(wire[:5])  # inside the fixed header
    assert decoder.next_frame() is None
    with pytest.raises(FrameError, match="incomplete frame"):
        decoder.feed_eof()


def test_eof_on_a_frame_boundary_is_clean() -> None:
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(encode_call(1, "a.A", b"xyz"))
    assert decoder.next_frame() is not None
    decoder.feed_eof()


def test_reserved_bytes_are_ignored() -> None:
    wire = bytearray(encode_call(1, "a.A", b""))
    wire[10:12] = b"\xff\xff"  # not covered by the CRC; reserved for future use
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(bytes(wire))
    assert decoder.next_frame() is not None


@pytest.mark.parametrize("options", [(), (5,), (5, 1, 2)])
def test_call_needs_exactly_two_options(options: tuple[int, ...]) -> None:
    with pytest.raises(FrameError, match="2 options") as info:
        decode_call(Frame(Flag.CODEC_PROTO, options, b"abc"))
    assert info.value.seq == (options[0] if options else None)


def test_method_length_past_the_payload() -> None:
    with pytest.raises(FrameError, match="method length 4") as info:
        decode_call(Frame(Flag.CODEC_PROTO, (8, 4), b"abc"))
    assert info.value.seq == 8


def test_non_utf8_method_is_echoed_byte_for_byte() -> None:
    name = b"bad\xffname"
    call = decode_call(Frame(Flag.CODEC_PROTO, (1, len(name)), name + b"body"))
    assert call.body == b"body"
    reply = encode_call(call.seq, call.method, b"")
    assert reply == build_frame(0x80, (1, len(name)), name)


def test_unknown_flag_bits_are_kept() -> None:
    decoder = FrameDecoder(max_payload=100)
    decoder.feed(build_frame(0x02 | 0x80, (1, 0), b""))
    frame = decoder.next_frame()
    assert frame is not None
    assert int(frame.flags) == 0x82
    assert decode_call(frame).codec is Flag.CODEC_PROTO


def test_codec_precedence_and_absence() -> None:
    both = decode_call(Frame(Flag.CODEC_JSON | Flag.CODEC_PROTO, (1, 0), b""))
    assert both.codec is Flag.CODEC_PROTO
    none = decode_call(Frame(Flag.CONTROL, (1, 0), b""))
    assert none.codec is None


@pytest.mark.parametrize("option", [-1, 1 << 32])
def test_options_must_be_u32(option: int) -> None:
    with pytest.raises(ValueError, match="u32"):
        Frame(Flag.CODEC_PROTO, (option,), b"")
