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
are a trie walk, done only when patterns exist. Each subscription names an ``Encoder`` (its
callback's wire format); the message is encoded once per encoder into a ``SharedFrame``,
not once per recipient, and handed to each recipient writer's ``send_shared``, which writes
it to the socket's buffer without a task or a coroutine. A subscription joined through
several matching patterns is in the matched set once, so it gets the message once.

*History* (``resume.py``, ``history.py``): a topic covered by one of the broker's history
patterns binds nothing on the queue; its messages come from that pattern's log, which has
a routing table of its own, and a join may carry positions to resume from. The queue's
path above is unchanged but for two checks, and a clock read for ``#gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping

from rabbitsocks.brokers.base import Broker
from rabbitsocks.errors import BrokerError
from rabbitsocks.frames import SharedFrame
from rabbitsocks.messages import Delivery, Encoder
from rabbitsocks.pubsub.history import ALREADY_JOINED, NO_HISTORY, Position
from rabbitsocks.pubsub.resume import Histories, notify_gap, wall_ms
from rabbitsocks.pubsub.subscription import (
    FanoutWriter,
    GapHandler,
    JoinResult,
    Subscription,
)
from rabbitsocks.topics import TopicTrie, is_pattern

_monotonic = time.monotonic

__all__ = ["FanoutWriter", "GapHandler", "Hub", "JoinResult", "Subscription"]

logger = logging.getLogger("rabbitsocks.hub")


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
        self._exact: dict[str, set[Subscription]] = {}
        self._patterns: TopicTrie[Subscription] = TopicTrie()
        self._joined: dict[Subscription, set[str]] = {}
        self._bindings: dict[str, _Binding] = {}
        #: The broker's history logs, if it has any (pubsub/history.py).
        self.history: Histories | None = None
        history = broker.history
        if history is not None:
            self.history = Histories(
                history, self.fan_out, self.encode, broker.name, history.max_replays
            )
        #: When the queue last delivered, and when the broker last came up (monotonic).
        self._last_delivery = 0.0
        self._up_since = time.monotonic()
        self._down_since: float | None = None
        #: Messages received from the broker, frames handed to connections, topics joined
        #: and left. (Bytes are counted by the transports, which know their framing.)
        self.messages_in = 0
        self.deliveries_out = 0
        self.joins = 0
        self.leaves = 0
        #: Messages some subscribers' format could not carry (pubsub: a key not UTF-8).
        self.dropped = 0
        #: Set when the process shuts down: the broker's queue goes with its connection,
        #: taking every binding along, so leaving connections need not unbind one by one.
        self.draining = False

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.deliver, self._on_state)

    async def close(self) -> None:
        if self.history is not None:
            await self.history.close()
        await self.broker.close()

    def _on_state(self, connected: bool) -> None:
        # The broker itself logs each outage and recovery once, with its reason.
        logger.debug("broker %s %s", self.broker.name, "up" if connected else "down")
        now = time.monotonic()
        if not connected:
            # The queue went with the connection: anything routed to it since its last
            # delivery (or its start) may be lost. Said once the broker is back.
            if self._down_since is None:
                self._down_since = max(self._up_since, self._last_delivery)
            return
        self._up_since = now
        since, self._down_since = self._down_since, None
        if since is not None:
            self._gap(since, now)

    def _gap(self, since: float, until: float) -> None:
        """Tell each subscription its topics without history that messages published
        between ``since`` and ``until`` (monotonic) may be missing."""
        start_ms, end_ms = wall_ms(since), wall_ms(until)
        history = self.history
        for sub, topics in list(self._joined.items()):
            if sub.on_gap is None or not topics:
                continue
            live = sorted(t for t in topics if history is None or not history.serves(sub, t))
            if live:
                notify_gap(sub, live, start_ms, end_ms)

    @property
    def connected(self) -> bool:
        return self.broker.connected

    # --- subscribers ----------------------------------------------------------------------

    def register(
        self, writer: FanoutWriter, encoder: Encoder, on_gap: GapHandler | None = None
    ) -> Subscription:
        """A new subscription sending to ``writer`` in ``encoder``'s format, able to join.

        ``on_gap`` is told when messages of its topics may have been missed (``#gap``).
        Undo it with ``unregister`` (a callback does so in ``terminate``).
        """
        sub = Subscription(writer, encoder, on_gap)
        self._joined[sub] = set()
        return sub

    async def unregister(self, sub: Subscription) -> None:
        """Leave every topic ``sub`` joined; joins still in flight are undone."""
        topics = self._joined.pop(sub, None)
        if topics:
            await self._leave_topics(sub, sorted(topics), JoinResult())

    def topics_of(self, sub: Subscription) -> frozenset[str]:
        return frozenset(self._joined.get(sub, ()))

    @property
    def live_topics(self) -> int:
        """Distinct topics and patterns bound on the broker by this process."""
        return len(self._bindings)

    @property
    def subscribers(self) -> int:
        return len(self._joined)

    async def join(
        self,
        sub: Subscription,
        topics: Iterable[str],
        since: Mapping[str, Position] | None = None,
    ) -> JoinResult:
        """Join valid ``topics``; returns once every binding is in effect on the broker.

        Deliveries to ``sub`` start only when every topic is done, all at once and just
        before returning: a message of a topic must not reach the connection ahead of the
        ``@join`` that lists it (each bind suspends, and the answer is sent after the last).

        A topic served by a history log (see ``Histories``) binds nothing; with a position
        in ``since``, the messages after it come in ``result.replay``, to be sent right after
        the answer, and ``result.resumed`` says whether they are all there.
        """
        result = JoinResult()
        history = self.history
        joined = self._joined.get(sub)
        plan = None
        if history is not None and joined is not None:
            plan = history.plan(sub, result, joined)
        for topic in topics:
            joined = self._joined.get(sub)
            position = since.get(topic) if since else None
            if joined is None:
                result.refuse(topic, "connection closed")
                continue
            if topic in joined:
                result.done.append(topic)
                if position is not None:
                    result.resumed[topic] = ALREADY_JOINED
                continue
            taken = await plan.add(topic, position) if plan is not None else None
            if taken:
                joined.add(topic)
                self.joins += 1
                result.done.append(topic)
            elif taken is None:
                await self._join_one(sub, topic, result)
                if position is not None and topic in joined:
                    result.resumed[topic] = NO_HISTORY
        try:
            if plan is not None:
                await plan.resume()
            if self._joined.get(sub) is not None:  # else unregister() undid the joins
                for topic in result.done:
                    if plan is not None and topic in plan.topics:
                        continue
                    if is_pattern(topic):
                        self._patterns.add(topic, sub)
                    else:
                        self._exact.setdefault(topic, set()).add(sub)
                if plan is not None:
                    plan.finish()
        finally:
            if plan is not None:
                plan.release()
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

    async def _join_one(self, sub: Subscription, topic: str, result: JoinResult) -> None:
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

    async def leave(self, sub: Subscription, topics: Iterable[str]) -> JoinResult:
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

    async def _leave_topics(self, sub: Subscription, topics: list[str], result: JoinResult) -> None:
        history = self.history
        if history is not None:
            rest = history.leave(sub, topics, self._joined.get(sub, ()))
            for topic in topics:
                if topic not in rest:
                    self.leaves += 1
                    result.done.append(topic)
            topics = rest
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

    def deliver(self, delivery: Delivery) -> None:
        """Hand one broker message to every local subscription whose topics match it."""
        history = self.history
        if delivery.stream is not None and history is not None:
            history.deliver(delivery)  # an entry of a history log: positions, resumes
            return
        self.messages_in += 1
        self._last_delivery = _monotonic()
        routing_key = delivery.routing_key
        subs: set[Subscription] | None = self._exact.get(routing_key)
        if self._patterns:
            matched = self._patterns.match(routing_key)
            if matched:
                subs = matched | subs if subs else matched
        if not subs:
            return
        if history is not None and history.overlapping:
            # Subscriptions that get this message from a history log too get it once.
            subs = history.without_logged(routing_key, subs)
        self.fan_out(delivery, subs)  # one call per message, not per recipient

    def fan_out(self, delivery: Delivery, subs: Iterable[Subscription]) -> None:
        """Send ``delivery`` to ``subs``, encoded once per encoder (history logs' path)."""
        routing_key = delivery.routing_key
        encoder: Encoder | None = None
        frame: SharedFrame | None = None
        sent = 0
        for sub in subs:
            if sub.encoder is not encoder:  # most messages have one format for everyone
                encoder = sub.encoder
                frame = self.encode(delivery, encoder)
            if frame is None:
                continue
            try:
                sub.send(frame)
                sent += 1
            except Exception:  # one broken connection must not starve the others
                logger.exception("delivery of %r failed on one connection", routing_key)
        self.deliveries_out += sent

    def encode(self, delivery: Delivery, encoder: Encoder) -> SharedFrame | None:
        try:
            frame = delivery.encoded(encoder)
        except Exception:
            frame = None
            logger.exception("encoding a message to %r failed", delivery.routing_key)
        if frame is None:
            # A message this format cannot carry (pubsub: a routing key that is not UTF-8).
            self.dropped += 1
            if self.dropped == 1 or logger.isEnabledFor(logging.DEBUG):
                logger.warning(
                    "dropped a message to %r that a subscriber's format cannot carry"
                    " (further ones are counted in rabbitsocks_messages_dropped)",
                    delivery.routing_key.encode("utf-8", "surrogateescape"),
                )
        return frame
