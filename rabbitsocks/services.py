"""Process-wide services shared by every listener: the brokers and their pub/sub hubs.

Created once by the server (or by ``start_listener``) and handed explicitly to what needs
them, never kept in module globals.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from rabbitsocks.brokers.base import Broker
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import BrokerConfig, Config
from rabbitsocks.errors import BrokerError, UnknownBroker
from rabbitsocks.pubsub.hub import Hub

if TYPE_CHECKING:
    from rabbitsocks.brokers.amqp_channels import AmqpChannelPool

__all__ = ["Services", "make_broker"]

logger = logging.getLogger("rabbitsocks.services")


def make_broker(name: str, config: BrokerConfig) -> Broker:
    """Build (not start) the broker a ``BrokerConfig`` describes."""
    if config.type == "memory":
        return MemoryBroker(name, config.history)
    # Imported here so that a memory-only process never loads aio-pika.
    from rabbitsocks.brokers.amqp import AmqpBroker, AmqpTls

    return AmqpBroker(
        name,
        config.url,
        config.exchange,
        prefetch=config.prefetch,
        confirm_timeout=config.confirm_timeout,
        reconnect_min=config.reconnect_min,
        reconnect_max=config.reconnect_max,
        connect_timeout=config.connect_timeout,
        heartbeat=config.heartbeat,
        probe_interval=config.probe_interval,
        probe_timeout=config.probe_timeout,
        rebalance=config.rebalance,
        rebalance_interval=config.rebalance_interval,
        tls=AmqpTls.from_config(config.tls),
        history=config.history,
        history_replays=config.history_replays,
    )


@dataclass
class Services:
    """The brokers by name, a hub per broker, and which broker is the default."""

    brokers: dict[str, Broker]
    default_broker: str = "memory"
    hubs: dict[str, Hub] = field(default_factory=dict)
    _started: bool = False
    _http: aiohttp.ClientSession | None = None
    #: Hubs of further exchanges of a broker, made on first use (``exchange_hub``).
    _exchange_hubs: dict[tuple[str, str], Hub] = field(default_factory=dict)
    _exchange_hubs_lock: asyncio.Lock | None = None
    #: Channel pools of RabbitMQ brokers, made on first use (``channel_pool``).
    _channel_pools: dict[str, AmqpChannelPool] = field(default_factory=dict)

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

    async def exchange_hub(self, broker: str | None, exchange: str) -> Hub:
        """The hub fanning out messages of ``exchange`` on broker ``broker`` (the default
        one when ``None``): the broker's own hub when that is its exchange, else a hub made
        and started on first use over a sibling connection that binds to ``exchange``
        (which must exist). Raises ``UnknownBroker``, or ``BrokerError`` for a broker that
        has no exchanges (the memory broker)."""
        hub = self.hub(broker)
        rabbitmq = hub.broker.rabbitmq
        if rabbitmq is None:
            raise BrokerError(f"broker {hub.broker.name!r} has no exchanges (it is not RabbitMQ)")
        if rabbitmq.exchange == exchange:
            return hub
        key = (hub.broker.name, exchange)
        if self._exchange_hubs_lock is None:
            self._exchange_hubs_lock = asyncio.Lock()
        async with self._exchange_hubs_lock:
            extra = self._exchange_hubs.get(key)
            if extra is None:
                sibling = rabbitmq.sibling(f"{hub.broker.name}/{exchange}", exchange)
                extra = self._exchange_hubs[key] = Hub(sibling)
                extra.draining = hub.draining
                await extra.start()
        return extra

    def channel_pool(self, broker: str | None) -> AmqpChannelPool:
        """Leased AMQP channels on broker ``broker``'s RabbitMQ (per-session consumers and
        publishes); ``BrokerError`` for a broker that is not RabbitMQ."""
        hub = self.hub(broker)
        rabbitmq = hub.broker.rabbitmq
        if rabbitmq is None:
            raise BrokerError(f"broker {hub.broker.name!r} is not RabbitMQ")
        pool = self._channel_pools.get(hub.broker.name)
        if pool is None:
            from rabbitsocks.brokers.amqp_channels import AmqpChannelPool

            pool = self._channel_pools[hub.broker.name] = AmqpChannelPool(rabbitmq.connect_more)
        return pool

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
        for hub in (*self.hubs.values(), *self._exchange_hubs.values()):
            hub.draining = True

    async def close(self) -> None:
        """Unbind and disconnect every broker."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        pools, self._channel_pools = self._channel_pools, {}
        for pool in pools.values():
            await pool.close()
        extra, self._exchange_hubs = self._exchange_hubs, {}
        for hub in extra.values():
            try:
                await hub.close()
            except Exception:
                logger.exception("error while closing broker %s", hub.broker.name)
        if not self._started:
            return
        self._started = False
        for hub in self.hubs.values():
            try:
                await hub.close()
            except Exception:
                logger.exception("error while closing broker %s", hub.broker.name)
