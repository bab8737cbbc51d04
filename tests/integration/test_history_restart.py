"""RabbitMQ itself stops and starts (stop_app / start_app, on a PRIVATE node: never the
shared one) while a producer publishes: the bridge continues each history stream from the
last offset it delivered, so every message the stream retained reaches the clients of the
history topic once, in order, what was published while the bridge was away included; the
clients of a topic without history get #gap.

What the stream retained is read back from it at the end, not taken from the producer's
confirms: RabbitMQ 3.10 confirms messages routed to a stream that is still starting, just
after start_app, and does not keep them (measured here: about 20 in the first second;
/tmp experiments with aiormq alone show the same), so those are nobody's to deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from rabbitsocks.config import HistoryConfig
from tests.support.history import history_bridge, join_logged
from tests.support.pubsub import TRANSPORTS, Clients, Transport, client_pool, unique
from tests.support.rabbitmq import PrivateNode

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


class NumberedProducer:
    """Publishes 0, 1, 2... with confirms, through outages (a number whose publish failed
    is not used again), and notes which were confirmed while the bridge was away."""

    def __init__(self, url: str, topics: list[str], bridge_up: object) -> None:
        self.url = url
        self.topics = topics
        self.bridge_up = bridge_up
        self.confirmed: list[int] = []
        self.while_away: list[int] = []
        self.failures = 0
        self.stop = asyncio.Event()
        self.next = 0
        self._waiting: tuple[int, asyncio.Event] | None = None

    async def confirmed_more(self, count: int) -> None:
        """Until ``count`` more messages than now are confirmed."""
        event = asyncio.Event()
        self._waiting = (len(self.confirmed) + count, event)
        await event.wait()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError):
                self.failures += 1
                await asyncio.sleep(0.05)  # a producer's retry pace, not a synchronisation
                continue
            try:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange("amq.topic", ensure=False)
                while not self.stop.is_set():
                    n = self.next
                    self.next += 1
                    for topic in self.topics:
                        await exchange.publish(aio_pika.Message(str(n).encode()), topic)
                    self.confirmed.append(n)
                    if not self.bridge_up():  # type: ignore[operator]
                        self.while_away.append(n)
                    if self._waiting and len(self.confirmed) >= self._waiting[0]:
                        self._waiting[1].set()
                    await asyncio.sleep(0.005)  # about 100 a second per topic
            except Exception:
                self.failures += 1
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()


async def retained(url: str, stream: str, topic: str) -> list[int]:
    """What the stream holds for ``topic``, in offset order, read from its first entry
    to an ``end`` message published to ``topic`` now."""
    connection = await aiormq.connect(url)
    try:
        publish = await connection.channel()
        await publish.confirm_delivery()
        await publish.basic_publish(b"end", exchange="amq.topic", routing_key=topic)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1000)
        tail = asyncio.get_running_loop().create_future()
        out: list[int] = []

        async def take(message: aiormq.abc.DeliveredMessage) -> None:
            if message.body == b"end":
                if not tail.done():
                    tail.set_result(None)
            elif message.delivery.routing_key == topic:  # type: ignore[union-attr]
                out.append(int(message.body))
            await channel.basic_ack(message.delivery.delivery_tag)  # type: ignore[arg-type]

        await channel.basic_consume(stream, take, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(tail, 30)
        return out
    finally:
        await connection.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_app_mid_stream_loses_nothing_retained(
    private_node: PrivateNode, clients: Clients, transport: Transport
) -> None:
    prefix = unique("restart")
    topic, plain = f"{prefix}.live", f"{prefix}plain"
    config = HistoryConfig(f"{prefix}.#", stream=f"rs-test-{prefix}")
    async with history_bridge(
        private_node.url,
        config,
        clients=clients,
        publish_to=private_node.url,
        # Back a few seconds after the node is: producers publish meanwhile.
        reconnect_min=5.0,
        reconnect_max=6.0,
    ) as rabbit:
        broker = rabbit.services.hub().broker
        client = await clients.connect(transport, rabbit.port)
        await join_logged(client, topic, plain)
        producer = NumberedProducer(private_node.url, [topic, plain], lambda: broker.connected)
        producing = asyncio.create_task(producer.run())
        received: list[int] = []
        gaps = []

        async def read_until(count: int) -> None:
            """Until ``count`` messages, or the ``end`` one."""
            while len(received) < count:
                frame = await client.next(timeout=30)
                if frame["topic"] == "#gap":
                    gaps.append(frame)
                elif frame["topic"] == topic:
                    if frame["payload"] == "end":
                        return
                    received.append(int(frame["payload"]))

        try:
            await read_until(20)
            await asyncio.to_thread(private_node.stop_app)
            await asyncio.to_thread(private_node.start_app)
            # The producer is back first, then the bridge, which must catch up.
            async with asyncio.timeout(30):
                await producer.confirmed_more(100)
                while not broker.connected:
                    await producer.confirmed_more(10)
                await producer.confirmed_more(100)
        finally:
            producer.stop.set()
            await producing
        stored = await retained(private_node.url, config.stream_name("amq.topic"), topic)
        await read_until(len(stored) + 1)  # and "end"
        assert producer.failures > 0, "the outage did not reach the producer"
        assert received == stored, "lost, repeated or out of order"
        # Messages were published while the bridge was away, the stream kept them, and
        # the bridge delivered them once it was back.
        kept_while_away = set(producer.while_away) & set(stored)
        assert len(kept_while_away) > 10
        # The topic without history lost what was published during the outage, and was told.
        assert [g["payload"] for g in gaps] == [[plain]]
