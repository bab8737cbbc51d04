"""Broker messages on their way to connections, and how each is encoded once per format.

A broker hands the hub one ``Delivery`` per message. The hub gives it to every matching
subscription; each subscription names an ``Encoder`` (a callback's wire format: the
RoadRunner JSON frame for pubsub, a STOMP MESSAGE frame for one subscription id, ...), and a
delivery encodes itself at most once per encoder, however many subscriptions share it. The
result is a ``SharedFrame`` that every transport writes with its own cached framing.

Pure: no I/O, no third-party imports, so the brokers (below the hub) can build deliveries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rabbitsocks.frames import SharedFrame

__all__ = ["Delivery", "Encoder", "MessageProperties"]


class MessageProperties(Protocol):
    """The AMQP 0-9-1 basic properties of a message (section 1.8.2), as read-only
    attributes; ``None`` where the producer did not set one. pamqp's ``BasicProperties`` has
    exactly these names, so the RabbitMQ broker passes its object through untouched."""

    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any] | None: ...
    @property
    def delivery_mode(self) -> int | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def expiration(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def timestamp(self) -> Any: ...
    @property
    def message_type(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...


#: Turns a delivery into the frame a group of subscriptions sends; ``None`` skips them (a
#: message their format cannot carry). Encoders are compared by identity: share one object
#: between subscriptions that want the same bytes.
Encoder = Callable[["Delivery"], SharedFrame | None]


class Delivery:
    """One message from a broker: its routing key, body, and (from RabbitMQ) properties.

    A message of a history log also has its position: ``stream``, the index of the log in
    its broker's ``history`` configuration, and its ``offset`` and ``epoch`` in that log
    (see docs/architecture.md, "History and resume"). ``stream`` is ``None`` otherwise.
    """

    __slots__ = (
        "_frames",
        "body",
        "epoch",
        "exchange",
        "offset",
        "properties",
        "routing_key",
        "stream",
    )

    def __init__(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        exchange: str = "",
        *,
        stream: int | None = None,
        offset: int = -1,
        epoch: str = "",
    ) -> None:
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.stream = stream
        self.offset = offset
        self.epoch = epoch
        self._frames: dict[Encoder, SharedFrame | None] | None = None

    def encoded(self, encoder: Encoder) -> SharedFrame | None:
        """``encoder(self)``, computed once per encoder for this message."""
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        elif encoder in frames:
            return frames[encoder]
        frame = frames[encoder] = encoder(self)
        return frame

    def __repr__(self) -> str:
        where = "" if self.stream is None else f" at {self.offset}@{self.epoch}"
        return f"<Delivery {self.routing_key!r} {len(self.body)} bytes{where}>"
