"""The options of a ``callbacks.stomp`` listener (``listeners[].options`` in the
configuration), documented key by key in docs/stomp.md and docs/configuration.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from rabbitsocks.config import HookConfig, above, at_least, one_of
from rabbitsocks.stomp.destinations import DestinationRules

__all__ = ["Options"]


@dataclass(frozen=True, slots=True)
class Options:
    """What a STOMP listener allows and how much of it.

    The metadata is checked when the configuration is resolved (``rabbitsocks check`` and
    ``serve`` alike): ``broker`` must name a configured broker, the numbers their bounds;
    ``__post_init__`` checks the destination patterns and ``prefetch <= max_prefetch``.
    """

    #: The broker of /topic/, /exchange/ and queue destinations; ``None``: the process's
    #: default broker. Queue and /exchange/ destinations need a RabbitMQ (amqp) broker.
    broker: str | None = field(default=None, metadata=one_of("brokers"))
    #: The exchange behind /topic/ (Web-STOMP's ``default_topic_exchange``).
    topic_exchange: str = "amq.topic"
    #: Destinations clients may SUBSCRIBE to, as patterns (``/topic/news.#``,
    #: ``/queue/jobs.*``, ``/exchange/amq.direct/#``). Empty: none.
    subscribe: tuple[str, ...] = ("/topic/#",)
    #: Destinations clients may SEND to, same syntax. Empty (the default): SEND is refused.
    send: tuple[str, ...] = ()
    #: Asked before a SUBSCRIBE (a callable or an HTTP endpoint, as pubsub's join_auth).
    subscribe_auth: HookConfig | None = None
    #: Asked before a SEND.
    send_auth: HookConfig | None = None
    #: A token claim listing the destination patterns its bearer may SUBSCRIBE to / SEND
    #: to, on top of ``subscribe`` / ``send`` (needs ``auth.jwt``).
    subscribe_claim: str | None = None
    send_claim: str | None = None
    #: Heart-beats (ms): the fastest we send them, and the fastest we ask the client to;
    #: 0 turns that direction off. Clients may ask for slower ones, never for faster.
    heart_beat_send: int = field(default=10_000, metadata=at_least(0))
    heart_beat_receive: int = field(default=10_000, metadata=at_least(0))
    #: Seconds a client has to send CONNECT after the WebSocket opened.
    connect_timeout: float = field(default=10.0, metadata=above(0))
    #: Largest frame accepted, headers and body, in octets; and most headers in one frame.
    max_frame_size: int = field(default=1024 * 1024, metadata=at_least(1))
    max_headers: int = field(default=100, metadata=at_least(1))
    #: Subscriptions one connection may hold at once (temp-queues count).
    max_subscriptions: int = field(default=100, metadata=at_least(1))
    #: Unacknowledged messages per queue subscription, unless SUBSCRIBE has a
    #: ``prefetch-count`` header (which may not exceed ``max_prefetch``).
    prefetch: int = field(default=100, metadata=at_least(1))
    max_prefetch: int = field(default=1000, metadata=at_least(1))
    #: Frames per second per connection (ACK and NACK excepted) and the burst above that
    #: rate: a faster client is not read until it is back under the rate.
    rate: float = field(default=100.0, metadata=above(0))
    burst: int = field(default=200, metadata=at_least(1))

    def __post_init__(self) -> None:
        for name in ("subscribe", "send"):
            try:
                DestinationRules(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.prefetch > self.max_prefetch:
            raise ValueError("prefetch: expected at most max_prefetch")
