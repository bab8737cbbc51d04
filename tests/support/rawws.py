"""A WebSocket client on a bare socket, for what real clients will not do: stop reading,
send invalid frames, vanish without a FIN.

It writes the handshake and the frames itself (RFC 6455 sections 4.1 and 5.2) and reads
only when asked, on a non-blocking socket driven by the event loop's ``sock_*`` calls:
while nobody calls ``recv_frame``, nothing is read, and the kernel's receive buffer (which
``rcvbuf`` makes small) fills up, as with a browser tab that froze.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RawFrame",
    "RawSocketIO",
    "RawWebSocket",
    "client_frame",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

WAIT = 5.0


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One client frame, masked as RFC 6455 section 5.3 requires (unless told otherwise)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    # XOR with the mask repeated: one big-integer operation rather than a byte loop.
    repeated = (mask * (length // 4 + 1))[:length]
    masked_payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return header + mask + masked_payload


@dataclass(frozen=True, slots=True)
class RawFrame:
    """A frame from the server (unmasked, section 5.1)."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")

    @property
    def text(self) -> str:
        assert self.opcode == OP_TEXT, self
        return self.payload.decode("utf-8")


class RawWebSocket:
    """A client WebSocket that reads only when ``recv_frame`` is awaited."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self.eof = False

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/websocket/",
        *,
        rcvbuf: int | None = None,
        host: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
    ) -> RawWebSocket:
        """Connect and complete the opening handshake (section 4.1); ``rcvbuf`` sets
        SO_RCVBUF before connecting, so that the TCP window is small from the start."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        client = cls(sock)
        try:
            await asyncio.wait_for(client._loop.sock_connect(sock, (host, port)), WAIT)
            key = base64.b64encode(os.urandom(16)).decode()
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            )
            await client.send_raw(request.encode())
            head = await client._read_until(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                raise AssertionError(f"handshake refused: {head!r}")
        except BaseException:
            sock.close()
            raise
        return client

    async def send_raw(self, data: bytes) -> None:
        await asyncio.wait_for(self._loop.sock_sendall(self.sock, data), WAIT)

    async def send_frame(self, opcode: int, payload: bytes, **options: bool | int) -> None:
        await self.send_raw(client_frame(opcode, payload, **options))  # type: ignore[arg-type]

    async def send_text(self, text: str) -> None:
        await self.send_frame(OP_TEXT, text.encode("utf-8"))

    async def _fill(self) -> None:
        data = await self._loop.sock_recv(self.sock, 1 << 20)
        if not data:
            self.eof = True
            raise ConnectionResetError("the server closed the connection")
        self._buffer += data

    async def _read_until(self, marker: bytes) -> bytes:
        async with asyncio.timeout(WAIT):
            while (end := self._buffer.find(marker)) < 0:
                await self._fill()
        head = bytes(self._buffer[: end + len(marker)])
        del self._buffer[: end + len(marker)]
        return head

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def recv_frame(self, timeout: float = WAIT) -> RawFrame:
        """The next frame from the server; ``ConnectionResetError`` at end of stream."""
        async with asyncio.timeout(timeout):
            first, second = await self._read_exactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._read_exactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._read_exactly(8))
            assert not second & 0x80, "a server must not mask its frames"
            payload = await self._read_exactly(length)
        return RawFrame(bool(first & 0x80), first & 0x0F, payload)

    async def recv_data(self, timeout: float = WAIT) -> RawFrame:
        """The next text, binary or close frame; pings are answered, pongs skipped."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == OP_PING:
                await self.send_frame(OP_PONG, frame.payload)
            elif frame.opcode != OP_PONG:
                return frame

    async def read_to_close(self, timeout: float = WAIT) -> tuple[list[RawFrame], RawFrame]:
        """Read everything up to the server's close frame: the data frames before it, and
        the close frame itself. Fails if the stream ends without one."""
        frames: list[RawFrame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv_data(timeout)
                if frame.opcode == OP_CLOSE:
                    return frames, frame
                frames.append(frame)

    async def closed_by_server(self, timeout: float = WAIT) -> bool:
        """Whether the server ends the TCP stream (FIN or RST) within ``timeout``, reading
        and discarding whatever comes before."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._fill()
                    self._buffer.clear()
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def vanish(self) -> None:
        """Drop the connection with a RST and no close frame, as a crashed peer would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class RawSocketIO:
    """Socket.IO v5 over Engine.IO v4's websocket transport, by hand, on a ``RawWebSocket``:
    a client that can stop reading (python-socketio's client always reads)."""

    def __init__(self, ws: RawWebSocket, open_packet: dict[str, Any]) -> None:
        self.ws = ws
        self.open_packet = open_packet

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> RawSocketIO:
        ws = await RawWebSocket.connect(
            port, "/socket.io/?EIO=4&transport=websocket", rcvbuf=rcvbuf
        )
        try:
            opened = (await ws.recv_data()).text
            assert opened.startswith("0{"), opened  # Engine.IO OPEN
            await ws.send_text("40")  # Socket.IO CONNECT to "/"
            connected = (await ws.recv_data()).text
            assert connected.startswith("40{"), connected
        except BaseException:
            ws.close()
            raise
        return cls(ws, json.loads(opened[1:]))

    async def send_message(self, data: Any) -> None:
        """A ``message`` event, as ``socket.send(data)`` would emit it."""
        await self.ws.send_text("42" + json.dumps(["message", data]))

    async def next_frame(self, timeout: float = WAIT) -> RawFrame:
        """The next WebSocket frame (a close, a binary frame, ...); Engine.IO pings ("2")
        are answered and skipped."""
        while True:
            frame = await self.ws.recv_data(timeout)
            if frame.opcode == OP_TEXT and frame.text == "2":
                await self.ws.send_text("3")
                continue
            return frame

    async def next_packet(self, timeout: float = WAIT) -> str:
        """The next Engine.IO packet ("" for a close); pings are answered and skipped."""
        frame = await self.next_frame(timeout)
        return "" if frame.opcode == OP_CLOSE else frame.text

    async def next_message(self, timeout: float = WAIT) -> Any:
        """The data of the next ``message`` event."""
        packet = await self.next_packet(timeout)
        assert packet.startswith("42"), packet
        event, data = json.loads(packet[2:])
        assert event == "message", packet
        return data

    def vanish(self) -> None:
        self.ws.vanish()

    def close(self) -> None:
        self.ws.close()
