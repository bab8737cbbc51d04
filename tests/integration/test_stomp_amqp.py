"""callbacks.stomp on the real RabbitMQ: /topic/ from AMQP producers, queues with acks and
prefetch, SEND with properties and confirms, /exchange/, temp-queues, transactions.

Clients are ``tests/support/stomp.py`` over the websockets library; producers and
consumers on the AMQP side are aio-pika and pika connections of the test's own. Every
queue and exchange a test makes has a name of its own and is deleted at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from rabbitsocks import Listener, start_listener
from rabbitsocks.services import Services
from tests.integration.conftest import RabbitAdmin
from tests.support.procfs import wait_until
from tests.support.pubsub import make_services, pika_publish_in_subprocess, unique, until_connected
from tests.support.stomp import StompClient

pytestmark = pytest.mark.rabbitmq

EVERYWHERE = ["/topic/#", "/queue/#", "/amq/queue/#", "/exchange/amq.direct/#", "/reply-queue/#"]


@dataclass
class Rig:
    url: str
    services: Services
    listener: Listener
    amqp: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    async def client(self, **kwargs: Any) -> StompClient:
        return await StompClient.connect(self.url, **kwargs)

    def queue(self, prefix: str = "stomp") -> str:
        name = unique(prefix)
        self.queues.append(name)
        return name

    async def publish(self, exchange: str, key: str, body: bytes, **props: Any) -> None:
        target = (
            self.channel.default_exchange
            if exchange == ""
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(aio_pika.Message(body, **props), routing_key=key)


@contextlib.asynccontextmanager
async def rig(amqp_url: str, options: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    services = make_services("amqp", amqp_url)
    await services.start()
    await until_connected(services.hub().broker)
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.stomp",
        {"subscribe": EVERYWHERE, "send": EVERYWHERE, **(options or {})},
        services=services,
    )
    amqp = await aio_pika.connect(amqp_url)
    channel = await amqp.channel()
    handle = Rig(f"ws://127.0.0.1:{listener.port}/websocket/", services, listener, amqp, channel)
    try:
        yield handle
    finally:
        await listener.stop()
        await services.close()
        cleanup = await amqp.channel()
        for queue in handle.queues:
            await cleanup.queue_delete(queue)
        for exchange in handle.exchanges:
            await cleanup.exchange_delete(exchange)
        await amqp.close()


@pytest.fixture
async def r(amqp_url: str) -> AsyncIterator[Rig]:
    async with rig(amqp_url) as handle:
        yield handle


# --- /topic/ ----------------------------------------------------------------------------------


async def test_topic_wildcards_from_pika(r: Rig, amqp_url: str) -> None:
    t = unique("st")
    client = await r.client()
    await client.subscribe(f"/topic/{t}.*", "sub-0")
    await client.subscribe(f"/topic/{t}.#", "sub-1")
    await client.subscribe(f"/topic/{t}.b", "sub-2")
    await pika_publish_in_subprocess(
        amqp_url, [(f"{t}.a", b"from pika"), (f"{t}.a.b", b"deep"), (f"{t}.b", b"sentinel")]
    )
    first = [await client.message() for _ in range(2)]
    assert sorted(m.headers["subscription"] for m in first) == ["sub-0", "sub-1"]
    assert {(m.body, m.headers["destination"]) for m in first} == {(b"from pika", f"/topic/{t}.a")}
    deep = await client.message()
    assert (deep.headers["subscription"], deep.body) == ("sub-1", b"deep")
    rest = sorted(
        (m.headers["subscription"], m.body) for m in [await client.message() for _ in range(3)]
    )
    assert rest == [("sub-0", b"sentinel"), ("sub-1", b"sentinel"), ("sub-2", b"sentinel")]
    await client.disconnect()


async def test_message_headers_from_amqp_properties(r: Rig) -> None:
    t = unique("st")
    client = await r.client()
    await client.subscribe(f"/topic/{t}")
    await r.publish(
        "amq.topic",
        t,
        b"{}",
        content_type="application/json",
        correlation_id="c-1",
        reply_to="amq.gen-xyz",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=3,
        message_id="m-1",
        type="order",
        app_id="shop",
        expiration=60,
        headers={"tenant": "acme", "n": 7, "escaped": "a:b\nc\\d"},
    )
    message = await client.message()
    headers = message.headers
    assert headers["content-type"] == "application/json"
    assert headers["correlation-id"] == "c-1"
    assert headers["reply-to"] == "/reply-queue/amq.gen-xyz"
    assert headers["persistent"] == "true"
    assert headers["priority"] == "3"
    assert headers["amqp-message-id"] == "m-1"
    assert headers["type"] == "order"
    assert headers["app-id"] == "shop"
    assert headers["expiration"] == "60000"
    assert (headers["tenant"], headers["n"]) == ("acme", "7")
    assert headers["escaped"] == "a:b\nc\\d"  # escaped on the wire, per 1.2
    await client.disconnect()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_older_versions_escape_as_they_can(r: Rig, version: str) -> None:
    t = unique("st")
    client = await r.client(version=version)
    await client.subscribe(f"/topic/{t}")
    await r.publish("amq.topic", t, b"x", headers={"h": "a:b\nc"})
    expected = "a:b\nc" if version == "1.1" else "a:b c"  # 1.0 cannot carry an EOL
    assert (await client.message()).headers["h"] == expected
    await client.disconnect()


async def test_send_maps_headers_to_amqp_properties(r: Rig) -> None:
    t = unique("st")
    queue = await r.channel.declare_queue(exclusive=True)
    await queue.bind("amq.topic", t)
    client = await r.client()
    await client.send(
        f"/topic/{t}",
        b"payload\x00with nul",
        **{
            "content-type": "text/plain",
            "content-encoding": "utf-8",
            "persistent": "true",
            "priority": "5",
            "correlation-id": "corr",
            "reply-to": "/queue/answers",
            "expiration": "60000",
            "amqp-message-id": "mid",
            "type": "greeting",
            "app-id": "browser",
            "custom": "v:1",
        },
    )  # the RECEIPT came after RabbitMQ's confirm
    message = await queue.get(timeout=5)
    assert message is not None
    assert message.body == b"payload\x00with nul"
    assert message.content_type == "text/plain"
    assert message.content_encoding == "utf-8"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.priority == 5
    assert message.correlation_id == "corr"
    assert message.reply_to == "/queue/answers"
    assert message.expiration == 60.0
    assert message.message_id == "mid"
    assert message.type == "greeting"
    assert message.app_id == "browser"
    assert message.headers == {"custom": "v:1"}
    await client.disconnect()


# --- queues, acks, prefetch -------------------------------------------------------------------


async def test_queue_send_receive_with_client_individual_acks_and_nack(r: Rig) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}", ack="client-individual")
    for body in (b"one", b"two"):
        await client.send(f"/queue/{q}", body)
    one, two = await client.message(), await client.message()
    assert (one.body, two.body) == (b"one", b"two")
    assert one.headers["destination"] == f"/queue/{q}"
    assert one.headers["ack"] == one.headers["message-id"]
    await client.ack(two)
    await client.ack(one, "NACK")  # requeued: redelivered
    again = await client.message()
    assert (again.body, again.headers["redelivered"]) == (b"one", "true")
    await client.ack(again)
    await client.disconnect()
    declared = await r.channel.declare_queue(q, durable=True, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_nack_without_requeue_drops(r: Rig, rabbitmq_admin: RabbitAdmin) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}", ack="client-individual")
    await client.send(f"/queue/{q}", "drop me")
    await client.ack(await client.message(), "NACK", requeue="false")
    await client.send(f"/queue/{q}", "sentinel")
    assert (await client.message()).body == b"sentinel"
    await client.disconnect()


async def test_client_ack_is_cumulative(r: Rig, rabbitmq_admin: RabbitAdmin) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}", ack="client")
    for i in range(3):
        await client.send(f"/queue/{q}", f"m{i}")
    messages = [await client.message() for _ in range(3)]
    await client.ack(messages[2])  # acknowledges all three

    async def settled() -> bool:
        queue = await rabbitmq_admin.queue(q)
        return queue is not None and queue.get("messages") == 0

    await rabbitmq_admin.eventually(settled, "every message acknowledged")
    await client.disconnect()


async def test_prefetch_bounds_unacknowledged(r: Rig, rabbitmq_admin: RabbitAdmin) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}", ack="client-individual", **{"prefetch-count": "2"})
    for i in range(5):
        await r.publish("", q, f"m{i}".encode())

    async def two_out() -> bool:
        queue = await rabbitmq_admin.queue(q)
        return (
            queue is not None
            and queue.get("messages_unacknowledged") == 2
            and queue.get("messages_ready") == 3
        )

    await rabbitmq_admin.eventually(two_out, "two messages delivered, three held back")
    first = await client.message()
    await client.message()
    await client.ack(first)
    assert (await client.message()).body == b"m2"  # room for one more
    await client.disconnect()


async def test_unacked_messages_go_back_when_the_client_leaves(r: Rig) -> None:
    q = r.queue()
    first = await r.client()
    await first.subscribe(f"/queue/{q}", ack="client-individual")
    await first.send(f"/queue/{q}", "hold")
    assert (await first.message()).body == b"hold"
    await first.close()  # gone without ACK
    second = await r.client()
    await second.subscribe(f"/queue/{q}", ack="client-individual")
    message = await second.message()
    assert (message.body, message.headers["redelivered"]) == (b"hold", "true")
    await second.ack(message)
    await second.disconnect()


async def test_amq_queue_that_does_not_exist(r: Rig) -> None:
    client = await r.client()
    await client.send_frame("SUBSCRIBE", {"destination": f"/amq/queue/{unique('none')}", "id": "0"})
    error = await client.expect_error()
    assert "404" in error.body_text or "NOT_FOUND" in error.body_text


async def test_queue_deleted_under_a_subscriber(r: Rig, rabbitmq_admin: RabbitAdmin) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}")
    await rabbitmq_admin.delete_queue(q)
    error = await client.expect_error("Server cancelled subscription")
    assert "sub-0" in error.body_text


# --- /exchange/ -----------------------------------------------------------------------------------


async def test_exchange_with_key_fans_out_through_a_hub(r: Rig) -> None:
    key = unique("dx")
    client = await r.client()
    await client.subscribe(f"/exchange/amq.direct/{key}")
    await r.publish("amq.direct", key, b"direct")
    message = await client.message()
    assert (message.body, message.headers["destination"]) == (
        b"direct",
        f"/exchange/amq.direct/{key}",
    )
    await client.disconnect()


async def test_exchange_without_key_has_a_queue_per_subscription(amqp_url: str) -> None:
    exchange = unique("fan")
    async with rig(amqp_url, {"subscribe": [f"/exchange/{exchange}/#"]}) as r:
        r.exchanges.append(exchange)
        await r.channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, auto_delete=False)
        a, b = await r.client(), await r.client()
        await a.subscribe(f"/exchange/{exchange}")
        await b.subscribe(f"/exchange/{exchange}")
        await r.publish(exchange, "any.key", b"to all")
        for client in (a, b):
            message = await client.message()
            assert (message.body, message.headers["destination"]) == (
                b"to all",
                f"/exchange/{exchange}/any.key",
            )
            await client.disconnect()


async def test_send_to_an_exchange_that_does_not_exist(r: Rig, amqp_url: str) -> None:
    async with rig(amqp_url, {"send": ["/exchange/nowhere-at-all/#"]}) as r2:
        client = await r2.client()
        await client.send_frame(
            "SEND", {"destination": "/exchange/nowhere-at-all/k", "receipt": "r"}, b"x"
        )
        error = await client.expect_error()
        assert error.headers.get("receipt-id") == "r"
        assert "NOT_FOUND" in error.body_text or "404" in error.body_text


# --- temp-queues, transactions ------------------------------------------------------------------


async def test_temp_queue_reply(r: Rig) -> None:
    q = r.queue("rpc")
    requests = await r.channel.declare_queue(q, durable=True)
    client = await r.client()
    await client.send(f"/queue/{q}", "ping", **{"reply-to": "/temp-queue/answers"})
    request = await requests.get(timeout=5)
    assert request is not None
    assert request.reply_to is not None
    assert request.reply_to.startswith("amq.gen-")
    await request.ack()
    await r.publish("", request.reply_to, b"pong", correlation_id="c")
    reply = await client.message()
    assert reply.body == b"pong"
    assert reply.headers["subscription"] == "/temp-queue/answers"
    assert reply.headers["correlation-id"] == "c"
    await client.disconnect()


async def test_transaction_acks_and_sends_on_commit(r: Rig) -> None:
    q = r.queue()
    client = await r.client()
    await client.subscribe(f"/queue/{q}", ack="client-individual")
    await client.send(f"/queue/{q}", "first")
    message = await client.message()
    await client.request("BEGIN", {"transaction": "t"})
    await client.request("ACK", {"id": message.headers["ack"], "transaction": "t"})
    await client.send(f"/queue/{q}", "second", receipt=False, transaction="t")
    await client.request("COMMIT", {"transaction": "t"})
    assert (await client.message()).body == b"second"
    await client.disconnect()


async def test_invalid_send_header(r: Rig) -> None:
    client = await r.client()
    await client.send_frame("SEND", {"destination": f"/topic/{unique()}", "priority": "999"}, b"x")
    error = await client.expect_error("Invalid header")
    assert "priority" in error.body_text


async def test_channels_are_leased_and_given_back(r: Rig) -> None:
    pool = r.services.channel_pool(None)
    clients = [await r.client() for _ in range(3)]
    q = r.queue()
    for i, client in enumerate(clients):
        await client.subscribe(f"/queue/{q}", f"s{i}")
    assert pool.channels == 3
    topic_only = await r.client()
    await topic_only.subscribe(f"/topic/{unique()}")
    assert pool.channels == 3  # fan-out needs no channel
    for client in clients:
        await client.disconnect()
    # Each session gives its channel back in its terminate, after the socket closed.
    await wait_until(lambda: pool.channels == 0, 5, "every channel given back")
    await topic_only.disconnect()
