"""Hostile input (issue 5, point 8): each abuse gets its documented answer, and well-behaved
clients on the same listener keep receiving every message published meanwhile.

Every test runs a ``Watch`` (tests/support/watch.py): a bare WebSocket client and a
Socket.IO client joined to a topic of their own, reading in the background; messages are
published between the hostile steps and counted at the end, none missing, none reordered.
The hostile peers are bare sockets (tests/support/rawws.py), so that frames no client library
would send can be sent: invalid UTF-8, unmasked or reserved frames, pipelined floods, a peer
that goes silent without a FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from rabbitsocks.config import SocketIOConfig, WebSocketConfig
from tests.support.procfs import held_connections, wait_until
from tests.support.pubsub import Clients, client_pool, unique
from tests.support.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    RawSocketIO,
    RawWebSocket,
    client_frame,
)
from tests.support.watch import PubSubListener, Watch, pubsub_listener


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


@pytest.fixture
async def rs() -> AsyncIterator[PubSubListener]:
    async with pubsub_listener("memory") as handle:
        yield handle


@pytest.fixture
async def watch(rs: PubSubListener, clients: Clients) -> AsyncIterator[Watch]:
    watching = Watch(rs, clients)
    await watching.start()
    await watching.tick()
    try:
        yield watching
        await watching.tick()
        await watching.verify()
    finally:
        await watching.stop()


async def answer(raw: RawWebSocket) -> dict[str, Any]:
    frame = await raw.recv_data()
    assert frame.opcode == OP_TEXT, frame
    decoded = json.loads(frame.text)
    assert isinstance(decoded, dict)
    return decoded


async def expect_close(raw: RawWebSocket, code: int) -> None:
    """The server's next frame closes with ``code``, and then it ends the TCP stream."""
    frame = await raw.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, code), frame
    await answer_close(raw, frame.payload[:2])


async def answer_close(raw: RawWebSocket, code: bytes) -> None:
    """Answer the server's close frame, as a client must (section 5.5.1); the server then
    ends the TCP stream (section 7.1.1) at once."""
    with contextlib.suppress(ConnectionError):  # it may have given up on us already
        await raw.send_frame(OP_CLOSE, code)
    assert await raw.closed_by_server(2.0), "the server kept the connection open"


def join(*topics: str) -> str:
    return json.dumps({"command": "join", "topics": list(topics)}, ensure_ascii=False)


# --- RFC 6455 violations ------------------------------------------------------------------------

#: Text messages that are not UTF-8 (RFC 3629): section 8.1 requires failing with 1007.
INVALID_UTF8: list[tuple[str, list[tuple[int, bytes, bool]]]] = [
    ("a lone 0xff", [(OP_TEXT, b'{"command":"join","topics":["\xff"]}', True)]),
    ("an overlong '/'", [(OP_TEXT, b"\xc0\xaf", True)]),
    ("a UTF-16 surrogate", [(OP_TEXT, b'"\xed\xa0\x80"', True)]),
    ("a code point over U+10FFFF", [(OP_TEXT, b"\xf4\x90\x80\x80", True)]),
    ("a truncated sequence", [(OP_TEXT, b'{"a":"\xe2\x82', True)]),
    (
        "invalid across fragments",
        [(OP_TEXT, b'{"a":"\xe2\x82', False), (OP_CONTINUATION, b'("}', True)],
    ),
]


@pytest.mark.parametrize(("what", "frames"), INVALID_UTF8, ids=[w for w, _ in INVALID_UTF8])
async def test_invalid_utf8_in_a_text_message_closes_with_1007(
    rs: PubSubListener, watch: Watch, what: str, frames: list[tuple[int, bytes, bool]]
) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        for opcode, payload, fin in frames:
            await raw.send_raw(client_frame(opcode, payload, fin=fin))
        await watch.tick()
        await expect_close(raw, 1007)
    finally:
        raw.close()


