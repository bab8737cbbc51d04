"""RPC publishing reaches subscribers on every path (issue 4): Publish and PublishAsync,
under both service names, over goridge and HTTP, to the memory broker and to RabbitMQ,
delivered to a bare WebSocket and a Socket.IO subscriber alike; and ``rabbitsocks publish``
once ``--via`` each of amqp, http and goridge.

The server is a real ``rabbitsocks.Server`` from a configuration (``rpc: {goridge: 0,
http: 0}``, a pubsub listener on port 0, an ``amqp`` broker next to ``memory``); the
message's ``broker`` field picks the broker. After the message, a sentinel published to the
same broker must be the next frame: nothing was delivered twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from rabbitsocks import Server
from rabbitsocks.config import parse_config
from rabbitsocks.rpc import GoridgeClient, HttpRpcClient
from tests.support.examples import rpc_goridge_port, rpc_http_port
from tests.support.pubsub import (
    BROKERS,
    BrokerKind,
    Clients,
    PubSubClient,
    client_pool,
    serve_env,
    unique,
    until_connected,
)

pytestmark = pytest.mark.rabbitmq

RpcTransport = Literal["goridge", "http"]
#: Not ASCII: frames carry it as is (protocol.md), and the CLI passes it through argv.
PAYLOAD = '{"score": "2:1", "by": "Zoë"}'


@pytest.fixture
async def server(amqp_url: str) -> AsyncIterator[Server]:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "brokers": {"amqp": {"type": "amqp", "url": amqp_url}},
            "rpc": {"goridge": 0, "http": 0},
        },
        source="<rpc matrix>",
        environ={},
    )
    srv = Server(config)
    await srv.start()
    try:
        await until_connected(srv.services.brokers["amqp"])
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


async def subscribers(
    clients: Clients, server: Server, topic: str, broker: BrokerKind
) -> list[PubSubClient]:
    """A WebSocket and a Socket.IO client, each joined to ``topic`` on ``broker``."""
    port = server.listeners[0].port
    joined = []
    for transport in ("websocket", "socketio"):
        client = await clients.connect(transport, port)
        await client.join(topic, broker=broker)
        joined.append(client)
    return joined


async def expect_once(subscribed: list[PubSubClient], topic: str, payload: str) -> None:
    for client in subscribed:
        assert await client.next() == {"topic": topic, "payload": payload}, client.transport


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("service", ["broadcast", "websockets"])
@pytest.mark.parametrize("wait", [True, False], ids=["Publish", "PublishAsync"])
@pytest.mark.parametrize("rpc", ["goridge", "http"])
async def test_rpc_publish_reaches_both_transports(
    server: Server,
    clients: Clients,
    rpc: RpcTransport,
    wait: bool,
    service: str,
    broker: BrokerKind,
) -> None:
    topic = f"{unique('matrix')}.{rpc}"
    subscribed = await subscribers(clients, server, topic, broker)
    client: GoridgeClient | HttpRpcClient
    if rpc == "goridge":
        client = GoridgeClient("127.0.0.1", rpc_goridge_port(server), service=service)
    else:
        url = f"http://127.0.0.1:{rpc_http_port(server)}/rpc"
        client = HttpRpcClient(url, service=service)
    async with client:
        await client.publish(topic, PAYLOAD, broker=broker, wait=wait)
        await expect_once(subscribed, topic, PAYLOAD)
        await client.publish(topic, "sentinel", broker=broker)
        await expect_once(subscribed, topic, "sentinel")


async def cli_publish(config: Path, *args: str) -> str:
    """``python -m rabbitsocks publish -c config ARGS``; its stdout, after exit status 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        "publish",
        "-c",
        str(config),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


@pytest.mark.parametrize(
    ("via", "broker", "wait"),
    [("amqp", "amqp", True), ("http", "memory", True), ("goridge", "amqp", False)],
    ids=["via-amqp", "via-http-memory", "via-goridge-async"],
)
async def test_the_publish_command_reaches_both_transports(
    server: Server,
    clients: Clients,
    amqp_url: str,
    tmp_path: Path,
    via: str,
    broker: BrokerKind,
    wait: bool,
) -> None:
    config = tmp_path / "publish.yaml"
    config.write_text(
        "listeners: [{interface: 8080}]\n"
        f"brokers: {{amqp: {{type: amqp, url: {json.dumps(amqp_url)}}}}}\n"
        f"rpc: {{goridge: {rpc_goridge_port(server)}, http: {rpc_http_port(server)}}}\n"
    )
    topic = f"{unique('matrix')}.cli"
    subscribed = await subscribers(clients, server, topic, broker)
    extra = [] if via == "amqp" else ["--broker", broker]
    if not wait:
        extra.append("--async")
    said = await cli_publish(config, "--via", via, "-t", topic, PAYLOAD, *extra)
    done = "confirmed" if wait else "handed over, not waiting for confirms"
    size = len(PAYLOAD.encode())
    assert said == f"published {size} bytes to {topic} via {via} ({done})"
    await expect_once(subscribed, topic, PAYLOAD)
    await server.services.brokers[broker].publish(topic, b"sentinel")
    await expect_once(subscribed, topic, "sentinel")
