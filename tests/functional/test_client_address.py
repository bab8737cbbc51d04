"""Issue 13, point 3: the client's address behind trusted proxies, and only behind them.

The address the gate counts, the logs show and hooks and callbacks see: the TCP peer, or
what a proxy in ``trusted_proxies`` says in ``Forwarded``, ``X-Forwarded-For`` or (with
``proxy_protocol``) a PROXY protocol header. Raw sockets send what proxies would.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rabbitsocks import Listener, Writer, current_connection, start_listener
from rabbitsocks.config import LimitsConfig


class Remote:
    """Answers every frame with the connection's remote address."""

    def subprotocol_name(self) -> None:
        return None

    def init(self, path: str, options: Any) -> None:
        return None

    def open(self, writer: Writer, state: None) -> Writer:
        return writer

    def handle_frame(self, frame: str | bytes, writer: Writer) -> Writer:
        writer.send(current_connection().remote)
        return writer

    def terminate(self, state: Any) -> None:
        return None


async def remote_seen(port: int, prefix: bytes = b"", headers: str = "") -> str:
    """Open a WebSocket by hand (after ``prefix``), send a frame, read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            prefix
            + (
                "GET /websocket/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        status = await asyncio.wait_for(reader.readline(), 5)
        if b" 101 " not in status:
            return status.decode().strip()
        await reader.readuntil(b"\r\n\r\n")
        writer.write(bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi")  # a zero mask
        header = await asyncio.wait_for(reader.readexactly(2), 5)
        return (await reader.readexactly(header[1] & 0x7F)).decode()
    finally:
        writer.close()


@pytest.fixture
async def behind_a_proxy() -> AsyncIterator[Listener]:
    listener = await start_listener(
        "127.0.0.1:0", Remote(), trusted_proxies=("127.0.0.1",), proxy_protocol=False
    )
    try:
        yield listener
    finally:
        await listener.stop()


async def test_forwarded_headers_from_a_trusted_proxy_name_the_client(
    behind_a_proxy: Listener,
) -> None:
    port = behind_a_proxy.port
    assert await remote_seen(port) == "127.0.0.1"
    assert await remote_seen(port, headers="X-Forwarded-For: 203.0.113.9\r\n") == "203.0.113.9"
    # What the client wrote itself, left of the address our proxy saw, is not believed.
    chain = "X-Forwarded-For: 1.1.1.1, 203.0.113.9\r\n"
    assert await remote_seen(port, headers=chain) == "203.0.113.9"
    forwarded = 'Forwarded: for="[2001:db8::7]:4711"\r\n'
    assert await remote_seen(port, headers=forwarded) == "2001:db8::7"
    # Both, naming different clients: one was written by the client (behind nginx, which
    # appends to X-Forwarded-For and passes Forwarded on): neither is believed.
    both = forwarded + "X-Forwarded-For: 9.9.9.9\r\n"
    assert await remote_seen(port, headers=both) == "127.0.0.1"


async def test_forwarded_headers_from_anybody_else_are_ignored() -> None:
    listener = await start_listener("127.0.0.1:0", Remote(), trusted_proxies=("10.0.0.0/8",))
    try:
        spoof = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=198.51.100.1\r\n"
        assert await remote_seen(listener.port, headers=spoof) == "127.0.0.1"
    finally:
        await listener.stop()


async def test_the_proxy_protocol_names_the_client_and_the_per_address_limit_counts_it() -> None:
    listener = await start_listener(
        "127.0.0.1:0",
        Remote(),
        trusted_proxies=("127.0.0.1",),
        proxy_protocol=True,
        limits=LimitsConfig(max_connections_per_address=1),
    )
    try:
        v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n"
        assert await remote_seen(listener.port, v1) == "203.0.113.9"
        # From a trusted proxy a connection must start with the header.
        assert (await remote_seen(listener.port)).startswith("HTTP/1.1 400")
        # Two clients behind one proxy are two addresses for the limit (of 1 here).
        first, second = (
            b"PROXY TCP4 203.0.113.1 10.0.0.1 40000 80\r\n",
            b"PROXY TCP4 203.0.113.2 10.0.0.1 40000 80\r\n",
        )
        results = await asyncio.gather(
            remote_seen(listener.port, first), remote_seen(listener.port, second)
        )
        assert sorted(results) == ["203.0.113.1", "203.0.113.2"]
    finally:
        await listener.stop()


async def test_a_proxy_header_from_an_untrusted_peer_is_refused() -> None:
    listener = await start_listener(
        "127.0.0.1:0", Remote(), trusted_proxies=("10.0.0.0/8",), proxy_protocol=True
    )
    try:
        v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n"
        assert (await remote_seen(listener.port, v1)).startswith("HTTP/1.1 400")
        assert await remote_seen(listener.port) == "127.0.0.1"
    finally:
        await listener.stop()
