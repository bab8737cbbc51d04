"""The opening handshake, strictly (RFC 6455 section 4.2.1, RFC 9112), on every way in:
bare WebSocket and Engine.IO's websocket transport, as the first request of a connection
(our own WebSocket) and as a later one on a kept-alive connection (aiohttp's)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import pytest

from rabbitsocks import Listener, start_listener

PATHS = ["/websocket/", "/socket.io/?EIO=4&transport=websocket"]


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    handle = await start_listener("127.0.0.1:0", "callbacks.pubsub")
    try:
        yield handle
    finally:
        await handle.stop()


def upgrade(path: str, version: str = "HTTP/1.1", ws_version: str = "13") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {ws_version}\r\n\r\n"
    ).encode()


async def answer_to(port: int, *requests: bytes) -> list[tuple[int, dict[str, str]]]:
    """Send ``requests`` on one connection, one after the other; each answer's status and
    headers (a later request is sent only after the answer to the one before)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
            lines = head.split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            answers.append((int(lines[0].split()[1]), headers))
            length = int(headers.get("Content-Length", "0"))
            if length:
                await reader.readexactly(length)
    finally:
        writer.close()
    return answers


@pytest.mark.parametrize("path", PATHS)
async def test_a_websocket_version_other_than_13_gets_426(listener: Listener, path: str) -> None:
    # Issue 11, point 6: version 8 got 101.
    ((status, headers),) = await answer_to(listener.port, upgrade(path, ws_version="8"))
    assert (status, headers["Sec-WebSocket-Version"]) == (426, "13")


@pytest.mark.parametrize("path", PATHS)
async def test_an_http_1_0_upgrade_is_refused(listener: Listener, path: str) -> None:
    ((status, _),) = await answer_to(listener.port, upgrade(path, version="HTTP/1.0"))
    assert status == 400


@pytest.mark.parametrize("path", PATHS)
async def test_the_same_on_a_kept_alive_connection(listener: Listener, path: str) -> None:
    # A later request of a connection is aiohttp's: the same rules hold there.
    first = b"GET /socket.io/?EIO=5&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = await answer_to(listener.port, first, upgrade(path, ws_version="8"))
    assert [status for status, _ in answers] == [400, 426]
    answers = await answer_to(listener.port, first, upgrade(path))
    assert [status for status, _ in answers] == [400, 101]


@pytest.mark.parametrize(
    "limits",
    [
        {"max_inbound_frames": 8},  # issue 12, point 5: read by nothing before
        {"max_inbound_frames": 100_000, "max_inbound_bytes": 8 * 1024},  # the red team's
    ],
    ids=["frames", "bytes"],
)
async def test_a_client_that_sends_faster_than_it_is_served_is_paused(
    limits: dict[str, int],
) -> None:
    # Frames wait to be handled, bounded in count and in bytes; past the bound the socket
    # is not read (TCP pushes back).
    gate = asyncio.Event()

    class Slow:
        handled = 0

        def subprotocol_name(self) -> None:
            return None

        def init(self, path: str, options: object) -> None:
            return None

        def open(self, writer: object, state: None) -> None:
            return None

        async def handle_frame(self, frame: str | bytes, state: None) -> None:
            await gate.wait()
            Slow.handled += 1

        def terminate(self, state: None) -> None:
            return None

    from rabbitsocks.config import LimitsConfig
    from tests.support.rawws import OP_TEXT, RawWebSocket, client_frame

    handle = await start_listener("127.0.0.1:0", Slow(), limits=LimitsConfig(**limits))
    try:
        raw = await RawWebSocket.connect(handle.port)
        frame = client_frame(OP_TEXT, b"x" * 1000)
        sent = 0
        try:
            async with asyncio.timeout(3):  # until the kernel's buffers are full
                while True:
                    await raw.send_raw(frame)
                    sent += 1
        except TimeoutError:
            pass
        received = handle.stats.frames_in
        # What the server took off the socket: the bound, and the frames of the one read
        # that crossed it (up to 256 KiB of these 1 KB frames); the rest waits in the kernel.
        assert received <= 8 + 256, received
        assert sent > received + 100, (sent, received)
        gate.set()
        raw.close()
    finally:
        gate.set()
        await handle.stop()


@pytest.mark.parametrize("path", PATHS)
async def test_an_upgrade_with_a_body_is_refused(listener: Listener, path: str) -> None:
    # Red team: its body would have been read as WebSocket frames (request smuggling).
    for extra in (b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"):
        request = upgrade(path).replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")
        ((status, _),) = await answer_to(listener.port, request)
        assert status == 400


async def test_a_path_that_starts_with_two_slashes_is_not_ours(listener: Listener) -> None:
    # Red team: "//host/websocket/" was read as an authority and the path /websocket/.
    ((status, _),) = await answer_to(listener.port, upgrade("//host/websocket/"))
    assert status == 404
