"""Process-wide services shared by every listener: the brokers and their pub/sub hubs.

Created once by the server (or by ``start_listener``) and handed explicitly to what needs
them, never kept in module globals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp

from rabbitsocks.brokers.base import Broker
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import BrokerConfig, Config
from rabbitsocks.errors import UnknownBroker
from rabbitsocks.pubsub.hub import Hub

__all__ = ["Services", "make_broker"]

logger = logging.getLogger("rabbitsocks.services")


def make_broker(name: str, config: BrokerConfig) -> Broker:
    """Build (not start) the broker a ``BrokerConfig`` describes."""
    if config.type == "memory":
        return MemoryBroker(name)
    # Imported here so that a memory-only process never loads aio-pika.
    from rabbitsocks.brokers.amqp import AmqpBroker

    return AmqpBroker(
        name,
        config.url,
        config.exchange,
        prefetch=config.prefetch,
        confirm_timeout=config.confirm_timeout,
        reconnect_min=config.reconnect_min,
        reconnect_max=config.reconnect_max,
    )


@dataclass
class Services:
    """The brokers by name, a hub per broker, and which broker is the default."""

    brokers: dict[str, Broker]
    default_broker: str = "memory"
    hubs: dict[str, Hub] = field(default_factory=dict)
    _started: bool = False
    _http: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: Config) -> Services:
        brokers: dict[str, Broker] = {"memory": MemoryBroker("memory")}
        for name, broker_config in config.brokers.items():
            brokers[name] = make_broker(name, broker_config)
        return cls(brokers=brokers, default_broker=config.effective_default_broker)

    @classmethod
    def memory_only(cls) -> Services:
        return cls(brokers={"memory": MemoryBroker("memory")})

    def __post_init__(self) -> None:
        for name, broker in self.brokers.items():
            self.hubs.setdefault(name, Hub(broker))

    def hub(self, name: str | None = None) -> Hub:
        """The hub of broker ``name`` (the default broker when ``None``)."""
        key = self.default_broker if name is None else name
        try:
            return self.hubs[key]
        except KeyError:
            raise UnknownBroker(f"unknown broker {key!r}") from None

    def http_session(self) -> aiohttp.ClientSession:
        """A client session for authorization endpoints, created on first use."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def start(self) -> None:
        """Start every broker. A RabbitMQ that is down does not stop the start-up: its
        broker keeps reconnecting in the background."""
        if self._started:
            return
        self._started = True
        for hub in self.hubs.values():
            await hub.start()

    def drain(self) -> None:
        """The process is shutting down: bindings will go with the brokers' queues."""
        for hub in self.hubs.values():
            hub.draining = True

    async def close(self) -> None:
        """Unbind and disconnect every broker."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if not self._started:
            return
        self._started = False
        for hub in self.hubs.values():
            try:
                await hub.close()
            except Exception:
                logger.exception("error while closing broker %s", hub.broker.name)
