"""A small STOMP client over the ``websockets`` library, for tests, with a frame reader of its
own (not the server's codec: a test of the parser must not lean on the parser).

Frames are awaited from the socket with a deadline; heart-beats (bare EOLs) are counted
and skipped. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import websockets
from websockets.asyncio.client import ClientConnection

WAIT = 5.0
SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


@dataclass
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Whether it came in a text WebSocket message.
    text: bool = True

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8")


_UNESCAPE_12 = {"n": "\n", "c": ":", "\\": "\\", "r": "\r"}


def _unescape(value: str, version: str) -> str:
    if version == "1.0" or "\\" not in value:
        return value
    out = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars)
            if nxt == "r" and version == "1.1":
                raise AssertionError("\\r is not an escape in STOMP 1.1")
            out.append(_UNESCAPE_12[nxt])
        else:
            out.append(char)
    return "".join(out)


def parse_frames(data: bytes, version: str) -> tuple[list[Frame], int]:
    """Whole frames in ``data`` and the count of heart-beats (EOLs) between them."""
    frames: list[Frame] = []
    beats = 0
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] == b"\n":
            beats += 1
            pos += 1
            continue
        if data[pos : pos + 2] == b"\r\n":
            beats += 1
            pos += 2
            continue
        head_end = data.index(b"\n\n", pos)
        lines = data[pos:head_end].decode("utf-8").split("\n")
        command = lines[0]
        escaped = command != "CONNECTED"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if escaped:
                name, value = _unescape(name, version), _unescape(value, version)
            headers.setdefault(name, value)
        body_start = head_end + 2
        if "content-length" in headers:
            end = body_start + int(headers["content-length"])
            assert data[end : end + 1] == b"\x00", "no NUL after content-length octets"
        else:
            end = data.index(b"\x00", body_start)
        frames.append(Frame(command, headers, data[body_start:end]))
        pos = end + 1
    return frames, beats


def encode(
    command: str,
    headers: Mapping[str, str] | Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    version: str = "1.2",
) -> bytes:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = [command]
    for name, value in pairs:
        if command not in ("CONNECT", "STOMP") and version != "1.0":
            name = name.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
            value = value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
            if version == "1.2":
                name, value = name.replace("\r", "\\r"), value.replace("\r", "\\r")
        lines.append(f"{name}:{value}")
    if body and not any(line.startswith("content-length:") for line in lines):
        lines.append(f"content-length:{len(body)}")  # as stomp.js does
    return "\n".join(lines).encode() + b"\n\n" + body + b"\x00"


_receipts = itertools.count(1)


class StompClient:
    """One STOMP connection over a WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.version = "1.2"
        self.connected: Frame | None = None
        self.heart_beats = 0
        self._pending: list[Frame] = []

    @classmethod
    async def open(
        cls, url: str, *, subprotocols: Sequence[str] | None = SUBPROTOCOLS
    ) -> StompClient:
        ws = await websockets.connect(
            url,
            subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[arg-type]
            open_timeout=WAIT,
            max_size=None,
        )
        return cls(ws)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        version: str = "1.2",
        heart_beat: str = "0,0",
        login: str | None = None,
        passcode: str | None = None,
        subprotocols: Sequence[str] | None = SUBPROTOCOLS,
        headers: Mapping[str, str] | None = None,
    ) -> StompClient:
        """Open and CONNECT; the CONNECTED frame is in ``.connected``."""
        client = await cls.open(url, subprotocols=subprotocols)
        versions = {"1.0": "1.0", "1.1": "1.0,1.1", "1.2": "1.0,1.1,1.2"}[version]
        connect = {"accept-version": versions, "host": "/", "heart-beat": heart_beat}
        if login is not None:
            connect["login"] = login
        if passcode is not None:
            connect["passcode"] = passcode
        connect.update(headers or {})
        await client.send_raw(encode("CONNECT", connect))
        frame = await client.next()
        assert frame.command == "CONNECTED", frame
        client.connected = frame
        client.version = frame.headers.get("version", "1.0")
        return client

    # --- raw I/O ------------------------------------------------------------------------------

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def send_frame(
        self,
        command: str,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        data = encode(command, headers, body, version=self.version)
        # Text when it is UTF-8, as stomp.js sends; binary otherwise.
        await self.ws.send(data.decode("utf-8") if _is_text(data) else data)

    async def next(self, timeout: float = WAIT) -> Frame:
        """The next frame (heart-beats skipped and counted)."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                message = await self.ws.recv()
                data = message.encode("utf-8") if isinstance(message, str) else message
                frames, beats = parse_frames(data, self.version)
                self.heart_beats += beats
                for frame in frames:
                    frame.text = isinstance(message, str)
                self._pending.extend(frames)
            return self._pending.pop(0)

    async def next_heart_beat(self, timeout: float = WAIT) -> None:
        """Wait for the next heart-beat; fails on a frame meanwhile."""
        seen = self.heart_beats
        async with asyncio.timeout(timeout):
            while self.heart_beats == seen:
                message = await self.ws.recv()
                data = message.encode("utf-8") if isinstance(message, str) else message
                frames, beats = parse_frames(data, self.version)
                self.heart_beats += beats
                self._pending.extend(frames)

    async def beat(self, every: float) -> None:
        """Send a heart-beat every ``every`` seconds, as the client promised in CONNECT
        (run it in a task; cancel it to stop)."""
        while True:
            await self.ws.send("\n")
            await asyncio.sleep(every)

    async def expect_error(self, message: str | None = None, timeout: float = WAIT) -> Frame:
        """The next frame is an ERROR (with ``message``), and then the server closes."""
        frame = await self.next(timeout)
        assert frame.command == "ERROR", frame
        if message is not None:
            assert frame.headers.get("message") == message, frame
        await self.closed(timeout)
        return frame

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Wait for the server to close the connection; its close code."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    message = await self.ws.recv()
                    data = message.encode("utf-8") if isinstance(message, str) else message
                    frames, _ = parse_frames(data, self.version)
                    assert not frames, f"expected the connection to close, got {frames}"
        return self.ws.close_code

    # --- commands ------------------------------------------------------------------------------

    async def request(
        self, command: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Frame:
        """Send with a receipt and return the RECEIPT (frames before it are kept)."""
        receipt = f"r{next(_receipts)}"
        await self.send_frame(command, {**(headers or {}), "receipt": receipt}, body)
        return await self.receipt(receipt)

    async def receipt(self, receipt: str, timeout: float = WAIT) -> Frame:
        held: list[Frame] = []
        try:
            while True:
                frame = await self.next(timeout)
                if frame.command == "RECEIPT" and frame.headers.get("receipt-id") == receipt:
                    return frame
                assert frame.command != "ERROR", frame
                held.append(frame)
        finally:
            self._pending[:0] = held

    async def subscribe(
        self, destination: str, sub_id: str = "sub-0", ack: str = "auto", **headers: str
    ) -> None:
        await self.request(
            "SUBSCRIBE", {"destination": destination, "id": sub_id, "ack": ack, **headers}
        )

    async def unsubscribe(self, sub_id: str = "sub-0") -> None:
        await self.request("UNSUBSCRIBE", {"id": sub_id})

    async def send(
        self, destination: str, body: bytes | str, *, receipt: bool = True, **headers: str
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        all_headers = {"destination": destination, **headers}
        if receipt:
            await self.request("SEND", all_headers, data)
        else:
            await self.send_frame("SEND", all_headers, data)

    async def message(self, timeout: float = WAIT) -> Frame:
        frame = await self.next(timeout)
        assert frame.command == "MESSAGE", frame
        return frame

    async def ack(self, message: Frame, command: str = "ACK", **headers: str) -> None:
        if self.version == "1.2":
            ids = {"id": message.headers["ack"]}
        else:
            ids = {
                "message-id": message.headers["message-id"],
                "subscription": message.headers["subscription"],
            }
        await self.request(command, {**ids, **headers})

    async def disconnect(self) -> None:
        await self.request("DISCONNECT")
        await self.closed()

    async def close(self) -> None:
        await self.ws.close()


def _is_text(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