async def test_utf8_split_across_fragments_is_fine(rs: PubSubListener, watch: Watch) -> None:
    # "é" is c3 a9: a fragment may end inside a code point (section 5.6 validates messages).
    raw = await RawWebSocket.connect(rs.port)
    try:
        t = unique("caf\u00e9")
        text = join(t).encode()
        cut = text.index(b"\xa9")
        await raw.send_raw(client_frame(OP_TEXT, text[:cut], fin=False))
        await raw.send_raw(client_frame(OP_CONTINUATION, text[cut:]))
        assert await answer(raw) == {"topic": "@join", "payload": [t]}
    finally:
        raw.close()


#: Frames RFC 6455 forbids; aiohttp fails the connection with 1002 (protocol error).
PROTOCOL_ERRORS: list[tuple[str, bytes]] = [
    ("a reserved bit without an extension (5.2)", client_frame(OP_TEXT, b"{}", rsv=0b100)),
    ("a reserved data opcode (5.2)", client_frame(0x3, b"{}")),
    ("a reserved control opcode (5.2)", client_frame(0xB, b"")),
    ("a fragmented ping (5.5)", client_frame(OP_PING, b"x", fin=False)),
    ("a ping longer than 125 bytes (5.5)", client_frame(OP_PING, b"x" * 126)),
    ("a continuation with nothing to continue (5.4)", client_frame(OP_CONTINUATION, b"{}")),
    (
        "a new message inside a fragmented one (5.4)",
        client_frame(OP_TEXT, b"{", fin=False) + client_frame(OP_TEXT, b"}"),
    ),
    ("a close frame with a 1-byte payload (5.5.1)", client_frame(OP_CLOSE, b"\x03")),
]


@pytest.mark.parametrize(("what", "data"), PROTOCOL_ERRORS, ids=[w for w, _ in PROTOCOL_ERRORS])
async def test_protocol_errors_close_with_1002(
    rs: PubSubListener, watch: Watch, what: str, data: bytes
) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        await raw.send_raw(data)
        await watch.tick()
        await expect_close(raw, 1002)
    finally:
        raw.close()


async def test_an_unmasked_client_frame_closes_with_1002(rs: PubSubListener, watch: Watch) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        await raw.send_raw(client_frame(OP_TEXT, b"{}", masked=False))
        await expect_close(raw, 1002)
    finally:
        raw.close()


# --- pubsub commands: bombs, oversized joins, bad topics, binary frames ---------------------------

DEPTH = 200_000
#: (what, text frame under 1 MiB, the answer). orjson refuses nesting deeper than 1024.
BOMBS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "arrays nested 200,000 deep",
        "[" * DEPTH + "]" * DEPTH,
        {"topic": "#error", "payload": "frame is not valid JSON"},
    ),
    (
        "objects nested 100,000 deep, unterminated",
        '{"a":' * (DEPTH // 2),
        {"topic": "#error", "payload": "frame is not valid JSON"},
    ),
    (
        "a command carrying arrays nested 1,000 deep",
        '{"command":"join","topics":[],"x":' + "[" * 1000 + "]" * 1000 + "}",
        {"topic": "@join", "payload": []},
    ),
    (
        "a command carrying an array of 300,000 numbers",
        '{"command":"join","topics":[],"x":[' + ",".join(["0"] * 300_000) + "]}",
        {"topic": "@join", "payload": []},
    ),
    (
        "a command carrying 150,000 empty objects",
        '{"command":"leave","topics":[],"x":[' + ",".join(["{}"] * 150_000) + "]}",
        {"topic": "@leave", "payload": []},
    ),
    (
        "300,000 numbers as topics",
        '{"command":"join","topics":[' + ",".join(["0"] * 300_000) + "]}",
        {"topic": "#error", "payload": "too many topics in one command (max 1000)"},
    ),
    (
        "10,000 topics in one join",
        join(*(f"t{i}" for i in range(10_000))),
        {"topic": "#error", "payload": "too many topics in one command (max 1000)"},
    ),
    (
        "a 900 KB string of escapes",
        '{"command":"join","topics":[],"x":"' + "\\u0000" * 150_000 + '"}',
        {"topic": "@join", "payload": []},
    ),
]


