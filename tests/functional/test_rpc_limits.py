"""What an RPC connection may hold: the goridge connection cap, the read timeout of a
partial frame (and of an HTTP body), the goridge idle timeout. Real sockets, our clients
and raw peers; a well-behaved client keeps working through each case."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from rabbitsocks import Server
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import parse_config
from rabbitsocks.rpc import GoridgeClient
from rabbitsocks.rpc.goridge_server import GoridgeLimits, GoridgeServer, start_goridge_server
from rabbitsocks.rpc.http import make_rpc_app
from rabbitsocks.rpc.service import PublisherBusy, PublishService
from tests.support.deliveries import record_all
from tests.support.procfs import wait_until

WAIT = 5.0


def frame_header(length: int, seq: int = 1, method_length: int = 17) -> bytes:
    """A goridge v1 header announcing ``length`` payload bytes (protobuf codec)."""
    head = bytes([0x15, 0x80]) + struct.pack("<I", length)
    return head + struct.pack("<IH", zlib.crc32(head), 0) + struct.pack("<II", seq, method_length)


@pytest.fixture
async def service() -> AsyncIterator[PublishService]:
    broker = MemoryBroker()
    await record_all(broker)
    publish_service = PublishService({"memory": broker}, "memory")
    yield publish_service
    await publish_service.close()
    await broker.close()


@contextlib.asynccontextmanager
async def goridge(service: PublishService, **limits: float) -> AsyncIterator[GoridgeServer]:
    server = await start_goridge_server(service, "127.0.0.1", 0, GoridgeLimits(**limits))  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes (within WAIT); what it sent meanwhile."""
    received = b""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data


async def test_past_the_cap_the_first_call_fails_with_busy(
    service: PublishService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "rabbitsocks.rpc.goridge_server")
    async with goridge(service, max_connections=2) as server:
        first = GoridgeClient("127.0.0.1", server.port)
        second = GoridgeClient("127.0.0.1", server.port)
        await first.publish("cap.a", b"1")
        await second.publish("cap.b", b"2")
        for _ in range(3):
            async with GoridgeClient("127.0.0.1", server.port) as refused:
                with pytest.raises(PublisherBusy, match=r"too many goridge connections \(max 2\)"):
                    await refused.publish("cap.c", b"3")
        await first.publish("cap.a", b"still here")
        assert server.stats.disconnects["max_connections"] == 3
        refusals = [r for r in caplog.records if "refusing new ones" in r.getMessage()]
        assert len(refusals) == 1, "refusals are logged once, when the cap is reached"
        await first.close()
        await wait_until(lambda: server.connections < 2, WAIT, "the server to see the close")
        async with GoridgeClient("127.0.0.1", server.port) as later:
            await later.publish("cap.d", b"4")
        assert "accepting connections again (3 refused meanwhile)" in caplog.text
        await second.close()


async def test_a_half_sent_frame_is_cut_after_the_read_timeout(
    service: PublishService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "rabbitsocks.rpc.goridge_server")
    async with goridge(service, read_timeout=0.5) as server:
        async with GoridgeClient("127.0.0.1", server.port) as bystander:
            await bystander.publish("half.ok", b"before")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            # Half of a 2 MiB frame (the JSON codec's limit), then silence.
            writer.write(frame_header(2 << 20) + b"broadcast.Publish" + b"x" * (1 << 20))
            await writer.drain()
            assert await closed_by_server(reader) == b""
            writer.close()
            await bystander.publish("half.ok", b"after")
        assert server.stats.disconnects["read_timeout"] == 1
        assert "bytes of a frame arrived, the rest not within 0.5s" in caplog.text


async def test_a_frame_trickling_in_is_cut_too(service: PublishService) -> None:
    """The deadline runs from the frame's first byte: bytes that keep coming do not reset it."""
    async with goridge(service, read_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame_header(1000))

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)  # the attacker's pace, not synchronisation

        sender = asyncio.create_task(trickle())
        try:
            assert await closed_by_server(reader) == b""
        finally:
            sender.cancel()
            writer.close()
        assert server.stats.disconnects["read_timeout"] == 1


async def test_idle_connections_are_closed_only_when_asked(service: PublishService) -> None:
    async with goridge(service, read_timeout=0.2, idle_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_by_server(reader) == b""
        writer.close()
        assert server.stats.disconnects == {"idle_timeout": 1}
    async with goridge(service, read_timeout=0.2) as server:
        async with GoridgeClient("127.0.0.1", server.port) as client:
            await client.publish("idle.t", b"1")
            await asyncio.sleep(0.6)  # past the read timeout: time passing is what is tested
            await client.publish("idle.t", b"2")
        assert not server.stats.disconnects


async def test_an_http_body_that_stalls_gets_408(service: PublishService) -> None:
    runner = web.AppRunner(make_rpc_app(service, read_timeout=0.5))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /rpc/broadcast.Publish HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-protobuf\r\nContent-Length: 500000\r\n\r\n"
            + b"x"
            * 100_000
        )
        await writer.drain()
        # The answer comes at once; aiohttp then drains what is left of the body for a
        # while (its lingering close) without keeping it.
        async with asyncio.timeout(WAIT):
            status = await reader.readuntil(b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
        assert status == b"HTTP/1.1 408 Request Timeout\r\n"
        assert b"Connection: close" in head
    finally:
        await runner.cleanup()


async def test_configured_limits_reach_the_server_and_its_metrics() -> None:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "rpc": {"goridge": 0, "read_timeout": 0.5, "goridge_max_connections": 1},
            "admin": 0,
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    try:
        assert server.rpc is not None
        assert server.rpc.goridge is not None
        port = server.rpc.goridge.port
        async with GoridgeClient("127.0.0.1", port) as client:
            await client.publish("m.t", b"1")
            async with GoridgeClient("127.0.0.1", port) as refused:
                with pytest.raises(PublisherBusy):
                    await refused.publish("m.t", b"2")
        assert server.admin_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.admin_url + "metrics") as response,
        ):
            text = await response.text()
        assert 'rabbitsocks_rpc_goridge_disconnects_total{reason="max_connections"} 1.0' in text
        assert "rabbitsocks_rpc_goridge_connections " in text
    finally:
        await server.stop()
