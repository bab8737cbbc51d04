"""A large frame that arrives in many small pieces is reassembled in linear time.

A STOMP frame may span any number of WebSocket messages, and a WebSocket frame any
number of TCP segments; both parsers used to join what they held with each new piece
(``buffer + data``), copying the whole partial frame every time: quadratic in its size.
A 1 MiB STOMP frame sent as 1-byte messages (7 MB on the wire) cost the server some 30 s
of CPU, on the one thread every connection shares.

These are not benchmarks: the deadline is some fifty times what linear work takes here
(~0.1 s), and far below what the quadratic copy took (minutes); it fails fast rather
than hang.
"""

from __future__ import annotations

import time
import tracemalloc

from rabbitsocks.stomp.frames import FrameParser
from rabbitsocks.wire.websocket import Message, WebSocketProtocol
from tests.support.rawws import OP_BINARY, OP_CONTINUATION, client_frame

SIZE = 32 << 20  # 32 MiB
PIECE = 1024
DEADLINE = 5.0


def trickle(data: bytes) -> list[bytes]:
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


def test_a_websocket_message_in_small_segments() -> None:
    payload = bytes(range(256)) * (SIZE // 256)
    protocol = WebSocketProtocol(max_size=SIZE)
    events = []
    start = time.monotonic()
    for piece in trickle(client_frame(OP_BINARY, payload)):
        events += protocol.receive(piece)
        assert time.monotonic() - start < DEADLINE, "reassembly is not linear"
    assert events == [Message(payload)]


def test_a_stomp_frame_in_small_messages() -> None:
    body = b"x" * SIZE
    frames = [
        b"SEND\ndestination:/topic/a\ncontent-length:%d\n\n" % SIZE + body + b"\x00",
        b"SEND\ndestination:/topic/b\n\n" + body + b"\x00",  # ends at its NUL
    ]
    for frame in frames:
        parser = FrameParser(max_frame_size=SIZE + 1024, max_headers=10)
        parsed = []
        start = time.monotonic()
        for piece in trickle(frame):
            parsed += parser.feed(piece)
            assert time.monotonic() - start < DEADLINE, "reassembly is not linear"
        assert [(f.command, len(f.body)) for f in parsed] == [("SEND", SIZE)]
        assert parsed[0].body == body
        assert parser.buffered == 0


def test_empty_fragments_cost_no_memory() -> None:
    # Fragments were kept in a list, one entry per continuation frame: 6 bytes on the wire
    # (an empty masked frame) held 8 in the list, with no bound but the attacker's
    # patience, since max_size counts payload bytes.
    protocol = WebSocketProtocol(max_size=1 << 20)
    protocol.receive(client_frame(OP_BINARY, b"start", fin=False))
    empty = client_frame(OP_CONTINUATION, b"", fin=False) * 10_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):  # 200,000 empty fragments
            assert protocol.receive(empty) == []
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 100_000, f"{held} bytes held for 200,000 empty fragments"
    assert protocol.receive(client_frame(OP_CONTINUATION, b"end")) == [Message(b"startend")]
