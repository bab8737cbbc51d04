"""The RoadRunner websockets protocol: JSON text frames, parsed and encoded with no I/O.

Client to server, one command per frame::

    {"command": "join",  "broker": "amqp", "topics": ["foo", "foo2"], "payload": ""}
    {"command": "leave", "broker": "amqp", "topics": ["foo"]}

``broker`` is optional (the listener's default broker then); ``payload`` is optional and
ignored by ``join`` and ``leave`` (RoadRunner carries base64 in it), but must be a string
or null when present; other keys are ignored, so that newer clients keep working.

Server to client::

    {"topic": "@join",  "payload": ["foo", "foo2"]}                 joined
    {"topic": "#join",  "payload": ["bad.*x"], "reason": "..."}     refused, one per reason
    {"topic": "@leave", "payload": ["foo"]}                         left
    {"topic": "#leave", "payload": ["bar"], "reason": "not joined"} refused
    {"topic": "#error", "payload": "frame is not valid JSON"}       unparsable command
    {"topic": "sensors.1.temp", "payload": "21.5"}                  a message
    {"topic": "sensors.1.raw", "payload": "AAEC", "encoding": "base64"}
    {"topic": "chat.1", "payload": "hi", "offset": 7, "epoch": "k3j9"}  a message with history
    {"topic": "@resume", "payload": ["chat.1"], "recovered": true}     after @join, see below
    {"topic": "#gap", "payload": ["news.*"], "from": ms, "to": ms}     messages may be missed

A join may carry, per topic, the position of the last message the client received::

    {"command": "join", "topics": ["chat.1"], "since": {"chat.1": {"offset": 7, "epoch": "k3j9"}}}

A position that is not one does not fail the command: the topic is refused with ``#join``
(``Command.since`` holds the reason instead of a ``Position``). ``since`` that is not an
object, or that names a topic not in ``topics``, fails the command.

A message body is sent as text when it is valid UTF-8, and as base64 with
``"encoding": "base64"`` otherwise, since a JSON string can only carry text.

``parse_command`` checks the *shape* of a command, not the validity of its topics: the hub
answers an invalid topic with ``#join`` and a reason, and joins the others. Every encoder
returns compact JSON text with non-ASCII characters left as they are (JSON allows them,
RFC 8259 section 7, and they are shorter than ``\\uXXXX`` escapes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import orjson

from rabbitsocks.errors import ProtocolError
from rabbitsocks.frames import SharedFrame
from rabbitsocks.messages import Delivery
from rabbitsocks.pubsub.history import Position

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_TOPICS_IN_COMMAND",
    "Command",
    "encode_delivery",
    "encode_error",
    "encode_gap",
    "encode_join_failed",
    "encode_joined",
    "encode_leave_failed",
    "encode_left",
    "encode_message",
    "encode_message_at",
    "encode_resumed",
    "parse_command",
]

#: Large enough for the default topic limit: 1,000 topics of 255 bytes, escapes included.
DEFAULT_MAX_FRAME_SIZE = 1 << 20
DEFAULT_MAX_TOPICS_IN_COMMAND = 1000

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed ``join`` or ``leave`` command.

    ``topics`` are unique, in the order the client sent them, and not validated yet.
    """

    command: Literal["join", "leave"]
    topics: tuple[str, ...]
    broker: str | None = None
    #: ``join`` only: topic -> its position, or why the position given is not one.
    since: Mapping[str, Position | str] | None = None


