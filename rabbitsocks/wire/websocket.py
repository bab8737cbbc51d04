"""RFC 6455 for the server side, with no I/O: the opening handshake, frames, the close.

``check_handshake`` validates an upgrade request (section 4.2.1) and ``accept`` writes the
101 answer. A ``WebSocketProtocol`` is one connection's protocol state: ``receive(data)``
turns the client's bytes into events (a complete message, a ping, a pong, a close),
``close(code, reason)`` gives the bytes of our close frame, and ``state`` says where the
closing handshake is. Writing data frames needs no state (see ``frames.encode_frame``):
the transport writes pre-encoded fan-out frames straight to the socket.

Theory of operation
-------------------
::

    OPEN --we close--> CLOSING --their close--> CLOSED
      |                                          ^
      +--their close (we answer it)--------------+
      +--protocol error (we close with its code)--> CLOSING

The server closes the TCP connection once the state is ``CLOSED`` (section 7.1.1: the
server closes first), or when the peer does not answer our close in time (the transport's
timer). Protocol errors raise ``WebSocketError`` carrying the close code to send (1002
protocol error, 1007 invalid data, 1009 too big; section 7.4.1); the caller sends that
close and stops reading messages.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from rabbitsocks.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_close,
    encode_frame,
)
from rabbitsocks.wire.http1 import HttpError, RequestHead, header_tokens

__all__ = [
    "CLOSE_INVALID_DATA",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "Close",
    "Message",
    "Ping",
    "Pong",
    "State",
    "WebSocketError",
    "WebSocketProtocol",
    "accept",
    "check_handshake",
    "offered_subprotocols",
    "unmask",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # section 1.3

CLOSE_NO_STATUS = 1005
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

OP_CONTINUATION = 0x0
_UNPACK_16 = struct.Struct("!H").unpack_from
_UNPACK_64 = struct.Struct("!Q").unpack_from
_EMPTY_CLOSE = encode_frame(b"", OP_CLOSE)


# --- the opening handshake -----------------------------------------------------------------


def offered_subprotocols(headers: CIMultiDictProxy[str]) -> list[str]:
    """The subprotocols of every ``Sec-WebSocket-Protocol`` field, in order."""
    return [
        token.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def check_handshake(head: RequestHead) -> str:
    """Validate an opening handshake (section 4.2.1); its ``Sec-WebSocket-Key``.

    Raises ``HttpError``: 400 for a request that is not a valid upgrade, 426 (with the
    version we speak, section 4.4) for a ``Sec-WebSocket-Version`` other than 13.
    """
    if head.method != "GET":
        raise HttpError(405, "a WebSocket handshake is a GET request")
    if head.version < (1, 1):
        raise HttpError(400, "a WebSocket handshake needs HTTP/1.1")
    headers = head.headers
    if "websocket" not in header_tokens(headers, "Upgrade"):
        raise HttpError(400, "expected a WebSocket upgrade request (Upgrade: websocket)")
    if "upgrade" not in header_tokens(headers, "Connection"):
        raise HttpError(400, "expected a WebSocket upgrade request (Connection: Upgrade)")
    if "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        # A body on an upgrade would be read as WebSocket frames (request smuggling).
        raise HttpError(400, "a WebSocket handshake has no body")
    if headers.getall("Sec-WebSocket-Version", ()) != ["13"]:
        raise HttpError(426, "unsupported Sec-WebSocket-Version: this server speaks 13")
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1:
        raise HttpError(400, "expected one Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(keys[0].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    return keys[0]


def accept(key: str, subprotocol: str | None = None) -> bytes:
    """The ``101 Switching Protocols`` answer to a checked handshake (section 4.2.2)."""
    digest = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + digest,
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


# --- frames --------------------------------------------------------------------------------


class WebSocketError(Exception):
    """The peer broke the protocol: close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame: its code (1005 when it sent none) and reason, and ``answer``,
    the close frame to send back (``b""`` when ours was sent first, section 5.5.1)."""

    code: int
    reason: str
    answer: bytes


Event = Message | Ping | Pong | Close


def unmask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (section 5.3): one big-integer
    operation in C rather than a loop over bytes in Python."""
    length = len(data)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # our close frame is sent; waiting for theirs
    CLOSED = "closed"  # both close frames are sent: close the TCP connection


