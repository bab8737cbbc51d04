"""A pubsub listener with settings of the test's choosing, and well-behaved clients that
watch a topic while something else happens on the same listener.

``Watch`` is the proof that abuse of one connection costs the others nothing: its clients
(one per transport) read in the background, the test publishes numbered messages between
its steps (``tick``), and ``verify`` checks that every watcher received every number, in
order, none missing, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rabbitsocks import Listener, start_listener
from rabbitsocks.services import Services
from tests.support.pubsub import (
    AmqpPublisher,
    BrokerKind,
    Clients,
    PubSubClient,
    Transport,
    amqp_url,
    make_services,
    unique,
)

__all__ = ["PubSubListener", "Watch", "pubsub_listener", "until_connected"]


@dataclass
class PubSubListener:
    """A pubsub listener on ``services``, and a publisher independent of it."""

    kind: BrokerKind
    services: Services
    listener: Listener
    publish: Callable[[str, bytes], Awaitable[None]]

    @property
    def port(self) -> int:
        return self.listener.port


@contextlib.asynccontextmanager
async def pubsub_listener(
    kind: BrokerKind = "memory", options: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[PubSubListener]:
    """``callbacks.pubsub`` on port 0 with ``options`` and ``ListenerConfig`` ``settings``
    (``limits=LimitsConfig(...)``, ``websocket=WebSocketConfig(...)``, ...), on the memory
    broker or on RabbitMQ (then published to by an AMQP connection of its own)."""
    url = amqp_url() if kind == "amqp" else None
    services = make_services(kind, url)
    await services.start()
    publisher: AmqpPublisher | None = None
    listener: Listener | None = None
    try:
        await until_connected(services, kind)
        listener = await start_listener(
            "127.0.0.1:0", "callbacks.pubsub", options or {}, services=services, **settings
        )
        publish: Callable[[str, bytes], Awaitable[None]]
        if url is not None:
            publisher = await AmqpPublisher.open(url)
            publish = publisher.publish
        else:
            publish = services.brokers["memory"].publish
        yield PubSubListener(kind, services, listener, publish)
    finally:
        if publisher is not None:
            await publisher.close()
        if listener is not None:
            await listener.stop()
        await services.close()


async def until_connected(services: Services, name: str, timeout: float = 15.0) -> None:
    """Until broker ``name`` is connected: a RabbitMQ that another test just restarted may
    refuse the first attempt, and the broker then retries by itself (its public
    ``connected`` is polled, briefly)."""
    broker = services.brokers[name]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not broker.connected:
        if loop.time() > deadline:
            raise AssertionError(f"broker {name} did not connect within {timeout:g}s")
        await asyncio.sleep(0.05)


class Watch:
    """Well-behaved clients on one topic, counting what they receive."""

    def __init__(self, rs: PubSubListener, clients: Clients) -> None:
        self.rs = rs
        self.clients = clients
        self.topic = unique("watch")
        self.published = 0
        self.received: dict[str, list[int]] = {}
        self._progress = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, transports: tuple[Transport, ...] = ("websocket", "socketio")) -> None:
        for index, transport in enumerate(transports):
            client = await self.clients.connect(transport, self.rs.port)
            await client.join(self.topic)
            name = f"{transport}-{index}"
            self.received[name] = []
            self._readers.append(asyncio.create_task(self._read(client, self.received[name])))

    async def _read(self, client: PubSubClient, numbers: list[int]) -> None:
        try:
            while True:
                frame = await client.next(timeout=3600)
                assert frame["topic"] == self.topic, frame
                numbers.append(int(frame["payload"]))
                self._progress.set()
        finally:
            self._progress.set()  # wake verify() up, which raises what ended this reader

    async def tick(self, count: int = 3) -> None:
        """Publish ``count`` more numbered messages to the watched topic."""
        for _ in range(count):
            await self.rs.publish(self.topic, str(self.published).encode())
            self.published += 1

    async def verify(self, timeout: float = 10.0) -> None:
        """Every watcher has received every message published so far, in order."""
        async with asyncio.timeout(timeout):
            while any(len(numbers) < self.published for numbers in self.received.values()):
                for reader in self._readers:
                    if reader.done():
                        reader.result()  # a watcher failed: raise its error
                self._progress.clear()
                await self._progress.wait()
        expected = list(range(self.published))
        for name, numbers in self.received.items():
            assert numbers == expected, f"{name} lost or reordered messages"

    async def stop(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
