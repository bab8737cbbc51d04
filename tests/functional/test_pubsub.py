"""callbacks.pubsub end to end: a real server on port 0, real clients over bare WebSocket and
Socket.IO, on the memory broker and on RabbitMQ (parametrized: the protocol is the same).

Messages come from a producer independent of the bridge: an aio-pika connection of its own
(publisher confirms) for RabbitMQ, the broker's ``publish`` for the in-process memory broker.
"Nothing else arrived" is shown with a sentinel published last (see tests/support/pubsub.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from rabbitsocks import ConfigError, Server, start_listener
from rabbitsocks.config import WebSocketConfig, parse_config
from tests.support.pubsub import (
    BAD_FRAMES,
    BROKERS,
    TRANSPORTS,
    Bridge,
    BrokerKind,
    Clients,
    PubSubClient,
    SocketIOClient,
    Transport,
    bridge,
    client_pool,
    run_cli,
    serve_env,
    unique,
)


def _broker_param(kind: BrokerKind) -> Any:
    marks = [pytest.mark.rabbitmq] if kind == "amqp" else []
    return pytest.param(kind, id=kind, marks=marks)


@pytest.fixture(params=[_broker_param(kind) for kind in BROKERS])
def broker_kind(request: pytest.FixtureRequest) -> BrokerKind:
    kind: BrokerKind = request.param
    return kind


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    kind: Transport = request.param
    return kind


@pytest.fixture
async def rs(broker_kind: BrokerKind) -> AsyncIterator[Bridge]:
    async with bridge(broker_kind) as handle:
        yield handle


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


def msg(topic: str, payload: str) -> dict[str, Any]:
    return {"topic": topic, "payload": payload}


def joined(*topics: str) -> dict[str, Any]:
    return {"topic": "@join", "payload": list(topics)}


def refused(reason: str, *topics: str) -> dict[str, Any]:
    return {"topic": "#join", "payload": list(topics), "reason": reason}


def left(*topics: str) -> dict[str, Any]:
    return {"topic": "@leave", "payload": list(topics)}


def not_left(reason: str, *topics: str) -> dict[str, Any]:
    return {"topic": "#leave", "payload": list(topics), "reason": reason}


# --- join and leave answers ------------------------------------------------------------------


async def test_join_is_answered_with_the_topics_joined(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    # RoadRunner's own frame: broker named, an empty payload.
    await client.send_command(
        {"command": "join", "broker": rs.kind, "topics": [f"{t}.a", f"{t}.*"], "payload": ""}
    )
    await client.expect(joined(f"{t}.a", f"{t}.*"))
    # Duplicates in a command, and topics already joined: listed once, joined once.
    answers = await client.command("join", [f"{t}.b", f"{t}.a", f"{t}.b", f"{t}.#"])
    assert answers == [joined(f"{t}.b", f"{t}.a", f"{t}.#")]
    # Unknown keys are ignored; a null or empty broker is the listener's default.
    for broker in (None, ""):
        await client.send_command(
            {"command": "join", "topics": [f"{t}.c"], "broker": broker, "v": 2, "x": {"y": []}}
        )
        await client.expect(joined(f"{t}.c"))
    await rs.publish(f"{t}.a", b"once")
    await client.expect(msg(f"{t}.a", "once"))


async def test_mixed_good_and_bad_topics_get_both_answers(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    longest = f"{t}." + "\u00e9" * ((255 - len(t) - 1) // 2)  # 2 bytes each in UTF-8
    longest += "x" * (255 - len(longest.encode()))
    assert len(longest.encode()) == 255
    too_long = longest + "x"
    topics = [f"{t}.good", f"{t}.a*", "", too_long, f"{t}.\x00", longest, f"{t}..empty", "#x"]
    answers = await client.command("join", topics, answers=5)
    assert answers == [
        joined(f"{t}.good", longest, f"{t}..empty"),
        refused("'*' and '#' must be whole words", f"{t}.a*", "#x"),
        refused("topic is empty", ""),
        refused("topic is longer than 255 bytes", too_long),
        refused("topic contains a control character", f"{t}.\x00"),
    ]
    await rs.publish(longest, b"255 bytes")
    await client.expect(msg(longest, "255 bytes"))


async def test_a_join_with_every_topic_refused_gets_no_at_join(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    client = await clients.connect(transport, rs.port)
    assert await client.command("join", ["bad*", ""], answers=2) == [
        refused("'*' and '#' must be whole words", "bad*"),
        refused("topic is empty", ""),
    ]
    # The next frame answers the next command: no @join was sent for the refused one.
    assert await client.command("leave", []) == [left()]


async def test_empty_topic_lists(rs: Bridge, clients: Clients, transport: Transport) -> None:
    client = await clients.connect(transport, rs.port)
    assert await client.command("join", []) == [joined()]
    assert await client.command("leave", []) == [left()]


async def test_leave_answers(rs: Bridge, clients: Clients, transport: Transport) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    assert await client.command("leave", [f"{t}.a"]) == [not_left("not joined", f"{t}.a")]
    await client.join(f"{t}.a", f"{t}.b")
    answers = await client.command("leave", [f"{t}.a", f"{t}.c", f"{t}.b", f"{t}.a"], answers=2)
    assert answers == [left(f"{t}.a", f"{t}.b"), not_left("not joined", f"{t}.c")]
    assert await client.command("leave", [f"{t}.a"]) == [not_left("not joined", f"{t}.a")]


async def test_max_topics_default_is_100(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    topics = [f"{t}.{i}" for i in range(101)]
    answers = await client.command("join", topics, answers=2)
    assert answers == [joined(*topics[:100]), refused("too many topics (max 100)", topics[100])]
    # Topics already joined do not count again; a topic left makes room.
    assert await client.command("join", [topics[0], topics[100]], answers=2) == [
        joined(topics[0]),
        refused("too many topics (max 100)", topics[100]),
    ]
    await client.leave(topics[0])
    await client.join(topics[100])


async def test_max_topics_option(rs: Bridge, clients: Clients, transport: Transport) -> None:
    t = unique()
    listener = await rs.add_listener({"max_topics": 2})
    client = await clients.connect(transport, listener.port)
    assert await client.command("join", [f"{t}.a", f"{t}.b", f"{t}.c"], answers=2) == [
        joined(f"{t}.a", f"{t}.b"),
        refused("too many topics (max 2)", f"{t}.c"),
    ]
    # The limit is per connection: another one has its own.
    other = await clients.connect(transport, listener.port)
    await other.join(f"{t}.c", f"{t}.d")


async def test_wildcards_off_by_listener_option(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    listener = await rs.add_listener({"wildcards": False})
    client = await clients.connect(transport, listener.port)
    answers = await client.command("join", [f"{t}.*", f"{t}.x", f"{t}.#", f"{t}.y*"], answers=3)
    assert answers == [
        joined(f"{t}.x"),
        refused("wildcards are not allowed", f"{t}.*", f"{t}.#"),
        refused("'*' and '#' must be whole words", f"{t}.y*"),
    ]
    await rs.publish(f"{t}.x", b"exact")
    await client.expect(msg(f"{t}.x", "exact"))


async def test_unknown_broker(rs: Bridge, clients: Clients, transport: Transport) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    assert await client.command("join", [f"{t}.a", "bad*"], broker="nope") == [
        refused("unknown broker 'nope'", f"{t}.a", "bad*")
    ]
    assert await client.command("leave", [f"{t}.a"], broker="nope") == [
        not_left("unknown broker 'nope'", f"{t}.a")
    ]


async def test_a_listener_whose_default_broker_is_unknown_does_not_start() -> None:
    config = parse_config(
        {
            "listeners": [
                {
                    "interface": "127.0.0.1:0",
                    "callback": "callbacks.pubsub",
                    "options": {"broker": "nope"},
                }
            ]
        },
        source="x.yaml",
        environ={},
    )
    with pytest.raises(ConfigError) as info:
        Server(config)  # resolved before anything starts, as `rabbitsocks check` does
    assert str(info.value) == (
        "x.yaml: listeners[0].options.broker: expected one of the configured brokers"
        " (memory), got 'nope'"
    )


# --- messages --------------------------------------------------------------------------------


async def test_a_message_published_right_after_at_join_arrives(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    # Each topic is new, so each join waits for its own bind; none may answer early.
    for i in range(10):
        await client.join(f"{t}.{i}.*")
        await rs.publish(f"{t}.{i}.x", f"m{i}".encode())
        await client.expect(msg(f"{t}.{i}.x", f"m{i}"))


async def test_no_message_arrives_before_the_join_answer(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    # One command joining many new topics binds them one after the other; messages of the
    # first topic, published meanwhile, must not overtake the @join that lists it. Once
    # @join is out, every message of the topic arrives.
    t = unique()
    client = await clients.connect(transport, rs.port)
    topics = [t] + [f"{t}.{i}" for i in range(30)]
    answered = asyncio.Event()
    published = 0

    async def publish_until_answered() -> None:
        nonlocal published
        while not answered.is_set():
            await rs.publish(t, str(published).encode())
            published += 1
            await asyncio.sleep(0)  # a turn of the loop for the memory broker, which never waits

    publisher = asyncio.create_task(publish_until_answered())
    try:
        await client.send_command({"command": "join", "topics": topics})
        assert await client.next() == joined(*topics)
    finally:
        answered.set()
        await publisher
    await rs.publish(t, b"end")
    numbers = []
    while (frame := await client.next()) != msg(t, "end"):
        assert frame["topic"] == t, frame
        numbers.append(int(frame["payload"]))
    assert numbers == list(range(published - len(numbers), published))


async def test_messages_reach_joined_sockets_and_no_others(rs: Bridge, clients: Clients) -> None:
    t, u = unique(), unique()
    # Both transports at once, on one listener and one hub.
    a = await clients.connect("websocket", rs.port)
    b = await clients.connect("socketio", rs.port)
    c = await clients.connect("socketio", rs.port)
    d = await clients.connect("websocket", rs.port, path="some/path")
    await a.join(t)
    await b.join(u)
    await c.join(t, u)
    await d.join(f"{u}.nested")
    for topic, body in [(t, b"to-t"), (u, b"to-u"), (t, b"end-t"), (u, b"end-u")]:
        await rs.publish(topic, body)
    await rs.publish(f"{u}.nested", b"end")
    await a.expect(msg(t, "to-t"), msg(t, "end-t"))
    await b.expect(msg(u, "to-u"), msg(u, "end-u"))
    await c.expect(msg(t, "to-t"), msg(u, "to-u"), msg(t, "end-t"), msg(u, "end-u"))
    await d.expect(msg(f"{u}.nested", "end"))


BODIES: list[tuple[bytes, dict[str, str]]] = [
    (b"hello", {"payload": "hello"}),
    ("h\u00e9llo \u2713 \U0001f407".encode(), {"payload": "h\u00e9llo \u2713 \U0001f407"}),
    (b"", {"payload": ""}),
    (b'{"a":[1,2]}', {"payload": '{"a":[1,2]}'}),  # a string, never parsed
    (b"nul\x00tab\t", {"payload": "nul\x00tab\t"}),
    (b"\xff\xfe\x00\x80", {"payload": "//4AgA==", "encoding": "base64"}),
    (b"\xc3", {"payload": "ww==", "encoding": "base64"}),  # truncated UTF-8
    (b"\xed\xa0\x80", {"payload": "7aCA", "encoding": "base64"}),  # an encoded surrogate
    (
        bytes(range(256)),
        {"payload": base64.b64encode(bytes(range(256))).decode(), "encoding": "base64"},
    ),
    (b"x" * 70_000, {"payload": "x" * 70_000}),  # a 64-bit WebSocket length
]


async def test_utf8_bodies_are_text_and_others_base64(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    await client.join(t)
    for body, _ in BODIES:
        await rs.publish(t, body)
    for body, expected in BODIES:
        assert await client.next() == {"topic": t, **expected}, body[:20]
    # The exact text of a frame: compact JSON, keys in this order, non-ASCII as is.
    await rs.publish(t, b"\x00\xff")
    assert await client.next_text() == f'{{"topic":"{t}","payload":"AP8=","encoding":"base64"}}'
    await rs.publish(t, "\u00e9".encode())
    assert await client.next_text() == f'{{"topic":"{t}","payload":"\u00e9"}}'


async def test_wildcards_push_the_real_routing_key(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    await client.join(f"{t}.*.temp", f"{t}.log.#", f"{t}.#.end.#", f"{t}.e.*", f"{t}.stop")
    keys = {
        f"{t}.s1.temp": True,
        f"{t}.s1.s2.temp": False,  # '*' is exactly one word
        f"{t}.temp": False,
        f"{t}..temp": True,  # an empty word is a word
        f"{t}.log": True,  # '#' is zero or more words
        f"{t}.log.a.b.c": True,
        f"{t}.x.log": False,
        f"{t}.end": True,
        f"{t}.a.b.end.c.d": True,
        f"{t}.e.": True,  # '*' matches the empty last word
        f"{t}.e": False,
        f"{t}.e.x.y": False,
        f"{t}.s1.temp.x": False,
        f"{t}.s1.hum": False,
    }
    for key in keys:
        await rs.publish(key, key.encode())
    await rs.publish(f"{t}.stop", b"sentinel")
    expected = [msg(key, key) for key, match in keys.items() if match]
    await client.expect(*expected, msg(f"{t}.stop", "sentinel"))


async def test_overlapping_patterns_deliver_once(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    first = await clients.connect(transport, rs.port)
    second = await clients.connect(transport, rs.port)
    for client in (first, second):
        await client.join(f"{t}.a.*", f"{t}.a.#", f"{t}.a.b", f"{t}.#")
    await rs.publish(f"{t}.a.b", b"one")  # matched by all four
    await rs.publish(f"{t}.a.c", b"two")  # by three
    await rs.publish(f"{t}.a.b", b"end")
    for client in (first, second):
        await client.expect(msg(f"{t}.a.b", "one"), msg(f"{t}.a.c", "two"), msg(f"{t}.a.b", "end"))


async def test_nothing_arrives_after_leave_unless_another_pattern_matches(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    other = await clients.connect(transport, rs.port)
    await client.join(f"{t}.a.b", f"{t}.a.*", f"{t}.stop")
    await other.join(f"{t}.a.b")
    await client.leave(f"{t}.a.b")
    await rs.publish(f"{t}.a.b", b"via a.*")
    await client.expect(msg(f"{t}.a.b", "via a.*"))
    await client.leave(f"{t}.a.*")
    await rs.publish(f"{t}.a.b", b"left")  # still bound: `other` joined it
    await rs.publish(f"{t}.a.c", b"left too")
    await rs.publish(f"{t}.stop", b"sentinel")
    await client.expect(msg(f"{t}.stop", "sentinel"))
    await other.expect(msg(f"{t}.a.b", "via a.*"), msg(f"{t}.a.b", "left"))
    # Joined again after leaving: delivered again.
    await client.join(f"{t}.a.b")
    await rs.publish(f"{t}.a.b", b"back")
    await client.expect(msg(f"{t}.a.b", "back"))


async def test_a_disconnected_client_leaves_its_topics(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    going = await clients.connect(transport, rs.port)
    staying = await clients.connect(transport, rs.port)
    await going.join(f"{t}.a", f"{t}.*")
    await staying.join(f"{t}.b")
    hub = rs.services.hub()
    await going.close()
    deadline = asyncio.get_running_loop().time() + 5
    while hub.live_topics != 1:  # terminate runs after the close handshake: poll, briefly
        assert asyncio.get_running_loop().time() < deadline, hub.live_topics
        await asyncio.sleep(0.01)
    await rs.publish(f"{t}.b", b"still here")
    await staying.expect(msg(f"{t}.b", "still here"))


# --- bad frames ---------------------------------------------------------------------------------


async def _send_any(client: PubSubClient, frame: Any) -> None:
    if isinstance(frame, bytes):
        await client.send_binary(frame)
    elif isinstance(frame, str):
        await client.send_text(frame)
    else:
        await client.send_command(frame)


async def test_bad_frames_get_error_and_connections_keep_working(
    rs: Bridge, clients: Clients, transport: Transport
) -> None:
    t = unique()
    client = await clients.connect(transport, rs.port)
    bystander = await clients.connect(
        "socketio" if transport == "websocket" else "websocket", rs.port
    )
    await client.join(f"{t}.before")
    await bystander.join(t)
    for what, frame, reason in BAD_FRAMES:
        await _send_any(client, frame)
        assert await client.next() == {"topic": "#error", "payload": reason}, what
    # A binary frame holding a good command is a command (read as UTF-8).
    await client.send_binary(json.dumps({"command": "join", "topics": [t]}).encode())
    await client.expect(joined(t))
    await rs.publish(f"{t}.before", b"1")
    await rs.publish(t, b"2")
    await client.expect(msg(f"{t}.before", "1"), msg(t, "2"))
    await bystander.expect(msg(t, "2"))


async def test_socketio_objects_and_strings_are_the_same_command(
    rs: Bridge, clients: Clients
) -> None:
    t = unique()
    client = await clients.connect("socketio", rs.port, path="any/namespace")
    await client.send_command({"command": "join", "topics": [f"{t}.a"]})
    await client.expect(joined(f"{t}.a"))
    await client.send_text(json.dumps({"command": "join", "topics": [f"{t}.b"]}))
    await client.expect(joined(f"{t}.b"))
    # Several arguments arrive as a JSON array: not a command.
    assert isinstance(client, SocketIOClient)
    await client.sio.send(["join", "x"], namespace=client.namespace)
    await client.expect({"topic": "#error", "payload": "frame is not a JSON object"})


async def test_socketio_long_polling(rs: Bridge) -> None:
    t = unique()
    client = await SocketIOClient.connect(rs.port, transports=("polling",))
    try:
        await client.join(t)
        await rs.publish(t, b"\x01\xff")
        await client.expect({"topic": t, "payload": "Af8=", "encoding": "base64"})
    finally:
        await client.close()


async def test_websockets_client_with_permessage_deflate(rs: Bridge) -> None:
    # The `websockets` library offers permessage-deflate (RFC 7692); with `compress` on, the
    # server accepts it and fan-out goes through aiohttp's compressing writer instead.
    t = unique()
    listener = await rs.add_listener({})
    compressed = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        {},
        services=rs.services,
        websocket=WebSocketConfig(compress=True),
    )
    rs.extra.append(compressed)
    for port, extension in ((listener.port, None), (compressed.port, "permessage-deflate")):
        async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/any/path") as ws:
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") == extension
            await ws.send(json.dumps({"command": "join", "topics": [t]}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == joined(t)
            for body in (b"text " * 1000, b"\xff\x00"):
                await rs.publish(t, body)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == msg(t, "text " * 1000)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {
                "topic": t,
                "payload": "/wA=",
                "encoding": "base64",
            }


async def test_serve_without_configuration_runs_on_memory_or_on_amqp_url() -> None:
    # What `rabbitsocks serve` would start with no -c, with and without RABBITSOCKS_AMQP_URL.
    async def check(**env: str) -> str:
        code, out, err = await run_cli("check", env=serve_env(**env))
        assert code == 0, err
        return out

    memory_only = await check()
    assert "callback callbacks.pubsub" in memory_only
    assert "broker memory: in-process" in memory_only
    assert "broker amqp" not in memory_only
    assert "default broker: memory" in memory_only
    with_amqp = await check(RABBITSOCKS_AMQP_URL="amqp://guest:secret@rabbit.example:5672/")
    assert "broker memory: in-process" in with_amqp
    assert re.search(
        r"broker amqp: amqp://guest:\*+@rabbit\.example:5672/ exchange amq\.topic", with_amqp
    )
    assert "secret" not in with_amqp
    assert "default broker: amqp" in with_amqp


# --- RFC 6455: a text frame must be UTF-8 --------------------------------------------------------


async def _raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /websocket/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 section 5.2); short payloads only."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(clients: Clients) -> None:
    # Section 8.1: an endpoint receiving invalid UTF-8 in a text frame fails the connection.
    # (The same bytes in a binary frame get #error: see BAD_FRAMES.)
    async with bridge("memory") as rs:
        t = unique()
        bystander = await clients.connect("websocket", rs.port)
        await bystander.join(t)
        reader, writer = await _raw_websocket(rs.port)
        try:
            writer.write(_client_frame(0x1, b'{"command":"join","topics":["\xff"]}'))
            header = await asyncio.wait_for(reader.readexactly(4), 5)
            assert header[0] == 0x88  # FIN + close
            assert struct.unpack("!H", header[2:4])[0] == 1007
        finally:
            writer.close()
        await rs.publish(t, b"unaffected")
        await bystander.expect(msg(t, "unaffected"))