def parse_command(
    frame: str | bytes,
    *,
    max_topics_in_command: int = DEFAULT_MAX_TOPICS_IN_COMMAND,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> Command:
    """Parse one client frame; raise ``ProtocolError`` with a short reason if malformed.

    A binary frame is read as UTF-8 text. ``max_frame_size`` is in UTF-8 bytes.

    Nesting needs no limit of our own: orjson refuses documents nested deeper than 1024,
    and the parser never recurses into values it does not need. (Values that deep are
    beyond Python's recursion limit for ``repr`` or ``==``, so they are never echoed.)
    """
    if isinstance(frame, str):
        size = len(frame)
        if size > max_frame_size // 4:  # a code point is at most 4 bytes of UTF-8
            # Lone surrogates (never in a real text frame) are counted, not refused, here;
            # orjson refuses them below.
            size = len(frame.encode("utf-8", "surrogatepass"))
    elif isinstance(frame, bytes):
        size = len(frame)
    else:
        raise ProtocolError("frame is neither text nor bytes")
    if size > max_frame_size:
        raise ProtocolError(f"frame is larger than {max_frame_size} bytes")

    try:
        data = _loads(frame)
    except _JSONDecodeError:
        raise ProtocolError(_why_not_json(frame)) from None
    if type(data) is not dict:
        raise ProtocolError("frame is not a JSON object")

    command = data.get("command")
    if command == "join" or command == "leave":
        name: Literal["join", "leave"] = "join" if command == "join" else "leave"
    elif command is None:
        raise ProtocolError("missing command")
    elif type(command) is not str:
        raise ProtocolError("command is not a string")
    else:
        raise ProtocolError(f"unknown command {_excerpt(command)!r}")

    topics = data.get("topics")
    if topics is None:
        raise ProtocolError("missing topics")
    if type(topics) is not list:
        raise ProtocolError("topics is not a list")
    # Counted before deduplication: the limit bounds the work a frame can cause.
    if len(topics) > max_topics_in_command:
        raise ProtocolError(f"too many topics in one command (max {max_topics_in_command})")
    for topic in topics:
        if type(topic) is not str:
            raise ProtocolError("topics must be strings")

    broker = data.get("broker")
    if broker is not None and type(broker) is not str:
        raise ProtocolError("broker is not a string")
    payload = data.get("payload")
    if payload is not None and type(payload) is not str:
        raise ProtocolError("payload is not a string")

    # dict.fromkeys: unique, first occurrence first.
    unique = tuple(dict.fromkeys(topics))
    raw_since = data.get("since")
    if raw_since is None or name == "leave":
        return Command(name, unique, broker)
    if type(raw_since) is not dict:
        raise ProtocolError("since is not an object")
    if raw_since and not set(raw_since) <= set(unique):
        raise ProtocolError("since names a topic that is not in topics")
    return Command(name, unique, broker, {t: _position(p) for t, p in raw_since.items()})


#: The largest offset: RabbitMQ stream offsets are signed 64-bit integers.
MAX_OFFSET = (1 << 63) - 1
MAX_EPOCH_LENGTH = 64


def _position(raw: object) -> Position | str:
    """A ``since`` entry as a ``Position``, or the reason it is not one."""
    if type(raw) is not dict or "offset" not in raw or "epoch" not in raw:
        return 'invalid position: expected {"offset": integer, "epoch": string}'
    offset, epoch = raw["offset"], raw["epoch"]
    if type(offset) is not int:  # bool is not int here, nor is 7.0
        return "invalid position: offset is not an integer"
    if not -1 <= offset <= MAX_OFFSET:  # -1: before the first entry of a log
        return "invalid position: offset out of range"
    if type(epoch) is not str or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        return f"invalid position: epoch is not a string of 1 to {MAX_EPOCH_LENGTH} characters"
    return Position(offset, epoch)


def _why_not_json(frame: str | bytes) -> str:
    # orjson reports invalid UTF-8 as a JSON error; tell the client which it was. Only on
    # the error path, so valid frames are decoded once, by orjson.
    try:
        if isinstance(frame, bytes):
            frame.decode("utf-8")
        else:
            frame.encode("utf-8")
    except UnicodeError:
        return "frame is not valid UTF-8"
    return "frame is not valid JSON"


def _excerpt(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, to quote a client's input in a reason."""
    return text if len(text) <= limit else text[:limit] + "..."


def _topic_list(topics: Iterable[str]) -> list[str] | tuple[str, ...]:
    if isinstance(topics, list | tuple):
        return topics
    if isinstance(topics, str):  # a str is an Iterable[str] too: almost surely a bug
        raise TypeError("topics must be an iterable of topics, not a str")
    return list(topics)


def encode_joined(topics: Iterable[str], positions: Mapping[str, Position] | None = None) -> str:
    """``{"topic":"@join","payload":[...]}``: the topics now joined. ``positions``: where
    the log of each history topic joined without a recovered position stands, so that a
    client has a position to resume from before its first message (``"positions":
    {topic: {"offset": N, "epoch": E}}``, only when there is one)."""
    if not positions:
        return _dumps({"topic": "@join", "payload": _topic_list(topics)}).decode()
    return _dumps(
        {
            "topic": "@join",
            "payload": _topic_list(topics),
            "positions": {t: {"offset": p.offset, "epoch": p.epoch} for t, p in positions.items()},
        }
    ).decode()


def encode_join_failed(topics: Iterable[str], reason: str | None) -> str:
    """``{"topic":"#join","payload":[...],"reason":...}``: topics refused, for one reason."""
    return _failed("#join", topics, reason)


def encode_left(topics: Iterable[str]) -> str:
    """``{"topic":"@leave","payload":[...]}``: the topics left."""
    return _dumps({"topic": "@leave", "payload": _topic_list(topics)}).decode()


def encode_leave_failed(topics: Iterable[str], reason: str | None) -> str:
    """``{"topic":"#leave","payload":[...],"reason":...}``: topics not left, for one reason."""
    return _failed("#leave", topics, reason)


def _failed(answer: str, topics: Iterable[str], reason: str | None) -> str:
    if reason is None:
        return _dumps({"topic": answer, "payload": _topic_list(topics)}).decode()
    return _dumps({"topic": answer, "payload": _topic_list(topics), "reason": reason}).decode()


def encode_error(reason: str) -> str:
    """``{"topic":"#error","payload":reason}``: a command that could not be understood."""
    return _dumps({"topic": "#error", "payload": reason}).decode()


def encode_message(routing_key: str, body: bytes) -> str:
    """A broker message as ``{"topic":key,"payload":body}``; base64 if not UTF-8.

    The hot path: called once per broker message, whatever the number of recipients.
    ``routing_key`` must be a real str (no lone surrogate), as validated topics and keys
    decoded from AMQP are. An orjson dict was the fastest of the encodings measured (string
    concatenation of separately dumped parts, the stdlib ``json``, ``str(x, "utf-8")``).
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        # A JSON string carries text only (RFC 8259 section 7), so bytes travel as base64.
        encoded = base64.b64encode(body).decode("ascii")
        return _dumps({"topic": routing_key, "payload": encoded, "encoding": "base64"}).decode()
    return _dumps({"topic": routing_key, "payload": text}).decode()


def encode_message_at(routing_key: str, body: bytes, offset: int, epoch: str) -> str:
    """A message of a history log: ``encode_message`` plus its ``offset`` and ``epoch``
    (extra keys, which clients that do not resume ignore)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        encoded = base64.b64encode(body).decode("ascii")
        return _dumps(
            {
                "topic": routing_key,
                "payload": encoded,
                "encoding": "base64",
                "offset": offset,
                "epoch": epoch,
            }
        ).decode()
    return _dumps(
        {"topic": routing_key, "payload": text, "offset": offset, "epoch": epoch}
    ).decode()


def encode_delivery(delivery: Delivery) -> SharedFrame | None:
    """The hub's ``Encoder`` for pubsub: a delivery as a shared ``encode_message`` frame
    (``encode_message_at`` for a message of a history log), or ``None`` for a routing key
    that cannot be JSON (not UTF-8, see brokers/amqp.py)."""
    try:
        if delivery.stream is None:
            return SharedFrame(encode_message(delivery.routing_key, delivery.body))
        return SharedFrame(
            encode_message_at(delivery.routing_key, delivery.body, delivery.offset, delivery.epoch)
        )
    except TypeError:  # orjson refuses a str with lone surrogates
        return None


def encode_resumed(topics: Iterable[str], reason: str | None) -> str:
    """``{"topic":"@resume","payload":[...],"recovered":...}``: what a join with positions
    could replay; ``reason`` ``None`` means everything (``recovered: true``)."""
    if reason is None:
        frame = {"topic": "@resume", "payload": _topic_list(topics), "recovered": True}
    else:
        frame = {
            "topic": "@resume",
            "payload": _topic_list(topics),
            "recovered": False,
            "reason": reason,
        }
    return _dumps(frame).decode()


def encode_gap(topics: Iterable[str], start_ms: int, end_ms: int) -> str:
    """``{"topic":"#gap","payload":[...],"from":ms,"to":ms}``: messages of those topics
    published between the two moments (ms since the Unix epoch) may not have arrived."""
    return _dumps(
        {"topic": "#gap", "payload": _topic_list(topics), "from": start_ms, "to": end_ms}
    ).decode()
