"""An in-process broker: the same routing as a RabbitMQ topic exchange, no RabbitMQ.

It is the embedded default (``rabbitsocks serve`` with no configuration). Messages published
to it are delivered synchronously to the hub, on the event loop, to the patterns bound at
the time of the publish.

With history patterns, every message a pattern matches is also delivered as an entry of
that pattern's log (its ``stream``, the next ``offset``, the process's ``epoch``), bound or
not: the hub keeps the log itself (``MemoryHistory.authoritative``), bounded as configured.
A message matched by a log and by a binding is delivered once for each, and the hub sends
each subscriber one copy (see pubsub/hub.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from rabbitsocks.brokers.base import DeliveryHandler, HistorySink, ReplayHandler, StateHandler
from rabbitsocks.config import HistoryConfig
from rabbitsocks.errors import BrokerError, BrokerUnavailable
from rabbitsocks.messages import Delivery
from rabbitsocks.topics import TopicTrie

__all__ = ["MemoryBroker", "MemoryHistory", "new_epoch"]


def new_epoch() -> str:
    """A fresh epoch token: 8 URL-safe characters (48 random bits)."""
    return secrets.token_urlsafe(6)


class MemoryHistory:
    """The logs of a memory broker: offsets from 0 and one epoch per broker instance.

    The log of each process is its own, so a position from another process (another
    epoch) answers ``recovered: false``.
    """

    authoritative = True

    #: Nothing is read from elsewhere (the hub's log is the whole history): no bound needed.
    max_replays = 16

    def __init__(self, configs: Sequence[HistoryConfig], epoch: str | None = None) -> None:
        self.configs = tuple(configs)
        self.epoch = epoch or new_epoch()
        self._next = [0] * len(self.configs)
        self._trie: TopicTrie[int] = TopicTrie()
        for index, config in enumerate(self.configs):
            self._trie.add(config.topics, index)
        self._sink: HistorySink | None = None

    def attach(self, sink: HistorySink) -> None:
        self._sink = sink

    def started(self) -> None:
        if self._sink is not None:
            for index in range(len(self.configs)):
                self._sink.history_ready(index, self.epoch, -1)

    def entries(self, topic: str, body: bytes) -> list[Delivery]:
        """The log entries a message published to ``topic`` makes, one per matching log."""
        if not self.configs:
            return []
        matched = self._trie.match(topic)
        if not matched:
            return []
        out = []
        for index in sorted(matched):
            offset = self._next[index]
            self._next[index] = offset + 1
            out.append(Delivery(topic, body, stream=index, offset=offset, epoch=self.epoch))
        return out

    async def replay(self, stream: int, start: int, handler: ReplayHandler) -> None:
        # The hub's log is the whole history: there is nothing older to read.
        raise BrokerError("the memory broker keeps no history beyond the hub's log")


class MemoryBroker:
    """A topic router in this process."""

    def __init__(
        self,
        name: str = "memory",
        history: Sequence[HistoryConfig] = (),
        *,
        epoch: str | None = None,
    ) -> None:
        self.name = name
        self._on_delivery: DeliveryHandler | None = None
        self._patterns: TopicTrie[str] = TopicTrie()
        self._closed = False
        #: The history logs, when history patterns are configured.
        self.history: MemoryHistory | None = MemoryHistory(history, epoch) if history else None
        #: Not RabbitMQ: no exchanges, queues or nodes (``Broker.rabbitmq``).
        self.rabbitmq: None = None

    @property
    def connected(self) -> bool:
        return self._on_delivery is not None and not self._closed

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        self._on_delivery = on_delivery
        if self.history is not None:
            self.history.started()
        if on_state is not None:
            on_state(True)

    async def bind(self, pattern: str) -> None:
        if not self.connected:
            raise BrokerUnavailable(f"broker {self.name!r} is not started")
        self._patterns.add(pattern, pattern)

    async def unbind(self, pattern: str) -> None:
        self._patterns.discard(pattern, pattern)

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        on_delivery = self._on_delivery
        if on_delivery is None or self._closed:
            raise BrokerUnavailable(f"broker {self.name!r} is not started")
        if self.history is not None:
            # Like a stream bound to the exchange: logged whether or not anyone listens.
            for entry in self.history.entries(topic, body):
                on_delivery(entry)
        # A topic exchange delivers a message once per queue, however many of the queue's
        # bindings match it (AMQP 0-9-1, 3.1.3.3): one delivery if anything matches.
        if self._patterns.matches_any(topic):
            on_delivery(Delivery(topic, body))

    async def close(self) -> None:
        self._closed = True
        self._patterns = TopicTrie()
