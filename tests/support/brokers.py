"""Stand-in brokers for what ``MemoryBroker`` cannot provoke (a nack, a confirm that never
comes); the integration tier checks the same against the real RabbitMQ."""

from __future__ import annotations

from rabbitsocks.brokers.base import DeliveryHandler, StateHandler

__all__ = ["StubBroker"]


class StubBroker:
    """A connected ``Broker`` that delivers nothing: ``start``, ``bind``, ``unbind`` and
    ``close`` do nothing. A subclass says what ``publish`` does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = True
        self.history = None
        self.rabbitmq = None

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        pass

    async def bind(self, pattern: str) -> None:
        pass

    async def unbind(self, pattern: str) -> None:
        pass

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass
