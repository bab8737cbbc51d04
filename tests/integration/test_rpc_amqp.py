"""RPC Publish against the real RabbitMQ on 127.0.0.1:5672: confirms are really awaited.

A missing exchange makes RabbitMQ close the publish channel (404 NOT_FOUND) instead of
confirming; Publish must turn that into an error, never ``ok=true``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from rabbitsocks.brokers.amqp import AmqpBroker
from rabbitsocks.errors import BrokerUnavailable, PublishFailed
from rabbitsocks.rpc import GoridgeClient, HttpRpcClient, Message, Request, Response
from rabbitsocks.rpc.goridge_server import GoridgeServer, start_goridge_server
from rabbitsocks.rpc.http import make_rpc_app
from rabbitsocks.rpc.service import PublishService
from tests.support.deliveries import Deliveries

pytestmark = pytest.mark.rabbitmq

AMQP_URL = os.environ.get("RABBITSOCKS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
WAIT = 10.0


class Transports:
    """One service served over goridge and HTTP at once."""

    def __init__(self, service: PublishService, goridge: GoridgeServer, http_url: str) -> None:
        self.service = service
        self.goridge = goridge
        self.http_url = http_url

    def goridge_client(self) -> GoridgeClient:
        return GoridgeClient("127.0.0.1", self.goridge.port)

    def http_client(self) -> HttpRpcClient:
        return HttpRpcClient(f"{self.http_url}/rpc")


@contextlib.asynccontextmanager
async def serve(broker: AmqpBroker) -> AsyncIterator[Transports]:
    service = PublishService({"amqp": broker}, "amqp", confirm_timeout=WAIT)
    goridge = await start_goridge_server(service, "127.0.0.1", 0)
    runner = web.AppRunner(make_rpc_app(service))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield Transports(service, goridge, f"http://{host}:{port}")
    finally:
        await runner.cleanup()
        await goridge.close()
        await service.close()


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries(WAIT)


@pytest.fixture
async def rabbit(deliveries: Deliveries) -> AsyncIterator[Transports]:
    # A fresh exchange per test, declared by the broker itself.
    exchange = f"rabbitsocks.test.rpc.{uuid.uuid4().hex[:12]}"
    broker = AmqpBroker("amqp", AMQP_URL, exchange, confirm_timeout=WAIT)
    await broker.start(deliveries)
    assert broker.connected, "RabbitMQ must be running on 127.0.0.1:5672"
    await broker.bind("#")
    try:
        async with serve(broker) as transports:
            yield transports
    finally:
        await broker.close()
        await _delete_exchange(exchange)


@pytest.fixture
async def no_exchange(deliveries: Deliveries) -> AsyncIterator[Transports]:
    # Names under amq. are reserved: the broker does not declare them, and this one does
    # not exist, so RabbitMQ answers every publish with a 404 channel close.
    broker = AmqpBroker("amqp", AMQP_URL, f"amq.rabbitsocks-missing-{uuid.uuid4().hex[:12]}")
    await broker.start(deliveries)
    assert broker.connected, "RabbitMQ must be running on 127.0.0.1:5672"
    try:
        async with serve(broker) as transports:
            yield transports
    finally:
        await broker.close()


async def _delete_exchange(name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


async def test_publish_is_confirmed_and_delivered(
    rabbit: Transports, deliveries: Deliveries
) -> None:
    async with rabbit.goridge_client() as client:
        await client.publish(["chat.a", "chat.b"], b"over goridge")
    async with rabbit.http_client() as client:
        await client.publish("chat.c", b"over http")
    assert sorted(await deliveries.wait_for(3)) == [
        ("chat.a", b"over goridge"),
        ("chat.b", b"over goridge"),
        ("chat.c", b"over http"),
    ]


async def test_publish_async_answers_and_arrives(
    rabbit: Transports, deliveries: Deliveries
) -> None:
    request = Request(messages=[Message(topics=["async.a"], payload=b"later")])
    async with rabbit.goridge_client() as client:
        assert await client.publish_request(request, async_=True) == Response(ok=True)
    assert await deliveries.wait_for(1) == [("async.a", b"later")]


async def test_missing_exchange_is_an_error_never_ok(no_exchange: Transports) -> None:
    async with no_exchange.goridge_client() as client:
        with pytest.raises(PublishFailed, match=r"^publish failed: .*NOT_FOUND - no exchange"):
            await client.publish("t", b"x")
        # The error leaves the connection usable, and the broker reopens its channel.
        with pytest.raises(PublishFailed):
            await client.publish("t", b"again")
    async with no_exchange.http_client() as client:
        with pytest.raises(PublishFailed):
            await client.publish("t", b"x")


async def test_publish_async_to_a_missing_exchange_is_counted(no_exchange: Transports) -> None:
    request = Request(messages=[Message(topics=["t"], payload=b"x")])
    async with no_exchange.goridge_client() as client:
        assert await client.publish_request(request, async_=True) == Response(ok=True)
    await no_exchange.service.close()  # drains the queue
    assert no_exchange.service.stats.failed == 1
    assert no_exchange.service.stats.published == 0


async def test_unreachable_rabbitmq_is_broker_unavailable(deliveries: Deliveries) -> None:
    # Port 1 on loopback refuses at once: a RabbitMQ that is down, without stopping ours.
    broker = AmqpBroker("amqp", "amqp://guest:guest@127.0.0.1:1/", "amq.topic", connect_timeout=1.0)
    await broker.start(deliveries)
    assert not broker.connected
    try:
        async with serve(broker) as transports:
            async with transports.goridge_client() as client:
                with pytest.raises(BrokerUnavailable, match="broker unavailable"):
                    await client.publish("t", b"x")
            async with transports.http_client() as client:
                with pytest.raises(BrokerUnavailable):
                    await client.publish("t", b"x")
    finally:
        await broker.close()
