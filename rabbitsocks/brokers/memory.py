"""An in-process broker: the same routing as a RabbitMQ topic exchange, no RabbitMQ.

It is the embedded default (``rabbitsocks serve`` with no configuration). Messages published
to it are delivered synchronously to the hub, on the event loop, to the patterns bound at
the time of the publish.
"""

from __future__ import annotations

from rabbitsocks.brokers.base import DeliveryHandler, StateHandler
from rabbitsocks.errors import BrokerUnavailable
from rabbitsocks.messages import Delivery
from rabbitsocks.topics import TopicTrie

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """A topic router in this process."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._on_delivery: DeliveryHandler | None = None
        self._patterns: TopicTrie[str] = TopicTrie()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._on_delivery is not None and not self._closed

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        self._on_delivery = on_delivery
        if on_state is not None:
            on_state(True)

    async def bind(self, pattern: str) -> None:
        if not self.connected:
            raise BrokerUnavailable(f"broker {self.name!r} is not started")
        self._patterns.add(pattern, pattern)

    async def unbind(self, pattern: str) -> None:
        self._patterns.discard(pattern, pattern)

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        if self._on_delivery is None or self._closed:
            raise BrokerUnavailable(f"broker {self.name!r} is not started")
        # A topic exchange delivers a message once per queue, however many of the queue's
        # bindings match it (AMQP 0-9-1, 3.1.3.3): one delivery if anything matches.
        if self._patterns.matches_any(topic):
            self._on_delivery(Delivery(topic, body))

    async def close(self) -> None:
        self._closed = True
        self._patterns = TopicTrie()
