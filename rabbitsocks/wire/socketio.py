"""Socket.IO protocol v5 packets, with no I/O (https://socket.io/docs/v4/socket-io-protocol/).

A packet travels in an Engine.IO message::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

    0 CONNECT   1 DISCONNECT   2 EVENT   3 ACK   4 CONNECT_ERROR   5 BINARY_EVENT
    6 BINARY_ACK

A binary event's JSON holds ``{"_placeholder": true, "num": i}`` where attachment ``i`` goes;
the attachments follow as binary Engine.IO messages. ``PacketReader`` reassembles them.

Clients' packets are checked strictly: the shape of each type, namespaces, ack ids, JSON
that orjson accepts (so no integer beyond 64 bits and no nesting beyond its limit), the
number of attachments. Every problem is a ``SocketIOError`` saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from rabbitsocks.errors import ProtocolError

__all__ = [
    "ACK",
    "BINARY_ACK",
    "BINARY_EVENT",
    "CONNECT",
    "CONNECT_ERROR",
    "DISCONNECT",
    "EVENT",
    "Packet",
    "PacketReader",
    "SocketIOError",
    "encode_connect",
    "encode_connect_error",
    "encode_disconnect",
    "encode_event",
    "event_frame",
]

CONNECT = 0
DISCONNECT = 1
EVENT = 2
ACK = 3
CONNECT_ERROR = 4
BINARY_EVENT = 5
BINARY_ACK = 6

#: Attachments one binary packet may announce.
MAX_ATTACHMENTS = 10
_MAX_ACK_ID = 2**53  # what a JavaScript client can count to
#: Nesting of a packet's JSON that can be written again (orjson's limit for dumps).
MAX_DEPTH = 255
_loads = orjson.loads
_dumps = orjson.dumps


class SocketIOError(ProtocolError):
    """A client's Socket.IO packet is malformed."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded client packet; ``data`` is the parsed JSON (``None`` when absent), with
    attachments put back in place of their placeholders."""

    type: int
    namespace: str
    data: Any = None
    id: int | None = None


def _namespace_prefix(namespace: str) -> str:
    return "" if namespace == "/" else namespace + ","


def encode_connect(namespace: str, sid: str) -> str:
    return f"{CONNECT}{_namespace_prefix(namespace)}" + _dumps({"sid": sid}).decode()


def encode_connect_error(namespace: str, message: str) -> str:
    return f"{CONNECT_ERROR}{_namespace_prefix(namespace)}" + _dumps({"message": message}).decode()


def encode_disconnect(namespace: str) -> str:
    return f"{DISCONNECT}{_namespace_prefix(namespace)}"


def encode_ack(namespace: str, ack_id: int) -> str:
    return f"{ACK}{_namespace_prefix(namespace)}{ack_id}[]"


def encode_event(namespace: str, data: str | bytes) -> tuple[str, bytes | None]:
    """A ``message`` event carrying ``data``: the packet, and its attachment for binary."""
    if isinstance(data, str):
        return f"{EVENT}{_namespace_prefix(namespace)}" + _dumps(["message", data]).decode(), None
    head = f"{BINARY_EVENT}1-{_namespace_prefix(namespace)}"
    return head + '["message",{"_placeholder":true,"num":0}]', data


def event_frame(args: list[Any]) -> str | bytes:
    """A ``message`` event's arguments as the callback's frame: a string as ``str``, binary
    as ``bytes``, anything else (or several arguments) as its JSON text."""
    if len(args) == 1:
        (data,) = args
        if isinstance(data, str | bytes):
            return data
        value: Any = data
    else:
        value = args
    try:
        return _dumps(value).decode("utf-8")
    except TypeError as exc:  # binary data inside an object, or too deep to write again
        if "ecursion" in str(exc):
            raise SocketIOError(f"a packet nested deeper than {MAX_DEPTH} levels") from None
        raise SocketIOError("binary data inside an object or list") from None


def _read_int(text: str, start: int, limit: int) -> tuple[int | None, int]:
    end = start
    while end < len(text) and text[end].isdigit() and text[end].isascii():
        end += 1
    if end == start:
        return None, start
    if end - start > 16:
        raise SocketIOError("number too long")
    value = int(text[start:end])
    if value > limit:
        raise SocketIOError("number out of range")
    return value, end


def _replace_placeholders(value: Any, attachments: list[bytes], depth: int = 0) -> Any:
    # orjson parses 1,024 levels, past Python's recursion limit here: a binary packet
    # nested deeper than JSON can be written again is refused before that.
    if depth > MAX_DEPTH:
        raise SocketIOError(f"a packet nested deeper than {MAX_DEPTH} levels")
    depth += 1
    if isinstance(value, list):
        items = []
        for item in value:  # a loop, not a comprehension: one frame per level
            items.append(_replace_placeholders(item, attachments, depth))
        return items
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            if type(num) is not int or not 0 <= num < len(attachments):
                raise SocketIOError("a placeholder names no attachment")
            return attachments[num]
        fields = {}
        for key, item in value.items():
            fields[key] = _replace_placeholders(item, attachments, depth)
        return fields
    return value


class PacketReader:
    """Client packets from Engine.IO messages, binary attachments reassembled."""

    __slots__ = ("_attachments", "_pending", "_size", "max_size")

    def __init__(self, max_size: int = 1 << 62) -> None:
        #: Bytes the attachments of one packet may hold together (each is one message,
        #: which the transport bounds; a packet may announce ``MAX_ATTACHMENTS``).
        self.max_size = max_size
        self._pending: tuple[Packet, int] | None = None  # a binary packet and its count
        self._attachments: list[bytes] = []
        self._size = 0

    def feed(self, message: str | bytes) -> Packet | None:
        """The complete packet ``message`` ends, or ``None`` while attachments are due."""
        if isinstance(message, bytes):
            if self._pending is None:
                raise SocketIOError("binary data without a binary packet")
            packet, count = self._pending
            self._size += len(message)
            if self._size > self.max_size:
                raise SocketIOError(f"binary attachments larger than {self.max_size} bytes")
            self._attachments.append(message)
            if len(self._attachments) < count:
                return None
            attachments, self._attachments, self._pending = self._attachments, [], None
            self._size = 0
            data = _replace_placeholders(packet.data, attachments)
            return Packet(packet.type, packet.namespace, data, packet.id)
        if self._pending is not None:
            raise SocketIOError("a text packet while binary attachments were due")
        packet, count = _decode(message)
        if count:
            self._pending = (packet, count)
            return None
        return packet


def _decode(text: str) -> tuple[Packet, int]:
    if not text or not ("0" <= text[0] <= "6"):
        raise SocketIOError(f"unknown Socket.IO packet type {text[:1]!r}")
    kind = int(text[0])
    if kind == CONNECT_ERROR:
        raise SocketIOError("CONNECT_ERROR is sent by servers only")
    position = 1
    count = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        parsed, position = _read_int(text, 1, MAX_ATTACHMENTS)
        if parsed is None or text[position : position + 1] != "-":
            raise SocketIOError("a binary packet without its attachment count")
        count = parsed
        position += 1
        if count < 1:
            raise SocketIOError("a binary packet with no attachment")
    namespace = "/"
    if text[position : position + 1] == "/":
        comma = text.find(",", position)
        end = comma if comma >= 0 else len(text)
        namespace = text[position:end]
        position = end + 1 if comma >= 0 else end
    ack_id, position = _read_int(text, position, _MAX_ACK_ID)
    data: Any = None
    if position < len(text):
        try:
            data = _loads(text[position:])
        except orjson.JSONDecodeError as exc:
            raise SocketIOError(f"invalid JSON: {exc}") from None
    _check(kind, namespace, data, ack_id)
    return Packet(kind, namespace, data, ack_id), count


def _check(kind: int, namespace: str, data: Any, ack_id: int | None) -> None:
    if not namespace.startswith("/") or any(ch in namespace for ch in "?#\x00"):
        raise SocketIOError("malformed namespace")
    if kind == CONNECT:
        if ack_id is not None or (data is not None and not isinstance(data, Mapping)):
            raise SocketIOError("CONNECT carries an object (auth) or nothing")
    elif kind == DISCONNECT:
        if data is not None or ack_id is not None:
            raise SocketIOError("DISCONNECT carries nothing")
    elif kind in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise SocketIOError("an event is a list starting with its name")
    elif not isinstance(data, list) or ack_id is None:  # ACK, BINARY_ACK
        raise SocketIOError("an acknowledgement is an id and a list")
