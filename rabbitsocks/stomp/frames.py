"""STOMP frames: an incremental parser and a serializer for STOMP 1.0, 1.1 and 1.2, no I/O.

Theory of operation
-------------------
A STOMP connection is a stream of frames (STOMP 1.2, "Augmented BNF")::

    frame   = command EOL *( header EOL ) EOL *OCTET NULL *( EOL )
    EOL     = [CR] LF
    header  = header-name ":" header-value

The parser takes the bytes of each WebSocket message as they come and returns the frames
completed so far: one message may carry several frames, or part of one (RabbitMQ's
Web-STOMP reads the same way, so a client that splits large frames works with both).
EOLs between frames are heart-beats (section "Heart-beating") and are skipped.

The body ends at the first NUL, unless a ``content-length`` header gives its size in
octets, in which case it may contain NULs and the octet after it must be a NUL.

Header values are escaped in 1.1 (``\\n``, ``\\c``, ``\\\\``) and 1.2 (also ``\\r``); an
undefined escape is a fatal error in 1.2 (section "Value Encoding"). CONNECT and CONNECTED
frames are never escaped, for compatibility with 1.0, and neither is anything in 1.0,
where values are taken as they are (less leading spaces, as RabbitMQ does). When a header
is repeated, the first occurrence wins (1.2, "Repeated Header Entries").

Every limit is checked before the bytes are buffered or decoded: a frame larger than
``max_frame_size`` octets (headers and body), more than ``max_headers`` headers, a
``content-length`` that is not a decimal number, bytes that are not UTF-8 in the command
or the headers. Each raises ``StompError``, after which the stream cannot be trusted: the
session answers with an ERROR frame and closes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from rabbitsocks.errors import ProtocolError

__all__ = [
    "CLIENT_COMMANDS",
    "VERSIONS",
    "Frame",
    "FrameParser",
    "StompError",
    "encode_frame",
    "escape",
    "negotiate_heartbeat",
    "negotiate_version",
    "unescape",
]

#: The protocol versions spoken, oldest first.
VERSIONS = ("1.0", "1.1", "1.2")

#: Frames a client may send (STOMP 1.2, "Client Frames"; STOMP is CONNECT's 1.1 alias).
CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)


class StompError(ProtocolError):
    """A STOMP client sent something we cannot accept: the session answers with an ERROR
    frame whose ``message`` header is ``message`` and whose body is ``detail``, then closes.

    ``receipt`` is the ``receipt`` header of the offending frame, echoed as ``receipt-id``.
    """

    def __init__(self, message: str, detail: str = "", *, receipt: str | None = None) -> None:
        self.message = message
        self.detail = detail
        self.receipt = receipt
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(slots=True)
class Frame:
    """One STOMP frame: its command, its headers (first occurrence of each), its body."""

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


# --- header escaping ----------------------------------------------------------------------

_ESCAPES_11 = {"n": "\n", "c": ":", "\\": "\\"}
_ESCAPES_12 = {**_ESCAPES_11, "r": "\r"}
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)


def unescape(text: str, version: str) -> str:
    """Undo the header escaping of ``version`` ("1.1" or "1.2"; "1.0" has none)."""
    if "\\" not in text or version == "1.0":
        return text
    table = _ESCAPES_12 if version == "1.2" else _ESCAPES_11

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        try:
            return table[char]
        except KeyError:
            shown = f"\\{char}" if char else "a '\\' at the end"
            raise StompError(
                "Invalid header", f"undefined escape sequence {shown} (STOMP {version})"
            ) from None

    return _ESCAPE_SEQUENCE.sub(replace, text)


_ESCAPE_11 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_ESCAPE_12 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})
# STOMP 1.0 has no escaping: an EOL in a value would end the header, so it becomes a space.
_FLATTEN_10 = str.maketrans({"\n": " ", "\r": " "})


def escape(text: str, version: str) -> str:
    """Escape a header name or value for ``version``."""
    if version == "1.2":
        return text.translate(_ESCAPE_12)
    if version == "1.1":
        return text.translate(_ESCAPE_11)
    return text.translate(_FLATTEN_10)


# --- serializing --------------------------------------------------------------------------


def encode_frame(
    command: str,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    *,
    version: str = "1.2",
    content_length: bool | None = None,
) -> bytes:
    """A whole frame, NUL included. ``content-length`` is added when the body is not empty
    (or always, with ``content_length=True``) so that a body may carry NULs."""
    escaped = command != "CONNECTED"  # CONNECT and CONNECTED are never escaped
    lines = [command]
    if escaped and version != "1.0":
        lines.extend(f"{escape(name, version)}:{escape(value, version)}" for name, value in headers)
    else:
        lines.extend(
            f"{name.translate(_FLATTEN_10)}:{value.translate(_FLATTEN_10)}"
            for name, value in headers
        )
    if content_length or (content_length is None and body):
        lines.append(f"content-length:{len(body)}")
    return "\n".join(lines).encode("utf-8") + b"\n\n" + body + b"\x00"


# --- parsing ------------------------------------------------------------------------------

_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_EOL_BYTES = b"\r\n"


class FrameParser:
    """Bytes in, frames out. ``version`` is set by the session once CONNECTED is sent: it
    decides how header values are unescaped.

    An incomplete frame is kept in a buffer that grows in place, its head is parsed once,
    and its body is searched for the NUL only where it was not searched before: a frame
    sent in many small messages costs linear time (joining and rescanning it on each
    message made that quadratic: minutes of CPU for a 1 MiB frame sent a byte at a time).
    """

    __slots__ = (
        "_body_scanned",
        "_buffer",
        "_head",
        "_scanned",
        "max_frame_size",
        "max_headers",
        "version",
    )

    def __init__(self, *, max_frame_size: int, max_headers: int) -> None:
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.version = "1.0"
        #: Bytes of an incomplete frame, from its first octet, kept until the rest arrives.
        self._buffer: bytearray | None = None
        #: How far into the buffer no end of the headers was found (a trickle of small
        #: messages is not scanned again from the start each time).
        self._scanned = 0
        #: The incomplete frame's parsed head: command, headers, where its body starts
        #: (from the frame's start) and its content-length, if any.
        self._head: tuple[str, dict[str, str], int, int | None] | None = None
        #: How far into the incomplete body no NUL was found.
        self._body_scanned = 0

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete frame."""
        return len(self._buffer) if self._buffer is not None else 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``; raises ``StompError`` on a malformed frame."""
        buffer: bytes | bytearray
        if self._buffer is not None:
            buffer = self._buffer
            buffer += data
        else:
            buffer = data
        frames: list[Frame] = []
        pos = 0
        end = len(buffer)
        while True:
            # EOLs between frames are heart-beats.
            while pos < end and buffer[pos] in _EOL_BYTES:
                pos += 1
            if pos >= end:
                self._buffer = None
                return frames
            frame, consumed = self._parse_one(buffer, pos)
            if frame is None:
                if buffer is not self._buffer:
                    self._buffer = bytearray(memoryview(buffer)[pos:])
                elif pos:
                    del buffer[:pos]
                return frames
            frames.append(frame)
            pos = consumed

    def _parse_one(self, data: bytes | bytearray, start: int) -> tuple[Frame | None, int]:
        """The frame starting at ``start`` and the offset after it, or ``(None, start)`` when
        it is not complete yet."""
        limit = self.max_frame_size
        head = self._head
        if head is None:
            head = self._parse_head(data, start)
            if head is None:
                return None, start
            self._head = head
            self._body_scanned = 0
        command, headers, body_offset, length = head
        body_start = start + body_offset
        if length is not None:
            body_end = body_start + length
            if len(data) <= body_end:
                return None, start
            if data[body_end] != 0:
                raise StompError(
                    "Malformed frame", f"no NUL after the {length} octets of content-length"
                )
        else:
            body_end = data.find(b"\x00", body_start + self._body_scanned)
            if body_end < 0:
                if len(data) - start > limit:
                    raise StompError("Frame too large", f"the frame exceeds {limit} octets")
                self._body_scanned = len(data) - body_start
                return None, start
            if body_end - start > limit:
                raise StompError("Frame too large", f"the frame exceeds {limit} octets")
        self._head = None
        self._scanned = 0
        return Frame(command, headers, bytes(data[body_start:body_end])), body_end + 1

    def _parse_head(
        self, data: bytes | bytearray, start: int
    ) -> tuple[str, dict[str, str], int, int | None] | None:
        """The head of the frame at ``start`` (``None`` while incomplete), checked."""
        limit = self.max_frame_size
        match = _HEADERS_END.search(data, max(start, start + self._scanned - 3))
        if match is None:
            if len(data) - start > limit:
                raise StompError("Frame too large", f"the headers exceed {limit} octets")
            self._scanned = len(data) - start
            return None
        head_end = match.start()
        body_start = match.end()
        if body_start - start > limit:
            raise StompError("Frame too large", f"the headers exceed {limit} octets")
        try:
            head = data[start:head_end].decode("utf-8")
        except UnicodeDecodeError:
            raise StompError("Malformed frame", "the command and headers must be UTF-8") from None
        lines = head.split("\n")
        command = lines[0].removesuffix("\r")
        if len(lines) - 1 > self.max_headers:
            raise StompError(
                "Too many headers",
                f"a frame may have at most {self.max_headers} headers, this one has "
                f"{len(lines) - 1}",
            )
        headers = self._headers(command, lines)
        length: int | None = None
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.isdigit() or not length_text.isascii():
                raise StompError(
                    "Invalid header", f"content-length must be a number, got {length_text!r}"
                )
            length = int(length_text)
            if body_start + length - start > limit:
                raise StompError("Frame too large", f"the frame exceeds {limit} octets")
        return command, headers, body_start - start, length

    def _headers(self, command: str, lines: list[str]) -> dict[str, str]:
        version = self.version
        # CONNECT (and its alias STOMP) is never escaped; 1.0 never is.
        raw = version == "1.0" or command in ("CONNECT", "STOMP")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            line = line.removesuffix("\r")
            name, colon, value = line.partition(":")
            if not colon or not name:
                shown = line if len(line) <= 40 else line[:37] + "..."
                raise StompError("Malformed frame", f"expected 'name:value', got {shown!r}")
            if raw:
                if version == "1.0":
                    value = value.lstrip(" ")
            else:
                name = unescape(name, version)
                value = unescape(value, version)
            headers.setdefault(name, value)
        return headers


# --- negotiation ----------------------------------------------------------------------------


def negotiate_version(accept_version: str | None) -> str:
    """The highest version both sides speak (STOMP 1.2, "Protocol Negotiation"): a
    CONNECT without ``accept-version`` is 1.0."""
    if accept_version is None:
        return "1.0"
    offered = {v.strip() for v in accept_version.split(",")}
    for version in reversed(VERSIONS):
        if version in offered:
            return version
    raise StompError(
        "Version mismatch",
        f"supported protocol versions are {','.join(VERSIONS)}; "
        f"the client accepts {accept_version!r}",
    )


def negotiate_heartbeat(header: str | None, can_send: int, want_receive: int) -> tuple[int, int]:
    """``(send_every, expect_every)`` in milliseconds, 0 meaning never, from the client's
    ``heart-beat: cx,cy`` and ours ``can_send, want_receive`` (STOMP 1.2, "Heart-beating"):
    we send every ``max(can_send, cy)`` unless either is 0, and expect something from the
    client every ``max(cx, want_receive)`` unless either is 0."""
    if header is None:
        return 0, 0
    parts = header.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and p.strip().isascii() for p in parts):
        raise StompError("Invalid header", f"heart-beat must be 'cx,cy' in ms, got {header!r}")
    cx, cy = (int(p) for p in parts)
    send = 0 if can_send == 0 or cy == 0 else max(can_send, cy)
    expect = 0 if want_receive == 0 or cx == 0 else max(cx, want_receive)
    return send, expect
