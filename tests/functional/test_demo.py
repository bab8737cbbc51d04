"""The demo routes and the RPC endpoint's CORS, on real aiohttp servers with aiohttp's client.

The page itself runs in Chromium in ``tests/e2e``; here, what the server answers. The
assets come from a directory of the test's own, so these tests need no ``npm``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rabbitsocks import __version__
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import Interface, parse_config
from rabbitsocks.demo import NOT_BUILT, add_demo_routes, demo_origins, rpc_cors_middleware
from rabbitsocks.rpc.http import make_rpc_app
from rabbitsocks.rpc.service import PublishService
from rabbitsocks.server import Server
from tests.support.apps import Serve, app_server

SCRIPT = b"console.log('demo');"
STYLE = b"body { color: teal; }"
PAGE = b"<!doctype html><style>" + STYLE + b"</style><script>" + SCRIPT + b"</script>"
PAGE_ORIGIN = "http://127.0.0.1:8080"
SOURCE = Path(__file__).resolve().parents[2] / "demo"


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an app on 127.0.0.1, port 0; returns its base URL."""
    async with app_server() as start:
        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_bytes(PAGE)
    (tmp_path / "socket.io.min.js").write_text("var io = function () {};")
    (tmp_path / "elsewhere.txt").write_text("not an asset")
    return tmp_path


async def demo(serve: Serve, rpc_url: str | None, assets: Path) -> str:
    app = web.Application()
    add_demo_routes(app, rpc_url=rpc_url, assets=assets)
    return await serve(app)


def csp_hash(source: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source).digest()).decode() + "'"


