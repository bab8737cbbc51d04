"""Publishers: timestamped messages to ``amq.topic`` over AMQP, or to the floor over TCP.

A body is ``~<send time in us>.<phase>~`` padded with ``x`` to the message size; the time
is CLOCK_MONOTONIC (``time.monotonic_ns``), the clock the load generator reads too. The
phase number lets the load generator tell a late message of the previous phase from one
of the current phase.

Two ways to publish ``count`` messages, round-robin over the topics:

* at a fixed ``rate`` (messages/s), on a schedule: the latency measurement;
* as fast as publisher confirms allow (``rate`` None): at most ``window`` messages
  unconfirmed at once: the throughput measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiormq

__all__ = ["AmqpPublisher", "FloorPublisher", "PublishResult", "make_body"]


def make_body(phase: int, size: int) -> bytes:
    head = b"~%d.%d~" % (time.monotonic_ns() // 1000, phase)
    return head + b"x" * max(0, size - len(head))


@dataclass
class PublishResult:
    #: Messages per topic that RabbitMQ took: confirmed, or sent and not confirmed in time
    #: (a late confirm is not a lost message: the subscribers may well get it).
    per_topic: Counter[str] = field(default_factory=Counter)
    #: Publishes that certainly did not go out (a nack, a closed channel or connection).
    failed: int = 0
    #: Publishes whose confirm did not come within the confirm timeout.
    unconfirmed: int = 0
    first_us: float = 0.0
    last_us: float = 0.0  # the last publish sent
    confirmed_us: float = 0.0  # the last confirm received
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def published(self) -> int:
        return sum(self.per_topic.values())

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.last_us - self.first_us) / 1e6)


class AmqpPublisher:
    """Publishes to an exchange on one channel in publisher-confirm mode."""

    def __init__(
        self,
        url: str,
        exchange: str = "amq.topic",
        window: int = 256,
        confirm_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.window = window
        self.confirm_timeout = confirm_timeout
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def _ready(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            if self._connection is None or self._connection.is_closed:
                self._connection = await asyncio.wait_for(aiormq.connect(self.url), 10)
            self._channel = await self._connection.channel(publisher_confirms=True)
        return self._channel

    async def check(self) -> None:
        await self._ready()

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    async def run(
        self, topics: list[str], count: int, size: int, phase: int, rate: float | None
    ) -> PublishResult:
        channel = await self._ready()
        result = PublishResult()
        slots = asyncio.Semaphore(self.window)
        tasks: set[asyncio.Task[None]] = set()

        async def one(topic: str, body: bytes) -> None:
            try:
                await channel.basic_publish(
                    body, exchange=self.exchange, routing_key=topic, timeout=self.confirm_timeout
                )
                result.per_topic[topic] += 1
                result.confirmed_us = time.monotonic_ns() / 1000
            except TimeoutError:
                # RabbitMQ is slow to confirm (it is routing to many busy queues), which
                # says nothing of whether subscribers get the message: expect it.
                result.per_topic[topic] += 1
                result.unconfirmed += 1
            except Exception as exc:  # counted and reported, never fatal to the run
                result.failed += 1
                result.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            finally:
                slots.release()

        start = time.monotonic()
        result.first_us = time.monotonic_ns() / 1000
        for i in range(count):
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(one(topics[i % len(topics)], make_body(phase, size)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        result.last_us = time.monotonic_ns() / 1000
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.confirm_timeout + 5)
        return result


class FloorPublisher:
    """Writes ``topic<TAB>body<LF>`` records to the floor server's publish port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._writer: asyncio.StreamWriter | None = None

    async def check(self) -> None:
        if self._writer is None:
            _, self._writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 10
            )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def run(
        self, topics: list[str], count: int, size: int, phase: int, rate: float | None
    ) -> PublishResult:
        await self.check()
        writer = self._writer
        assert writer is not None
        result = PublishResult()
        encoded = [t.encode() + b"\t" for t in topics]
        start = time.monotonic()
        result.first_us = time.monotonic_ns() / 1000
        for i in range(count):
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            k = i % len(topics)
            writer.write(encoded[k] + make_body(phase, size) + b"\n")
            result.per_topic[topics[k]] += 1
            if rate is not None or i % 256 == 255:
                await writer.drain()
        await writer.drain()
        result.last_us = result.confirmed_us = time.monotonic_ns() / 1000
        return result
