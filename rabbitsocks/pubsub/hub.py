"""The hub: which local connections joined which topics, and fan-out of broker deliveries.

One hub per broker per process. It owns the reference counts of the broker's bindings: the
first local connection to join a topic or pattern makes the broker bind it, the last to
leave (or disconnect) makes it unbind, so the broker holds one binding per distinct topic
per process however many sockets joined it.

Theory of operation
-------------------
*Control* (join, leave) is async and rare. Operations on one pattern are serialised by that
pattern's lock, so a bind and an unbind of the same pattern never race: a join that arrives
while the last leaver's unbind is in flight waits for it, then binds again. A join returns
only once the broker answered the bind, so a message published after the client received
``@join`` reaches it.

*Fan-out* (``deliver``) is sync and hot. Exact topics are a dict lookup; wildcard patterns
are a trie walk, done only when patterns exist. The outgoing frame is encoded once per
message into a ``SharedFrame`` and handed to each recipient's ``send_shared``, which writes
it to the socket's buffer without a task or a coroutine. A connection joined through several
matching patterns is in the matched set once, so it gets the message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rabbitsocks.brokers.base import Broker
from rabbitsocks.errors import BrokerError
from rabbitsocks.frames import SharedFrame
from rabbitsocks.pubsub.protocol import encode_message
from rabbitsocks.topics import TopicTrie, is_pattern

__all__ = ["Hub", "JoinResult", "Subscriber"]

logger = logging.getLogger("rabbitsocks.hub")


class Subscriber(Hashable, Protocol):
    """A connection as the hub sees it."""

    def send_shared(self, frame: SharedFrame) -> None: ...


@dataclass(slots=True)
class JoinResult:
    """The outcome of a join or a leave: topics done, and topics refused by reason."""

    done: list[str] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)

    def refuse(self, topic: str, reason: str) -> None:
        self.refused.setdefault(reason, []).append(topic)


class _Binding:
    """A pattern's local reference count and the lock serialising its bind and unbind."""

    __slots__ = ("count", "lock", "users")

    def __init__(self) -> None:
        self.count = 0  # local connections joined
        self.users = 0  # operations holding or waiting for the lock
        self.lock = asyncio.Lock()


class Hub:
    """Subscriptions to one broker, shared by every listener of the process."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._exact: dict[str, set[Subscriber]] = {}
        self._patterns: TopicTrie[Subscriber] = TopicTrie()
        self._joined: dict[Subscriber, set[str]] = {}
        self._bindings: dict[str, _Binding] = {}
        #: Messages received from the broker, frames handed to connections and their bytes
        #: (as WebSocket frames), topics joined and left.
        self.messages_in = 0
        self.deliveries_out = 0
        self.delivery_bytes = 0
        self.joins = 0
        self.leaves = 0
        #: Messages that could not be pushed (a routing key that is not UTF-8).
        self.dropped = 0
        #: Set when the process shuts down: the broker's queue goes with its connection,
        #: taking every binding along, so leaving connections need not unbind one by one.
        self.draining = False

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.deliver, self._on_state)

    async def close(self) -> None:
        await self.broker.close()

    def _on_state(self, connected: bool) -> None:
        # The broker itself logs each outage and recovery once, with its reason.
        logger.debug("broker %s %s", self.broker.name, "up" if connected else "down")

    @property
    def connected(self) -> bool:
        return self.broker.connected

    # --- subscribers ----------------------------------------------------------------------

    def register(self, sub: Subscriber) -> None:
        """Make ``sub`` able to join. Call once, from the callback's ``open``."""
        self._joined.setdefault(sub, set())

    async def unregister(self, sub: Subscriber) -> None:
        """Leave every topic ``sub`` joined; joins still in flight are undone."""
        topics = self._joined.pop(sub, None)
        if topics:
            await self._leave_topics(sub, sorted(topics), JoinResult())

    def topics_of(self, sub: Subscriber) -> frozenset[str]:
        return frozenset(self._joined.get(sub, ()))

    @property
    def live_topics(self) -> int:
        """Distinct topics and patterns bound on the broker by this process."""
        return len(self._bindings)

    @property
    def subscribers(self) -> int:
        return len(self._joined)

    async def join(self, sub: Subscriber, topics: Iterable[str]) -> JoinResult:
        """Join valid ``topics``; returns once every binding is in effect on the broker.

        Deliveries to ``sub`` start only when every topic is done, all at once and just
        before returning: a message of a topic must not reach the connection ahead of the
        ``@join`` that lists it (each bind suspends, and the answer is sent after the last).
        """
        result = JoinResult()
        for topic in topics:
            joined = self._joined.get(sub)
            if joined is None:
                result.refuse(topic, "connection closed")
            elif topic in joined:
                result.done.append(topic)
            else:
                await self._join_one(sub, topic, result)
        if self._joined.get(sub) is not None:  # else unregister() undid the joins
            for topic in result.done:
                if is_pattern(topic):
                    self._patterns.add(topic, sub)
                else:
                    self._exact.setdefault(topic, set()).add(sub)
        return result

    @contextlib.asynccontextmanager
    async def _locked(self, topic: str) -> AsyncIterator[_Binding]:
        """The pattern's binding, with its lock held; forgotten once unused."""
        binding = self._bindings.get(topic)
        if binding is None:
            binding = self._bindings[topic] = _Binding()
        binding.users += 1
        try:
            async with binding.lock:
                yield binding
        finally:
            binding.users -= 1
            if binding.users == 0 and binding.count == 0 and self._bindings.get(topic) is binding:
                del self._bindings[topic]

    async def _join_one(self, sub: Subscriber, topic: str, result: JoinResult) -> None:
        async with self._locked(topic) as binding:
            joined = self._joined.get(sub)
            if joined is None:  # unregistered while waiting for the lock
                result.refuse(topic, "connection closed")
                return
            if topic in joined:  # joined meanwhile
                result.done.append(topic)
                return
            if binding.count == 0:
                try:
                    await self.broker.bind(topic)
                except BrokerError as exc:
                    result.refuse(topic, str(exc) or "broker unavailable")
                    return
                if self._joined.get(sub) is not joined:  # left while we were binding
                    await self._unbind_quietly(topic)
                    result.refuse(topic, "connection closed")
                    return
            binding.count += 1
            self.joins += 1
            joined.add(topic)  # delivered to once join() is done with every topic
            result.done.append(topic)

    async def leave(self, sub: Subscriber, topics: Iterable[str]) -> JoinResult:
        """Leave ``topics``. Leaving a topic not joined is refused with a reason."""
        result = JoinResult()
        joined = self._joined.get(sub)
        if joined is None:
            for topic in topics:
                result.refuse(topic, "connection closed")
            return result
        mine = []
        for topic in topics:
            if topic in joined:
                joined.discard(topic)
                mine.append(topic)
            else:
                result.refuse(topic, "not joined")
        await self._leave_topics(sub, mine, result)
        return result

    async def _leave_topics(self, sub: Subscriber, topics: list[str], result: JoinResult) -> None:
        # Stop delivering at once, before any await: after @leave nothing more arrives.
        for topic in topics:
            if is_pattern(topic):
                self._patterns.discard(topic, sub)
            else:
                subs = self._exact.get(topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._exact[topic]
        for topic in topics:
            async with self._locked(topic) as binding:
                binding.count -= 1
                if binding.count == 0:
                    await self._unbind_quietly(topic)
            self.leaves += 1
            result.done.append(topic)

    async def _unbind_quietly(self, topic: str) -> None:
        if self.draining:
            return
        try:
            await self.broker.unbind(topic)
        except BrokerError as exc:
            # The binding dies with the queue when the broker connection is gone anyway.
            logger.warning("unbinding %r from broker %s failed: %s", topic, self.broker.name, exc)

    # --- fan-out: the hot path --------------------------------------------------------------

    def deliver(self, routing_key: str, body: bytes) -> None:
        """Hand one broker message to every local connection whose topics match it."""
        self.messages_in += 1
        subs: set[Subscriber] | None = self._exact.get(routing_key)
        if self._patterns:
            matched = self._patterns.match(routing_key)
            if matched:
                subs = matched | subs if subs else matched
        if not subs:
            return
        try:
            frame = SharedFrame(encode_message(routing_key, body))
        except TypeError:  # orjson: a routing key that is not UTF-8 (see brokers/amqp.py)
            self.dropped += 1
            logger.warning(
                "dropped a message whose routing key is not UTF-8: %r",
                routing_key.encode("utf-8", "surrogateescape"),
            )
            return
        sent = 0
        for sub in subs:
            try:
                sub.send_shared(frame)
                sent += 1
            except Exception:  # one broken connection must not starve the others
                logger.exception("delivery of %r failed on one connection", routing_key)
        self.deliveries_out += sent
        self.delivery_bytes += sent * len(frame.websocket())