async def test_the_page_allows_its_inline_code_by_hash_and_revalidates(
    serve: Serve, http: aiohttp.ClientSession, assets: Path
) -> None:
    url = await demo(serve, "http://127.0.0.1:8081/rpc", assets)
    async with http.get(url + "/") as response:
        assert response.status == 200
        assert await response.read() == PAGE
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = dict(
            part.strip().split(" ", 1)
            for part in response.headers["Content-Security-Policy"].split(";")
        )
        etag = response.headers["ETag"]
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == f"'self' {csp_hash(SCRIPT)}"
    assert policy["style-src"] == csp_hash(STYLE)
    assert policy["connect-src"] == "'self' http://127.0.0.1:8081"
    async with http.get(url + "/", headers={"If-None-Match": etag}) as response:
        assert response.status == 304
    async with http.head(url + "/") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("rpc_url", "host", "expected"),
    [
        (None, None, None),
        ("http://127.0.0.1:8081/rpc", None, "http://127.0.0.1:8081/rpc"),
        ("http://127.0.0.1:8081/rpc/", None, "http://127.0.0.1:8081/rpc"),
        # Bound to every interface: the browser reaches it on the host it used for the page.
        ("http://0.0.0.0:8081/rpc", "localhost:8080", "http://localhost:8081/rpc"),
        ("http://[::]:8081/rpc", "demo.example:80", "http://demo.example:8081/rpc"),
    ],
)
async def test_config_tells_the_page_where_rpc_is(
    serve: Serve,
    http: aiohttp.ClientSession,
    assets: Path,
    rpc_url: str | None,
    host: str | None,
    expected: str | None,
) -> None:
    url = await demo(serve, rpc_url, assets)
    headers = {"Host": host} if host else {}
    async with http.get(url + "/demo/config.json", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.json() == {"rpc": expected, "stomp": None, "version": __version__}


async def test_config_and_policy_name_the_stomp_listener(
    serve: Serve, http: aiohttp.ClientSession, assets: Path
) -> None:
    where: list[str | None] = [None]  # a STOMP listener may bind its port after the page's
    app = web.Application()
    add_demo_routes(app, rpc_url=None, assets=assets, stomp_url=lambda: where[0])
    url = await serve(app)
    async with http.get(url + "/demo/config.json") as response:
        assert (await response.json())["stomp"] is None
    where[0] = "ws://0.0.0.0:8083/websocket/"
    async with http.get(url + "/demo/config.json", headers={"Host": "demo.example"}) as response:
        assert (await response.json())["stomp"] == "ws://demo.example:8083/websocket"
    async with http.get(url + "/", headers={"Host": "demo.example"}) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "connect-src 'self' ws://demo.example:8083;" in policy


async def test_socketio_client_is_served_as_javascript_and_cached(
    serve: Serve, http: aiohttp.ClientSession, assets: Path
) -> None:
    url = await demo(serve, None, assets)
    async with http.get(url + "/demo/socket.io.min.js") as response:
        assert response.status == 200
        assert await response.text() == "var io = function () {};"
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=86400"
        etag = response.headers["ETag"]
    async with http.get(url + "/demo/socket.io.min.js", headers={"If-None-Match": etag}) as r:
        assert r.status == 304


@pytest.mark.parametrize("path", ["/demo/elsewhere.txt", "/demo/index.html", "/demo/..%2F..%2Fx"])
async def test_only_the_listed_assets_are_served(
    serve: Serve, http: aiohttp.ClientSession, assets: Path, path: str
) -> None:
    url = await demo(serve, None, assets)
    async with http.get(url + path) as response:
        assert response.status == 404


async def test_without_a_build_the_page_says_how_to_build_it(
    serve: Serve, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = await demo(serve, None, tmp_path / "not-built")
    for path in ("/", "/demo/socket.io.min.js"):
        async with http.get(url + path) as response:
            assert response.status == 503
            assert await response.text() == NOT_BUILT
            assert "run scripts/build-demo" in NOT_BUILT
    async with http.get(url + "/demo/config.json") as response:
        assert response.status == 200


async def test_the_shipped_page_builds_a_policy_for_its_one_script_and_style(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    page = (SOURCE / "index.html").read_bytes()
    url = await demo(serve, None, SOURCE)
    async with http.get(url + "/") as response:
        policy = response.headers["Content-Security-Policy"]
    inline = re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    assert len(inline) == 1
    assert f"script-src 'self' {csp_hash(inline[0])};" in policy


# --- CORS on the RPC HTTP endpoint ---------------------------------------------------------


@pytest.fixture
async def rpc(serve: Serve) -> AsyncIterator[str]:
    broker = MemoryBroker()
    await broker.start(lambda delivery: None)
    service = PublishService({"memory": broker}, "memory")
    app = make_rpc_app(service, token="s3cret")
    app.middlewares.append(rpc_cors_middleware({PAGE_ORIGIN}.__contains__))
    yield await serve(app) + "/rpc/broadcast.Publish"
    await service.close()
    await broker.close()


BODY = {"messages": [{"topics": ["t"], "payload": base64.b64encode(b"hi").decode()}]}
AUTH = {"Authorization": "Bearer s3cret"}


async def test_preflight_from_the_demo_origin(rpc: str, http: aiohttp.ClientSession) -> None:
    headers = {
        "Origin": PAGE_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with http.options(rpc, headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert response.headers["Access-Control-Allow-Methods"] == "POST"
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert {h.strip() for h in allowed.split(",")} == {"authorization", "content-type"}
        assert response.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in response.headers


async def test_calls_from_the_demo_origin_can_read_answers_and_errors(
    rpc: str, http: aiohttp.ClientSession
) -> None:
    origin = {"Origin": PAGE_ORIGIN}
    async with http.post(rpc, json=BODY, headers=origin | AUTH) as response:
        assert response.status == 200
        assert await response.json() == {"ok": True}
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    async with http.post(rpc, json=BODY, headers=origin) as response:
        assert response.status == 401  # the token is still required
        assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN


async def test_other_origins_are_refused(rpc: str, http: aiohttp.ClientSession) -> None:
    evil = {"Origin": "http://evil.example"}
    preflight = evil | {"Access-Control-Request-Method": "POST"}
    async with http.options(rpc, headers=preflight) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.post(rpc, json=BODY, headers=evil | AUTH) as response:
        assert response.status == 403
        assert "not allowed" in (await response.json())["error"]


async def test_back_ends_send_no_origin_and_are_served_as_before(
    rpc: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(rpc, json=BODY, headers=AUTH) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    ("host", "tls", "expected"),
    [
        ("127.0.0.1", False, {"http://127.0.0.1:80", "http://localhost:80", "http://[::1]:80"}),
        (None, False, {"http://127.0.0.1:80", "http://localhost:80", "http://[::1]:80"}),
        ("0.0.0.0", True, {"https://127.0.0.1:80", "https://localhost:80", "https://[::1]:80"}),
        ("::1", False, {"http://127.0.0.1:80", "http://localhost:80", "http://[::1]:80"}),
        ("10.1.2.3", False, {"http://10.1.2.3:80"}),
        ("fd00::1", False, {"http://[fd00::1]:80"}),
    ],
)
def test_demo_origins(host: str | None, tls: bool, expected: set[str]) -> None:
    assert demo_origins(Interface(host, 0), 80, tls=tls) == expected


async def test_the_server_tells_the_page_where_its_stomp_listener_is(
    http: aiohttp.ClientSession,
) -> None:
    config = parse_config(
        {
            "listeners": [
                {"interface": "127.0.0.1:0", "demo": True},
                {"interface": "127.0.0.1:0", "callback": "callbacks.stomp"},
            ]
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    try:
        page, stomp = server.listeners
        async with http.get(f"http://127.0.0.1:{page.port}/demo/config.json") as response:
            answer = await response.json()
        assert answer["stomp"] == f"ws://127.0.0.1:{stomp.port}/websocket"
    finally:
        await server.stop()