def _valid_close_code(code: int) -> bool:
    # Section 7.4: codes a peer may send; 1005, 1006 and 1015 must never be on the wire.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)


class WebSocketProtocol:
    """One server connection's protocol state (RFC 6455), fed with the client's bytes."""

    __slots__ = ("_buffer", "_fragments", "_fragments_size", "_opcode", "max_size", "state")

    def __init__(self, max_size: int) -> None:
        #: Largest message accepted, in bytes (fragments included); larger closes with 1009.
        self.max_size = max_size
        self.state = State.OPEN
        #: Bytes of an incomplete frame; ``None`` when there are none (most of the time).
        self._buffer: bytearray | None = None
        self._opcode = 0  # of the fragmented message in progress, 0 when none
        # Its payload so far: one buffer, so that a fragment costs its bytes and no more
        # (a list held an entry per fragment, empty ones included).
        self._fragments: bytearray | None = None
        self._fragments_size = 0

    def receive(self, data: bytes) -> list[Event]:
        """The events in what the client sent; raises ``WebSocketError`` on a protocol
        error (the events before it are lost with the connection)."""
        # A partial frame grows in place: joining it to each new piece would copy it whole
        # every time, quadratic in its size for a frame sent in small segments.
        buffer: bytes | bytearray
        if self._buffer is not None:
            buffer = self._buffer
            buffer += data
        else:
            buffer = data
        events: list[Event] = []
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first = buffer[position]
            second = buffer[position + 1]
            opcode = first & 0x0F
            if first & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            start = position + 2
            if length == 126:
                if size - start < 2:
                    break
                (length,) = _UNPACK_16(buffer, start)
                start += 2
                if length < 126:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
            elif length == 127:
                if size - start < 8:
                    break
                (length,) = _UNPACK_64(buffer, start)
                start += 8
                if length >> 63:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "length with its top bit set")
                if length < 1 << 16:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
            fin = first & 0x80
            if opcode & 0x8:
                if not fin or length > 125:
                    raise WebSocketError(
                        CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes"
                    )
            elif self._fragments_size + length > self.max_size:
                # Refused on the header, before buffering a byte of it.
                raise WebSocketError(CLOSE_TOO_BIG, f"message larger than {self.max_size} bytes")
            end = start + 4 + length
            if size < end:
                break
            payload = unmask(buffer[start + 4 : end], buffer[start : start + 4])
            position = end
            event = self._frame(opcode, bool(fin), payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Close):  # nothing after a close frame counts
                    self._buffer = None
                    return events
        if position >= size:
            self._buffer = None
        elif buffer is self._buffer:
            del buffer[:position]
        else:
            self._buffer = bytearray(memoryview(buffer)[position:])
        return events

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
            if fin:
                return self._message(opcode, payload)
            self._opcode = opcode
            self._fragments = bytearray(payload)
            self._fragments_size = len(payload)
            return None
        if opcode == OP_CONTINUATION:
            if not self._opcode or self._fragments is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
            self._fragments += payload
            self._fragments_size += len(payload)
            if not fin:
                return None
            opcode, whole = self._opcode, bytes(self._fragments)
            self._opcode, self._fragments, self._fragments_size = 0, None, 0
            return self._message(opcode, whole)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return self._close(payload)
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    @staticmethod
    def _message(opcode: int, payload: bytes) -> Message:
        if opcode == OP_BINARY:
            return Message(payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise WebSocketError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None

    def _close(self, payload: bytes) -> Close:
        if not payload:
            code, reason = CLOSE_NO_STATUS, ""
        elif len(payload) == 1:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        else:
            (code,) = _UNPACK_16(payload)
            if not _valid_close_code(code):
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
        answer = b""
        if self.state is State.OPEN:
            # Echo the code; a close that had none is answered by one without (1005 must
            # not be sent, section 7.4.1).
            answer = encode_close(code, "") if code != CLOSE_NO_STATUS else _EMPTY_CLOSE
        self.state = State.CLOSED
        return Close(code, reason, answer)

    def close(self, code: int, reason: str) -> bytes:
        """Our close frame (``b""`` if one was sent already): OPEN -> CLOSING."""
        if self.state is not State.OPEN:
            return b""
        self.state = State.CLOSING
        return encode_close(code, reason)
