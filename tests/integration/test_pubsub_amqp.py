"""callbacks.pubsub on RabbitMQ: what RabbitMQ itself holds (bindings, queues, as its
management API shows them), producers in other processes, several server processes, and
RabbitMQ going away and coming back.

The protocol tests that hold on every broker are in tests/functional/test_pubsub.py; these
are the ones only RabbitMQ can show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from yarl import URL

from rabbitsocks.brokers.base import Broker
from tests.support.pubsub import (
    AmqpPublisher,
    Bridge,
    Clients,
    PubSubClient,
    ServeProcess,
    WebSocketClient,
    amqp_config,
    bridge,
    client_pool,
    pika_publish_in_subprocess,
    serve_env,
    unique,
)

if TYPE_CHECKING:
    from tests.integration.conftest import RabbitAdmin
    from tests.support.rabbitmq import PrivateNode

pytestmark = pytest.mark.rabbitmq

WAIT = 10.0


def msg(topic: str, payload: str) -> dict[str, Any]:
    return {"topic": topic, "payload": payload}


@pytest.fixture
async def rs(amqp_url: str) -> AsyncIterator[Bridge]:
    async with bridge("amqp") as handle:
        yield handle


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


def queue_of(rs: Bridge) -> str:
    queue: str | None = getattr(rs.broker, "queue_name", None)
    assert queue is not None, "the amqp broker is not connected"
    return queue


async def eventually(probe: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll state that sends no event (RabbitMQ's, or a server's connection count), with a
    short interval and a deadline."""
    deadline = time.monotonic() + WAIT
    while True:
        result = probe()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- producers in other processes -----------------------------------------------------------


async def test_a_pika_publisher_in_another_process_reaches_joined_sockets_only(
    rs: Bridge, clients: Clients, amqp_url: str
) -> None:
    t = unique()
    pattern = await clients.connect("websocket", rs.port)
    exact = await clients.connect("socketio", rs.port)
    other = await clients.connect("websocket", rs.port)
    await pattern.join(f"{t}.*")
    await exact.join(f"{t}.x")
    await other.join(f"{t}.other")
    await pika_publish_in_subprocess(
        amqp_url,
        [
            (f"{t}.x", "caf\u00e9".encode()),
            (f"{t}.y", b"\xff\x00binary"),
            (f"{t}.nobody.joined", b"lost"),
            (f"{t}.x", b"end"),
            (f"{t}.other", b"end"),
        ],
    )
    await pattern.expect(
        msg(f"{t}.x", "caf\u00e9"),
        {"topic": f"{t}.y", "payload": "/wBiaW5hcnk=", "encoding": "base64"},
        msg(f"{t}.x", "end"),
    )
    await exact.expect(msg(f"{t}.x", "caf\u00e9"), msg(f"{t}.x", "end"))
    await other.expect(msg(f"{t}.other", "end"))


async def test_the_memory_broker_stays_available_by_name(rs: Bridge, clients: Clients) -> None:
    t = unique()
    on_amqp = await clients.connect("websocket", rs.port)
    on_memory = await clients.connect("socketio", rs.port)
    await on_amqp.join(t)
    await on_memory.join(t, broker="memory")
    # Left on the broker it was joined on, not on another one.
    assert await on_memory.command("leave", [t]) == [
        {"topic": "#leave", "payload": [t], "reason": "not joined"}
    ]
    await rs.publish(t, b"from rabbitmq")
    await rs.services.brokers["memory"].publish(t, b"from memory")
    await rs.publish(t, b"end")
    await on_amqp.expect(msg(t, "from rabbitmq"), msg(t, "end"))
    await on_memory.expect(msg(t, "from memory"))
    # A listener whose own default broker is memory, next to RabbitMQ.
    listener = await rs.add_listener({"broker": "memory"})
    local = await clients.connect("websocket", listener.port)
    await local.join(t)
    await rs.publish(t, b"not for local")
    await rs.services.brokers["memory"].publish(t, b"local")
    await local.expect(msg(t, "local"))
    await on_amqp.expect(msg(t, "not for local"))


