"""pubsub's join authorization (token claim, callable, HTTP endpoint) and command rate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets
from aiohttp import web
from websockets.exceptions import ConnectionClosed

from rabbitsocks import Listener, start_listener
from rabbitsocks.config import AuthConfig, JwtConfig
from tests.support.apps import served

SECRET = "pubsub-secret-of-32-bytes-at-least"


def token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


async def command(ws: Any, name: str, topics: list[str]) -> list[dict[str, Any]]:
    """Send a command; the answer frames (one @ and/or #), until both kinds are settled."""
    await ws.send(json.dumps({"command": name, "topics": topics}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    frames = [first]
    if first["topic"].startswith("@") and len(first["payload"]) < len(set(topics)):
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    return frames


@pytest.fixture
async def claim_listener() -> AsyncIterator[Listener]:
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        {"topics_claim": "topics"},
        auth=AuthConfig(jwt=JwtConfig(secret=SECRET)),
    )
    try:
        yield listener
    finally:
        await listener.stop()


async def test_token_claim_lists_the_topics_one_may_join(claim_listener: Listener) -> None:
    url = f"ws://127.0.0.1:{claim_listener.port}/websocket/?token=" + token(
        topics=["chat.#", "user.42"]
    )
    async with websockets.connect(url) as ws:
        frames = await command(ws, "join", ["chat.room1", "chat.*", "user.42", "user.43", "#"])
    assert frames == [
        {"topic": "@join", "payload": ["chat.room1", "chat.*", "user.42"]},
        {"topic": "#join", "payload": ["user.43", "#"], "reason": "not allowed by token"},
    ]


async def test_token_without_the_claim_may_join_nothing(claim_listener: Listener) -> None:
    url = f"ws://127.0.0.1:{claim_listener.port}/websocket/?token=" + token(sub="x")
    async with websockets.connect(url) as ws:
        frames = await command(ws, "join", ["chat.room1"])
    assert frames == [
        {"topic": "#join", "payload": ["chat.room1"], "reason": "not allowed by token"}
    ]


async def test_callable_join_hook() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        {"join_auth": {"callable": "tests.support.hooks:only_public_topics"}},
    )
    try:
        async with websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/") as ws:
            frames = await command(ws, "join", ["public.news", "private.diary"])
    finally:
        await listener.stop()
    assert frames == [
        {"topic": "@join", "payload": ["public.news"]},
        {"topic": "#join", "payload": ["private.diary"], "reason": "not authorized"},
    ]


@pytest.fixture
async def join_endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Allows everything for ?user=admin, only the listed topics for ?user=some, nothing
    otherwise (RoadRunner's ws:joinTopics: 200 or not)."""
    seen: list[dict[str, Any]] = []

    async def decide(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        user = body["query"].get("user")
        if user == "admin":
            return web.Response(status=200)
        if user == "some":
            return web.json_response({"topics": body["topics"][:1]})
        return web.Response(status=403)

    app = web.Application()
    app.router.add_post("/ws/join", decide)
    async with served(app) as base:
        yield f"{base}/ws/join", seen


async def test_http_join_hook(join_endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = join_endpoint
    listener = await start_listener("127.0.0.1:0", "callbacks.pubsub", {"join_auth": {"url": url}})
    base = f"ws://127.0.0.1:{listener.port}/websocket/room"
    try:
        async with websockets.connect(f"{base}?user=admin") as ws:
            assert await command(ws, "join", ["a", "b"]) == [
                {"topic": "@join", "payload": ["a", "b"]}
            ]
        assert seen[-1]["topics"] == ["a", "b"]
        assert seen[-1]["path"] == "/websocket/room"
        async with websockets.connect(f"{base}?user=some") as ws:
            assert await command(ws, "join", ["a", "b"]) == [
                {"topic": "@join", "payload": ["a"]},
                {"topic": "#join", "payload": ["b"], "reason": "not authorized"},
            ]
        async with websockets.connect(f"{base}?user=nobody") as ws:
            assert await command(ws, "join", ["a"]) == [
                {"topic": "#join", "payload": ["a"], "reason": "not authorized"}
            ]
    finally:
        await listener.stop()


async def test_command_rate_gets_error_then_close_1008() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        {"rate": 5, "burst": 5, "max_rate_violations": 20},
    )
    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/") as flooder,
            websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/") as calm,
        ):
            join = json.dumps({"command": "join", "topics": ["t"]})
            for _ in range(40):
                await flooder.send(join)
            answers: list[dict[str, Any]] = []

            async def read_until_closed() -> None:
                while True:
                    answers.append(json.loads(await asyncio.wait_for(flooder.recv(), 5)))

            with pytest.raises(ConnectionClosed):
                await read_until_closed()
            assert (flooder.close_code, flooder.close_reason) == (1008, "rate limit exceeded")
            kinds = [a["topic"] for a in answers]
            assert kinds[:5] == ["@join"] * 5
            assert answers[5] == {
                "topic": "#error",
                "payload": "rate limit exceeded (max 5 commands/s)",
            }
            assert kinds.count("#error") >= 20
            assert await command(calm, "join", ["t"]) == [{"topic": "@join", "payload": ["t"]}]
    finally:
        await listener.stop()
