"""callbacks.echo over both transports, with real clients."""

from __future__ import annotations

import aiohttp
import socketio

from rabbitsocks import Listener


async def test_echo_text_and_binary_over_websocket(echo_listener: Listener) -> None:
    url = f"http://127.0.0.1:{echo_listener.port}/websocket/any/path"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str("héllo")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert msg.data == "héllo"
        await ws.send_bytes(b"\x00\xffbin")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY
        assert msg.data == b"\x00\xffbin"


async def test_echo_speaks_the_echo_subprotocol(echo_listener: Listener) -> None:
    url = f"http://127.0.0.1:{echo_listener.port}/websocket/"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, protocols=("chat", "echo")) as ws,
    ):
        assert ws.protocol == "echo"


async def test_echo_over_socketio(echo_listener: Listener) -> None:
    client = socketio.AsyncClient()
    got = []
    import asyncio

    done = asyncio.Event()

    @client.on("message")
    def on_message(data: object) -> None:
        got.append(data)
        if len(got) == 2:
            done.set()

    await client.connect(f"http://127.0.0.1:{echo_listener.port}", transports=["websocket"])
    try:
        await client.send("hi")
        await client.send(b"\x01\x02")
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await client.disconnect()
    assert got == ["hi", b"\x01\x02"]