async def test_json_bombs_and_oversized_joins_get_documented_answers(
    rs: PubSubListener, watch: Watch
) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        for what, text, expected in BOMBS:
            assert len(text.encode()) < 1 << 20, what  # under max_frame_size: parsed
            await raw.send_text(text)
            await watch.tick()
            assert await answer(raw) == expected, what
        # Still a working connection, with no topic joined by any of the above.
        t = unique()
        await raw.send_text(join(t))
        assert await answer(raw) == {"topic": "@join", "payload": [t]}
        await rs.publish(t, b"after the bombs")
        assert await answer(raw) == {"topic": t, "payload": "after the bombs"}
    finally:
        raw.close()
    hub = rs.services.hub()
    assert hub.live_topics <= 2  # the watch topic, and t until that close is handled


async def test_a_full_join_is_cut_at_max_topics(rs: PubSubListener, watch: Watch) -> None:
    # 1,000 topics pass the per-command limit; the connection limit (max_topics, 100) then
    # answers @join for the first 100 and one #join for the rest.
    raw = await RawWebSocket.connect(rs.port)
    try:
        t = unique()
        topics = [f"{t}.{i}" for i in range(1000)]
        await raw.send_text(join(*topics))
        assert await answer(raw) == {"topic": "@join", "payload": topics[:100]}
        assert await answer(raw) == {
            "topic": "#join",
            "payload": topics[100:],
            "reason": "too many topics (max 100)",
        }
        await watch.tick()
    finally:
        raw.close()


async def test_topics_with_nul_bytes_or_over_255_bytes_are_refused(
    rs: PubSubListener, watch: Watch
) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        t = unique()
        longest = t + "x" * (255 - len(t))  # 255 bytes: the AMQP shortstr limit, allowed
        too_long = [t + "x" * (256 - len(t)), t + "\u00e9" * 125]  # 256 and 263 bytes
        control = [f"{t}\x00nul", f"\x00{t}", f"{t}\x1b[31m", f"{t}\x7f"]
        await raw.send_text(join(longest, *too_long, *control, f"{t}.ok"))
        assert await answer(raw) == {"topic": "@join", "payload": [longest, f"{t}.ok"]}
        refusals = [await answer(raw), await answer(raw)]
        assert sorted(refusals, key=lambda r: str(r["reason"])) == [
            {"topic": "#join", "payload": control, "reason": "topic contains a control character"},
            {"topic": "#join", "payload": too_long, "reason": "topic is longer than 255 bytes"},
        ]
        await watch.tick()
        await rs.publish(f"{t}.ok", b"joined")
        assert await answer(raw) == {"topic": f"{t}.ok", "payload": "joined"}
    finally:
        raw.close()


async def test_binary_frames_are_read_as_utf8_commands(rs: PubSubListener, watch: Watch) -> None:
    raw = await RawWebSocket.connect(rs.port)
    try:
        # Random bytes after a control character, which starts no JSON document (a lone
        # random byte could be a digit: a valid JSON number).
        garbage = [b"\x01" + os.urandom(n - 1) for n in (1, 7, 125, 126, 65_535, 65_536, 500_000)]
        for blob in garbage:
            await raw.send_frame(OP_BINARY, blob)
            await watch.tick()
            reply = await answer(raw)
            assert reply["topic"] == "#error"
            assert reply["payload"] in ("frame is not valid UTF-8", "frame is not valid JSON")
        await raw.send_frame(OP_BINARY, b"\x00" * 1000)
        assert await answer(raw) == {"topic": "#error", "payload": "frame is not valid JSON"}
        t = unique()
        await raw.send_frame(OP_BINARY, join(t).encode())
        assert await answer(raw) == {"topic": "@join", "payload": [t]}
    finally:
        raw.close()


