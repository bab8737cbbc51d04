"""The pieces of an AMQP session that ``AmqpBroker`` (``amqp.py``) holds, and the helpers
around them: one connection's channels and queue (``Session``), the TLS context, the
reconnect backoff, and which exceptions mean "the connection is gone".

Like ``amqp.py`` and ``amqp_probe.py``, this module imports aio-pika and aiormq; nothing
outside ``brokers/`` does.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc

from rabbitsocks.brokers.tls import AmqpTls

__all__ = [
    "CONNECTION_ERRORS",
    "AmqpTls",
    "Channel",
    "Session",
    "backoff_delay",
    "reason",
]

# What aio-pika and aiormq raise when the connection is gone or going: aiormq's connection
# errors, the OS's, a channel closed under our feet (aiormq's ChannelInvalidStateError is a
# RuntimeError, as is aio-pika's "Connection was not opened").
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    RuntimeError,
)


def backoff_delay(attempt: int, low: float, high: float, rand: float | None = None) -> float:
    """The delay before reconnect attempt ``attempt`` (0 for the first after an outage).

    "Full jitter" over an exponential ceiling, with a floor: uniform in ``[low, ceiling]``
    where the ceiling doubles from ``2 * low`` up to ``high``. So bridge processes that lost
    RabbitMQ together do not come back in lockstep, and none waits less than ``low``.
    """
    ceiling = min(high, low * 2.0 ** min(attempt + 1, 32))
    fraction = random.random() if rand is None else rand
    return low + (max(ceiling, low) - low) * fraction


def reason(exc: BaseException | None) -> str:
    """A one-line reason for a log line or an error message."""
    if exc is None:
        return "closed"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(eq=False)
class Channel:
    """An aio-pika channel and the aiormq channel under it, which we talk to directly."""

    channel: aio_pika.abc.AbstractChannel
    raw: aiormq.abc.AbstractChannel
    #: Why RabbitMQ closed it (a channel error such as 404), once it did.
    closed_by: BaseException | None = None
    #: An RPC on it was cancelled or timed out: aiormq is closing it, do not use it again.
    abandoned: bool = False

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection, *, confirms: bool) -> Channel:
        channel = connection.channel(publisher_confirms=confirms)
        await channel.initialize()
        opened = cls(channel, await channel.get_underlay_channel())

        def on_close(_: object, exc: BaseException | None) -> None:
            opened.closed_by = exc

        channel.close_callbacks.add(on_close)
        return opened

    @property
    def is_closed(self) -> bool:
        return self.abandoned or self.raw.is_closed


@dataclass(eq=False)
class Session:
    """One AMQP connection's worth of state."""

    connection: aio_pika.abc.AbstractConnection
    consume: Channel
    control: Channel
    publish: Channel
    queue: str
    #: Index of the URL this session is connected to.
    node: int
    #: Probe messages awaited back, by body (see ``amqp_probe``).
    probe_waiters: dict[bytes, asyncio.Future[None]]
    #: Set when the connection or the consumer is lost: the supervisor waits on it.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    publish_reopen: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def alive(self) -> bool:
        """Neither lost nor closing (aiormq knows of a closed connection before aio-pika's
        close callbacks, which set ``lost``, have run)."""
        return not (self.lost.is_set() or self.consume.raw.connection.is_closed)
