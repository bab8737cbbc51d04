"""The spiral/goridge v3 frame codec: bytes in, frames out, no I/O.

Theory of operation. A goridge frame is a header of ``HL`` 32-bit words followed by a
payload (goridge ``pkg/frame/frame.md``)::

    byte 0      version (high nibble, 1) | HL (low nibble, header length in 32-bit words)
    byte 1      flags: codec bits, ERROR, CONTROL (see ``Flag``)
    bytes 2-5   payload length, u32 little-endian
    bytes 6-9   CRC32 (IEEE) of bytes 0-5, u32 little-endian
    bytes 10-11 reserved, zero
    bytes 12..  HL - 3 options, u32 little-endian each (at most 10, 40 bytes)
    then        the payload

RPC over goridge (goridge ``pkg/rpc/codec.go``, RoadRunner's PHP client) uses exactly two
options, ``seq`` and the method-name length, and a payload of the method name followed by
the body encoded with the codec named in the flags. A reply echoes ``seq``, the method
name and the codec flag; an error reply adds ``ERROR`` and carries the error text as its
body. Nothing in the format ties ``seq`` to a connection: two clients sharing one socket
may both send ``seq`` 1, so ``seq`` is echoed and never checked for uniqueness.

``FrameDecoder`` is fed bytes as they arrive and hands back whole frames. A corrupt header
(bad CRC, unknown version, impossible header length) or a payload over the limit raises
``FrameError``: the stream cannot be resynchronised after that, so the caller must close.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import NoReturn

from rabbitsocks.errors import ProtocolError

__all__ = [
    "CODEC_FLAGS",
    "FIXED_HEADER_SIZE",
    "MAX_OPTIONS",
    "VERSION_1",
    "Call",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "decode_call",
    "encode_call",
    "encode_error",
    "encode_frame",
]

VERSION_1 = 1
#: Bytes 0-11: version/HL, flags, length, CRC, reserved.
FIXED_HEADER_SIZE = 12
#: goridge ``OptionsMaxSize`` is 40 bytes: ten u32 options, so HL is at most 13.
MAX_OPTIONS = 10
_MAX_U32 = 0xFFFFFFFF
_FIXED_WORDS = FIXED_HEADER_SIZE // 4


class Flag(enum.IntFlag):
    """Byte 1 of the header; the names and values of goridge ``frame_flags.go``."""

    CONTROL = 0x01
    CODEC_RAW = 0x04
    CODEC_JSON = 0x08
    CODEC_MSGPACK = 0x10
    CODEC_GOB = 0x20
    ERROR = 0x40
    CODEC_PROTO = 0x80


#: The codec bits, in the order goridge's server tests them (protobuf wins).
CODEC_FLAGS = (
    Flag.CODEC_PROTO,
    Flag.CODEC_JSON,
    Flag.CODEC_RAW,
    Flag.CODEC_MSGPACK,
    Flag.CODEC_GOB,
)


class FrameError(ProtocolError):
    """Bytes that are not a goridge frame, or not an RPC call.

    ``seq`` is the call's sequence number when the header was sound enough to read it, so
    that the peer can be told what went wrong before the connection is closed.
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Frame:
    """One goridge frame: flags, u32 options and the payload."""

    flags: Flag
    options: tuple[int, ...]
    payload: bytes

    def __post_init__(self) -> None:
        if len(self.options) > MAX_OPTIONS:
            raise ValueError(f"at most {MAX_OPTIONS} options, got {len(self.options)}")
        if any(not 0 <= option <= _MAX_U32 for option in self.options):
            raise ValueError(f"options must be u32, got {self.options}")
        if len(self.payload) > _MAX_U32:
            raise ValueError("payload longer than a u32 length can express")


@dataclass(frozen=True, slots=True)
class Call:
    """An RPC frame taken apart: options ``(seq, len(method))``, payload ``method + body``.

    ``method`` is decoded as UTF-8 with ``surrogateescape`` so that echoing it back gives
    the peer the very bytes it sent, even when they are not UTF-8.
    """

    seq: int
    method: str
    body: bytes
    flags: Flag

    @property
    def codec(self) -> Flag | None:
        """The codec bit the body is encoded with, or ``None`` when no codec bit is set."""
        for codec in CODEC_FLAGS:
            if self.flags & codec:
                return codec
        return None


