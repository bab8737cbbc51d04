"""Reading a RabbitMQ stream over AMQP 0-9-1: the pieces ``streams.py`` consumes with.

RabbitMQ 3.10 serves a stream to a consumer that has a ``basic.qos`` prefetch and
acknowledges what it receives, from where ``x-stream-offset`` says (``first``, ``next``, an
offset); each delivery carries its offset in its ``x-stream-offset`` header, and a consumer
that asks for an offset gets that entry first, or the oldest one retained if it is gone.

Markers: messages rabbitsocks publishes to a stream queue itself, through the default
exchange, so that no binding (hence no client) sees one. A delivery is a marker only if it
came that way (exchange ``""``, the stream's name as routing key) and has one of our
headers: a producer publishing to the topic exchange cannot fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.abc

from rabbitsocks.brokers.amqp_session import CONNECTION_ERRORS
from rabbitsocks.errors import BrokerError, BrokerUnavailable

__all__ = [
    "EPOCH_HEADER",
    "LIVE_PREFETCH",
    "REPLAY_PREFETCH",
    "SENTINEL_HEADER",
    "Acker",
    "is_marker",
    "offset_of",
    "read",
    "until",
]

EPOCH_HEADER = "x-rabbitsocks-epoch"
SENTINEL_HEADER = "x-rabbitsocks-sentinel"
#: Unacknowledged deliveries per stream consumer; acknowledged by halves.
LIVE_PREFETCH = 1000
REPLAY_PREFETCH = 500

#: Called per entry read: its offset, the message, and whether it is a marker; returns
#: whether to read on.
EntryHandler = Callable[[int, aiormq.abc.DeliveredMessage, bool], bool]


def offset_of(message: aiormq.abc.DeliveredMessage) -> int:
    headers = message.header.properties.headers or {}
    offset = headers.get("x-stream-offset")
    if not isinstance(offset, int):  # pragma: no cover - RabbitMQ always sets it
        raise BrokerError("a stream delivery without x-stream-offset")
    return offset


def is_marker(message: aiormq.abc.DeliveredMessage, stream: str) -> bool:
    delivery = message.delivery
    if delivery.exchange != "" or delivery.routing_key != stream:  # type: ignore[union-attr]
        return False
    headers = message.header.properties.headers or {}
    return EPOCH_HEADER in headers or SENTINEL_HEADER in headers


async def until(channel: aiormq.abc.AbstractChannel, future: asyncio.Future[Any]) -> Any:
    """``future``'s result, or ``BrokerUnavailable`` if ``channel`` closes first (its
    connection went, or RabbitMQ closed it)."""
    closing = channel.closing
    try:
        await asyncio.wait({future, closing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not closing.done():
            closing.cancel()
    if future.done():
        return future.result()
    reason = None if closing.cancelled() else closing.exception()
    raise BrokerUnavailable(f"the stream channel closed ({reason or 'closed'})")


class Acker:
    """Acknowledges a consumer's deliveries by halves of its prefetch (``multiple``), and
    never on a channel that is closing (aiormq would write the frame after Close, and
    RabbitMQ would close the whole connection: 504 CHANNEL_ERROR)."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, prefetch: int) -> None:
        self.channel = channel
        self.every = max(1, prefetch // 2)
        self.unacked = 0
        self.closing = False

    async def ack(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.unacked += 1
        if self.unacked < self.every or self.closing:
            return
        self.unacked = 0
        tag = message.delivery.delivery_tag  # type: ignore[union-attr]
        with contextlib.suppress(*CONNECTION_ERRORS):
            # wait=False: the frame is queued without waiting for the socket, so this
            # consumer callback does not yield and deliveries stay in order.
            await self.channel.basic_ack(tag, multiple=True, wait=False)  # type: ignore[arg-type]

    async def close(self, consumer_tag: str | None) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            if consumer_tag is not None:
                await self.channel.basic_cancel(consumer_tag)
            await self.channel.close()


async def read(
    channel: aiormq.abc.AbstractChannel, stream: str, start: int | str, on_entry: EntryHandler
) -> None:
    """Read ``stream`` on ``channel`` (its own: closed at the end) from ``start``, calling
    ``on_entry`` for each entry in order until it returns ``False``. Raises
    ``BrokerUnavailable`` if the channel or the connection goes, ``BrokerError`` if
    RabbitMQ refuses."""
    acker = Acker(channel, REPLAY_PREFETCH)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def consume(message: aiormq.abc.DeliveredMessage) -> None:
        if done.done():
            return
        try:
            more = on_entry(offset_of(message), message, is_marker(message, stream))
        except BaseException as exc:
            done.set_exception(exc)
            return
        if not more:
            done.set_result(None)
            return
        await acker.ack(message)

    consumer_tag = None
    try:
        await channel.basic_qos(prefetch_count=REPLAY_PREFETCH)
        ok = await channel.basic_consume(stream, consume, arguments={"x-stream-offset": start})
        consumer_tag = ok.consumer_tag
        await until(channel, done)
    except aiormq.exceptions.AMQPChannelError as exc:
        raise BrokerError(f"RabbitMQ refused to read {stream!r}: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"reading {stream!r}: {exc}") from exc
    finally:
        await acker.close(consumer_tag)