# --- floods ---------------------------------------------------------------------------------------


def flood(topic_base: str, count: int) -> tuple[bytes, list[dict[str, Any]]]:
    """``count`` commands in one write (join t.i, leave t.i, ...), and their answers."""
    data = bytearray()
    answers = []
    for i in range(count):
        topic = f"{topic_base}.{i // 2}"
        command = "join" if i % 2 == 0 else "leave"
        data += client_frame(OP_TEXT, json.dumps({"command": command, "topics": [topic]}).encode())
        answers.append({"topic": f"@{command}", "payload": [topic]})
    return bytes(data), answers


async def test_a_pipelined_flood_of_joins_and_leaves_is_answered_in_order(watch: Watch) -> None:
    # A listener whose command rate allows the flood: each of the 5,000 commands is answered,
    # in order, and the hub ends where it started.
    options = {"rate": 1e6, "burst": 10_000}
    async with pubsub_listener("memory", options) as rs:
        hub = rs.services.hub()
        raw = await RawWebSocket.connect(rs.port)
        try:
            data, expected = flood(unique(), 5000)
            await raw.send_raw(data)
            for i, wanted in enumerate(expected):
                assert await answer(raw) == wanted, i
                if i % 500 == 0:
                    await watch.tick()
            assert hub.live_topics == 0
        finally:
            raw.close()


async def test_a_flood_past_the_rate_limit_gets_error_then_1008(
    rs: PubSubListener, watch: Watch
) -> None:
    options = {"rate": 10, "burst": 20, "max_rate_violations": 50}
    async with pubsub_listener("memory", options) as limited:
        raw = await RawWebSocket.connect(limited.port)
        try:
            data, expected = flood(unique(), 5000)
            await raw.send_raw(data)
            answered = errors = 0
            while (frame := await raw.recv_data()).opcode == OP_TEXT:
                reply = json.loads(frame.text)
                if reply["topic"] == "#error":
                    assert reply["payload"] == "rate limit exceeded (max 10 commands/s)"
                    errors += 1
                else:
                    assert errors == 0, "a command was answered after the limit bit"
                    assert reply == expected[answered]
                    answered += 1
            await watch.tick()
            assert (frame.close_code, frame.close_reason) == (1008, "rate limit exceeded")
            assert 20 <= answered < 40  # the burst, plus what the rate refilled meanwhile
            assert errors >= 50
            await answer_close(raw, frame.payload[:2])
            await wait_until(lambda: limited.services.hub().live_topics == 0, 5, "the leave")
        finally:
            raw.close()


# --- peers that go silent -------------------------------------------------------------------------


async def test_a_silent_websocket_peer_is_dropped_by_the_heartbeat(clients: Clients) -> None:
    # Half-open TCP: the peer completed the handshake and joined, then vanished without a FIN
    # (it neither reads nor answers pings). The server's ping goes unanswered, and the
    # connection is closed after half a heartbeat, its topics left.
    heartbeat = 0.5
    async with pubsub_listener("memory", websocket=WebSocketConfig(heartbeat=heartbeat)) as rs:
        watching = Watch(rs, clients)
        await watching.start(("socketio",))  # a bare WebSocket watcher would be pinged too
        try:
            raw = await RawWebSocket.connect(rs.port)
            try:
                t = unique()
                await raw.send_text(join(t))
                assert await answer(raw) == {"topic": "@join", "payload": [t]}
                port = raw.sock.getsockname()[1]
                hub = rs.services.hub()
                assert hub.live_topics == 2
                await watching.tick()
                took = await wait_until(
                    lambda: hub.live_topics == 1, 3 * heartbeat + 2, "the silent peer to go"
                )
                assert took < 3 * heartbeat + 1
                await wait_until(
                    lambda: not held_connections(rs.port, port), 2, "its socket to be closed"
                )
            finally:
                raw.close()
            await watching.tick()
            await watching.verify()
        finally:
            await watching.stop()


