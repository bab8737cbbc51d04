"""A delivery handler (``on_delivery``) that records what a broker delivers, for tests."""

from __future__ import annotations

import asyncio

from rabbitsocks.brokers.base import Broker
from rabbitsocks.messages import Delivery

__all__ = ["Deliveries", "record_all"]


class Deliveries:
    """Records what a broker delivers; ``wait_for(n)`` returns once ``n`` arrived.

    ``wait`` is how long ``wait_for`` waits, in seconds, before it raises ``TimeoutError``.
    """

    def __init__(self, wait: float = 5.0) -> None:
        self.wait = wait
        self.items: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.items.append((delivery.routing_key, delivery.body))
        self._changed.set()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(self.wait):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


async def record_all(broker: Broker, wait: float = 5.0) -> Deliveries:
    """Start ``broker`` with a new ``Deliveries`` as its handler, bound to every topic."""
    recorded = Deliveries(wait)
    await broker.start(recorded)
    await broker.bind("#")
    return recorded
