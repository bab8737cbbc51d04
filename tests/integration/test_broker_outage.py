"""RPC Publish while RabbitMQ is unreachable (issue 5, point 6): it fails clearly (HTTP 503
with Retry-After, a goridge error of kind "broker unavailable"), the memory broker carries
on meanwhile, and once RabbitMQ is back Publish works again and reaches the clients that
stayed connected, without joining again.

The outage is the test's own: the server reaches RabbitMQ through a TCP relay
(tests/support/relay.py) that the test cuts, so RabbitMQ stays up for everybody else.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rabbitsocks import Server
from rabbitsocks.config import parse_config
from rabbitsocks.errors import BrokerUnavailable
from rabbitsocks.rpc import GoridgeClient
from tests.support.procfs import wait_until
from tests.support.pubsub import Clients, PubSubClient, amqp_url, client_pool, unique
from tests.support.relay import TcpRelay, tcp_relay

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def relay() -> AsyncIterator[TcpRelay]:
    async with tcp_relay(amqp_url()) as handle:
        yield handle


@pytest.fixture
async def server(relay: TcpRelay) -> AsyncIterator[Server]:
    raw = {
        "listeners": [{"interface": "127.0.0.1:0", "callback": "callbacks.pubsub"}],
        "brokers": {"amqp": {"type": "amqp", "url": relay.url, "confirm_timeout": 3.0}},
        "default_broker": "amqp",
        "rpc": {"http": "127.0.0.1:0", "goridge": "127.0.0.1:0", "confirm_timeout": 3.0},
    }
    served = Server(parse_config(raw, source="outage.yaml"))
    await served.start()
    try:
        await wait_until(lambda: served.services.brokers["amqp"].connected, 15, "RabbitMQ")
        yield served
    finally:
        await served.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


class Rpc:
    """Publish over HTTP (raw, to see statuses and headers) and over goridge."""

    def __init__(self, server: Server, session: aiohttp.ClientSession) -> None:
        assert server.rpc is not None
        assert server.rpc.goridge is not None
        self.url = f"http://127.0.0.1:{server.rpc.http_port}/rpc/broadcast.Publish"
        self.session = session
        self.goridge = GoridgeClient("127.0.0.1", server.rpc.goridge.port)

    async def http(
        self, topic: str, payload: bytes, broker: str = ""
    ) -> tuple[int, dict[str, object], str | None]:
        message = {"topics": [topic], "payload": base64.b64encode(payload).decode()}
        if broker:
            message["broker"] = broker
        async with self.session.post(self.url, json={"messages": [message]}) as response:
            body = json.loads(await response.text())
            return response.status, body, response.headers.get("Retry-After")


async def expect_message(client: PubSubClient, topic: str, payload: str) -> None:
    assert await client.next() == {"topic": topic, "payload": payload}


async def test_rpc_publish_fails_clearly_during_an_outage_and_works_after(
    server: Server, relay: TcpRelay, clients: Clients
) -> None:
    port = server.listeners[0].port
    amqp_topic, memory_topic = unique("outage"), unique("memory")
    subscribers = [await clients.connect(t, port) for t in ("websocket", "socketio")]
    for client in subscribers:
        await client.join(amqp_topic)
        await client.join(memory_topic, broker="memory")

    async with aiohttp.ClientSession() as session:
        rpc = Rpc(server, session)
        try:
            assert await rpc.http(amqp_topic, b"before") == (200, {"ok": True}, None)
            await rpc.goridge.publish(amqp_topic, b"before, goridge")
            for client in subscribers:
                await expect_message(client, amqp_topic, "before")
                await expect_message(client, amqp_topic, "before, goridge")

            relay.down()
            broker = server.services.brokers["amqp"]
            await wait_until(lambda: not broker.connected, 5, "the outage to be noticed")

            # Publish to RabbitMQ: 503 with Retry-After over HTTP, an error over goridge.
            status, body, retry = await rpc.http(amqp_topic, b"lost")
            assert (status, retry) == (503, "1")
            assert body == {"error": "broker unavailable: broker 'amqp' is not connected"}
            with pytest.raises(BrokerUnavailable, match="broker 'amqp' is not connected"):
                await rpc.goridge.publish(amqp_topic, b"lost")
            with pytest.raises(BrokerUnavailable):
                await rpc.goridge.publish(amqp_topic, b"lost", wait=False)  # PublishAsync

            # The memory broker does not care: publish, join and deliver as usual.
            assert await rpc.http(memory_topic, b"during", broker="memory") == (
                200,
                {"ok": True},
                None,
            )
            await rpc.goridge.publish(memory_topic, b"during, goridge", broker="memory")
            for client in subscribers:
                await expect_message(client, memory_topic, "during")
                await expect_message(client, memory_topic, "during, goridge")
            other = unique("memory")
            await subscribers[0].join(other, broker="memory")
            # A new RabbitMQ topic cannot be joined meanwhile (docs/protocol.md).
            fresh = unique("fresh")
            assert await subscribers[0].command("join", [fresh]) == [
                {
                    "topic": "#join",
                    "payload": [fresh],
                    "reason": f"broker 'amqp' is not connected to"
                    f" amqp://guest:***@127.0.0.1:{relay.port}/",
                }
            ]

            await relay.listen()
            await wait_until(lambda: broker.connected, 20, "the broker to reconnect")
            assert await rpc.http(amqp_topic, b"after") == (200, {"ok": True}, None)
            await rpc.goridge.publish(amqp_topic, b"after, goridge")
            # What failed during the outage never arrives, and its subscribers are told
            # (#gap); what follows does, in order.
            for client in subscribers:
                gap = await client.next()
                assert (gap["topic"], gap["payload"]) == ("#gap", [amqp_topic])
                assert gap["from"] <= gap["to"]
                await expect_message(client, amqp_topic, "after")
                await expect_message(client, amqp_topic, "after, goridge")
        finally:
            await rpc.goridge.close()
