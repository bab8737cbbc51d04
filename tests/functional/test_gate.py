"""Origins, connection limits, handshake timeout and connect authorization, on both
transports, with real clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
import websockets
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import InvalidStatus

from rabbitsocks import Listener, Writer, current_connection, start_listener
from rabbitsocks.config import AuthConfig, HookConfig, JwtConfig, LimitsConfig
from tests.support.apps import served
from tests.support.recorder import Recorder

SECRET = "test-secret-of-32-bytes-at-least!"


class WhoAmI:
    """Answers every frame with the connection's claims and path, as JSON."""

    def subprotocol_name(self) -> None:
        return None

    def init(self, path: str, options: Any) -> dict[str, Any]:
        info = current_connection()
        return {"path": path, "claims_at_init": dict(info.claims or {})}

    def open(self, writer: Writer, state: dict[str, Any]) -> dict[str, Any]:
        state["writer"] = writer
        return state

    def handle_frame(self, frame: str | bytes, state: dict[str, Any]) -> dict[str, Any]:
        info = current_connection()
        state["writer"].send(
            json.dumps(
                {"claims": dict(info.claims or {}), "init": state["claims_at_init"], "id": info.id}
            )
        )
        return state

    def terminate(self, state: dict[str, Any]) -> None:
        return None


async def status_of(url: str, **kwargs: Any) -> tuple[int, str, Any]:
    """Try a WebSocket handshake; the HTTP status, body and headers of a refusal."""
    try:
        async with websockets.connect(url, **kwargs):
            return 101, "", None
    except InvalidStatus as exc:
        response = exc.response
        return response.status_code, (response.body or b"").decode(), response.headers


def sio_handshake(port: int, query: str = "", headers: dict[str, str] | None = None) -> Any:
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling{query}"

    async def get() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            return r.status, await r.text()

    return get()


# --- origins ------------------------------------------------------------------------------


@pytest.fixture
async def guarded() -> AsyncIterator[Listener]:
    listener = await start_listener(
        "127.0.0.1:0",
        Recorder(),
        origins=("https://app.example.com", "https://*.example.org", "http://127.0.0.1:8080"),
    )
    try:
        yield listener
    finally:
        await listener.stop()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),
        ("http://127.0.0.1:8080", True),
        (None, True),  # not a browser
        ("https://example.org", False),
        ("http://a.example.org", False),
        ("https://a.example.org:8443", False),
        ("https://evil.com", False),
        ("https://app.example.com.evil.com", False),
        ("https://evil.com#.example.org", False),
        ("https://evil.com?.example.org", False),
        ("https://evil.com%2f.example.org", False),
        ("https://user@a.example.org", False),
        ("null", False),
    ],
)
async def test_origins_on_both_transports(
    guarded: Listener, origin: str | None, allowed: bool
) -> None:
    headers = {"Origin": origin} if origin else {}
    status, body, _ = await status_of(f"ws://127.0.0.1:{guarded.port}/websocket/", origin=origin)
    sio_status, sio_body = await sio_handshake(guarded.port, headers=headers)
    if allowed:
        assert (status, sio_status) == (101, 200)
    else:
        assert (status, sio_status) == (403, 403)
        assert body == sio_body == f"origin {origin} is not allowed\n"


async def test_socketio_polling_gets_cors_for_an_allowed_origin(guarded: Listener) -> None:
    url = f"http://127.0.0.1:{guarded.port}/socket.io/?EIO=4&transport=polling"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Origin": "https://a.example.org"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://a.example.org"


async def test_socketio_client_with_a_refused_origin_cannot_connect(guarded: Listener) -> None:
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            f"http://127.0.0.1:{guarded.port}",
            headers={"Origin": "https://evil.com"},
            transports=["polling"],
            wait_timeout=5,
        )


# --- limits -------------------------------------------------------------------------------


async def test_connection_limits_answer_503() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        Recorder(),
        limits=LimitsConfig(max_connections=3, max_connections_per_address=2),
    )
    url = f"ws://127.0.0.1:{listener.port}/websocket/"
    try:
        async with websockets.connect(url), websockets.connect(url):
            status, body, headers = await status_of(url)
            assert (status, body) == (503, "too many connections from your address\n")
            assert headers["Retry-After"] == "5"
            sio_status, _ = await sio_handshake(listener.port)
            assert sio_status == 503
        async with websockets.connect(url):  # a slot is free again
            pass
    finally:
        await listener.stop()


async def test_listener_wide_connection_limit() -> None:
    listener = await start_listener(
        "127.0.0.1:0", Recorder(), limits=LimitsConfig(max_connections=1)
    )
    url = f"ws://127.0.0.1:{listener.port}/websocket/"
    try:
        async with websockets.connect(url):
            status, body, _ = await status_of(url)
            assert (status, body) == (503, "too many connections\n")
    finally:
        await listener.stop()


async def test_handshake_timeout_drops_a_silent_or_slow_client() -> None:
    listener = await start_listener(
        "127.0.0.1:0", Recorder(), limits=LimitsConfig(handshake_timeout=0.5)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /websocket/ HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert time.monotonic() - started < 4
        writer.close()
    finally:
        await listener.stop()


# --- tokens -------------------------------------------------------------------------------


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, key, algorithm=algorithm)


@pytest.fixture
async def jwt_listener() -> AsyncIterator[Listener]:
    listener = await start_listener(
        "127.0.0.1:0", WhoAmI(), auth=AuthConfig(jwt=JwtConfig(secret=SECRET))
    )
    try:
        yield listener
    finally:
        await listener.stop()


