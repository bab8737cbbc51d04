"""@stomp/stompjs under Node.js against callbacks.stomp and against RabbitMQ's Web-STOMP
plugin, with the same script (``stompjs.spec.mjs``), unchanged: the drop-in of issue 16.

The harness starts a STOMP listener on the real RabbitMQ (or points at Web-STOMP on
15674, which ``scripts/ensure-rabbitmq`` enables), runs the script, and publishes over
AMQP whenever it asks, as any producer would. The test fails, never skips, when Node.js,
the npm packages, RabbitMQ or Web-STOMP are missing.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from rabbitsocks import start_listener
from tests.support.browser import node_with_packages, run_browser_script, run_node_script
from tests.support.pubsub import amqp_url as reachable_amqp_url
from tests.support.pubsub import make_services, unique, until_connected

pytestmark = [pytest.mark.rabbitmq]

SPEC = Path(__file__).with_name("stompjs.spec.mjs")
BROWSER_SPEC = Path(__file__).with_name("stompjs.browser.mjs")
WEB_STOMP = ("127.0.0.1", 15674)
DEADLINE = 60.0


@contextlib.asynccontextmanager
async def rabbitsocks_stomp(amqp_url: str, prefix: str) -> AsyncIterator[str]:
    services = make_services("amqp", amqp_url)
    await services.start()
    await until_connected(services.hub().broker)
    allowed = [f"/topic/{prefix}.#", f"/topic/{prefix}s.#", f"/queue/{prefix}-q"]
    options = {"subscribe": allowed, "send": allowed}
    listener = await start_listener("127.0.0.1:0", "callbacks.stomp", options, services=services)
    try:
        yield f"ws://127.0.0.1:{listener.port}/websocket/"
    finally:
        await listener.stop()
        await services.close()


@contextlib.asynccontextmanager
async def web_stomp(amqp_url: str, prefix: str) -> AsyncIterator[str]:
    try:
        socket.create_connection(WEB_STOMP, timeout=2).close()
    except OSError as exc:
        pytest.fail(
            f"Web-STOMP does not answer on {WEB_STOMP[0]}:{WEB_STOMP[1]} ({exc}): run"
            " `rabbitmq-plugins enable rabbitmq_web_stomp` (scripts/ensure-rabbitmq does)"
        )
    yield f"ws://{WEB_STOMP[0]}:{WEB_STOMP[1]}/ws"


@pytest.mark.parametrize("server", ["rabbitsocks", "web-stomp"])
async def test_stompjs(server: str) -> None:
    node = node_with_packages("@stomp/stompjs", "ws")
    amqp_url = reachable_amqp_url()
    prefix = unique("sj")
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    target = rabbitsocks_stomp if server == "rabbitsocks" else web_stomp

    async def publish(request: dict[str, Any]) -> dict[str, Any] | None:
        order = request["publish"]
        exchange = await channel.get_exchange(order["exchange"], ensure=False)
        body = base64.b64decode(order["payload"])
        await exchange.publish(aio_pika.Message(body, **order["properties"]), order["key"])
        return {"published": order["key"]}

    try:
        async with target(amqp_url, prefix) as url:
            done = await run_node_script(
                node,
                SPEC,
                {"STOMP_URL": url, "STOMP_PREFIX": prefix},
                publish,
                DEADLINE,
            )
    finally:
        cleanup = await connection.channel()
        await cleanup.queue_delete(f"{prefix}-q")
        await connection.close()
    assert done["checks"] > 0  # "done" is written only once every check passed
    expected = "rabbitsocks/" if server == "rabbitsocks" else "RabbitMQ/"
    assert done["server"].startswith(expected)


async def test_stompjs_in_chromium() -> None:
    """Once in a real browser: the bundle a page loads, on the browser's own WebSocket."""
    amqp_url = reachable_amqp_url()
    prefix = unique("sb")
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()

    async def publish(request: dict[str, Any]) -> dict[str, Any] | None:
        order = request["publish"]
        exchange = await channel.get_exchange(order["exchange"], ensure=False)
        body = base64.b64decode(order["payload"])
        await exchange.publish(aio_pika.Message(body, **order["properties"]), order["key"])
        return {"published": order["key"]}

    try:
        async with rabbitsocks_stomp(amqp_url, prefix) as url:
            done = await run_browser_script(
                BROWSER_SPEC, {"STOMP_URL": url, "STOMP_PREFIX": prefix}, publish, 30
            )
    finally:
        cleanup = await connection.channel()
        await cleanup.queue_delete(f"{prefix}-q")
        await connection.close()
    assert done["version"] == "1.2"
    assert done["server"].startswith("rabbitsocks/")
