"""Outgoing frames, encoded once and shared by every recipient.

The hot path delivers one broker message to many sockets. A ``SharedFrame`` holds the
message text and caches its encoding per transport: the complete RFC 6455 frame (header and
payload, unmasked as a server frame must be, section 5.1) for bare WebSocket, and the
Socket.IO packet per namespace. Each encoding is computed on first use and then written to
every socket as is.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "SharedFrame",
    "encode_close",
    "encode_frame",
]

# RFC 6455 section 5.2: opcodes.
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One final, unmasked, uncompressed frame (RFC 6455 section 5.2)."""
    length = len(payload)
    first = _FIN | opcode
    if length < 126:
        header = bytes((first, length))
    elif length < 1 << 16:
        header = _PACK_16(first, 126, length)
    else:
        header = _PACK_64(first, 127, length)
    return header + payload


def encode_close(code: int, reason: str) -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control payload (section 5.5)."""
    raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(struct.pack("!H", code) + raw, OP_CLOSE)


class SharedFrame:
    """A frame sent to many connections, with its per-transport encodings cached."""

    __slots__ = ("_transport_cache", "data", "framed")

    def __init__(self, data: str | bytes) -> None:
        self.data = data
        #: The WebSocket frame, once ``websocket()`` made it (read directly on the hot path).
        self.framed: bytes | None = None
        self._transport_cache: dict[Any, Any] | None = None

    def websocket(self) -> bytes:
        """The whole WebSocket frame, header included."""
        encoded = self.framed
        if encoded is None:
            data = self.data
            if isinstance(data, str):
                encoded = encode_frame(data.encode("utf-8"), OP_TEXT)
            else:
                encoded = encode_frame(data, OP_BINARY)
            self.framed = encoded
        return encoded

    def cached(self, key: Any) -> Any:
        """A transport's own cached encoding, or ``None``; see ``cache``."""
        cache = self._transport_cache
        return None if cache is None else cache.get(key)

    def cache(self, key: Any, value: Any) -> Any:
        """Keep ``value`` as the encoding for ``key`` (a Socket.IO namespace, say)."""
        if self._transport_cache is None:
            self._transport_cache = {}
        self._transport_cache[key] = value
        return value
