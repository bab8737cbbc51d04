"""The demo page end to end: Debian's headless Chromium, driven by playwright-core from npm,
against a real server on the real RabbitMQ.

The browser scenario is ``demo.spec.mjs``. This test starts the server (the pubsub
endpoints, the demo routes and the RPC HTTP endpoint with the CORS the page needs), runs
the script, and publishes over AMQP whenever the script asks, from an AMQP client of its
own, as any producer would. The RPC endpoint wants a token, which the page asks for after
its first publish is refused. Nothing sleeps: each side waits for the other's line, and the
script waits for text to appear on the page.

The test fails, never skips, when Chromium, Node.js or the npm packages are missing: a
skipped browser test looks green. ``RABBITSOCKS_CHROMIUM`` points it at another Chromium.
"""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import rabbitsocks
from rabbitsocks.config import Interface, parse_config
from rabbitsocks.demo import ASSETS, add_demo_routes, demo_origins, rpc_cors_middleware
from rabbitsocks.rpc.http import make_rpc_app
from rabbitsocks.rpc.service import PublishService
from rabbitsocks.services import Services
from tests.support.browser import ARTIFACTS, ROOT, node_for_chromium, run_browser_script
from tests.support.pubsub import AmqpPublisher, amqp_url, unique

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

SPEC = Path(__file__).with_name("demo.spec.mjs")
#: The whole scenario (a browser start, five publishes) takes about 4 s.
DEADLINE = 45.0
RPC_TOKEN = "e2e-s3cret"


def _node() -> str:
    """The ``node`` to run the scenario with; fails with the fix when something is missing
    or the demo page's build is older than its source."""
    node = node_for_chromium()
    if (ROOT / "demo" / "index.html").stat().st_mtime > (ASSETS / "index.html").stat().st_mtime:
        pytest.fail("demo/index.html is newer than its build: run scripts/build-demo.")
    return node


@contextlib.asynccontextmanager
async def demo_server(url: str, *, rpc_token: str) -> AsyncIterator[str]:
    """A pubsub listener on RabbitMQ serving the demo page, the RPC HTTP endpoint the page
    publishes through, and a STOMP listener for its STOMP transport; yields the page's URL."""
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "brokers": {"amqp": {"type": "amqp", "url": url}},
        },
        source="<e2e>",
        environ={},
    )
    services = Services.from_config(config)
    await services.start()
    assert services.hub().connected, "the amqp broker did not connect"
    service = PublishService(services.brokers, services.default_broker)
    runners: list[web.AppRunner] = []
    stops: list[rabbitsocks.Listener] = []
    # The page's port first: the RPC endpoint's CORS must know the page's origin.
    page_socket = socket.create_server(("127.0.0.1", 0))
    try:
        page_port = page_socket.getsockname()[1]
        origins = demo_origins(Interface("127.0.0.1", page_port), page_port)
        rpc_app = make_rpc_app(service, token=rpc_token)
        rpc_app.middlewares.append(rpc_cors_middleware(origins.__contains__))
        runners.append(web.AppRunner(rpc_app))
        await runners[-1].setup()
        await web.TCPSite(runners[-1], "127.0.0.1", 0).start()
        rpc_port = runners[-1].addresses[0][1]

        stomp = await rabbitsocks.start_listener(
            "127.0.0.1:0", "callbacks.stomp", services=services
        )
        stops.append(stomp)
        app = web.Application()
        await rabbitsocks.mount(app, "callbacks.pubsub", services=services)
        add_demo_routes(app, rpc_url=f"http://127.0.0.1:{rpc_port}/rpc", stomp_url=stomp.urls[0])
        runners.append(web.AppRunner(app, shutdown_timeout=1.0))
        await runners[-1].setup()
        await web.SockSite(runners[-1], page_socket).start()
        yield f"http://127.0.0.1:{page_port}/"
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for listener in stops:
            await listener.stop()
        page_socket.close()
        await service.close()
        await services.close()


async def drive_demo_page(page_url: str, amqp: str, rpc_token: str) -> Path:
    """Run ``demo.spec.mjs`` on ``page_url``, publishing on ``amqp`` as it asks; returns the
    screenshot. For any server serving the page (``mount`` here, ``rabbitsocks serve``)."""
    _node()
    publisher = await AmqpPublisher.open(amqp)

    async def handle(request: dict[str, Any]) -> dict[str, Any] | None:
        if "publish" not in request:
            return None
        topic = request["publish"]["topic"]
        body = base64.b64decode(request["publish"]["payload"])
        await publisher.publish(topic, body)  # confirmed by RabbitMQ
        return {"published": topic}

    environ = {"DEMO_URL": page_url, "DEMO_PREFIX": unique("demo"), "DEMO_RPC_TOKEN": rpc_token}
    try:
        done = await run_browser_script(SPEC, environ, handle, DEADLINE)
    finally:
        await publisher.close()
    return Path(done["screenshot"])


async def test_demo_page_in_chromium() -> None:
    _node()  # before starting anything: what is missing, and how to install it
    url = amqp_url()
    async with demo_server(url, rpc_token=RPC_TOKEN) as page_url:
        screenshot = await drive_demo_page(page_url, url, RPC_TOKEN)
    assert screenshot == ARTIFACTS / "demo-page.png"