async def test_a_configured_exchange_is_declared_and_routes(
    amqp_url: str, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    exchange = f"rabbitsocks.test.{t}"
    try:
        async with bridge("amqp", exchange=exchange) as rs:
            declared = await rabbitmq_admin.exchange(exchange)
            assert declared is not None
            assert (declared["type"], declared["durable"]) == ("topic", True)
            client = await clients.connect("socketio", rs.port)
            await client.join(f"{t}.#")
            assert await rabbitmq_admin.bindings(queue_of(rs), exchange) == [f"{t}.#"]
            await pika_publish_in_subprocess(
                amqp_url, [(f"{t}.on.amq.topic", b"elsewhere")], exchange="amq.topic"
            )
            await pika_publish_in_subprocess(amqp_url, [(f"{t}.x", b"here")], exchange=exchange)
            await client.expect(msg(f"{t}.x", "here"))
    finally:
        await rabbitmq_admin.delete_exchange(exchange)


async def test_a_routing_key_that_is_not_utf8_does_not_cut_the_broker(
    rs: Bridge, clients: Clients, amqp_url: str
) -> None:
    # AMQP routing keys are octets (a shortstr); RabbitMQ routes any. Such a message cannot
    # be pushed with its real key in a JSON string, but it must not take the others down.
    t = unique()
    client = await clients.connect("websocket", rs.port)
    await client.join(f"{t}.*")
    queue = queue_of(rs)
    await pika_publish_in_subprocess(
        amqp_url, [(f"{t}.".encode() + b"\xff", b"odd key"), (f"{t}.ok", b"after")]
    )
    disconnected = asyncio.create_task(until_state(rs.broker, False, None))
    try:
        frames: list[dict[str, Any]] = []
        while msg(f"{t}.ok", "after") not in frames:
            received = asyncio.create_task(client.next())
            done, _ = await asyncio.wait(
                {received, disconnected}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED
            )
            received.cancel()
            assert disconnected not in done, "the broker lost its connection"
            assert received in done, f"timed out; got {frames}"
            frames.append(received.result())
            assert len(frames) <= 2, frames
    finally:
        disconnected.cancel()
    assert frames == [msg(f"{t}.ok", "after")]  # the odd one is dropped, and counted
    assert rs.services.hubs["amqp"].dropped == 1
    assert queue_of(rs) == queue


# --- bindings, as RabbitMQ holds them -----------------------------------------------------------


async def test_a_thousand_websockets_on_one_topic_make_one_binding(
    rs: Bridge, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    left_topic, closed_topic = f"{t}.left", f"{t}.closed"
    queue = queue_of(rs)

    async def joined_client() -> PubSubClient:
        client = await WebSocketClient.connect(clients.session, rs.port)
        clients.opened.append(client)
        await client.join(left_topic, closed_topic)
        return client

    sockets: list[PubSubClient] = []
    for _ in range(10):  # in batches, so as not to flood the accept queue
        sockets += await asyncio.gather(*(joined_client() for _ in range(100)))
    assert await rabbitmq_admin.bindings(queue) == sorted([left_topic, closed_topic])
    await rs.publish(left_topic, b"all")
    for client in sockets:
        await client.expect(msg(left_topic, "all"))

    # The binding stays while anybody is joined, and goes with the last leaver.
    await asyncio.gather(*(client.leave(left_topic) for client in sockets[:-1]))
    assert await rabbitmq_admin.bindings(queue) == sorted([left_topic, closed_topic])
    await sockets[-1].leave(left_topic)

    async def only(*topics: str) -> bool:
        return await rabbitmq_admin.bindings(queue) == sorted(topics)

    await rabbitmq_admin.eventually(lambda: only(closed_topic), "the last leaver's unbind")

    # Likewise for disconnections: the last one to go takes the binding with it.
    await asyncio.gather(*(client.close() for client in sockets[:-1]))
    await eventually(lambda: rs.listener.connections == 1, "999 connections to terminate")
    assert await rabbitmq_admin.bindings(queue) == [closed_topic]
    await sockets[-1].close()
    await eventually(lambda: rs.listener.connections == 0, "the last connection to terminate")
    assert rs.services.hub().live_topics == 0
    await rabbitmq_admin.eventually(only, "the last disconnection's unbind")


async def test_socketio_clients_share_bindings_too(
    rs: Bridge, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    queue = queue_of(rs)
    sio = await asyncio.gather(*(clients.connect("socketio", rs.port) for _ in range(20)))
    ws = await clients.connect("websocket", rs.port)
    for client in [*sio, ws]:
        await client.join(f"{t}.*", f"{t}.a")
    assert await rabbitmq_admin.bindings(queue) == sorted([f"{t}.*", f"{t}.a"])
    await rs.publish(f"{t}.a", b"once each")
    for client in [*sio, ws]:
        await client.expect(msg(f"{t}.a", "once each"))
    await ws.leave(f"{t}.a")
    await asyncio.gather(*(client.close() for client in sio))
    await eventually(lambda: rs.listener.connections == 1, "20 Socket.IO connections to end")
    assert await rabbitmq_admin.bindings(queue) == [f"{t}.*"]


async def test_concurrent_joins_and_leaves_leave_consistent_bindings(
    rs: Bridge, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    # Joins and leaves of one topic by many connections at once race in the hub (a bind in
    # flight while the last leaver unbinds): RabbitMQ must end up with the binding exactly
    # when somebody is joined.
    t = unique()
    queue = queue_of(rs)
    sockets = await asyncio.gather(*(clients.connect("websocket", rs.port) for _ in range(50)))

    async def churn(client: PubSubClient, rounds: int) -> None:
        for _ in range(rounds):
            await client.join(t)
            await client.leave(t)

    await asyncio.gather(*(churn(client, 5) for client in sockets))
    assert await rabbitmq_admin.bindings(queue) == []
    await asyncio.gather(*(client.join(t) for client in sockets))
    await asyncio.gather(*(client.leave(t) for client in sockets[1:]))
    assert await rabbitmq_admin.bindings(queue) == [t]
    await rs.publish(t, b"survivor")
    await sockets[0].expect(msg(t, "survivor"))
    assert rs.services.hub().live_topics == 1


# --- server processes ---------------------------------------------------------------------------


async def _management_get(path: str) -> Any:
    parts = urlsplit(os.environ.get("RABBITSOCKS_RABBITMQ_ADMIN_URL", "http://127.0.0.1:15672"))
    credentials = aiohttp.encode_basic_auth(parts.username or "guest", parts.password or "guest")
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
    async with (
        aiohttp.ClientSession(headers={"Authorization": credentials}) as session,
        session.get(base + path) as response,
    ):
        response.raise_for_status()
        return await response.json()


async def queue_of_process(pid: int) -> str:
    """The queue of server process ``pid``: the one its AMQP connection, found by its
    connection name, consumes from. (RabbitMQ's statistics lag by a second or so: polled.)"""
    name = f"rabbitsocks amqp pid {pid}"
    found: list[str] = []

    async def probe() -> bool:
        connections = await _management_get("/connections?columns=name,client_properties")
        ours = {
            c["name"]
            for c in connections
            if c.get("client_properties", {}).get("connection_name") == name
        }
        if not ours:
            return False
        consumers = await _management_get("/consumers/%2F")
        # A consumer whose channel RabbitMQ has no details of (a stream consumer of another
        # test, one going away) has ``channel_details: []``.
        found[:] = sorted(
            {
                c["queue"]["name"]
                for c in consumers
                if isinstance(c.get("channel_details"), dict)
                and c["channel_details"].get("connection_name") in ours
            }
        )
        return bool(found)

    await eventually(probe, f"RabbitMQ to show the queue of {name!r}")
    assert len(found) == 1, found
    return found[0]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, url: str, count: int = 1, *, url_from_environment: bool = False
) -> AsyncIterator[list[ServeProcess]]:
    """``count`` processes of ``rabbitsocks serve -c`` a configuration with an amqp broker
    on ``url``, or (``url_from_environment``) on a wrong URL that RABBITSOCKS_AMQP_URL
    overrides with ``url``."""
    if url_from_environment:
        config = amqp_config(tmp_path / "rabbitmq.yaml", "amqp://guest:guest@127.0.0.1:1/")
        env = serve_env(RABBITSOCKS_AMQP_URL=url)
    else:
        config = amqp_config(tmp_path / "rabbitmq.yaml", url)
        env = serve_env()
    processes: list[ServeProcess] = []

    async def start() -> None:
        processes.append(await ServeProcess.start("-c", str(config), env=env))

    try:
        await asyncio.gather(*(start() for _ in range(count)))
        yield processes
    finally:
        await asyncio.gather(*(p.stop() for p in processes))


async def test_a_killed_server_process_leaves_no_queue(
    tmp_path: Path, amqp_url: str, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    async with serving(tmp_path, amqp_url, url_from_environment=True) as (server,):
        client = await clients.connect("websocket", server.port)
        await client.join(t, f"{t}.#")
        queue = await queue_of_process(server.pid)
        assert queue.startswith("amq.gen-")  # named by RabbitMQ
        assert await rabbitmq_admin.bindings(queue) == sorted([t, f"{t}.#"])
        info = await rabbitmq_admin.queue(queue)
        assert info is not None
        assert (info["exclusive"], info["auto_delete"], info["durable"]) == (True, True, False)
        await server.kill()

        async def queue_gone() -> bool:
            return await rabbitmq_admin.queue(queue) is None

        await rabbitmq_admin.eventually(queue_gone, f"queue {queue} of a killed process to go")


async def test_two_server_processes_deliver_once_to_each_subscriber(
    tmp_path: Path, amqp_url: str, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    async with serving(tmp_path, amqp_url, count=2) as (first, second):
        subscribers = [
            await clients.connect("websocket", first.port),
            await clients.connect("socketio", first.port),
            await clients.connect("websocket", second.port),
            await clients.connect("socketio", second.port),
        ]
        for client in subscribers:
            await client.join(t, f"{t}.#")
        queues = await asyncio.gather(queue_of_process(first.pid), queue_of_process(second.pid))
        assert queues[0] != queues[1]
        for queue in queues:  # one binding per topic per process, whatever the sockets
            assert await rabbitmq_admin.bindings(queue) == sorted([t, f"{t}.#"])
        await pika_publish_in_subprocess(amqp_url, [(t, b"once"), (t, b"end")])
        for client in subscribers:
            await client.expect(msg(t, "once"), msg(t, "end"))


async def test_serve_with_no_config_and_an_amqp_url_serves_on_rabbitmq(
    amqp_url: str, clients: Clients, rabbitmq_admin: RabbitAdmin
) -> None:
    t = unique()
    # Port 0 for every endpoint of the built-in configuration: nothing else may clash.
    env = serve_env(
        RABBITSOCKS_AMQP_URL=amqp_url,
        RABBITSOCKS_LISTEN="127.0.0.1:0",
        RABBITSOCKS_ADMIN="127.0.0.1:0",
        RABBITSOCKS_RPC_HTTP="127.0.0.1:0",
    )
    server = await ServeProcess.start(env=env)
    try:
        client = await clients.connect("websocket", server.port)
        await client.join(t)  # no broker named: the default, amqp
        await client.join(f"{t}.mem", broker="memory")
        await client.join(f"{t}.named", broker="amqp")
        queue = await queue_of_process(server.pid)
        assert await rabbitmq_admin.bindings(queue) == sorted([t, f"{t}.named"])
        await pika_publish_in_subprocess(
            amqp_url, [(f"{t}.mem", b"not on memory"), (t, b"default"), (f"{t}.named", b"named")]
        )
        await client.expect(msg(t, "default"), msg(f"{t}.named", "named"))
    finally:
        await server.stop()


# --- RabbitMQ going away ------------------------------------------------------------------------


async def until_state(broker: Broker, connected: bool, timeout: float | None) -> None:
    """Until ``broker.connected`` is ``connected``. The broker tells only its hub (through
    ``on_state``), so this polls its public property, briefly, with a deadline."""
    async with asyncio.timeout(timeout):
        while True:
            if broker.connected == connected:
                return
            await asyncio.sleep(0.02)


def _unavailable(url: str) -> str:
    """The ``#join`` reason during an outage, as a regular expression: the broker's name and
    its URL with the password masked."""
    parsed = URL(url)
    if parsed.password:
        masked = re.escape(str(parsed.with_password("PASSWORD"))).replace("PASSWORD", r"\*+")
    else:
        masked = re.escape(url)
    return rf"broker 'amqp' is not connected to {masked}"


@pytest.mark.slow
async def test_rabbitmq_restart_delivery_resumes_without_rejoining(
    private_node: PrivateNode, clients: Clients
) -> None:
    # On a private node: stop_app must never bounce the shared broker on 5672.
    amqp_url = private_node.url
    t = unique()
    async with bridge("amqp", urls=[amqp_url], reconnect_min=0.1, reconnect_max=0.5) as rs:
        ws = await clients.connect("websocket", rs.port)
        sio = await clients.connect("socketio", rs.port)
        await ws.join(f"{t}.*", f"{t}.gone.x")
        await sio.join(f"{t}.x")
        old_queue = queue_of(rs)
        try:
            await asyncio.to_thread(private_node.stop_app)
            await until_state(rs.broker, False, WAIT)
            # A topic needing a new binding is refused, with the reason.
            ok, refused = await sio.command("join", [f"{t}.new", f"{t}.x"], answers=2)
            assert ok == {"topic": "@join", "payload": [f"{t}.x"]}
            reason = refused.pop("reason")
            assert refused == {"topic": "#join", "payload": [f"{t}.new"]}
            assert re.fullmatch(_unavailable(amqp_url), reason), reason
            # A topic this process has bound already is joined: its binding is replayed.
            await sio.join(f"{t}.*")
            # Leaving works, and the binding is not replayed.
            await ws.leave(f"{t}.gone.x")
        finally:
            await asyncio.to_thread(private_node.start_app)
        await until_state(rs.broker, True, 30)
        queue = queue_of(rs)
        assert queue != old_queue
        bindings = await asyncio.to_thread(private_node.bindings, queue)
        assert bindings == sorted([f"{t}.*", f"{t}.x"])
        publisher = await AmqpPublisher.open(amqp_url)
        try:
            await publisher.publish(f"{t}.gone.x", b"left")
            await publisher.publish(f"{t}.x", b"back")
        finally:
            await publisher.close()
        # Both are told that messages of their topics may have been missed meanwhile.
        for client, topics in ((ws, [f"{t}.*"]), (sio, [f"{t}.*", f"{t}.x"])):
            gap = await client.next()
            assert (gap["topic"], gap["payload"]) == ("#gap", topics)
            assert gap["from"] <= gap["to"]
        await ws.expect(msg(f"{t}.x", "back"))
        await sio.expect(msg(f"{t}.x", "back"))
