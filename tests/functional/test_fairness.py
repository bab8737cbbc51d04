"""One connection's flood of tiny frames does not keep the event loop from everybody else.

A callback whose ``handle_frame`` never awaits (STOMP on a partial frame, echo, most
commands of a custom callback) ran every queued frame of its connection in one turn of the
loop; a WebSocket read of 256 KiB holds some 37,000 one-byte frames. Four clients sending
one-byte STOMP messages stalled the server for up to 1.7 s (``/health`` answered that
late) and a Socket.IO polling client on the same server was dropped for missing its pong
(bench/hostile.py). The connection now lets the others run every ``TURN_FRAMES`` frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rabbitsocks import Writer, start_listener
from tests.support.rawws import OP_TEXT, RawWebSocket, client_frame

FRAMES = 20_000


class Counter:
    """Counts the frames it handles; never awaits."""

    handled = 0

    def subprotocol_name(self) -> None:
        return None

    def init(self, path: str, options: Any) -> None:
        return None

    def open(self, writer: Writer, state: None) -> None:
        return None

    def handle_frame(self, frame: str | bytes, state: None) -> None:
        Counter.handled += 1

    def terminate(self, state: None) -> None:
        return None


async def test_a_flood_of_tiny_frames_shares_the_loop() -> None:
    Counter.handled = 0
    listener = await start_listener("127.0.0.1:0", Counter())
    try:
        flood = await RawWebSocket.connect(listener.port)
        try:
            await flood.send_raw(client_frame(OP_TEXT, b"x") * FRAMES)
            # This coroutine shares the server's loop: it sees the count between turns.
            seen = set()
            async with asyncio.timeout(30):
                while Counter.handled < FRAMES:
                    seen.add(Counter.handled)
                    await asyncio.sleep(0)
            between = {n for n in seen if 0 < n < FRAMES}
            assert len(between) >= 10, f"the loop ran only at {sorted(between)} frames"
        finally:
            flood.close()
    finally:
        await listener.stop()