async def test_a_silent_socketio_peer_is_dropped_by_the_ping_timeout(clients: Clients) -> None:
    socketio = SocketIOConfig(ping_interval=0.5, ping_timeout=0.5)
    async with pubsub_listener("memory", socketio=socketio) as rs:
        watching = Watch(rs, clients)
        await watching.start(("websocket",))
        try:
            raw = await RawSocketIO.connect(rs.port)
            try:
                t = unique()
                await raw.send_message({"command": "join", "topics": [t]})
                assert json.loads(await raw.next_message()) == {"topic": "@join", "payload": [t]}
                hub = rs.services.hub()
                await watching.tick()
                # Engine.IO: no pong within ping_interval + ping_timeout. (Its socket is
                # released later: aiohttp then waits 10 s for a close frame that never comes.)
                took = await wait_until(lambda: hub.live_topics == 1, 5, "the silent peer to go")
                assert took < 3.0
            finally:
                raw.close()
            await watching.tick()
            await watching.verify()
        finally:
            await watching.stop()


# --- garbage on Socket.IO and Engine.IO ---------------------------------------------------------


def eio_error(code: int, message: str) -> str:
    """Engine.IO's error answer (engine.io's server): a JSON object with a code."""
    return json.dumps({"code": code, "message": message}, separators=(",", ":"))


UNSUPPORTED = eio_error(5, "Unsupported protocol")
UNKNOWN_SID = eio_error(1, "Session ID unknown")

#: (method, query, body, status, body of the answer or None).
ENGINEIO_GARBAGE: list[tuple[str, str, str | None, int, str | None]] = [
    ("GET", "EIO=3&transport=polling", None, 400, UNSUPPORTED),
    ("GET", "EIO=5&transport=polling", None, 400, UNSUPPORTED),
    ("GET", "EIO=x&transport=polling", None, 400, UNSUPPORTED),
    ("GET", "transport=polling", None, 400, UNSUPPORTED),
    ("GET", "EIO=4&transport=pigeon", None, 400, eio_error(0, "Transport unknown")),
    ("GET", "EIO=4&transport=websocket", None, 400, eio_error(3, "expected a WebSocket upgrade")),
    ("GET", "EIO=4&transport=polling&sid=nope", None, 400, UNKNOWN_SID),
    # An empty sid is no sid of ours, not a request for a new session (issue 11, point 1).
    ("GET", "EIO=4&transport=polling&sid=", None, 400, UNKNOWN_SID),
    ("POST", "EIO=4&transport=polling&sid=", "40", 400, UNKNOWN_SID),
    ("POST", "EIO=4&transport=polling&sid=nope", "40", 400, UNKNOWN_SID),
    ("POST", "EIO=4&transport=polling", "40", 400, eio_error(2, "Bad handshake method")),
    ("PUT", "EIO=4&transport=polling", "x", 405, None),
    ("DELETE", "EIO=4&transport=polling&sid=nope", None, 405, None),
]


async def test_garbage_http_on_engineio_gets_4xx(rs: PubSubListener, watch: Watch) -> None:
    base = f"http://127.0.0.1:{rs.port}/socket.io/"
    async with aiohttp.ClientSession() as session:
        for method, query, body, status, text in ENGINEIO_GARBAGE:
            async with session.request(method, f"{base}?{query}", data=body) as response:
                assert response.status == status, (method, query)
                if text is not None:
                    assert await response.text() == text, (method, query)
            await watch.tick()
    assert rs.listener.connections == 2  # the watch's two clients, nothing else