def encode_frame(frame: Frame) -> bytes:
    """The bytes of ``frame``, header CRC included."""
    hl = _FIXED_WORDS + len(frame.options)
    head = struct.pack("<BBI", VERSION_1 << 4 | hl, frame.flags, len(frame.payload))
    crc = zlib.crc32(head)
    options = struct.pack(f"<{len(frame.options)}I", *frame.options)
    return b"".join((head, struct.pack("<IH", crc, 0), options, frame.payload))


def encode_call(seq: int, method: str, body: bytes, flags: Flag = Flag.CODEC_PROTO) -> bytes:
    """An RPC request or reply frame: ``seq``, ``method`` echoed, then ``body``."""
    name = method.encode("utf-8", "surrogateescape")
    return encode_frame(Frame(flags, (seq, len(name)), name + body))


def encode_error(
    seq: int, method: str, message: str, codec: Flag | None = Flag.CODEC_PROTO
) -> bytes:
    """An RPC error reply: the codec flag plus ``ERROR``, method name then error text.

    goridge's server ORs ``ERROR`` into the codec flag of the call (``handleError``); the
    PHP client only tests the ``ERROR`` bit and reads the text after the method name.
    """
    flags = Flag.ERROR if codec is None else codec | Flag.ERROR
    return encode_call(seq, method, message.encode("utf-8", "replace"), flags)


def decode_call(frame: Frame) -> Call:
    """Split an RPC frame into seq, method and body; ``FrameError`` if it is not one."""
    if len(frame.options) != 2:
        seq = frame.options[0] if frame.options else None
        raise FrameError(
            f"an RPC frame carries 2 options (seq, method length), got {len(frame.options)}",
            seq=seq,
        )
    seq, name_length = frame.options
    if name_length > len(frame.payload):
        raise FrameError(
            f"method length {name_length} exceeds the payload of {len(frame.payload)} bytes",
            seq=seq,
        )
    method = frame.payload[:name_length].decode("utf-8", "surrogateescape")
    return Call(seq=seq, method=method, body=frame.payload[name_length:], flags=frame.flags)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then take frames with ``next_frame``.

    ``max_payload`` bounds the payload length a header may announce; a larger one is
    refused before any of its payload is buffered.
    """

    def __init__(self, max_payload: int) -> None:
        if not 0 <= max_payload <= _MAX_U32:
            raise ValueError(f"max_payload must be within 0..{_MAX_U32}, got {max_payload}")
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._failed is None:
            self._buffer += data

    def feed_eof(self) -> None:
        """The peer closed; ``FrameError`` if it did so in the middle of a frame."""
        if self._failed is None and self._buffer:
            self._fail(f"connection closed after {len(self._buffer)} bytes of an incomplete frame")

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises ``FrameError`` for a corrupt header or an oversized payload, and keeps
        raising it: after a bad header there is no telling where the next frame starts.
        """
        if self._failed is not None:
            raise self._failed
        buffer = self._buffer
        if len(buffer) < FIXED_HEADER_SIZE:
            return None
        first, flags, length, crc = struct.unpack_from("<BBII", buffer)
        # The CRC comes first: when it fails, nothing else in the header can be trusted.
        if zlib.crc32(memoryview(buffer)[:6]) != crc:
            self._fail("header CRC32 mismatch")
        if first >> 4 != VERSION_1:
            self._fail(f"unsupported frame version {first >> 4}")
        hl = first & 0x0F
        if not _FIXED_WORDS <= hl <= _FIXED_WORDS + MAX_OPTIONS:
            self._fail(f"header length of {hl} words is outside {_FIXED_WORDS}..13")
        header_size = hl * 4
        if len(buffer) < header_size:
            return None
        options = struct.unpack_from(f"<{hl - _FIXED_WORDS}I", buffer, FIXED_HEADER_SIZE)
        if length > self.max_payload:
            self._fail(
                f"payload of {length} bytes exceeds the limit of {self.max_payload} bytes",
                seq=options[0] if options else None,
            )
        end = header_size + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[header_size:end])
        # Deleting from the front of a bytearray is amortised O(1) in CPython.
        del buffer[:end]
        return Frame(Flag(flags), options, payload)

    def _fail(self, message: str, *, seq: int | None = None) -> NoReturn:
        self._failed = FrameError(message, seq=seq)
        self._buffer.clear()
        raise self._failed
