"""STOMP headers and AMQP properties, both ways, as RabbitMQ's STOMP plugin maps them.

SEND headers become AMQP 0-9-1 basic properties (``rabbit_stomp_util:message_properties``):

=================== ====================== ===============================================
STOMP header        AMQP property          notes
=================== ====================== ===============================================
content-type        content-type
content-encoding    content-encoding
persistent          delivery-mode          ``true``: 2 (persistent)
priority            priority               0 to 255
correlation-id      correlation-id
reply-to            reply-to               ``/temp-queue/x``: this session's reply queue
expiration          expiration             milliseconds, as text
amqp-message-id     message-id
timestamp           timestamp              seconds since the epoch
type                type
user-id             user-id                RabbitMQ checks it is the connection's user
app-id              app-id
anything else       headers                as a string (``longstr``)
=================== ====================== ===============================================

and MESSAGE frames carry them back (``rabbit_stomp_util:message_headers``), with the AMQP
headers whose values are strings or integers; a ``reply-to`` that is not a destination is
shown as ``/reply-queue/<name>``. ``destination``, ``receipt``, ``transaction`` and
``content-length`` belong to the frame and are not copied into AMQP headers.

``FanoutEncoder`` turns a hub delivery into a MESSAGE frame for every subscription that
shares its version, id, destination kind and acknowledgement mode (stomp.js names its
subscriptions ``sub-0``, ``sub-1``..., so most subscribers share one encoder and a message is
encoded once for all of them). Pure: no I/O.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Mapping
from typing import Any

from rabbitsocks.frames import SharedFrame
from rabbitsocks.messages import Delivery, MessageProperties
from rabbitsocks.stomp.destinations import PREFIXES, format_destination
from rabbitsocks.stomp.frames import StompError, encode_frame

__all__ = [
    "FRAME_HEADERS",
    "FanoutEncoder",
    "message_frame",
    "property_headers",
    "queue_params",
    "send_properties",
    "shared",
]

#: Headers that belong to the STOMP frame, not to the message.
FRAME_HEADERS = frozenset({"destination", "receipt", "transaction", "content-length"})

# (STOMP header, AMQP property attribute) in RabbitMQ's order.
_PROPERTIES = (
    ("content-type", "content_type"),
    ("content-encoding", "content_encoding"),
    ("persistent", "delivery_mode"),
    ("priority", "priority"),
    ("correlation-id", "correlation_id"),
    ("reply-to", "reply_to"),
    ("expiration", "expiration"),
    ("amqp-message-id", "message_id"),
    ("timestamp", "timestamp"),
    ("type", "message_type"),
    ("user-id", "user_id"),
    ("app-id", "app_id"),
)
_PROPERTY_HEADERS = frozenset(name for name, _ in _PROPERTIES)
#: Headers of a MESSAGE that an AMQP header of the same name must not shadow.
_MESSAGE_HEADERS = frozenset(
    {"subscription", "destination", "message-id", "redelivered", "ack", "content-length"}
)
_REPLY_PREFIXES = tuple(p if p.endswith("/") else p + "/" for p in PREFIXES)
#: Queue arguments a SUBSCRIBE (or SEND) may set as headers (RabbitMQ's
#: ``?HEADER_ARGUMENTS``), by type.
_INT_ARGUMENTS = frozenset(
    {
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-message-ttl",
        "x-stream-max-segment-size-bytes",
    }
)
_STR_ARGUMENTS = frozenset(
    {"x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-age", "x-queue-type"}
)


def property_headers(properties: MessageProperties | None) -> list[tuple[str, str]]:
    """The STOMP headers of a message's AMQP properties and headers."""
    if properties is None:
        return []
    out: list[tuple[str, str]] = []
    for name, attribute in _PROPERTIES:
        value = getattr(properties, attribute, None)
        if value is None:
            continue
        if name == "persistent":
            if value == 2:
                out.append((name, "true"))
            continue
        if name == "reply-to" and not str(value).startswith(_REPLY_PREFIXES):
            out.append((name, f"/reply-queue/{value}"))
            continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            out.append((name, str(int(value.timestamp()))))
            continue
        out.append((name, str(value)))
    headers = properties.headers
    if headers:
        for key, value in headers.items():
            if key in _MESSAGE_HEADERS or key in _PROPERTY_HEADERS:
                continue
            if isinstance(value, str):
                out.append((key, value))
            elif isinstance(value, int) and not isinstance(value, bool):
                out.append((key, str(value)))
            elif isinstance(value, bytes | bytearray):
                out.append((key, bytes(value).decode("utf-8", "replace")))
            # Booleans, floats, tables, arrays...: RabbitMQ leaves them out too.
    return out