#: Malformed Engine.IO payloads and Socket.IO packets, and why each is refused.
POLLING_JUNK: list[tuple[bytes, str]] = [
    (b"\x00\xffgarbage", "the payload is not UTF-8"),
    (b"9zzz", "unknown Engine.IO packet type '9'"),
    (b"4xxxx", "unknown Socket.IO packet type 'x'"),
    (b'42["message",{bad', "invalid JSON"),
    (b"40/x,{bad", "invalid JSON"),
    (b'42{"not": "a list"}', "an event is a list starting with its name"),
    (b"42" + b"[" * 2000 + b"]" * 2000, "invalid JSON"),
    (b"bnot base64!", "a binary packet is not valid base64"),
    (b"\x1e".join([b"3"] * 4097), "more than 4096 packets in one payload"),
]


@pytest.mark.parametrize(("junk", "why"), POLLING_JUNK, ids=[w for _, w in POLLING_JUNK])
async def test_garbage_in_a_polling_session_closes_it_with_the_reason(
    rs: PubSubListener, watch: Watch, caplog: pytest.LogCaptureFixture, junk: bytes, why: str
) -> None:
    # Answered (400 and Engine.IO's error body with the reason), the session closed, one
    # log line without a traceback; nobody else notices (the watch).
    caplog.set_level(logging.INFO)
    base = f"http://127.0.0.1:{rs.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        url = f"{base}&sid={sid}"
        async with session.post(url, data="40") as response:
            assert response.status == 200
        async with session.get(url) as response:
            assert (await response.text()).startswith("40{")
        caplog.clear()
        async with session.post(url, data=junk) as response:
            assert response.status == 400
            answer = json.loads(await response.text())
            assert answer["code"] == 3
            assert answer["message"].startswith(why), answer
        async with session.get(url) as response:
            assert (response.status, await response.text()) == (400, UNKNOWN_SID)
        await watch.tick()
    lines = [r for r in caplog.records if r.name.startswith("rabbitsocks")]
    closing = [r for r in lines if f"closing {sid}" in r.getMessage()]
    assert len(closing) == 1, [r.getMessage() for r in lines]
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"


#: Junk on the websocket transport: each closes the connection with 1002 and a reason.
ENGINEIO_JUNK: list[tuple[bytes, int, str]] = [
    (b"xyz", OP_TEXT, "unknown Engine.IO packet type"),
    (b"", OP_TEXT, "unknown Engine.IO packet type"),
    (b"9", OP_TEXT, "unknown Engine.IO packet type"),
    (b"4zz", OP_TEXT, "unknown Socket.IO packet type"),
    (b'42["message",{bad', OP_TEXT, "invalid JSON"),
    (b"40/nowhere,{bad", OP_TEXT, "invalid JSON"),
    (b"\x00\x01garbage", OP_BINARY, "binary data without a binary packet"),
    (b"42[]", OP_TEXT, "an event is a list starting with its name"),
]


@pytest.mark.parametrize(
    ("junk", "opcode", "why"), ENGINEIO_JUNK, ids=[repr(j) for j, _, _ in ENGINEIO_JUNK]
)
async def test_junk_websocket_frames_on_socketio_close_with_1002(
    rs: PubSubListener, watch: Watch, junk: bytes, opcode: int, why: str
) -> None:
    raw = await RawSocketIO.connect(rs.port)
    try:
        await raw.ws.send_frame(opcode, junk)
        frame = await raw.ws.recv_data()
        assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002), frame
        assert why in frame.payload[2:].decode(), frame
        assert await raw.ws.closed_by_server(2.0)
        await watch.tick()
    finally:
        raw.close()


async def test_an_oversized_polling_post_is_answered(rs: PubSubListener, watch: Watch) -> None:
    base = f"http://127.0.0.1:{rs.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        async with session.post(f"{base}&sid={sid}", data="40") as response:
            assert response.status == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", rs.port)
        try:
            # socketio.max_frame_size is 1 MiB: the headers alone say it is too large.
            writer.write(
                f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {2 << 20}\r\n\r\n".encode()
            )
            status = await asyncio.wait_for(reader.readline(), 3)
            assert status.split()[1] in (b"400", b"413"), status
        finally:
            writer.close()
    await watch.tick()
