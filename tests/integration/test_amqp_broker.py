"""``AmqpBroker`` against the real RabbitMQ: routing, bindings as RabbitMQ sees them,
publisher confirms, and recovery from every way of losing the connection.

Messages come from a plain blocking ``pika`` publisher (confirm mode, in a worker thread), so
a message is routed before the publish returns. "Nothing else arrived" is shown with a
sentinel published last on the same channel: RabbitMQ keeps a queue's order, so once the
sentinel is delivered, anything routed before it would have been too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import pika
import pytest

from rabbitsocks.brokers.amqp import AmqpBroker
from rabbitsocks.errors import BrokerError, BrokerUnavailable, PublishFailed
from rabbitsocks.messages import Delivery
from tests.support.relay import TcpRelay

if TYPE_CHECKING:
    from tests.integration.conftest import RabbitAdmin
    from tests.support.rabbitmq import PrivateNode

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
LOGGER = "rabbitsocks.brokers.amqp"


class Recorder:
    """``on_delivery`` and ``on_state`` for a broker, with waits on what they saw."""

    def __init__(self, wait: float = WAIT) -> None:
        self.wait = wait
        self.deliveries: list[tuple[str, bytes]] = []
        self.states: list[bool] = []
        self._changed = asyncio.Event()

    def on_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append((delivery.routing_key, delivery.body))
        self._changed.set()

    def on_state(self, connected: bool) -> None:
        self.states.append(connected)
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (up to ``wait`` seconds) until ``done()`` holds; checked after each callback."""
        async with asyncio.timeout(self.wait):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def until_delivered(self, routing_key: str) -> None:
        """Wait for a delivery with ``routing_key`` (the sentinel)."""
        await self.until(lambda: any(k == routing_key for k, _ in self.deliveries))

    async def until_states(self, *expected: bool) -> None:
        """Wait until ``states`` is exactly ``expected``."""
        await self.until(lambda: len(self.states) >= len(expected))
        assert self.states == list(expected)


BrokerFactory = Callable[..., AmqpBroker]


@pytest.fixture
async def make_broker(amqp_url: str) -> AsyncIterator[BrokerFactory]:
    """Builds brokers with unique names (their connection names) and closes them after."""
    brokers: list[AmqpBroker] = []

    def make(**kwargs: object) -> AmqpBroker:
        kwargs.setdefault("url", amqp_url)
        broker = AmqpBroker(f"test-{uuid.uuid4().hex[:10]}", **kwargs)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


@pytest.fixture
def prefix() -> str:
    """A routing-key prefix of this test's own: other tests share amq.topic."""
    return f"rs{uuid.uuid4().hex[:10]}"


