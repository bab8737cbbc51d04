"""AMQP channels leased to sessions: queue consumers with acknowledgements, and publishes
with properties and confirms, for what the hub's one queue per process cannot do.

The hub fans out ephemeral messages from one exclusive queue (``amqp.py``). A STOMP
session that subscribes to a queue needs its own consumer, with a prefetch and manual
ACK/NACK, and a SEND may publish to any exchange with AMQP properties and wait for the
confirm behind a receipt. Those need channels of their own: delivery tags, prefetch and a
channel error (a 404 for a queue that does not exist) all belong to a channel.

Theory of operation
-------------------
An ``AmqpChannelPool`` holds a few AMQP connections of its own, opened through the
process's ``AmqpBroker`` (same RabbitMQ, same settings). ``lease`` opens a channel, in
publisher-confirm mode, for one session, on a connection that has room (at most
``CHANNELS_PER_CONNECTION``; RabbitMQ's default ``channel_max`` is 2047), opening another
connection when none has. The lease is the session's until it ``close``s it.

A ``LeasedChannel`` is what a session uses: declare and bind queues, consume, cancel, ack,
nack, publish. When RabbitMQ closes the channel (a channel error: 404, 403, 406 such as
"unknown delivery tag") or its connection goes, the lease calls the session's ``on_close``
once with the reason, and every later call raises ``BrokerError``. There is no transparent
recovery: the delivery tags, consumers and unacknowledged messages of a channel die with it
(RabbitMQ requeues the unacknowledged ones), so the session tells its client (a STOMP ERROR)
and the client reconnects, as it would with Web-STOMP.

This module and ``amqp.py`` are the only ones that import aio-pika; every error it raises
is translated here into ``BrokerUnavailable``, ``PublishFailed`` or ``BrokerError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbitsocks.errors import BrokerError, BrokerUnavailable, PublishFailed
from rabbitsocks.messages import MessageProperties

__all__ = ["AmqpChannelPool", "LeasedChannel", "QueueMessage"]

log = logging.getLogger(__name__)

#: Opens an AMQP connection to the broker's RabbitMQ (``AmqpBroker.connect_more``).
Connect = Callable[[str], Awaitable[aio_pika.abc.AbstractConnection]]


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One message delivered to a leased channel's consumer."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    body: bytes
    properties: MessageProperties


#: Called once per message, on the event loop; must not block.
OnMessage = Callable[[QueueMessage], None]


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, aiormq.exceptions.AMQPError) and exc.args:
        frame = exc.args[0] if len(exc.args) == 1 else exc.args[-1]
        text = getattr(frame, "reply_text", None)
        code = getattr(frame, "reply_code", None)
        if text:
            return f"{code} {text}" if code else str(text)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    OSError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    TimeoutError,
)


class _Connection:
    __slots__ = ("channels", "connection")

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self.connection = connection
        self.channels = 0

    @property
    def usable(self) -> bool:
        return not self.connection.is_closed


class AmqpChannelPool:
    """A few AMQP connections whose channels are leased to sessions."""

    #: Channels per connection: below RabbitMQ's default channel_max (2047).
    CHANNELS_PER_CONNECTION = 1000

    def __init__(self, connect: Connect, *, request_timeout: float = 5.0) -> None:
        self._connect = connect
        self._request_timeout = request_timeout
        self._connections: list[_Connection] = []
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def channels(self) -> int:
        """Channels leased now, for metrics and tests."""
        return sum(c.channels for c in self._connections)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def lease(self, on_close: Callable[[str], None]) -> LeasedChannel:
        """A new channel; ``on_close(reason)`` is called once if RabbitMQ or the connection
        closes it. Raises ``BrokerUnavailable`` when RabbitMQ cannot be reached."""
        async with self._lock:
            if self._closed:
                raise BrokerUnavailable("the channel pool is closed")
            holder = self._room()
            if holder is None:
                try:
                    connection = await self._connect("sessions")
                except BrokerError:
                    raise
                except _CONNECT_ERRORS as exc:
                    raise BrokerUnavailable(f"cannot connect to RabbitMQ: {_reason(exc)}") from exc
                holder = _Connection(connection)
                self._connections.append(holder)
            holder.channels += 1
        try:
            async with asyncio.timeout(self._request_timeout):
                channel = holder.connection.channel(publisher_confirms=True)
                await channel.initialize()
                raw = await channel.get_underlay_channel()
        except BaseException as exc:
            self.give_back(holder)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BrokerUnavailable(f"cannot open an AMQP channel: {_reason(exc)}") from exc
        return LeasedChannel(self, holder, channel, raw, on_close, self._request_timeout)

    def _room(self) -> _Connection | None:
        for holder in self._connections:
            if holder.usable and holder.channels < self.CHANNELS_PER_CONNECTION:
                return holder
        return None

    def give_back(self, holder: _Connection) -> None:
        """A lease on ``holder`` ended: one channel fewer; an idle spare connection goes."""
        holder.channels -= 1
        if holder.channels > 0:
            return
        # An idle connection goes, unless it is the last usable one.
        others = [c for c in self._connections if c is not holder and c.usable]
        if others or not holder.usable:
            self._connections.remove(holder)
            if holder.usable:
                asyncio.get_running_loop().create_task(_close_quietly(holder.connection))

    async def close(self) -> None:
        """Close every connection (and so every leased channel). Idempotent."""
        self._closed = True
        connections, self._connections = self._connections, []
        for holder in connections:
            await _close_quietly(holder.connection)


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()


class LeasedChannel:
    """One session's AMQP channel (publisher confirms on)."""

    __slots__ = (
        "_channel",
        "_closed_reason",
        "_holder",
        "_on_cancel",
        "_on_close",
        "_pool",
        "_raw",
        "_released",
        "_timeout",
    )

    def __init__(
        self,
        pool: AmqpChannelPool,
        holder: _Connection,
        channel: aio_pika.abc.AbstractChannel,
        raw: aiormq.abc.AbstractChannel,
        on_close: Callable[[str], None],
        timeout: float,
    ) -> None:
        self._pool = pool
        self._holder = holder
        self._channel = channel
        self._raw = raw
        self._on_close: Callable[[str], None] | None = on_close
        #: Consumer tag -> what to call if RabbitMQ cancels that consumer.
        self._on_cancel: dict[str, Callable[[str], None]] | None = None
        self._closed_reason: str | None = None
        self._released = False
        self._timeout = timeout
        channel.close_callbacks.add(self._closed_by_peer)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None or self._raw.is_closed

    def _closed_by_peer(self, _: object, exc: BaseException | None) -> None:
        if self._closed_reason is None:
            self._closed_reason = _reason(exc)
        self._release()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            try:
                callback(self._closed_reason)
            except Exception:
                log.exception("on_close of a leased channel failed")

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.give_back(self._holder)

    def _error(self, what: str, exc: BaseException) -> BrokerError:
        if isinstance(exc, aiormq.exceptions.AMQPChannelError):
            return BrokerError(f"RabbitMQ refused {what}: {_reason(exc)}")
        if isinstance(exc, TimeoutError):
            return BrokerUnavailable(f"RabbitMQ did not answer {what} within {self._timeout:g}s")
        if self._closed_reason is not None:
            return BrokerError(f"RabbitMQ closed the channel: {self._closed_reason}")
        return BrokerUnavailable(f"{what} failed: {_reason(exc)}")

    async def _rpc(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._closed_reason is not None:
            raise BrokerError(f"RabbitMQ closed the channel: {self._closed_reason}")
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from exc

    # --- queues ---------------------------------------------------------------------------

    async def declare_queue(
        self,
        name: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Declare ``name`` (``""``: a server-named queue); returns the queue's name."""
        declared = await self._rpc(
            f"to declare queue {name!r}",
            lambda: self._raw.queue_declare(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments or {}),
            ),
        )
        return str(declared.queue)

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._rpc(
            f"to bind a queue to exchange {exchange!r}",
            lambda: self._raw.queue_bind(queue, exchange, routing_key=routing_key),
        )

    async def delete_queue(self, queue: str) -> None:
        await self._rpc(f"to delete queue {queue!r}", lambda: self._raw.queue_delete(queue))

    # --- consuming ------------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        on_message: OnMessage,
        *,
        consumer_tag: str,
        no_ack: bool,
        prefetch: int,
        on_cancel: Callable[[str], None],
    ) -> None:
        """Consume ``queue``. ``prefetch`` bounds this consumer's unacknowledged messages
        (``basic.qos`` with global false applies to the consumers started after it)."""

        async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            method = message.delivery
            assert isinstance(method, Basic.Deliver)
            try:
                on_message(
                    QueueMessage(
                        consumer_tag,
                        method.delivery_tag or 0,
                        bool(method.redelivered),
                        method.exchange or "",
                        method.routing_key or "",
                        message.body,
                        message.header.properties,
                    )
                )
            except Exception:
                log.exception("a consumer of queue %r failed", queue)

        if not no_ack:
            await self._rpc("basic.qos", lambda: self._raw.basic_qos(prefetch_count=prefetch))
        if self._on_cancel is None:
            self._on_cancel = {}
            self._raw.on_consumer_cancel_callbacks.add(self._cancelled_by_peer)
        self._on_cancel[consumer_tag] = on_cancel
        await self._rpc(
            f"to consume queue {queue!r}",
            lambda: self._raw.basic_consume(
                queue, deliver, no_ack=no_ack, consumer_tag=consumer_tag
            ),
        )

    def _cancelled_by_peer(self, frame: Basic.Cancel) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted, say)."""
        handlers = self._on_cancel or {}
        callback = handlers.pop(str(frame.consumer_tag), None)
        if callback is not None:
            callback(str(frame.consumer_tag))

    async def cancel(self, consumer_tag: str) -> None:
        if self._on_cancel is not None:
            self._on_cancel.pop(consumer_tag, None)
        await self._rpc("basic.cancel", lambda: self._raw.basic_cancel(consumer_tag))

    async def ack(self, delivery_tag: int, *, multiple: bool) -> None:
        await self._rpc(
            "basic.ack", lambda: self._raw.basic_ack(delivery_tag, multiple=multiple, wait=False)
        )

    async def nack(self, delivery_tag: int, *, multiple: bool, requeue: bool) -> None:
        await self._rpc(
            "basic.nack",
            lambda: self._raw.basic_nack(
                delivery_tag, multiple=multiple, requeue=requeue, wait=False
            ),
        )

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any]
    ) -> None:
        """Publish and wait for RabbitMQ's confirm. ``PublishFailed`` on a nack or no
        confirm in time; ``BrokerError`` when RabbitMQ refuses it with a channel error (an
        exchange that does not exist)."""
        if self._closed_reason is not None:
            raise BrokerError(f"RabbitMQ closed the channel: {self._closed_reason}")
        where = f"exchange {exchange!r}" if exchange else f"queue {routing_key!r}"
        try:
            await self._raw.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=Basic.Properties(**properties),
                timeout=self._timeout,
            )
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishFailed(f"RabbitMQ refused the message to {where} (nack)") from exc
        except TimeoutError as exc:
            raise PublishFailed(
                f"the message to {where} was not confirmed within {self._timeout:g}s"
            ) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._error(f"the message to {where}", exc) from exc

    async def close(self) -> None:
        """Give the channel back (its consumers stop; unacknowledged messages are requeued
        by RabbitMQ). Idempotent; ``on_close`` is not called."""
        self._on_close = None
        if self._closed_reason is None:
            self._closed_reason = "closed by the session"
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await self._channel.close()
        self._release()
