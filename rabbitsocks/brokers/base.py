"""The contract between the pub/sub hub and a message broker.

A broker is a topic router that the hub drives: it binds and unbinds AMQP topic patterns
(``*`` one word, ``#`` zero or more words; AMQP 0-9-1 topic exchange semantics) and calls
``on_delivery(delivery)`` (a ``messages.Delivery``) once per message that matches at least
one of its bindings. Reference counting of bindings across connections belongs to the hub,
not to the broker: the hub calls ``bind`` once when the first local connection joins a
pattern and ``unbind`` once when the last one leaves.

A broker that loses its connection keeps its set of bound patterns as the source of truth
and replays it when it reconnects, so subscribers never have to join again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from rabbitsocks.messages import Delivery

__all__ = ["Broker", "DeliveryHandler", "StateHandler"]

#: Called on the event loop for every delivery. It must not block and must not raise; it
#: is the start of the hot path.
DeliveryHandler = Callable[[Delivery], None]

#: Called on the event loop when the broker connects (``True``) or loses its connection
#: (``False``).
StateHandler = Callable[[bool], None]


@runtime_checkable
class Broker(Protocol):
    """What the hub and the RPC service need from a message broker."""

    #: The name under which the broker is configured (``memory``, ``amqp``, ...).
    name: str

    @property
    def connected(self) -> bool:
        """Whether ``bind`` and ``publish`` can succeed right now."""
        ...

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        """Connect and start consuming. Returns once connected, or once the first attempt
        (with several URLs, one attempt per URL) failed; a broker that could not connect
        keeps retrying in the background."""
        ...

    async def bind(self, pattern: str) -> None:
        """Start routing messages matching ``pattern`` to ``on_delivery``.

        Returns only once the binding is in effect. Raises ``BrokerUnavailable`` when not
        connected.
        """
        ...

    async def unbind(self, pattern: str) -> None:
        """Stop routing ``pattern``. Never raises for an outage: the binding is forgotten and
        will not be replayed (the server drops it with its queue anyway)."""
        ...

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        """Publish ``body`` with routing key ``topic`` to the broker's exchange.

        With ``confirm`` it returns once the broker confirmed the message, and raises
        ``PublishFailed`` on a nack or timeout and ``BrokerUnavailable`` when not connected.
        Without ``confirm`` it returns once the message is handed to the connection.
        """
        ...

    async def close(self) -> None:
        """Unbind everything and disconnect. Idempotent."""
        ...