def _pika_publish(url: str, messages: list[tuple[str, bytes]], exchange: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for routing_key, body in messages:
            channel.basic_publish(exchange, routing_key, body)
    finally:
        connection.close()


async def pika_publish(
    url: str, messages: list[tuple[str, bytes]], exchange: str = "amq.topic"
) -> None:
    await asyncio.to_thread(_pika_publish, url, messages, exchange)


def connection_name(broker: AmqpBroker) -> str:
    return f"rabbitsocks {broker.name} pid {os.getpid()}"


async def started(broker: AmqpBroker, recorder: Recorder) -> AmqpBroker:
    await broker.start(recorder.on_delivery, recorder.on_state)
    assert broker.connected, "RabbitMQ must be running"
    return broker


# -- routing ----------------------------------------------------------------------------------


async def test_bound_topic_delivers_exact_key_and_body(
    make_broker: BrokerFactory, amqp_url: str, prefix: str
) -> None:
    recorder = Recorder()
    broker = await started(make_broker(), recorder)
    await broker.bind(f"{prefix}.a")
    bodies = [b"hello", "h\u00e9llo \u2713 \U0001f407".encode(), b"\xff\xfe\x00\x80bin", b""]
    await pika_publish(
        amqp_url,
        [(f"{prefix}.a", body) for body in bodies]
        + [(f"{prefix}.b", b"unbound"), (f"{prefix}.a", b"sentinel")],
    )
    await recorder.until(lambda: (f"{prefix}.a", b"sentinel") in recorder.deliveries)
    assert recorder.deliveries == [(f"{prefix}.a", body) for body in [*bodies, b"sentinel"]]


async def test_wildcards_are_matched_by_rabbitmq_once_per_message(
    make_broker: BrokerFactory, amqp_url: str, prefix: str
) -> None:
    recorder = Recorder()
    broker = await started(make_broker(), recorder)
    for pattern in ("star.*", "hash.#", "hash.*"):
        await broker.bind(f"{prefix}.{pattern}")
    keys = ["star.a", "star.a.b", "star", "hash", "hash.one", "hash.a.b.c", "other", "hash.end"]
    await pika_publish(amqp_url, [(f"{prefix}.{key}", key.encode()) for key in keys])
    await recorder.until_delivered(f"{prefix}.hash.end")
    # hash.one matches both hash.# and hash.*: one queue, so one delivery (AMQP 0-9-1 3.1.3.3).
    assert [k for k, _ in recorder.deliveries] == [
        f"{prefix}.{key}" for key in ["star.a", "hash", "hash.one", "hash.a.b.c", "hash.end"]
    ]


async def test_a_failing_on_delivery_does_not_stop_the_consumer(
    make_broker: BrokerFactory, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()

    def on_delivery(delivery: Delivery) -> None:
        if delivery.body == b"boom":
            raise ValueError("boom")
        recorder.on_delivery(delivery)

    broker = make_broker()
    await broker.start(on_delivery)
    await broker.bind(prefix)
    await pika_publish(amqp_url, [(prefix, b"boom"), (prefix, b"after")])
    await recorder.until_delivered(prefix)
    assert recorder.deliveries == [(prefix, b"after")]
    assert "on_delivery failed" in caplog.text


# -- bindings and queues, as RabbitMQ sees them ------------------------------------------------


async def test_bindings_in_rabbitmq_follow_bind_unbind_and_close(
    make_broker: BrokerFactory, rabbitmq_admin: RabbitAdmin, prefix: str
) -> None:
    broker = await started(make_broker(), Recorder())
    queue = broker.queue_name
    assert queue is not None
    info = await rabbitmq_admin.queue(queue)
    assert info is not None
    assert (info["exclusive"], info["auto_delete"], info["durable"]) == (True, True, False)

    await broker.bind(f"{prefix}.x")
    await broker.bind(f"{prefix}.x")  # idempotent: still one binding
    assert await rabbitmq_admin.bindings(queue) == [f"{prefix}.x"]
    await broker.bind(f"{prefix}.#")
    assert await rabbitmq_admin.bindings(queue) == sorted([f"{prefix}.x", f"{prefix}.#"])
    assert broker.bindings == {f"{prefix}.x", f"{prefix}.#"}

    await broker.unbind(f"{prefix}.x")
    await broker.unbind(f"{prefix}.never-bound")
    assert await rabbitmq_admin.bindings(queue) == [f"{prefix}.#"]
    assert broker.bindings == {f"{prefix}.#"}

    await broker.close()
    await broker.close()  # idempotent
    assert not broker.connected
    assert broker.queue_name is None
    assert broker.bindings == frozenset()
    with pytest.raises(BrokerUnavailable, match="closed"):
        await broker.bind(f"{prefix}.y")
    with pytest.raises(BrokerUnavailable):
        await broker.publish(f"{prefix}.y", b"x")

    async def queue_gone() -> bool:
        return await rabbitmq_admin.queue(queue) is None

    await rabbitmq_admin.eventually(queue_gone, what=f"queue {queue} to go")


_BROKER_IN_A_PROCESS = """
import asyncio, sys
from rabbitsocks.brokers.amqp import AmqpBroker

async def main() -> None:
    broker = AmqpBroker("killed", sys.argv[1])
    await broker.start(lambda delivery: None)
    await broker.bind(sys.argv[2])
    print(broker.queue_name, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_process_leaves_no_queue(
    amqp_url: str, rabbitmq_admin: RabbitAdmin, prefix: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BROKER_IN_A_PROCESS,
        amqp_url,
        f"{prefix}.#",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            queue = (await process.stdout.readline()).decode().strip()
        assert queue.startswith("amq.gen-")
        assert await rabbitmq_admin.bindings(queue) == [f"{prefix}.#"]
    finally:
        process.kill()  # SIGKILL: no Connection.Close, no cleanup of any kind
        await process.wait()

    async def queue_gone() -> bool:
        return await rabbitmq_admin.queue(queue) is None

    await rabbitmq_admin.eventually(queue_gone, what=f"queue {queue} of a killed process to go")


async def test_a_cancelled_bind_leaves_no_binding_and_a_working_consumer(
    make_broker: BrokerFactory, amqp_url: str, rabbitmq_admin: RabbitAdmin, prefix: str
) -> None:
    # aiormq closes a channel whose RPC is cancelled; that must not be the consume channel.
    recorder = Recorder()
    broker = await started(make_broker(), recorder)
    await broker.bind(f"{prefix}.kept")
    bind = asyncio.create_task(broker.bind(f"{prefix}.cancelled"))
    for _ in range(3):  # let the Bind reach the connection
        await asyncio.sleep(0)
    bind.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bind

    await broker.bind(f"{prefix}.after")
    queue = broker.queue_name
    assert queue is not None

    async def only_kept_bindings() -> bool:
        return await rabbitmq_admin.bindings(queue) == sorted([f"{prefix}.kept", f"{prefix}.after"])

    await rabbitmq_admin.eventually(only_kept_bindings, what="the cancelled bind to be undone")
    assert broker.bindings == {f"{prefix}.kept", f"{prefix}.after"}
    await pika_publish(amqp_url, [(f"{prefix}.cancelled", b"no"), (f"{prefix}.after", b"yes")])
    await recorder.until_delivered(f"{prefix}.after")
    assert recorder.deliveries == [(f"{prefix}.after", b"yes")]
    assert recorder.states == [True]


# -- publishing ---------------------------------------------------------------------------


async def test_publish_confirmed_and_unconfirmed_are_delivered(
    make_broker: BrokerFactory, prefix: str
) -> None:
    recorder = Recorder()
    broker = await started(make_broker(), recorder)
    await broker.bind(f"{prefix}.#")
    await broker.publish(f"{prefix}.one", b"\x00confirmed")
    await broker.publish(f"{prefix}.two", b"unconfirmed", confirm=False)
    await broker.publish(f"{prefix}.end", b"", confirm=True)
    await recorder.until_delivered(f"{prefix}.end")
    assert recorder.deliveries == [
        (f"{prefix}.one", b"\x00confirmed"),
        (f"{prefix}.two", b"unconfirmed"),
        (f"{prefix}.end", b""),
    ]
    assert broker.publish_failures == 0


async def test_publish_to_a_deleted_exchange_fails_and_the_broker_carries_on(
    make_broker: BrokerFactory, amqp_url: str, rabbitmq_admin: RabbitAdmin, prefix: str
) -> None:
    exchange = f"rabbitsocks.test.{prefix}"
    recorder = Recorder()
    broker = await started(make_broker(exchange=exchange), recorder)
    try:
        declared = await rabbitmq_admin.exchange(exchange)
        assert declared is not None
        assert (declared["type"], declared["durable"]) == ("topic", True)
        await broker.bind(f"{prefix}.a")
        await broker.publish(f"{prefix}.a", b"before")

        await rabbitmq_admin.delete_exchange(exchange)
        # Twice: the first refusal closes the publish channel, the second needs a new one.
        for _ in range(2):
            with pytest.raises(PublishFailed, match=f"NOT_FOUND - no exchange '{exchange}'"):
                await broker.publish(f"{prefix}.a", b"lost")
        with pytest.raises(BrokerError, match="NOT_FOUND"):
            await broker.bind(f"{prefix}.b")
        assert broker.connected
        assert recorder.states == [True]
        # The consumer lives on, on the same queue.
        queue = broker.queue_name
        assert queue is not None
        await rabbitmq_admin.declare_exchange(exchange)
        await broker.bind(f"{prefix}.c")
        await broker.publish(f"{prefix}.c", b"after")
        await recorder.until_delivered(f"{prefix}.c")
        assert broker.queue_name == queue
        assert recorder.deliveries == [(f"{prefix}.a", b"before"), (f"{prefix}.c", b"after")]

        await rabbitmq_admin.delete_exchange(exchange)
        await broker.publish(f"{prefix}.c", b"lost", confirm=False)
        await broker.close()  # waits for the outstanding confirm (here: the refusal)
        assert broker.publish_failures == 1
    finally:
        await rabbitmq_admin.delete_exchange(exchange)


# -- outages -----------------------------------------------------------------------------------


@pytest.fixture
async def rabbitmq_proxy(amqp_url: str) -> AsyncIterator[TcpRelay]:
    """A relay to RabbitMQ that a test can take down, refusing until ``listen()``."""
    relay = TcpRelay(amqp_url)
    yield relay
    relay.down()


async def test_down_at_start_then_up_then_network_cut(
    make_broker: BrokerFactory,
    rabbitmq_proxy: TcpRelay,
    amqp_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    recorder = Recorder()
    broker = make_broker(url=rabbitmq_proxy.url, reconnect_min=0.05, reconnect_max=0.2)
    await broker.start(recorder.on_delivery, recorder.on_state)  # returns although refused
    assert not broker.connected
    assert broker.queue_name is None
    with pytest.raises(BrokerUnavailable, match=r"not connected to amqp://guest:\*+@"):
        await broker.bind(f"{prefix}.a")
    with pytest.raises(BrokerUnavailable):
        await broker.publish(f"{prefix}.a", b"x")
    await broker.unbind(f"{prefix}.a")  # never raises for an outage
    assert recorder.states == []

    await rabbitmq_proxy.listen()  # RabbitMQ "comes up": the broker finds it by itself
    await recorder.until_states(True)
    await broker.bind(f"{prefix}.a")
    await broker.publish(f"{prefix}.a", b"through the proxy")
    await recorder.until(lambda: len(recorder.deliveries) == 1)

    rabbitmq_proxy.cut()  # a dead network: no Connection.Close from anybody
    await recorder.until_states(True, False, True)
    assert broker.bindings == {f"{prefix}.a"}
    await pika_publish(amqp_url, [(f"{prefix}.a", b"after the cut")])
    await recorder.until(lambda: len(recorder.deliveries) == 2)
    assert recorder.deliveries == [
        (f"{prefix}.a", b"through the proxy"),
        (f"{prefix}.a", b"after the cut"),
    ]

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    ours = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len([m for m in warnings if "cannot connect" in m]) == 1, warnings
    assert len([m for m in warnings if "lost the connection" in m]) == 1, warnings
    assert len([m for m in ours if "again after" in m]) == 2, ours  # after each outage
    assert ":guest@" not in caplog.text  # the password is masked everywhere


async def test_force_closed_connection_recovers_and_replays_bindings(
    make_broker: BrokerFactory,
    rabbitmq_proxy: TcpRelay,
    amqp_url: str,
    rabbitmq_admin: RabbitAdmin,
    prefix: str,
) -> None:
    # Through the proxy only so that the test decides when the outage ends.
    await rabbitmq_proxy.listen()
    recorder = Recorder()
    broker = await started(make_broker(url=rabbitmq_proxy.url, reconnect_min=0.05), recorder)
    for word in ("a", "b.*", "c"):
        await broker.bind(f"{prefix}.{word}")
    old_queue = broker.queue_name

    rabbitmq_proxy.refuse()
    assert await rabbitmq_admin.close_connections(connection_name(broker)) == 1
    await recorder.until_states(True, False)
    # The outage, as the hub sees it: no bind, no publish; an unbind is remembered.
    assert not broker.connected
    with pytest.raises(BrokerUnavailable):
        await broker.bind(f"{prefix}.d")
    with pytest.raises(BrokerUnavailable):
        await broker.publish(f"{prefix}.a", b"x")
    await broker.unbind(f"{prefix}.c")
    assert broker.bindings == {f"{prefix}.a", f"{prefix}.b.*"}

    await rabbitmq_proxy.listen()
    await recorder.until_states(True, False, True)
    queue = broker.queue_name
    assert queue is not None
    assert queue != old_queue
    assert await rabbitmq_admin.bindings(queue) == sorted([f"{prefix}.a", f"{prefix}.b.*"])
    assert await rabbitmq_admin.queue(old_queue or "") is None
    await pika_publish(
        amqp_url,
        [(f"{prefix}.c", b"unbound"), (f"{prefix}.b.x", b"b"), (f"{prefix}.a", b"a")],
    )
    await recorder.until(lambda: len(recorder.deliveries) >= 2)
    assert recorder.deliveries == [(f"{prefix}.b.x", b"b"), (f"{prefix}.a", b"a")]


async def test_queue_deleted_by_an_operator_is_declared_again(
    make_broker: BrokerFactory, amqp_url: str, rabbitmq_admin: RabbitAdmin, prefix: str
) -> None:
    # RabbitMQ cancels the consumer (consumer_cancel_notify): a queue of our own is gone with
    # its bindings, and the broker starts over on a new connection.
    recorder = Recorder()
    broker = await started(make_broker(reconnect_min=0.05), recorder)
    await broker.bind(f"{prefix}.#")
    old_queue = broker.queue_name
    assert old_queue is not None
    await rabbitmq_admin.delete_queue(old_queue)
    await recorder.until_states(True, False, True)
    queue = broker.queue_name
    assert queue is not None
    assert queue != old_queue
    assert await rabbitmq_admin.bindings(queue) == [f"{prefix}.#"]
    await pika_publish(amqp_url, [(f"{prefix}.x", b"still here")])
    await recorder.until_delivered(f"{prefix}.x")


async def _wait_for_amqp(url: str) -> None:
    """Until RabbitMQ accepts AMQP connections again (external state: poll)."""
    async with asyncio.timeout(60):
        while True:
            try:
                connection = await aio_pika.connect(url, timeout=2)
            except Exception:
                await asyncio.sleep(0.2)
            else:
                await connection.close()
                return


@pytest.mark.slow
async def test_rabbitmq_stop_and_start_app_recovers(
    make_broker: BrokerFactory, private_node: PrivateNode, prefix: str
) -> None:
    # On a private node: stop_app must never bounce the shared broker on 5672.
    recorder = Recorder(wait=30)
    url = private_node.url
    broker = await started(make_broker(url=url, reconnect_min=0.2, reconnect_max=1.0), recorder)
    await broker.bind(f"{prefix}.#")
    try:
        await asyncio.to_thread(private_node.stop_app)
        await recorder.until_states(True, False)
        with pytest.raises(BrokerUnavailable):
            await broker.bind(f"{prefix}.other")
    finally:
        await asyncio.to_thread(private_node.start_app)
        await _wait_for_amqp(url)
    await recorder.until_states(True, False, True)
    queue = broker.queue_name
    assert queue is not None
    assert await asyncio.to_thread(private_node.bindings, queue) == [f"{prefix}.#"]
    await pika_publish(url, [(f"{prefix}.back", b"again")])
    await recorder.until_delivered(f"{prefix}.back")
    assert recorder.deliveries == [(f"{prefix}.back", b"again")]


async def test_the_host_applications_connections_stay_strict(
    make_broker: BrokerFactory, amqp_url: str, prefix: str
) -> None:
    # Issue 12.4: our lenient shortstr decoding must not reach an aio-pika connection of
    # the application that embeds rabbitsocks. Theirs keeps pamqp's strict UTF-8 (and so,
    # as pamqp always did, loses its connection on such a key); ours survives it.
    recorder = Recorder()
    broker = await started(make_broker(), recorder)
    await broker.bind(f"{prefix}.*")
    host = await aio_pika.connect(amqp_url)
    try:
        channel = await host.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind("amq.topic", f"{prefix}.*")

        async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pass

        await queue.consume(ignore, no_ack=True)
        host_closed = asyncio.Event()
        host.close_callbacks.add(lambda *_: host_closed.set())
        await pika_publish(
            amqp_url, [(f"{prefix}.".encode() + b"\xff", b"odd"), (f"{prefix}.ok", b"after")]
        )
        await recorder.until_delivered(f"{prefix}.ok")
        assert recorder.deliveries == [(f"{prefix}.\udcff", b"odd"), (f"{prefix}.ok", b"after")]
        assert recorder.states == [True]
        await asyncio.wait_for(host_closed.wait(), WAIT)
    finally:
        await host.close()


def _dead_url() -> str:
    """An AMQP URL on a loopback port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


async def test_several_urls_are_tried_in_turn_without_backing_off(
    make_broker: BrokerFactory, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The first URL refuses: the second is tried at once, not after a backoff (reconnect_min
    # is far longer than this test's wait), and start() returns connected to it.
    recorder = Recorder()
    dead = _dead_url()
    broker = make_broker(url=[dead, amqp_url], reconnect_min=30, reconnect_max=60)
    with caplog.at_level(logging.WARNING, LOGGER):
        await asyncio.wait_for(started(broker, recorder), WAIT)
    assert broker.node == 1
    assert recorder.states == [True]
    assert "(then the other URLs)" in caplog.text
    await broker.bind(f"{prefix}.a")
    await pika_publish(amqp_url, [(f"{prefix}.a", b"via the second URL")])
    await recorder.until_delivered(f"{prefix}.a")


async def test_start_returns_after_one_round_when_no_url_answers(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker(url=[_dead_url(), _dead_url()], reconnect_min=30, reconnect_max=60)
    await asyncio.wait_for(broker.start(Recorder().on_delivery), WAIT)
    assert not broker.connected
    with pytest.raises(BrokerUnavailable, match=r" or amqp://guest:\*\*\*@127\.0\.0\.1:"):
        await broker.bind("x")


async def test_probe_messages_never_reach_on_delivery_even_for_hash(
    make_broker: BrokerFactory, amqp_url: str
) -> None:
    # A client joined to "#" sees every topic; the probe goes through the default
    # exchange to our queue by name, so it is never routed by a binding at all.
    recorder = Recorder()
    broker = await started(make_broker(probe_interval=0.05, probe_timeout=2), recorder)
    await broker.bind("#")
    async with asyncio.timeout(WAIT):
        while True:  # the probe's counter sends no event: polled, with a deadline
            if broker.probes.passed >= 5:
                break
            await asyncio.sleep(0.05)
    assert broker.unready is None
    assert all(not body.startswith(b"rabbitsocks-probe") for _, body in recorder.deliveries)
