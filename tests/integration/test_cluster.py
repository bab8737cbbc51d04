"""rabbitsocks on a private 3-node RabbitMQ cluster (issue 14): failover when a node stops,
leaving a frozen node and a partitioned one, TLS, and what RPC Publish reports meanwhile.

The cluster is the session's own (tests/support/rabbitmq.py: rs-cluster-1..3@localhost on
AMQP 25600-25602), never the shared broker on 5672. Each test breaks at most one node and
the ``private_cluster`` fixture makes the cluster whole again afterwards.

Clients are real (websockets, python-socketio) on a real listener; messages come from real
publishers (aio-pika with confirms) connected to a node the test does not break. A stream
of sequence-numbered messages shows that delivery resumed after the failover: "resumed"
means a message published after the broker reported its new node reached every client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import pytest

from rabbitsocks import Server
from rabbitsocks.brokers.amqp import AmqpBroker, AmqpTls
from rabbitsocks.config import HistoryConfig, parse_config
from rabbitsocks.messages import Delivery
from tests.support.history import deleted_afterwards, history_bridge, join_logged
from tests.support.pubsub import Clients, PubSubClient, bridge, client_pool, unique
from tests.support.rabbitmq import PrivateCluster, PrivateNode

# Restoring the cluster after a test (restart a node, heal a partition) takes up to a minute.
pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(240)]

#: The bound within which a process must be delivering again after losing its node.
FAILOVER_BOUND = 10.0
#: Probe settings of these tests: a failure is known within interval + timeout.
PROBE = {"probe_interval": 0.5, "probe_timeout": 1.5}


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


class Stream:
    """Publishes ``<seq>`` to ``topic`` through ``node`` every few milliseconds, with
    confirms, until stopped; remembers when each was confirmed."""

    def __init__(self, node: PrivateNode, topic: str) -> None:
        self.node = node
        self.topic = topic
        self.sent: list[tuple[int, float]] = []
        self.nacked: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Stream:
        self._connection = await aio_pika.connect(self.node.url)
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("amq.topic", ensure=False)
        self._task = asyncio.create_task(self._run(exchange))
        return self

    async def _run(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        seq = 0
        while True:
            seq += 1
            try:
                await exchange.publish(aio_pika.Message(str(seq).encode()), self.topic)
            except aio_pika.exceptions.DeliveryError:
                # RabbitMQ nacks what it had routed to a queue on a node that died.
                self.nacked.append(seq)
            else:
                self.sent.append((seq, time.monotonic()))
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        assert self._connection is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._connection.close()

    def last_sent_after(self, moment: float) -> int | None:
        for seq, at in self.sent:
            if at > moment:
                return seq
        return None


async def received_until(
    client: PubSubClient,
    topic: str,
    seq: int,
    timeout: float,
    gaps: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Sequence numbers read by ``client`` until one at least ``seq`` arrives. The
    ``#gap`` frames it gets (messages may be missing, after the process lost its queue)
    go to ``gaps``: none may come when ``gaps`` is ``None``."""
    got: list[int] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1] < seq:
            frame = await client.next(timeout)
            if frame["topic"] == "#gap" and gaps is not None:
                assert frame["payload"] == [topic], frame
                assert frame["from"] <= frame["to"], frame
                gaps.append(frame)
                continue
            assert frame["topic"] == topic, frame
            got.append(int(frame["payload"]))
    return got


