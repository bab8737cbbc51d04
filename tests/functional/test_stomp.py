"""callbacks.stomp on the memory broker: negotiation, CONNECT, /topic/ fan-out, receipts,
heart-beats, authorization and bad input. Real server on port 0, real WebSocket clients
(``tests/support/stomp.py`` over the websockets library, python-socketio).

What needs RabbitMQ (queues, acks, SEND with properties, /exchange/) is in
``tests/integration/test_stomp_amqp.py``; stomp.js itself in ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from rabbitsocks import start_listener
from rabbitsocks.config import AuthConfig, HookConfig, JwtConfig, LimitsConfig
from tests.support.rawws import RawWebSocket
from tests.support.stomp import StompClient, encode, parse_frames

SECRET = "stomp-secret-of-32-bytes-at-least!"


@contextlib.asynccontextmanager
async def stomp_server(
    options: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[str]:
    """A STOMP listener on its own memory broker; yields its WebSocket URL."""
    listener = await start_listener("127.0.0.1:0", "callbacks.stomp", options or {}, **settings)
    try:
        yield f"ws://127.0.0.1:{listener.port}/websocket/"
    finally:
        await listener.stop()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with stomp_server({"send": ["/topic/#"]}) as base:
        yield base


def token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


# --- negotiation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (("v10.stomp", "v11.stomp", "v12.stomp"), "v12.stomp"),  # stomp.js's order
        (("v12.stomp", "v11.stomp", "v10.stomp"), "v12.stomp"),
        (("v11.stomp", "v10.stomp"), "v11.stomp"),
        (("mqtt", "v10.stomp"), "v10.stomp"),
        ((), None),
    ],
)
async def test_subprotocol_is_the_highest_offered(
    url: str, offered: tuple[str, ...], chosen: str | None
) -> None:
    client = await StompClient.connect(url, subprotocols=offered)
    assert client.ws.subprotocol == chosen
    await client.disconnect()


async def test_a_client_offering_no_stomp_subprotocol_is_refused(url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url.replace("ws://", "http://"),
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Protocol": "mqtt",
            },
        ) as response,
    ):
        assert response.status == 400
        assert "v12.stomp" in await response.text()


@pytest.mark.parametrize(
    ("accept", "version"), [(None, "1.0"), ("1.0", "1.0"), ("1.0,1.1", "1.1"), ("1.2,1.1", "1.2")]
)
async def test_connected(url: str, accept: str | None, version: str) -> None:
    client = await StompClient.open(url)
    headers = {"host": "/"} | ({"accept-version": accept} if accept else {})
    await client.send_raw(encode("CONNECT", headers))
    frame = await client.next()
    assert frame.command == "CONNECTED"
    assert frame.headers["version"] == version
    assert frame.headers["server"].startswith("rabbitsocks/")
    assert frame.headers["session"].startswith("session-")
    assert frame.headers["heart-beat"] == "0,0"
    await client.close()


async def test_stomp_is_connect(url: str) -> None:
    client = await StompClient.open(url)
    await client.send_raw(encode("STOMP", {"accept-version": "1.2", "host": "/"}))
    assert (await client.next()).command == "CONNECTED"
    await client.close()


# --- /topic/ through the hub ---------------------------------------------------------------------


async def test_topic_wildcards_and_receipts(url: str) -> None:
    sub = await StompClient.connect(url)
    await sub.subscribe("/topic/news.*", "sub-0")
    await sub.subscribe("/topic/news.#", "sub-1")
    await sub.subscribe("/topic/other", "sub-2")
    pub = await StompClient.connect(url)
    body = b"binary\x00payload \xe2\x9c\x93"
    await pub.send("/topic/news.sport", body)
    got = {m.headers["subscription"]: m for m in (await sub.message(), await sub.message())}
    assert set(got) == {"sub-0", "sub-1"}
    for message in got.values():
        assert message.body == body
        assert message.headers["destination"] == "/topic/news.sport"
        assert message.headers["content-length"] == str(len(body))
        assert message.headers["redelivered"] == "false"
        assert "ack" not in message.headers  # ack: auto
    await pub.send("/topic/news.a.b", "deep")
    assert (await sub.message()).headers["subscription"] == "sub-1"
    # Nothing else arrived: the sentinel is the next frame.
    await pub.send("/topic/other", "sentinel")
    message = await sub.message()
    assert (message.headers["subscription"], message.body) == ("sub-2", b"sentinel")
    await sub.disconnect()
    await pub.disconnect()


async def test_unsubscribe_stops_delivery(url: str) -> None:
    sub = await StompClient.connect(url)
    await sub.subscribe("/topic/a", "s-a")
    await sub.subscribe("/topic/b", "s-b")
    await sub.unsubscribe("s-a")
    pub = await StompClient.connect(url)
    await pub.send("/topic/a", "gone")
    await pub.send("/topic/b", "sentinel")
    assert (await sub.message()).headers["subscription"] == "s-b"
    await sub.disconnect()
    await pub.disconnect()


async def test_client_ack_on_a_topic_is_accepted_and_changes_nothing(url: str) -> None:
    sub = await StompClient.connect(url)
    await sub.subscribe("/topic/t", ack="client-individual")
    pub = await StompClient.connect(url)
    await pub.send("/topic/t", "one")
    message = await sub.message()
    assert message.headers["ack"] == message.headers["message-id"]
    await sub.ack(message)
    await sub.ack(message, "NACK")
    await sub.disconnect()
    await pub.disconnect()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_older_versions_ack_with_message_id(url: str, version: str) -> None:
    sub = await StompClient.connect(url, version=version)
    assert sub.version == version
    await sub.subscribe("/topic/t", ack="client")
    pub = await StompClient.connect(url)
    await pub.send("/topic/t", "one")
    message = await sub.message()
    assert "ack" not in message.headers  # 1.2 only
    await sub.ack(message)
    await sub.disconnect()
    await pub.disconnect()


async def test_disconnect_with_receipt_closes_cleanly(url: str) -> None:
    client = await StompClient.connect(url)
    await client.send_frame("DISCONNECT", {"receipt": "bye"})
    frame = await client.next()
    assert (frame.command, frame.headers) == ("RECEIPT", {"receipt-id": "bye"})
    assert await client.closed() == 1000


async def test_transactions_hold_sends_until_commit(url: str) -> None:
    sub = await StompClient.connect(url)
    await sub.subscribe("/topic/tx")
    pub = await StompClient.connect(url)
    await pub.request("BEGIN", {"transaction": "t1"})
    await pub.send("/topic/tx", "first", receipt=False, transaction="t1")
    await pub.request("BEGIN", {"transaction": "t2"})
    await pub.send("/topic/tx", "aborted", receipt=False, transaction="t2")
    await pub.request("ABORT", {"transaction": "t2"})
    await pub.send("/topic/tx", "second", receipt=False, transaction="t1")
    await pub.request("COMMIT", {"transaction": "t1"})
    await pub.send("/topic/tx", "after")
    assert [(await sub.message()).body for _ in range(3)] == [b"first", b"second", b"after"]
    await sub.disconnect()
    await pub.disconnect()


async def test_queue_destinations_need_rabbitmq() -> None:
    async with stomp_server({"subscribe": ["/queue/#", "/topic/#"]}) as base:
        client = await StompClient.connect(base)
        await client.send_frame("SUBSCRIBE", {"destination": "/queue/jobs", "id": "0"})
        error = await client.expect_error("Destination not supported")
        assert "need RabbitMQ" in error.body_text


async def test_stomp_over_socketio(url: str) -> None:
    port = int(url.split(":")[2].split("/")[0])
    sio = socketio.AsyncClient()
    inbox: list[str] = []
    arrived = asyncio.Event()

    @sio.on("message")
    def on_message(data: str) -> None:
        inbox.append(data)
        arrived.set()

    await sio.connect(f"http://127.0.0.1:{port}", transports=["websocket"])
    try:

        async def next_frame() -> Any:
            async with asyncio.timeout(5):
                while not inbox:
                    arrived.clear()
                    await arrived.wait()
            frames, _ = parse_frames(inbox.pop(0).encode(), "1.2")
            return frames[0]

        await sio.send(encode("CONNECT", {"accept-version": "1.2", "host": "/"}).decode())
        assert (await next_frame()).command == "CONNECTED"
        await sio.send(
            encode("SUBSCRIBE", {"destination": "/topic/sio", "id": "0", "receipt": "r"}).decode()
        )
        assert (await next_frame()).command == "RECEIPT"
        pub = await StompClient.connect(url)
        await pub.send("/topic/sio", "over socket.io")
        message = await next_frame()
        assert (message.command, message.body) == ("MESSAGE", b"over socket.io")
        await pub.disconnect()
    finally:
        await sio.disconnect()


# --- heart-beats ------------------------------------------------------------------------------


async def test_server_heart_beats() -> None:
    async with stomp_server({"heart_beat_send": 200}) as base:
        client = await StompClient.connect(base, heart_beat="0,100")
        assert client.connected is not None
        assert client.connected.headers["heart-beat"] == "200,0"  # never faster than ours
        await client.next_heart_beat(timeout=3)
        await client.next_heart_beat(timeout=3)
        await client.disconnect()


async def test_a_silent_client_is_closed_after_its_heart_beat_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitsocks.stomp")
    async with stomp_server({"heart_beat_receive": 100}) as base:
        client = await StompClient.connect(base, heart_beat="200,0")
        assert client.connected is not None
        assert client.connected.headers["heart-beat"] == "0,200"
        started = time.monotonic()
        error = await client.expect_error("Heart-beat timeout", timeout=5)
        assert time.monotonic() - started >= 0.4  # twice the interval, not less
        assert "nothing received for" in error.body_text


async def test_a_client_that_beats_stays() -> None:
    async with stomp_server({"heart_beat_send": 200, "heart_beat_receive": 500}) as base:
        client = await StompClient.connect(base, heart_beat="500,200")
        # Twice as often as promised: a loaded machine may delay a beat, never by a second.
        beating = asyncio.ensure_future(client.beat(0.25))
        try:
            for _ in range(3):  # three of the server's, about a second apart
                await client.next_heart_beat(timeout=3)
            await client.subscribe("/topic/alive")  # still served
        finally:
            beating.cancel()
        await client.disconnect()


async def test_connect_must_come_in_time() -> None:
    async with stomp_server({"connect_timeout": 0.3}) as base:
        client = await StompClient.open(base)
        error = await client.expect_error("Connect timeout")
        assert "no CONNECT frame within 0.3s" in error.body_text


# --- bad input ---------------------------------------------------------------------------------

LIMITS = {"max_frame_size": 2048, "max_headers": 8, "max_subscriptions": 3, "send": ["/topic/ok.#"]}
SUB = "SUBSCRIBE\ndestination:/topic/x\nid:{}\n\n\x00"

#: (what, frames after CONNECT (or before it when the first is not CONNECT), ERROR message)
BAD_INPUT: list[tuple[str, list[str | bytes], str]] = [
    ("malformed header", ["SEND\nno colon\n\n\x00"], "Malformed frame"),
    ("unknown command", ["FROB\n\n\x00"], "Unknown command"),
    ("lower-case command", ["send\ndestination:/topic/ok\n\n\x00"], "Unknown command"),
    ("SUBSCRIBE without destination", ["SUBSCRIBE\nid:0\n\n\x00"], "Missing destination"),
    ("SEND without destination", ["SEND\n\nbody\x00"], "Missing destination"),
    ("ACK without id", ["ACK\n\n\x00"], "Missing header"),
    ("ACK with a bad id", ["ACK\nid:nonsense\n\n\x00"], "Invalid header"),
    ("UNSUBSCRIBE of nothing", ["UNSUBSCRIBE\nid:nope\n\n\x00"], "No subscription found"),
    (
        "oversize frame",
        ["SEND\ndestination:/topic/ok\n\n" + "x" * 3000 + "\x00"],
        "Frame too large",
    ),
    ("oversize content-length", ["SEND\ncontent-length:99999\n\n"], "Frame too large"),
    ("too many headers", ["SEND\n" + "h:v\n" * 9 + "\n\x00"], "Too many headers"),
    ("forbidden SEND", ["SEND\ndestination:/topic/secret\n\nx\x00"], "Access refused"),
    ("forbidden SUBSCRIBE", ["SUBSCRIBE\ndestination:/queue/x\nid:0\n\n\x00"], "Access refused"),
    ("subscription flood", [SUB.format(i) for i in range(4)], "Too many subscriptions"),
    ("duplicate id", [SUB.format(0), SUB.format(0)], "Duplicated subscription identifier"),
    (
        "bad ack mode",
        ["SUBSCRIBE\ndestination:/topic/x\nid:0\nack:never\n\n\x00"],
        "Invalid header",
    ),
    (
        "unknown destination",
        ["SUBSCRIBE\ndestination:/nowhere/x\nid:0\n\n\x00"],
        "Unknown destination",
    ),
    (
        "bad topic pattern",
        ["SUBSCRIBE\ndestination:/topic/a*\nid:0\n\n\x00"],
        "Invalid destination",
    ),
    (
        "durable topic subscription",
        ["SUBSCRIBE\ndestination:/topic/x\nid:0\ndurable:true\n\n\x00"],
        "Durable subscriptions not supported",
    ),
    (
        "temp-queue SUBSCRIBE",
        ["SUBSCRIBE\ndestination:/temp-queue/x\nid:0\n\n\x00"],
        "Invalid destination",
    ),
    ("headers not UTF-8", [b"SEND\ndestination:/topic/\xff\n\n\x00"], "Malformed frame"),
    ("undefined escape", ["SEND\ndestination:/topic/ok\nx:\\t\n\n\x00"], "Invalid header"),
    ("CONNECT twice", ["CONNECT\naccept-version:1.2\n\n\x00"], "Already connected"),
    ("COMMIT of nothing", ["COMMIT\ntransaction:t\n\n\x00"], "Bad transaction"),
    (
        "SEND in no transaction",
        ["SEND\ndestination:/topic/ok\ntransaction:t\n\n\x00"],
        "Bad transaction",
    ),
    ("BEGIN without name", ["BEGIN\n\n\x00"], "Missing transaction"),
]
BEFORE_CONNECT: list[tuple[str, list[str | bytes], str]] = [
    ("SEND before CONNECT", ["SEND\ndestination:/topic/ok\n\n\x00"], "Illegal command"),
    ("garbage before CONNECT", ["\x01\x02\n\n\x00"], "Unknown command"),
    ("version mismatch", ["CONNECT\naccept-version:2.0\n\n\x00"], "Version mismatch"),
    ("bad heart-beat", ["CONNECT\naccept-version:1.2\nheart-beat:often\n\n\x00"], "Invalid header"),
]


@pytest.mark.parametrize(
    ("connect", "frames", "message"),
    [pytest.param(True, f, m, id=w) for w, f, m in BAD_INPUT]
    + [pytest.param(False, f, m, id=w) for w, f, m in BEFORE_CONNECT],
)
async def test_bad_input_gets_one_error_then_close_and_disturbs_nobody(
    connect: bool, frames: list[str | bytes], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitsocks.stomp")
    async with stomp_server(LIMITS) as base:
        bystander = await StompClient.connect(base)
        await bystander.subscribe("/topic/ok.watch")
        client = await (StompClient.connect(base) if connect else StompClient.open(base))
        for frame in frames:
            await client.send_raw(frame)
        error = await client.expect_error(message)
        assert error.headers["content-type"] == "text/plain"
        assert error.body_text  # says why
        errors = [r.getMessage() for r in caplog.records if r.name == "rabbitsocks.stomp"]
        assert len(errors) == 1, errors  # logged once
        # The bystander still works.
        other = await StompClient.connect(base)
        await other.send("/topic/ok.watch", "still here")
        assert (await bystander.message()).body == b"still here"
        await other.disconnect()
        await bystander.disconnect()


async def test_error_names_the_receipt_of_the_frame_that_caused_it(url: str) -> None:
    client = await StompClient.connect(url)
    await client.send_frame("SUBSCRIBE", {"id": "0", "receipt": "mine"})
    error = await client.expect_error("Missing destination")
    assert error.headers["receipt-id"] == "mine"


async def test_send_is_off_by_default() -> None:
    async with stomp_server() as base:
        client = await StompClient.connect(base)
        await client.send_frame("SEND", {"destination": "/topic/a"}, b"x")
        error = await client.expect_error("Access refused")
        assert error.body_text == "SEND is not enabled on this server"


async def test_a_frame_split_across_messages_and_frames_sharing_one(url: str) -> None:
    client = await StompClient.connect(url)
    data = encode("SUBSCRIBE", {"destination": "/topic/split", "id": "0", "receipt": "r1"})
    for i in range(0, len(data), 5):
        await client.send_raw(data[i : i + 5])
    assert (await client.next()).headers == {"receipt-id": "r1"}
    both = (
        encode("SEND", {"destination": "/topic/split"}, b"a")
        + b"\n"
        + encode("SEND", {"destination": "/topic/split", "receipt": "r2"}, b"b")
    )
    await client.send_raw(both)
    frames = [await client.next() for _ in range(3)]
    assert [(f.command, f.body) for f in frames] == [
        ("MESSAGE", b"a"),
        ("MESSAGE", b"b"),
        ("RECEIPT", b""),
    ]
    await client.disconnect()


async def test_slow_subscriber_is_closed_as_on_pubsub(url: str) -> None:
    limits = LimitsConfig(max_outbound_bytes=32 * 1024)
    async with stomp_server({"send": ["/topic/#"]}, limits=limits) as base:
        port = int(base.split(":")[2].split("/")[0])
        stalled = await RawWebSocket.connect(port, rcvbuf=4096)
        await stalled.send_text(encode("CONNECT", {"accept-version": "1.2"}).decode())
        await stalled.send_text(
            encode("SUBSCRIBE", {"destination": "/topic/flood", "id": "0", "receipt": "r"}).decode()
        )
        seen = b""
        while b"receipt-id:r" not in seen:
            seen += (await stalled.recv_data()).payload
        good = await StompClient.connect(base)
        await good.subscribe("/topic/flood")
        pub = await StompClient.connect(base)
        chunk = "x" * 16 * 1024
        for _ in range(400):  # 6.4 MiB: far over the stalled peer's window and our limit
            await pub.send("/topic/flood", chunk, receipt=False)
            assert (await good.message()).body_text == chunk
        assert await stalled.closed_by_server(timeout=10)
        stalled.close()
        await good.disconnect()
        await pub.disconnect()


# --- authorization ----------------------------------------------------------------------------


@pytest.fixture
async def jwt_url() -> AsyncIterator[str]:
    auth = AuthConfig(jwt=JwtConfig(secret=SECRET))
    options = {"subscribe": ["/topic/public.#"], "subscribe_claim": "stomp"}
    async with stomp_server(options, auth=auth) as base:
        yield base


async def test_jwt_as_passcode(jwt_url: str) -> None:
    # The handshake carries no token: the listener's auth moved to CONNECT.
    client = await StompClient.connect(
        jwt_url, login="ignored", passcode=token(stomp="/topic/vip.*")
    )
    await client.subscribe("/topic/public.news", "0")
    await client.subscribe("/topic/vip.lounge", "1")  # allowed by the token's claim
    await client.send_frame("SUBSCRIBE", {"destination": "/topic/vip.a.b", "id": "2"})
    await client.expect_error("Access refused")


async def test_jwt_in_the_url_still_works(jwt_url: str) -> None:
    client = await StompClient.connect(jwt_url + "?token=" + token())
    await client.subscribe("/topic/public.x")
    await client.disconnect()


@pytest.mark.parametrize(
    ("passcode", "reason"),
    [(None, "a token is required"), ("not-a-jwt", "invalid token"), ("expired", "token expired")],
)
async def test_bad_credentials_get_bad_connect(
    jwt_url: str, passcode: str | None, reason: str
) -> None:
    if passcode == "expired":
        passcode = jwt.encode({"exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    client = await StompClient.open(jwt_url)
    headers = {"accept-version": "1.2", "login": "bob"} | (
        {"passcode": passcode} if passcode else {}
    )
    await client.send_raw(encode("CONNECT", headers))
    error = await client.expect_error("Bad CONNECT")
    assert reason in error.body_text
    assert "bob" in error.body_text


async def test_connect_hook_sees_login_and_passcode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rabbitsocks")
    auth = AuthConfig(connect=HookConfig(callable="tests.support.hooks:stomp_login"))
    async with stomp_server(auth=auth) as base:
        client = await StompClient.connect(base, login="alice", passcode="wonderland")
        await client.disconnect()
        client = await StompClient.open(base)
        await client.send_raw(encode("CONNECT", {"login": "alice", "passcode": "s3cret-guess"}))
        error = await client.expect_error("Bad CONNECT")
        assert error.body_text == "access refused for user 'alice': wrong login or passcode"
    assert "wonderland" not in caplog.text
    assert "s3cret-guess" not in caplog.text


async def test_subscribe_and_send_hooks() -> None:
    options = {
        "subscribe": ["/topic/#"],
        "send": ["/topic/#"],
        "subscribe_auth": {"callable": "tests.support.hooks:public_destinations"},
        "send_auth": {"callable": "tests.support.hooks:public_destinations"},
    }
    async with stomp_server(options) as base:
        client = await StompClient.connect(base)
        await client.subscribe("/topic/public.a")
        await client.send("/topic/public.a", "ok")
        await client.message()
        await client.send_frame("SEND", {"destination": "/topic/private.a"}, b"no")
        error = await client.expect_error("Access refused")
        assert "not authorized" in error.body_text
