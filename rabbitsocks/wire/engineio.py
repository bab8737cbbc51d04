"""Engine.IO protocol v4 packets and polling payloads, with no I/O.

A packet is a type digit and its data (https://socket.io/docs/v4/engine-io-protocol/)::

    0 open   1 close   2 ping   3 pong   4 message   5 upgrade   6 noop

Over WebSocket each packet is one message; a binary message is a WebSocket binary message
holding the bytes alone. Over HTTP long-polling a payload holds packets separated by the
record separator ``\\x1e``, binary ones as ``b`` and their base64.

Everything a client sends is checked here; ``EngineIOError`` says what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii

from rabbitsocks.errors import ProtocolError

__all__ = [
    "CLOSE",
    "MESSAGE",
    "NOOP",
    "OPEN",
    "PING",
    "PONG",
    "SEPARATOR",
    "UPGRADE",
    "EngineIOError",
    "decode_packet",
    "decode_payload",
    "encode_payload",
]

OPEN = "0"
CLOSE = "1"
PING = "2"
PONG = "3"
MESSAGE = "4"
UPGRADE = "5"
NOOP = "6"

SEPARATOR = "\x1e"
_TYPES = frozenset("0123456")


class EngineIOError(ProtocolError):
    """A client's Engine.IO packet or payload is malformed."""


Packet = tuple[str, str | bytes]


def decode_packet(data: str | bytes) -> Packet:
    """One packet from a WebSocket message: ``(type, data)``; bytes are a binary message."""
    if isinstance(data, bytes):
        return MESSAGE, data
    if not data or data[0] not in _TYPES:
        raise EngineIOError(f"unknown Engine.IO packet type {data[:1]!r}")
    return data[0], data[1:]


def decode_payload(body: bytes, max_packets: int) -> list[Packet]:
    """The packets of a polling request body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineIOError("the payload is not UTF-8") from None
    if not text:
        raise EngineIOError("empty payload")
    parts = text.split(SEPARATOR)
    if len(parts) > max_packets:
        raise EngineIOError(f"more than {max_packets} packets in one payload")
    packets: list[Packet] = []
    for part in parts:
        if part[:1] == "b":
            try:
                packets.append((MESSAGE, base64.b64decode(part[1:].encode("ascii"), validate=True)))
            except (binascii.Error, UnicodeEncodeError):
                raise EngineIOError("a binary packet is not valid base64") from None
        else:
            packets.append(decode_packet(part))
    return packets


def encode_payload(packets: list[str | bytes]) -> bytes:
    """A polling response: encoded text packets as they are, binary ones in base64."""
    return SEPARATOR.join(
        packet if isinstance(packet, str) else "b" + base64.b64encode(packet).decode("ascii")
        for packet in packets
    ).encode("utf-8")
