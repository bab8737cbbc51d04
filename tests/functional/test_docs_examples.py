"""The examples of docs/callbacks.md, run for real."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio
import websockets
import yaml
from aiohttp import web
from websockets.exceptions import ConnectionClosed, InvalidStatus

import rabbitsocks
from rabbitsocks.config import parse_config, parse_options
from rabbitsocks.errors import ConfigError
from rabbitsocks.plan import plan_config
from tests.support.docs import ROOT, code_blocks


def snippet(starting: str) -> str:
    """The guide's Python block that starts with ``starting``."""
    (block,) = [b for b in code_blocks("callbacks.md", "python") if b.startswith(starting)]
    return block


def test_the_chat_example_in_the_guide_is_the_file() -> None:
    assert snippet('"""A chat room') == (ROOT / "examples/chat.py").read_text()


def test_the_options_snippet_declares_checked_options() -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("from dataclasses import"), namespace)
    options = namespace["Options"]
    brokers = {"brokers": ("memory", "amqp")}
    assert parse_options(options, {"broker": "amqp"}, "options", brokers).broker == "amqp"
    for raw, message in [
        ({"max_room_size": 0}, "options.max_room_size: expected an integer >= 1, got 0"),
        ({"idle_timeout": 0}, "options.idle_timeout: expected a number > 0, got 0"),
        (
            {"broker": "x"},
            "options.broker: expected one of the configured brokers (memory, amqp), got 'x'",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_options(options, raw, "options", brokers)
        assert str(info.value) == f"<options>: {message}"


def test_the_chat_config_in_the_guide_is_valid() -> None:
    (config,) = code_blocks("callbacks.md", "yaml")
    parsed = plan_config(parse_config(yaml.safe_load(config), environ={})).config
    assert parsed.listeners[0].options.max_room_size == 20


async def test_the_guides_test_snippet_passes() -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("import asyncio"), namespace)
    test: Callable[[], Awaitable[None]] = namespace["test_two_members_of_a_room_hear_each_other"]
    await test()


async def test_the_embedding_snippet_serves_the_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Awaitable[web.Application]] = []
    monkeypatch.setattr(web, "run_app", lambda app, **kw: started.append(app))
    exec(snippet("from aiohttp import web"), {})
    app = await started[0]
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/websocket/lobby"
    try:
        async with websockets.connect(url) as ada, websockets.connect(url) as bob:
            await ada.send("hi")
            assert await asyncio.wait_for(bob.recv(), 5) == "anonymous: hi"
    finally:
        await runner.cleanup()


@pytest.fixture
async def chat() -> Any:
    listener = await rabbitsocks.start_listener(
        "127.0.0.1:0", "examples.chat", {"max_room_size": 2}
    )
    try:
        yield listener
    finally:
        await listener.stop()


async def test_rooms_are_separate_and_bounded(chat: rabbitsocks.Listener) -> None:
    base = f"ws://127.0.0.1:{chat.port}/websocket"
    async with (
        websockets.connect(f"{base}/a", subprotocols=["chat"]) as a1,  # type: ignore[list-item]
        websockets.connect(f"{base}/a") as a2,
        websockets.connect(f"{base}/b") as b1,
    ):
        assert a1.subprotocol == "chat"
        await b1.send("in b")
        assert await asyncio.wait_for(b1.recv(), 5) == "anonymous: in b"
        await a1.send("/nick ada")
        await a1.send("in a")
        assert await asyncio.wait_for(a2.recv(), 5) == "ada: in a"
        assert await asyncio.wait_for(a1.recv(), 5) == "ada: in a"
        with pytest.raises(InvalidStatus) as full:
            await websockets.connect(f"{base}/a")
        assert full.value.response.status_code == 403
        await a2.send(b"binary")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(a2.recv(), 5)
        assert a2.close_code == 1011
        await b1.send("b is fine")
        assert await asyncio.wait_for(b1.recv(), 5) == "anonymous: b is fine"
    with pytest.raises(InvalidStatus) as no_room:
        await websockets.connect(f"{base}/")
    assert no_room.value.response.status_code == 400


async def test_the_chat_over_socketio(chat: rabbitsocks.Listener) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    ada, bob = socketio.AsyncClient(), socketio.AsyncClient()
    bob.on("message", got.put_nowait, namespace="/lobby")
    url = f"http://127.0.0.1:{chat.port}"
    try:
        await ada.connect(url, namespaces=["/lobby"], transports=["websocket"], wait_timeout=5)
        await bob.connect(url, namespaces=["/lobby"], transports=["polling"], wait_timeout=5)
        await ada.send("/nick ada", namespace="/lobby")
        await ada.send("over socket.io", namespace="/lobby")
        assert await asyncio.wait_for(got.get(), 5) == "ada: over socket.io"
    finally:
        await ada.disconnect()
        await bob.disconnect()
