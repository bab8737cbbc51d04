"""Socket.IO attacked as an adversary would (issue 11's red team, second round): requests no
Socket.IO library sends, each aimed at a bound the server claims to keep. Every test here
failed on the code before its fix.

The clients are raw: an Engine.IO polling client (tests/support/engineio.py) and bare
sockets (tests/support/rawws.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rabbitsocks import Listener, start_listener
from rabbitsocks.config import LimitsConfig, SocketIOConfig
from tests.support.engineio import Poller
from tests.support.rawws import OP_BINARY, OP_CLOSE, RawSocketIO, RawWebSocket


@contextlib.asynccontextmanager
async def pubsub(**settings: Any) -> AsyncIterator[Listener]:
    listener = await start_listener("127.0.0.1:0", "callbacks.pubsub", **settings)
    try:
        yield listener
    finally:
        await listener.stop()


async def test_a_session_takes_one_upgrade_websocket_and_it_ends_with_the_session() -> None:
    # Every WebSocket naming a polling session was accepted and attached to it, uncounted
    # and never closed: 300 of them held on one session under a limit of 10 per address,
    # still open long after the session expired.
    async with (
        pubsub(
            limits=LimitsConfig(max_connections_per_address=2, handshake_timeout=0.5),
            socketio=SocketIOConfig(ping_interval=0.2, ping_timeout=0.2),
        ) as listener,
        Poller(listener.port) as poller,
    ):
        assert (await poller.handshake())[0] == 200
        path = f"/socket.io/?EIO=4&transport=websocket&sid={poller.sid}"
        probe = await RawWebSocket.connect(listener.port, path)  # the upgrade's WebSocket
        try:
            with pytest.raises(AssertionError, match="400 Bad Request"):
                await RawWebSocket.connect(listener.port, path)  # a second one
            # No namespace: the session expires, and its upgrade WebSocket goes with it.
            frame = await probe.recv_data(5.0)
            assert frame.opcode == OP_CLOSE, frame
            await probe.send_frame(OP_CLOSE, frame.payload[:2])
            assert await probe.closed_by_server(2.0)
            assert listener.connections == 0
        finally:
            probe.close()


NESTED = "[" * 600 + '{"_placeholder":true,"num":0}' + "]" * 600


async def test_a_deeply_nested_binary_event_is_refused_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A 2.4 KB binary event nested 600 deep made putting its attachment back recurse past
    # Python's limit: a RecursionError escaped the protocol, asyncio logged "Fatal error"
    # with a traceback of some 3,000 lines, and the client got no close frame.
    caplog.set_level(logging.INFO)
    async with pubsub() as listener:
        raw = await RawSocketIO.connect(listener.port)
        try:
            await raw.ws.send_text(f'451-["message",{NESTED}]')
            await raw.ws.send_frame(OP_BINARY, b"attachment")
            frame = await raw.ws.recv_data()
            assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002), frame
            assert "nested" in frame.close_reason, frame
        finally:
            raw.close()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