async def until(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition()`` (state with no event: a broker's node) until it holds; returns
    when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_node_stopped_clients_keep_receiving_after_failover(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    first, _, third = private_cluster.nodes
    t = unique()
    async with bridge(
        "amqp", urls=private_cluster.urls, reconnect_min=0.2, reconnect_max=1.0, **PROBE
    ) as rs:
        broker = rs.broker
        assert isinstance(broker, AmqpBroker)
        assert broker.node == 0
        ws = await clients.connect("websocket", rs.port)
        sio = await clients.connect("socketio", rs.port)
        await ws.join(t)
        await sio.join(t)
        async with Stream(third, t) as stream:
            await until(lambda: len(stream.sent) > 20, 10, "the stream to start")
            await asyncio.to_thread(first.kill)
            killed = time.monotonic()
            back = await until(
                lambda: broker.connected and broker.node not in (None, 0),
                FAILOVER_BOUND,
                "the broker to fail over",
            )
            await until(lambda: stream.last_sent_after(back) is not None, 5, "a publish")
            after = stream.last_sent_after(back)
            assert after is not None
            for client in (ws, sio):
                gaps: list[dict[str, Any]] = []
                got = await received_until(client, t, after, FAILOVER_BOUND, gaps)
                assert got == sorted(got), "out of order"
                assert after in got
                assert len(gaps) == 1  # the queue went with the node: they are told
        print(
            f"failover: connected to node {broker.node} {back - killed:.2f}s after the kill,"
            f" {len(stream.nacked)} publishes nacked"
        )
        assert broker.failovers == 1
        assert set(broker.bindings) == {t}


async def test_node_killed_history_topic_loses_nothing(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    """Issue 14's failover with issue 15's history: the node the process is on (and where
    it declared the stream, so its leader) is killed; RabbitMQ elects another leader among
    the stream's replicas, the process fails over and continues the stream where it
    stopped. Every confirmed message reaches every client once, in order, and nobody gets
    ``#gap``, while the same clients' topic without history does."""
    first, _, third = private_cluster.nodes
    prefix = unique("failover")
    topic, plain = f"{prefix}.live", f"{prefix}plain"
    config = HistoryConfig(f"{prefix}.#", stream=f"rs-test-{prefix}")
    async with (
        deleted_afterwards(third.url, config.stream_name("amq.topic")),
        history_bridge(
            private_cluster.urls,
            config,
            clients=clients,
            publish_to=third.url,
            reconnect_min=0.2,
            reconnect_max=1.0,
            **PROBE,
        ) as rs,
    ):
        broker = rs.services.hub().broker
        assert isinstance(broker, AmqpBroker)
        assert broker.node == 0
        readers = [await clients.connect(t, rs.port) for t in ("websocket", "socketio")]
        for client in readers:
            await join_logged(client, topic, plain)
        async with Stream(third, topic) as stream, Stream(third, plain) as other:
            await until(lambda: len(stream.sent) > 50, 10, "the stream to start")
            await asyncio.to_thread(first.kill)
            back = await until(
                lambda: broker.connected and broker.node not in (None, 0),
                FAILOVER_BOUND,
                "the broker to fail over",
            )
            await until(lambda: stream.last_sent_after(back + 0.5) is not None, 10, "publishes")
            await until(lambda: other.last_sent_after(back + 0.5) is not None, 10, "publishes")
        confirmed = [seq for seq, _ in stream.sent]
        for client in readers:
            got: list[int] = []
            gaps: list[Any] = []
            async with asyncio.timeout(FAILOVER_BOUND * 2):
                while not got or got[-1] < confirmed[-1]:
                    frame = await client.next(FAILOVER_BOUND)
                    if frame["topic"] == topic:
                        got.append(int(frame["payload"]))
                    elif frame["topic"] == "#gap":
                        gaps.append(frame["payload"])
                    else:
                        assert frame["topic"] == plain, frame
            # Confirmed by RabbitMQ means kept by the stream: every one, once, in order. A
            # publish RabbitMQ nacked during the leader election may or may not be there.
            assert [seq for seq in got if seq not in stream.nacked] == confirmed
            # The topic without history is told, the other never. Told once per lost
            # queue: a reconnect on the new node can fail once more while the cluster
            # settles (RabbitMQ closing the connection with INTERNAL_ERROR as the stream
            # elects its leader), which is a second gap for it.
            assert gaps, "the topic without history was not told"
            assert all(g == [plain] for g in gaps), gaps
        print(
            f"failover with history: {len(confirmed)} confirmed, {len(stream.nacked)} nacked,"
            f" every one delivered to {len(readers)} clients"
        )


async def serve(cluster: PrivateCluster, urls: list[str]) -> Server:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0", "callback": "callbacks.pubsub"}],
            "brokers": {
                "amqp": {
                    "url": urls,
                    "reconnect_min": 0.2,
                    "reconnect_max": 1.0,
                    "connect_timeout": 2.0,
                    **PROBE,
                }
            },
            "rpc": {"http": 0},
            "admin": 0,
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    return server


async def ready(session: aiohttp.ClientSession, server: Server) -> tuple[int, dict[str, Any]]:
    assert server.admin_url is not None
    async with session.get(server.admin_url + "ready") as response:
        return response.status, json.loads(await response.text())


async def test_frozen_node_fails_ready_and_is_left(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    first, second, _ = private_cluster.nodes
    server = await serve(private_cluster, private_cluster.urls)
    t = unique()
    try:
        broker = server.services.hub().broker
        assert isinstance(broker, AmqpBroker)
        port = server.listeners[0].port
        ws = await clients.connect("websocket", port)
        await ws.join(t)
        async with aiohttp.ClientSession() as http:
            await until(lambda: broker.unready is None, 10, "the first probe")
            assert (await ready(http, server))[0] == 200
            await asyncio.to_thread(first.freeze)
            frozen = time.monotonic()
            # /ready turns 503 with the probe's reason: polled, as a load balancer does.
            deadline = frozen + PROBE["probe_interval"] + PROBE["probe_timeout"] + 2
            while True:
                status, body = await ready(http, server)
                if status == 503:
                    break
                assert time.monotonic() < deadline, "/ready stayed 200 on a frozen node"
                await asyncio.sleep(0.05)
            detected = time.monotonic() - frozen
            assert body["ready"] is False
            assert any("broker amqp" in p for p in body["problems"]), body
            # ... and the process leaves the node (it may take the cluster's own
            # detection of the frozen node, net_ticktime, before a queue can be declared).
            back = await until(
                lambda: broker.connected and broker.node not in (None, 0) and not broker.unready,
                30,
                "the broker to leave the frozen node",
            )
            assert (await ready(http, server))[0] == 200
            async with Stream(second, t) as stream:
                await until(lambda: len(stream.sent) > 5, 5, "a publish")
                after = stream.sent[-1][0]
                gaps: list[dict[str, Any]] = []
                got = await received_until(ws, t, after, 10, gaps)
                assert after in got
                assert len(gaps) == 1  # it left the node and its queue: it is told
            print(
                f"frozen node: /ready 503 after {detected:.2f}s, on node {broker.node} "
                f"{back - frozen:.2f}s after the freeze"
            )
            assert broker.probes.failed >= 1
    finally:
        await asyncio.to_thread(first.thaw)
        await server.stop()


async def test_a_partitioned_node_is_left(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    first, second, third = private_cluster.nodes
    t = unique()
    # The process prefers the node that will be cut off.
    urls = [third.url, first.url, second.url]
    async with bridge("amqp", urls=urls, reconnect_min=0.2, reconnect_max=1.0, **PROBE) as rs:
        broker = rs.broker
        assert isinstance(broker, AmqpBroker)
        ws = await clients.connect("websocket", rs.port)
        await ws.join(t)
        await until(lambda: broker.unready is None, 10, "the first probe")
        assert broker.node == 0
        cut = time.monotonic()
        await asyncio.to_thread(private_cluster.partition, third)
        back = await until(
            lambda: broker.connected and broker.node not in (None, 0) and not broker.unready,
            30,
            "the broker to leave the partitioned node",
        )
        # Publishers on the majority side reach the process again.
        async with Stream(first, t) as stream:
            await until(lambda: len(stream.sent) > 5, 5, "a publish")
            after = stream.sent[-1][0]
            gaps: list[dict[str, Any]] = []
            got = await received_until(ws, t, after, 10, gaps)
            assert after in got
            assert len(gaps) == 1  # it left the node and its queue: it is told
        print(f"partition: left the cut-off node {back - cut:.2f}s after the partition")


async def test_tls_with_a_self_signed_ca(private_cluster: PrivateCluster) -> None:
    node = private_cluster.nodes[0]
    files = node.tls
    assert files is not None
    t = unique()
    deliveries: list[tuple[str, bytes]] = []
    got = asyncio.Event()

    def on_delivery(delivery: Delivery) -> None:
        deliveries.append((delivery.routing_key, delivery.body))
        got.set()

    good = AmqpTls(
        ca_file=str(files.ca), cert_file=str(files.client_cert), key_file=str(files.client_key)
    )
    broker = AmqpBroker("tls", node.tls_url, tls=good, connect_timeout=3)
    await broker.start(on_delivery)
    try:
        assert broker.connected
        await broker.bind(t)
        await broker.publish(t, b"over TLS")
        await asyncio.wait_for(got.wait(), 5)
        assert deliveries == [(t, b"over TLS")]
    finally:
        await broker.close()

    refusals = {
        "the system's CAs do not know ours": AmqpTls(),
        "the certificate is not for this name": AmqpTls(
            ca_file=str(files.ca), server_name="not-the-server.example"
        ),
    }
    for why, tls in refusals.items():
        broker = AmqpBroker("tls", node.tls_url, tls=tls, connect_timeout=3, reconnect_max=1)
        await broker.start(on_delivery)
        try:
            assert not broker.connected, why
        finally:
            await broker.close()
    # The server name replaces the URL's host for verification (here an IP address in
    # the URL, the certificate's name in the setting).
    named = AmqpTls(ca_file=str(files.ca), server_name="localhost")
    url = node.tls_url.replace("@localhost:", "@127.0.0.1:")
    broker = AmqpBroker("tls", url, tls=named, connect_timeout=3)
    await broker.start(on_delivery)
    try:
        assert broker.connected
    finally:
        await broker.close()


async def test_rpc_publish_while_a_node_hangs_says_outcome_unknown(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    """A process on a healthy node publishes to a topic bound by a process on a frozen
    node: RabbitMQ cannot confirm, and Publish answers 504 "outcome unknown" (not 502)."""
    first, second, _ = private_cluster.nodes
    t = unique()
    # The subscriber's process sits on the node that will freeze; no probe, so it stays.
    async with bridge("amqp", urls=[first.url]) as subscriber:
        ws = await clients.connect("websocket", subscriber.port)
        await ws.join(t)
        server = await serve(private_cluster, [second.url])
        try:
            assert server.rpc is not None
            url = f"http://127.0.0.1:{server.rpc.http_port}/rpc/broadcast.Publish"
            body = {"messages": [{"topics": [t], "payload": "aGk="}]}
            async with aiohttp.ClientSession() as http:
                async with http.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                await ws.expect({"topic": t, "payload": "hi"})
                await asyncio.to_thread(first.freeze)
                try:
                    async with http.post(url, json=body) as response:
                        text = await response.text()
                        assert response.status == 504, text
                        assert "outcome unknown" in text, text
                finally:
                    await asyncio.to_thread(first.thaw)
        finally:
            await server.stop()


async def test_rebalance_returns_to_the_first_node_without_losing_messages(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    first, _, third = private_cluster.nodes
    t = unique()
    async with bridge(
        "amqp",
        urls=private_cluster.urls,
        reconnect_min=0.2,
        reconnect_max=1.0,
        rebalance=True,
        rebalance_interval=0.5,
        **PROBE,
    ) as rs:
        broker = rs.broker
        assert isinstance(broker, AmqpBroker)
        ws = await clients.connect("websocket", rs.port)
        await ws.join(t)
        await asyncio.to_thread(first.stop_app)
        await until(lambda: broker.connected and broker.node not in (None, 0), 10, "the failover")
        async with Stream(third, t) as stream:
            await until(lambda: len(stream.sent) > 5, 5, "a publish")
            start = stream.sent[0][0]
            await asyncio.to_thread(first.start_app)
            await until(lambda: broker.node == 0, 20, "the return to the first node")
            mark = len(stream.sent)
            await until(lambda: len(stream.sent) > mark + 5, 5, "publishes after the return")
            last = stream.sent[-1][0]
            gaps: list[dict[str, Any]] = []
            got = await received_until(ws, t, last, 10, gaps)
            # One #gap, for the failover away from the stopped node; the return to it
            # loses nothing and says nothing.
            assert len(gaps) == 1
        # Every message confirmed while the process moved arrived; some maybe twice.
        confirmed = {seq for seq, _ in stream.sent if start <= seq <= last}
        missing = confirmed - set(got)
        assert not missing, f"lost {sorted(missing)[:10]}"
        print(f"rebalance: {len(got) - len(set(got))} duplicates, {broker.failovers} failovers")
        assert broker.failovers == 2
        assert set(broker.bindings) == {t}


async def test_a_frozen_node_that_is_not_ours_is_not_left(
    private_cluster: PrivateCluster, clients: Clients
) -> None:
    """The probe through another node must not blame our node for that node's trouble:
    with the node the probe crosses frozen, the process stays where it is, ready."""
    first, second, third = private_cluster.nodes
    # On the second node; the probe's other node is the first one (the next URL).
    server = await serve(private_cluster, [second.url, first.url, third.url])
    t = unique()
    try:
        broker = server.services.hub().broker
        assert isinstance(broker, AmqpBroker)
        ws = await clients.connect("websocket", server.listeners[0].port)
        await ws.join(t)
        await until(lambda: broker.unready is None, 10, "the first probe")
        passed = broker.probes.passed
        await asyncio.to_thread(first.freeze)
        try:
            # /ready sampled through several probe rounds while the first node stays frozen
            # (each round waits for the probe through it to time out, then tries the third).
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    status, body = await ready(http, server)
                    assert status == 200, body
                    assert broker.node == 0
                    await asyncio.sleep(0.2)
            assert broker.probes.passed > passed
            assert broker.probes.failed == 0
            assert broker.failovers == 0
            async with Stream(third, t) as stream:
                await until(lambda: len(stream.sent) > 5, 5, "a publish")
                after = stream.sent[-1][0]
                got = await received_until(ws, t, after, 10)
                assert after in got
        finally:
            await asyncio.to_thread(first.thaw)
    finally:
        await server.stop()
