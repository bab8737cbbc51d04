"""History on RabbitMQ: one stream queue per history pattern, consumed by every process.

``AmqpBroker`` owns the connection; it calls ``StreamHistory.session_up`` once a session
is set up and ``session_lost`` when it is gone. Everything else about streams is here.
RabbitMQ 3.10 serves streams over AMQP 0-9-1 to consumers with a ``basic.qos`` prefetch
that acknowledge what they get, starting where ``x-stream-offset`` says (``first``,
``next``, or an offset); each delivery carries its offset in the ``x-stream-offset``
header, and a consumer that asks for an offset gets that entry first, or the oldest one
retained if it is gone.

Theory of operation
-------------------
Per stream (a ``_Stream``), on each session:

1. ``session_up`` declares the stream (``x-queue-type: stream`` and the retention of its
   ``HistoryConfig``) and binds it to the exchange with the pattern. RabbitMQ refuses to
   redeclare a stream with other arguments (406): that is logged once and the stream used
   as it is (retention is the operator's once the stream exists: policies change it).
2. An attach task consumes the stream live: from ``next`` the first time, and from the
   last offset delivered to the hub after a reconnect, so what was published during the
   outage and is still retained arrives, once, in order (that first entry, already
   delivered, proves nothing was cut in between, and is skipped).
3. It publishes a *sentinel* (a marker with a nonce), so that the live flow brings an
   entry soon, and a probe reading from ``first`` cannot read past the tail.
4. The probe reads from ``first`` until the first *epoch marker*: its token is the epoch.
   Reaching our sentinel first means the stream has none: publish one with a new token,
   and read again (the first marker written wins, for every process).
5. Live deliveries wait unacknowledged (at most ``prefetch`` of them) until the epoch is
   known; then the hub is told where the live flow starts (``history_ready``) and they go.

Markers (epoch markers and sentinels) are messages published to the stream queue itself
through the default exchange, so no topic binding, and no client, ever sees one; a
delivery is one only if it came through the default exchange with the stream's name as
its routing key and has our header, which no producer publishing to the topic exchange
can fake. Every process re-publishes an epoch marker after ``MARKER_EVERY`` entries (or
``MARKER_BYTES`` of bodies) without one, so one survives retention and the probe reads
little. See docs/architecture.md, "History and resume", for why the epoch is a marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Sequence
from typing import Any

import aio_pika.abc
import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbitsocks.brokers.amqp_session import CONNECTION_ERRORS
from rabbitsocks.brokers.base import DeliveryHandler, HistorySink, ReplayHandler
from rabbitsocks.brokers.stream_reads import (
    EPOCH_HEADER,
    LIVE_PREFETCH,
    SENTINEL_HEADER,
    Acker,
    is_marker,
    offset_of,
    read,
    until,
)
from rabbitsocks.config import HistoryConfig
from rabbitsocks.errors import BrokerError, BrokerUnavailable
from rabbitsocks.messages import Delivery

__all__ = ["MARKER_EVERY", "StreamHistory"]

log = logging.getLogger(__name__)

#: Entries, and bytes of bodies, after which a process that saw no epoch marker publishes
#: one (each process jitters the count up to a quarter more, so they rarely all do).
MARKER_EVERY = 2000
MARKER_BYTES = 4 * 1024 * 1024

# What a task of a session that is going may raise: it ends quietly, the next session
# attaches again.
_QUIET_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    TimeoutError,
    BrokerUnavailable,
)


class _Stream:
    """One history pattern's stream, as this process consumes it."""

    def __init__(self, index: int, config: HistoryConfig, exchange: str) -> None:
        self.index = index
        self.config = config
        self.name = config.stream_name(exchange)
        #: The epoch, once known; kept across sessions to tell a re-created stream.
        self.epoch: str | None = None
        #: The offset of the last entry handed to the hub (a message or a marker).
        self.last: int | None = None
        #: Incremented per attach: deliveries of an older consumer are ignored.
        self.generation = 0
        #: Deliveries held until the epoch is known (``None``: live).
        self.pending: list[aiormq.abc.DeliveredMessage] | None = None
        self.arrived: asyncio.Event = asyncio.Event()
        self.since_marker = 0
        self.bytes_since_marker = 0
        self.marker_every = MARKER_EVERY + random.randrange(MARKER_EVERY // 4 + 1)
        self.marker_in_flight = False
        self.args_warned = False

    def is_marker(self, message: aiormq.abc.DeliveredMessage) -> bool:
        return is_marker(message, self.name)

    @property
    def arguments(self) -> dict[str, Any]:
        config = self.config
        return {
            "x-queue-type": "stream",
            "x-max-age": f"{max(1, int(-(-config.max_age // 1)))}s",
            "x-max-length-bytes": config.max_bytes,
            "x-stream-max-segment-size-bytes": config.stream_segment_bytes,
        }


class StreamHistory:
    """The ``BrokerHistory`` of an ``AmqpBroker``: its history patterns as streams."""

    authoritative = False

    def __init__(
        self,
        broker_name: str,
        exchange: str,
        configs: Sequence[HistoryConfig],
        *,
        max_replays: int = 16,
        timeout: float = 5.0,
    ) -> None:
        self.configs = tuple(configs)
        self.max_replays = max_replays
        self._broker = broker_name
        self._exchange = exchange
        self._timeout = timeout
        self._streams = [_Stream(i, c, exchange) for i, c in enumerate(self.configs)]
        self._sink: HistorySink | None = None
        self._on_delivery: DeliveryHandler | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publisher: aiormq.abc.AbstractChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session = 0

    def attach(self, sink: HistorySink) -> None:
        self._sink = sink

    def started(self, on_delivery: DeliveryHandler) -> None:
        """Where messages go (the broker's ``on_delivery``); called by ``start``."""
        self._on_delivery = on_delivery

    @property
    def stream_names(self) -> list[str]:
        return [s.name for s in self._streams]

    # --- the broker's hooks -------------------------------------------------------------

    def session_up(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """A session is the broker's (its set-up done, or a rebalance done): declare and
        bind every stream on its connection, and consume them there, in the background.
        Consumers of an earlier session are ignored from now on."""
        self._session += 1
        session = self._session
        self._connection = connection
        self._publisher = None
        for stream in self._streams:
            stream.generation += 1
            stream.pending = None
        self._spawn(self._set_up(connection, session), "declaring the streams")

    async def _set_up(self, connection: aio_pika.abc.AbstractConnection, session: int) -> None:
        """Declare and bind every stream, again after a failure (a node that has just
        started accepts connections a moment before its streams), then attach them."""
        delay = self._timeout / 10
        while True:
            try:
                control = await self._raw_channel(connection)
                try:
                    for stream in self._streams:
                        control = await self._declare(connection, control, stream)
                        await control.queue_bind(
                            stream.name, self._exchange, routing_key=stream.config.topics
                        )
                finally:
                    with contextlib.suppress(Exception):
                        await control.close()
                publisher = await self._raw_channel(connection, confirms=True)
                break
            except Exception as exc:
                if session != self._session or connection.is_closed:
                    return  # the next session sets up again
                log.warning("history: declaring the streams failed: %s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._timeout * 2)
        if session != self._session:
            return
        self._publisher = publisher
        for stream in self._streams:
            self._spawn(self._keep_attached(stream, session), f"attach {stream.name}")

    def session_lost(self) -> None:
        """The connection is gone, and with it every consumer: wait for the next one."""
        self._session += 1
        self._connection = None
        self._publisher = None
        for stream in self._streams:
            stream.generation += 1
            stream.pending = None

    async def close(self) -> None:
        self.session_lost()
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- declaring --------------------------------------------------------------------------

    async def _raw_channel(
        self, connection: aio_pika.abc.AbstractConnection, *, confirms: bool = False
    ) -> aiormq.abc.AbstractChannel:
        channel = connection.channel(publisher_confirms=confirms)
        async with asyncio.timeout(self._timeout):
            await channel.initialize()
            return await channel.get_underlay_channel()

    async def _declare(
        self,
        connection: aio_pika.abc.AbstractConnection,
        control: aiormq.abc.AbstractChannel,
        stream: _Stream,
    ) -> aiormq.abc.AbstractChannel:
        """Declare ``stream``; returns the control channel (a new one after a refusal)."""
        try:
            async with asyncio.timeout(self._timeout):
                await control.queue_declare(stream.name, durable=True, arguments=stream.arguments)
            return control
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # The stream exists with other arguments (another retention): use it as it is.
            if not stream.args_warned:
                stream.args_warned = True
                log.warning(
                    "history %r: stream %r exists with other arguments (%s); using it as it"
                    " is (change a stream's retention with a policy)",
                    stream.config.topics,
                    stream.name,
                    exc,
                )
        control = await self._raw_channel(connection)
        async with asyncio.timeout(self._timeout):
            await control.queue_declare(stream.name, passive=True)
        return control

    # --- attaching --------------------------------------------------------------------------

    async def _keep_attached(self, stream: _Stream, session: int) -> None:
        """Attach ``stream``, again after a failure, for as long as the session lasts."""
        delay = self._timeout / 10
        while session == self._session:
            try:
                await self._attach(stream, session)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if session != self._session:
                    return
                log.warning("history %r: attaching failed: %s; retrying", stream.name, exc)
                stream.generation += 1
                stream.pending = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._timeout * 2)

    async def _attach(self, stream: _Stream, session: int) -> None:
        connection = self._connection
        if connection is None or session != self._session:
            return
        stream.generation += 1
        generation = stream.generation
        resume_from = stream.last if stream.epoch is not None else None
        stream.pending = []
        stream.arrived = asyncio.Event()
        channel = await self._raw_channel(connection)
        await channel.basic_qos(prefetch_count=LIVE_PREFETCH)
        acker = Acker(channel, LIVE_PREFETCH)

        async def consume(message: aiormq.abc.DeliveredMessage) -> None:
            if stream.generation != generation:
                return
            pending = stream.pending
            if pending is not None:
                pending.append(message)  # acknowledged once handed over
                stream.arrived.set()
                return
            self._live(stream, message)
            await acker.ack(message)

        start: int | str = "next" if resume_from is None else resume_from
        ok = await channel.basic_consume(stream.name, consume, arguments={"x-stream-offset": start})

        def cancelled(_: object) -> None:  # the stream was deleted under our feet
            if stream.generation == generation and session == self._session:
                log.warning("history %r: RabbitMQ cancelled the stream consumer", stream.name)
                stream.generation += 1
                stream.pending = None
                self._spawn(self._reattach(stream, session), f"reattach {stream.name}")

        channel.on_consumer_cancel_callbacks.add(cancelled)
        nonce = secrets.token_hex(8)
        await self._publish_marker(stream, SENTINEL_HEADER, nonce)
        epoch = await self._probe(connection, stream, nonce)
        if stream.generation != generation:
            return
        if resume_from is not None and epoch != stream.epoch:
            # The stream was deleted and declared again while we were away: start over.
            log.warning(
                "history %r: the stream was re-created (epoch %s, was %s)",
                stream.config.topics,
                epoch,
                stream.epoch,
            )
            stream.epoch, stream.last = None, None
            await acker.close(ok.consumer_tag)
            await self._attach(stream, session)
            return
        arrived = asyncio.ensure_future(stream.arrived.wait())
        try:
            async with asyncio.timeout(self._timeout * 2):
                await until(channel, arrived)
        finally:
            arrived.cancel()
        if stream.generation != generation:
            return
        pending = stream.pending
        assert pending is not None
        first = offset_of(pending[0])
        sink = self._sink
        assert sink is not None
        skipped = None
        if resume_from is not None and first == resume_from:
            # Delivered before the outage: nothing was cut in between.
            skipped = pending.pop(0)
            after = resume_from
        else:
            after = first - 1
            if resume_from is not None:
                log.warning(
                    "history %r: retention dropped offsets %d to %d while disconnected",
                    stream.config.topics,
                    resume_from + 1,
                    first - 1,
                )
        stream.epoch = epoch
        stream.last = after
        sink.history_ready(stream.index, epoch, after)
        stream.pending = None
        for message in pending:
            self._live(stream, message)
        # Counted one by one: held back unacknowledged, they may have used all the
        # prefetch, and RabbitMQ sends nothing more until they are acknowledged.
        if skipped is not None:
            await acker.ack(skipped)
        for message in pending:
            await acker.ack(message)
        log.info(
            "history %r: stream %r live after offset %d, epoch %s",
            stream.config.topics,
            stream.name,
            after,
            epoch,
        )

    async def _reattach(self, stream: _Stream, session: int) -> None:
        await asyncio.sleep(self._timeout / 5)
        connection = self._connection
        if connection is None or session != self._session:
            return
        control = await self._raw_channel(connection)
        try:
            control = await self._declare(connection, control, stream)
            await control.queue_bind(stream.name, self._exchange, routing_key=stream.config.topics)
        finally:
            with contextlib.suppress(Exception):
                await control.close()
        await self._keep_attached(stream, session)

    def _live(self, stream: _Stream, message: aiormq.abc.DeliveredMessage) -> None:
        """One entry of the live flow, in order, once the epoch is known."""
        offset = offset_of(message)
        if stream.last is not None and offset <= stream.last:
            return  # pragma: no cover - RabbitMQ delivers each offset once, in order
        stream.last = offset
        sink, on_delivery = self._sink, self._on_delivery
        assert sink is not None
        assert on_delivery is not None
        if stream.is_marker(message):
            headers = message.header.properties.headers or {}
            if headers.get(EPOCH_HEADER) == stream.epoch:
                stream.since_marker = stream.bytes_since_marker = 0
            sink.history_position(stream.index, offset)
            return
        method = message.delivery
        try:
            on_delivery(
                Delivery(
                    method.routing_key,  # type: ignore[union-attr, arg-type]
                    message.body,
                    message.header.properties,
                    method.exchange,  # type: ignore[union-attr]
                    stream=stream.index,
                    offset=offset,
                    epoch=stream.epoch or "",
                )
            )
        except Exception:
            log.exception("history %r: on_delivery failed at %d", stream.name, offset)
        stream.since_marker += 1
        stream.bytes_since_marker += len(message.body)
        if not stream.marker_in_flight and (
            stream.since_marker >= stream.marker_every or stream.bytes_since_marker >= MARKER_BYTES
        ):
            stream.marker_in_flight = True
            self._spawn(self._remark(stream), f"marker {stream.name}")

    async def _remark(self, stream: _Stream) -> None:
        try:
            if stream.epoch is not None:
                await self._publish_marker(stream, EPOCH_HEADER, stream.epoch)
            stream.since_marker = stream.bytes_since_marker = 0
        finally:
            stream.marker_in_flight = False

    async def _publish_marker(self, stream: _Stream, header: str, value: str) -> None:
        publisher = self._publisher
        if publisher is None:
            raise BrokerUnavailable(f"broker {self._broker!r} is not connected")
        async with asyncio.timeout(self._timeout):
            await publisher.basic_publish(
                b"",
                exchange="",
                routing_key=stream.name,
                properties=Basic.Properties(headers={header: value}, delivery_mode=2),
            )

    async def _probe(
        self, connection: aio_pika.abc.AbstractConnection, stream: _Stream, nonce: str
    ) -> str:
        """The epoch: the token of the first epoch marker (see the module's docstring)."""
        for until_sentinel in (True, False):
            # The second time, one epoch marker at least is there: ours.
            found = await self._scan(connection, stream, nonce if until_sentinel else None)
            if found is not None:
                return found
            token = secrets.token_urlsafe(6)
            log.info(
                "history %r: a new epoch %s for stream %r", stream.config.topics, token, stream.name
            )
            await self._publish_marker(stream, EPOCH_HEADER, token)
        raise BrokerError(f"history {stream.name!r}: no epoch marker after publishing one")

    async def _scan(
        self, connection: aio_pika.abc.AbstractConnection, stream: _Stream, nonce: str | None
    ) -> str | None:
        """Read from ``first`` to the first epoch marker (its token) or, if ``nonce`` is
        given, to our sentinel (``None``)."""
        found: list[str | None] = []
        read_count = 0

        def on_entry(offset: int, message: aiormq.abc.DeliveredMessage, marker: bool) -> bool:
            nonlocal read_count
            read_count += 1
            if marker:
                headers = message.header.properties.headers or {}
                token = headers.get(EPOCH_HEADER)
                if isinstance(token, str) and token:
                    found.append(token)
                    return False
                if nonce is not None and headers.get(SENTINEL_HEADER) == nonce:
                    found.append(None)
                    return False
            return True

        try:
            await read(await self._raw_channel(connection), stream.name, "first", on_entry)
        finally:
            if read_count > 2 * MARKER_EVERY:
                log.info("history %r: read %d entries to find the epoch", stream.name, read_count)
        return found[0]

    # --- replays ----------------------------------------------------------------------------

    async def replay(self, stream: int, start: int, handler: ReplayHandler) -> None:
        state = self._streams[stream]
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable(f"broker {self._broker!r} is not connected")
        epoch = state.epoch or ""

        def on_entry(offset: int, message: aiormq.abc.DeliveredMessage, marker: bool) -> bool:
            if marker:
                return handler(offset, None)
            method = message.delivery
            delivery = Delivery(
                method.routing_key,  # type: ignore[union-attr, arg-type]
                message.body,
                message.header.properties,
                method.exchange,  # type: ignore[union-attr]
                stream=stream,
                offset=offset,
                epoch=epoch,
            )
            return handler(offset, delivery)

        try:
            channel = await self._raw_channel(connection)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"broker {self._broker!r}: {exc}") from exc
        await read(channel, state.name, start, on_entry)

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(self._logged(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, coro: Any, what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except _QUIET_ERRORS as exc:
            # The session is going: the next one attaches again.
            log.debug("history: %s: %s", what, exc)
        except Exception:
            log.exception("history: %s failed", what)
