"""Embedding: rabbitsocks' endpoints inside the user's own aiohttp application."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import socketio
import websockets
from aiohttp import web
from websockets.exceptions import ConnectionClosed

import rabbitsocks
from tests.support.recorder import Recorder


async def test_mount_in_an_existing_app() -> None:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app.router.add_get("/hello", hello)
    recorder = Recorder()
    await rabbitsocks.mount(app, recorder)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sio = socketio.AsyncClient(reconnection=False)
    disconnected = asyncio.Event()
    sio.on("disconnect", lambda *a: disconnected.set())
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/hello") as response,
        ):
            assert await response.text() == "mine"
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/websocket/room")
        await ws.send("path")
        assert await asyncio.wait_for(ws.recv(), 5) == "room"
        await sio.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
    finally:
        await runner.cleanup()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1001
    await asyncio.wait_for(disconnected.wait(), 5)
    await recorder.wait_terminated(2)