def send_properties(headers: Mapping[str, str], reply_to: str | None = None) -> dict[str, Any]:
    """AMQP basic properties (pamqp's keyword names) for a SEND with ``headers``;
    ``reply_to`` replaces the header's value (a temp-queue resolved to its queue)."""
    props: dict[str, Any] = {}
    table: dict[str, Any] = {}
    for name, value in headers.items():
        if name in FRAME_HEADERS:
            continue
        if name not in _PROPERTY_HEADERS:
            table[name] = value
            continue
        if name == "persistent":
            flag = value.strip().lower()
            if flag == "true":
                props["delivery_mode"] = 2
            elif flag != "false":
                raise StompError(
                    "Invalid header", f"persistent must be true or false, got {value!r}"
                )
        elif name == "priority":
            props["priority"] = _integer(name, value, 0, 255)
        elif name == "timestamp":
            seconds = _integer(name, value, 0, 2**63 - 1)
            try:
                props["timestamp"] = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
            except (OverflowError, ValueError, OSError):
                raise StompError("Invalid header", f"timestamp out of range: {value!r}") from None
        elif name == "expiration":
            _integer(name, value, 0, 2**32 - 1)  # RabbitMQ refuses anything else (406)
            props["expiration"] = value.strip()
        else:
            attribute = dict(_PROPERTIES)[name]
            props[attribute] = value
    if reply_to is not None:
        props["reply_to"] = reply_to
    for name, value in props.items():
        if isinstance(value, str) and len(value.encode("utf-8")) > 255:
            raise StompError("Invalid header", f"{name.replace('_', '-')} is over 255 octets")
    if table:
        props["headers"] = table
    return props


def _integer(name: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise StompError("Invalid header", f"{name} must be a number from {low} to {high}")
    return int(text)


def queue_params(
    headers: dict[str, str], *, durable: bool, exclusive: bool = False, auto_delete: bool = False
) -> dict[str, Any]:
    """``queue.declare`` flags and arguments from SUBSCRIBE (or SEND) headers, with
    RabbitMQ's defaults for the destination (``rabbit_stomp_util:build_params``)."""

    def flag(name: str, default: bool) -> bool:
        value = headers.get(name)
        if value is None:
            return default
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise StompError("Invalid header", f"{name} must be true or false, got {value!r}")

    durable = flag("durable", flag("persistent", durable))
    arguments: dict[str, Any] = {}
    for name, value in headers.items():
        if name in _INT_ARGUMENTS:
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                raise StompError("Invalid header", f"{name} must be a number, got {value!r}")
            arguments[name] = int(text)
        elif name in _STR_ARGUMENTS:
            arguments[name] = value.strip()
    return {
        "durable": durable,
        "exclusive": flag("exclusive", exclusive),
        "auto_delete": flag("auto-delete", auto_delete),
        "arguments": arguments,
    }


def message_frame(
    *,
    version: str,
    subscription: str,
    destination: str,
    message_id: str,
    ack: str | None,
    redelivered: bool,
    properties: MessageProperties | None,
    body: bytes,
) -> bytes:
    """A MESSAGE frame (STOMP 1.2, "MESSAGE") with RabbitMQ's headers."""
    headers = [
        ("subscription", subscription),
        ("destination", destination),
        ("message-id", message_id),
        ("redelivered", "true" if redelivered else "false"),
    ]
    if ack is not None:
        headers.append(("ack", ack))
    headers.extend(property_headers(properties))
    return encode_frame("MESSAGE", headers, body, version=version, content_length=True)


def shared(data: bytes) -> SharedFrame:
    """A frame for the fan-out: a text WebSocket message when it is UTF-8 (what Web-STOMP
    sends, and what every STOMP client reads), binary otherwise (a body that is not text)."""
    try:
        return SharedFrame(data.decode("utf-8"))
    except UnicodeDecodeError:
        return SharedFrame(data)


_message_numbers = itertools.count(1)


class FanoutEncoder:
    """The MESSAGE frame of a hub delivery for one (version, subscription id, destination
    kind, ack mode): a hub ``Encoder``. Instances are shared (see ``EncoderCache``) so that a
    delivery is encoded once for every subscription with the same key.

    ``message-id`` is unique in the process (a counter); with an ``ack`` mode other than
    auto, 1.2 frames carry it as ``ack`` too, so clients can ACK (see the session: fan-out
    subscriptions are at most once, and their ACKs and NACKs change nothing).
    """

    __slots__ = ("__weakref__", "ack", "exchange", "subscription", "topic_exchange", "version")

    def __init__(
        self,
        version: str,
        subscription: str,
        exchange: str | None,
        ack: bool,
        topic_exchange: str,
    ) -> None:
        self.version = version
        self.subscription = subscription
        #: ``None``: a /topic/ subscription; else the exchange of an /exchange/ one.
        self.exchange = exchange
        self.ack = ack
        self.topic_exchange = topic_exchange

    def __call__(self, delivery: Delivery) -> SharedFrame | None:
        key = delivery.routing_key
        if self.exchange is None:
            destination = format_destination(self.topic_exchange, key, self.topic_exchange)
        else:
            destination = format_destination(self.exchange, key, self.topic_exchange)
        message_id = f"T_{self.subscription}@@fanout@@{next(_message_numbers)}"
        return shared(
            message_frame(
                version=self.version,
                subscription=self.subscription,
                destination=destination,
                message_id=message_id,
                ack=message_id if self.ack and self.version == "1.2" else None,
                redelivered=False,
                properties=delivery.properties,
                body=delivery.body,
            )
        )