async def test_token_in_query_and_header_reaches_the_callback(jwt_listener: Listener) -> None:
    base = f"ws://127.0.0.1:{jwt_listener.port}/websocket/x"
    async with websockets.connect(f"{base}?token={token({'sub': 'ada'})}") as ws:
        await ws.send("who")
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["claims"]["sub"] == "ada"
        assert answer["init"]["sub"] == "ada"
    headers = {"Authorization": f"Bearer {token({'sub': 'bob'})}"}
    async with websockets.connect(base, additional_headers=headers) as ws:
        await ws.send("who")
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["claims"]["sub"] == "bob"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "a token is required"),
        ("?token=garbage", "invalid token: Not enough segments"),
        ("?token=" + jwt.encode({"exp": 1}, SECRET, algorithm="HS256"), "token expired"),
        (
            "?token=" + jwt.encode({"sub": "x"}, "another-secret-of-32-bytes-long!!", "HS256"),
            "invalid token: Signature verification failed",
        ),
    ],
)
async def test_bad_tokens_get_401(jwt_listener: Listener, query: str, reason: str) -> None:
    status, body, _ = await status_of(f"ws://127.0.0.1:{jwt_listener.port}/websocket/{query}")
    assert (status, body) == (401, f"{reason}\n")
    sio_status, sio_body = await sio_handshake(
        jwt_listener.port, "&" + query.lstrip("?") if query else ""
    )
    assert (sio_status, sio_body) == (401, f"{reason}\n")


async def test_socketio_client_with_a_token_sees_its_claims(jwt_listener: Listener) -> None:
    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[str] = asyncio.Queue()
    client.on("message", got.put_nowait)
    await client.connect(
        f"http://127.0.0.1:{jwt_listener.port}?token={token({'sub': 'eve'})}",
        transports=["websocket"],
        wait_timeout=5,
    )
    try:
        await client.send("who")
        assert json.loads(await asyncio.wait_for(got.get(), 5))["claims"]["sub"] == "eve"
    finally:
        await client.disconnect()


async def test_rs256_tokens(tmp_path: Any) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    listener = await start_listener(
        "127.0.0.1:0",
        WhoAmI(),
        auth=AuthConfig(jwt=JwtConfig(public_key=str(path), algorithms=("RS256",))),
    )
    base = f"ws://127.0.0.1:{listener.port}/websocket/"
    try:
        good = token({"sub": "rsa"}, private, "RS256")
        async with websockets.connect(f"{base}?token={good}") as ws:
            await ws.send("who")
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["claims"]["sub"] == "rsa"
        # A token signed with HS256 is refused, whatever its key: no algorithm confusion.
        status, body, _ = await status_of(f"{base}?token={token({'sub': 'x'})}")
        assert (status, body) == (401, "token algorithm 'HS256' is not accepted\n")
    finally:
        await listener.stop()


# --- connect hooks ------------------------------------------------------------------------


async def test_callable_connect_hook() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        Recorder(),
        auth=AuthConfig(connect=HookConfig(callable="tests.support.hooks:allow_if_vip")),
    )
    base = f"ws://127.0.0.1:{listener.port}/websocket/"
    try:
        assert (await status_of(f"{base}?vip=yes"))[0] == 101
        status, body, headers = await status_of(f"{base}?vip=no")
        assert (status, body, headers["X-Reason"]) == (402, "pay first\n", "vip-only")
        assert (await status_of(base))[:2] == (403, "forbidden\n")
        assert (await sio_handshake(listener.port, "&vip=no"))[0] == 402
    finally:
        await listener.stop()


@pytest.fixture
async def auth_endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP authorization service: 200 for ?user=ok, 418 with headers otherwise,
    and never answers for ?user=slow."""
    seen: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def decide(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        user = body["query"].get("user")
        if user == "ok":
            return web.Response(status=200)
        if user == "slow":
            await never.wait()
        return web.Response(status=418, text="I am a teapot", headers={"X-Teapot": "yes"})

    app = web.Application()
    app.router.add_post("/ws/connect", decide)
    async with served(app) as base:
        try:
            yield f"{base}/ws/connect", seen
        finally:
            never.set()


async def test_http_connect_hook(auth_endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = auth_endpoint
    listener = await start_listener(
        "127.0.0.1:0",
        Recorder(),
        auth=AuthConfig(connect=HookConfig(url=url, timeout=0.5)),
    )
    base = f"ws://127.0.0.1:{listener.port}/websocket/room"
    try:
        assert (await status_of(f"{base}?user=ok"))[0] == 101
        assert seen[-1]["method"] == "GET"
        assert seen[-1]["path"] == "/websocket/room"
        assert seen[-1]["query"] == {"user": "ok"}
        assert "Host" in seen[-1]["headers"] or "host" in seen[-1]["headers"]
        status, body, headers = await status_of(f"{base}?user=nope")
        assert (status, body, headers["X-Teapot"]) == (418, "I am a teapot", "yes")
        status, body, _ = await status_of(f"{base}?user=slow")
        assert (status, body) == (503, "authorization timed out\n")
        assert (await sio_handshake(listener.port, "&user=nope"))[0] == 418
    finally:
        await listener.stop()


async def test_unreachable_connect_endpoint_gives_503() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        Recorder(),
        auth=AuthConfig(connect=HookConfig(url="http://127.0.0.1:9/nothing", timeout=2)),
    )
    try:
        status, body, _ = await status_of(f"ws://127.0.0.1:{listener.port}/websocket/")
        assert (status, body) == (503, "authorization unavailable\n")
    finally:
        await listener.stop()
