"""Socket.IO attacked as an adversary would (issue 11's red team, second round): requests no
Socket.IO library sends, each aimed at a bound the server claims to keep. Every test here
failed on the code before its fix.

The clients are raw: an Engine.IO polling client (tests/support/engineio.py) and bare
sockets (tests/support/rawws.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rabbitsocks import Listener, start_listener
from rabbitsocks.config import LimitsConfig, SocketIOConfig
from tests.support.engineio import Poller
from tests.support.procfs import wait_until
from tests.support.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    RawSocketIO,
    RawWebSocket,
    client_frame,
)


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
            frame = await raw.next_frame()
            assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002), frame
            assert "nested" in frame.close_reason, frame
        finally:
            raw.close()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"


async def test_acknowledgements_count_against_the_outbound_bound() -> None:
    # Acks (and other answers of the Socket.IO layer) were written with no bound: a client
    # that asked for acks and never read them made the server buffer them all, 100 MB for
    # 5 million events sent in 20 s, for as long as it answered pings.
    limits = LimitsConfig(max_outbound_bytes=64 * 1024)
    async with pubsub(limits=limits) as listener:
        raw = await RawSocketIO.connect(listener.port, rcvbuf=4096)
        try:
            burst = b"".join(
                client_frame(OP_TEXT, f'42{10**15 + i}["x"]'.encode()) for i in range(5000)
            )
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # 500,000 acks, some 10 MB of them
                    await raw.ws.send_raw(burst)
                    if listener.stats.slow_consumers:
                        break
            await wait_until(lambda: listener.stats.slow_consumers == 1, 10, "a slow consumer")
            await wait_until(lambda: listener.connections == 0, 5, "the session to end")
        finally:
            raw.close()


async def test_a_session_whose_namespaces_all_left_counts_until_it_expires() -> None:
    # The first namespace takes over the session's slot, and released it when it left: the
    # session lived on uncounted until it expired. Connect, disconnect, repeat: 100 live
    # sessions from one address under a limit of 10.
    async with pubsub(
        limits=LimitsConfig(max_connections_per_address=2, handshake_timeout=1.0),
        socketio=SocketIOConfig(ping_interval=0.2, ping_timeout=0.2),
    ) as listener:
        pollers = [Poller(listener.port) for _ in range(3)]
        try:
            for poller in pollers[:2]:
                assert (await poller.handshake())[0] == 200
                assert (await poller.connect("/")).startswith("40{")
                assert (await poller.post("41"))[0] == 200
            closed = listener.stats.closed
            await wait_until(lambda: closed["socketio"] == 2, 5, "the namespaces to end")
            assert listener.connections == 2  # the two sessions, again without a namespace
            status, body = await pollers[2].handshake()
            assert (status, body) == (503, "too many connections from your address\n")
            # ... until they expire like any session without a namespace.
            await wait_until(lambda: listener.connections == 0, 5, "the sessions to expire")
            assert (await pollers[2].handshake())[0] == 200
        finally:
            for poller in pollers:
                await poller.close()


async def test_a_polling_post_whose_body_never_comes_is_answered_and_closed() -> None:
    # A POST announcing more body than it sends was waited for with no deadline, after
    # its session had expired too: 26 such connections held from one address (limit 10),
    # counted nowhere, until the client chose to leave.
    async with (
        pubsub(
            limits=LimitsConfig(handshake_timeout=0.5),
            socketio=SocketIOConfig(ping_interval=0.2, ping_timeout=0.2),
        ) as listener,
        Poller(listener.port) as poller,
    ):
        assert (await poller.handshake())[0] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            target = poller.url.removeprefix(f"http://127.0.0.1:{listener.port}")
            writer.write(
                f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                "Content-Length: 1000\r\n\r\n40".encode()
            )
            async with asyncio.timeout(5):
                status = await reader.readline()
                assert status.split()[1] == b"408", status
                await reader.read()  # then the server ends the connection
            await wait_until(lambda: listener.connections == 0, 5, "the session to close")
        finally:
            writer.close()


async def test_a_client_that_leaves_in_the_middle_of_a_post_is_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp raises ConnectionResetError (or RuntimeError) from the body of a request
    # whose client left: it escaped the handler and aiohttp logged "Error handling request"
    # with a traceback, once per such POST.
    caplog.set_level(logging.INFO)
    async with pubsub() as listener, Poller(listener.port) as poller:
        assert (await poller.handshake())[0] == 200
        target = poller.url.removeprefix(f"http://127.0.0.1:{listener.port}")
        session = listener.engineio.sessions[poller.sid]  # type: ignore[union-attr,index]
        for pause in (False, True):
            _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(
                f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                "Content-Length: 1000\r\n\r\n40".encode()
            )
            if pause:  # the handler is waiting for the rest when the client goes
                await wait_until(lambda: session.posting, 5, "the POST to be read")
            writer.close()
            await writer.wait_closed()
        # The session is still there, and answers.
        assert (await poller.connect("/")).startswith("40{")
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"


async def test_binary_attachments_are_bounded_together_by_max_frame_size() -> None:
    # Each attachment was bounded by socketio.max_frame_size, but one packet may announce
    # ten: a client held 10 MiB per session, never delivered, under a 1 MiB setting.
    async with pubsub(socketio=SocketIOConfig(max_frame_size=64 * 1024)) as listener:
        raw = await RawSocketIO.connect(listener.port)
        try:
            await raw.ws.send_text('4510-["message",{"_placeholder":true,"num":0}]')
            for _ in range(2):  # each within the limit, together beyond it
                await raw.ws.send_frame(OP_BINARY, b"x" * (40 * 1024))
            frame = await raw.next_frame()
            assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002), frame
            assert "attachments larger than 65536 bytes" in frame.close_reason, frame
        finally:
            raw.close()


async def test_a_disconnect_sent_before_its_connect_was_answered_is_honoured() -> None:
    # The namespace's DISCONNECT came while its CONNECT was being authorized: it was
    # dropped, and the namespace connected after the client had left it, a connection the
    # client no longer knew about (a pipelined 40/41 storm kept one alive for good).
    async with pubsub() as listener:
        raw = await RawSocketIO.connect(listener.port)  # "/" connected
        try:
            await raw.ws.send_raw(client_frame(OP_TEXT, b"40/a,") + client_frame(OP_TEXT, b"41/a,"))
            await raw.ws.send_text("40/b,")
            assert (await raw.next_packet()).startswith("40/b,{")  # and nothing for /a
            # /a was left, so it can be connected again (not "already connected").
            await raw.ws.send_text("40/a,")
            assert (await raw.next_packet()).startswith("40/a,{")
            assert listener.connections == 3  # "/", "/b" and "/a" once
        finally:
            raw.close()
