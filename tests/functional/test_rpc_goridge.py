"""The goridge RPC server on a real socket, with our client and with raw, hostile bytes.

Every hostile case runs next to a well-behaved client that was connected before it and
must keep working after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.errors import BrokerUnavailable, RpcError
from rabbitsocks.rpc import GoridgeClient, Message, Request, Response
from rabbitsocks.rpc.goridge import (
    Call,
    Flag,
    FrameDecoder,
    decode_call,
    encode_call,
)
from rabbitsocks.rpc.goridge_server import GoridgeServer, start_goridge_server
from rabbitsocks.rpc.service import PublishService, UnknownMethod
from tests.support.deliveries import Deliveries, record_all

WAIT = 5.0
VECTORS = Path(__file__).parent.parent / "vectors" / "goridge-broadcast-publish.txt"


class RawPeer:
    """A bare TCP connection that speaks goridge by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 20)

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Call:
        async with asyncio.timeout(WAIT):
            while (frame := self.decoder.next_frame()) is None:
                data = await self.reader.read(65536)
                assert data, "the server closed the connection instead of replying"
                self.decoder.feed(data)
        return decode_call(frame)

    async def raw_reply(self, size: int) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.reader.readexactly(size)

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (reads until EOF, within WAIT)."""
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.decoder.feed(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def publish_body(*topics: str, payload: bytes = b"p") -> bytes:
    request = Request(messages=[Message(topics=list(topics), payload=payload)])
    body: bytes = request.SerializeToString()
    return body


def header(flags: int, length: int, options: tuple[int, ...], *, crc: int | None = None) -> bytes:
    head = bytes([0x10 | (3 + len(options)), flags]) + struct.pack("<I", length)
    checksum = zlib.crc32(head) if crc is None else crc
    return (
        head
        + struct.pack("<I", checksum)
        + b"\x00\x00"
        + b"".join(struct.pack("<I", o) for o in options)
    )


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker()
    yield memory
    await memory.close()


@pytest.fixture
async def deliveries(broker: MemoryBroker) -> Deliveries:
    return await record_all(broker)


@pytest.fixture
async def service(broker: MemoryBroker) -> AsyncIterator[PublishService]:
    publish_service = PublishService({"memory": broker}, "memory")
    yield publish_service
    await publish_service.close()


@pytest.fixture
async def server(service: PublishService) -> AsyncIterator[GoridgeServer]:
    goridge = await start_goridge_server(service, "127.0.0.1", 0)
    yield goridge
    await goridge.close()


@pytest.fixture
async def client(server: GoridgeServer) -> AsyncIterator[GoridgeClient]:
    async with GoridgeClient("127.0.0.1", server.port) as goridge:
        yield goridge


@pytest.fixture
async def bystander(server: GoridgeServer, deliveries: Deliveries) -> AsyncIterator[Bystander]:
    async with GoridgeClient("127.0.0.1", server.port) as goridge:
        yield Bystander(goridge, deliveries)


class Bystander:
    """A well-behaved client, connected before the hostile one, that must keep working."""

    def __init__(self, client: GoridgeClient, deliveries: Deliveries) -> None:
        self.client = client
        self.deliveries = deliveries
        self.calls = 0

    async def still_works(self) -> None:
        self.calls += 1
        topic = f"bystander.{self.calls}"
        await self.client.publish(topic, b"still here")
        assert (topic, b"still here") in self.deliveries.items


async def test_publish_reaches_the_broker(client: GoridgeClient, deliveries: Deliveries) -> None:
    await client.publish(["chat.a", "chat.b"], "héllo")
    assert deliveries.items == [("chat.a", "héllo".encode()), ("chat.b", "héllo".encode())]


async def test_many_calls_on_one_connection(client: GoridgeClient, deliveries: Deliveries) -> None:
    for index in range(20):
        await client.publish(f"t.{index}", b"x")
    assert [topic for topic, _ in deliveries.items] == [f"t.{i}" for i in range(20)]


async def test_publish_async_answers_ok_and_arrives(
    client: GoridgeClient, deliveries: Deliveries
) -> None:
    response = await client.publish_request(
        Request(messages=[Message(topics=["a", "b"], payload=b"later")]), async_=True
    )
    assert response == Response(ok=True)
    assert await deliveries.wait_for(2) == [("a", b"later"), ("b", b"later")]


async def test_websockets_method_names(server: GoridgeServer, deliveries: Deliveries) -> None:
    async with GoridgeClient("127.0.0.1", server.port, service="websockets") as client:
        await client.publish("old.sync", b"1")
        await client.publish("old.async", b"2", wait=False)
    await deliveries.wait_for(2)
    assert sorted(deliveries.items) == [("old.async", b"2"), ("old.sync", b"1")]


async def test_captured_php_request_gets_the_captured_reply(
    server: GoridgeServer, deliveries: Deliveries
) -> None:
    lines = [line for line in VECTORS.read_text().splitlines() if line and not line.startswith("#")]
    request_bytes, reply_bytes = bytes.fromhex(lines[0]), bytes.fromhex(lines[1])
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(request_bytes)
        assert await peer.raw_reply(len(reply_bytes)) == reply_bytes
        assert deliveries.items == [("chat.room1", b'hello {"x":1}')]
        # The same seq again on the same connection is served, never refused.
        await peer.send(request_bytes)
        assert await peer.raw_reply(len(reply_bytes)) == reply_bytes
        assert len(deliveries.items) == 2
    finally:
        await peer.close()


async def test_two_callers_sharing_a_connection_both_send_seq_1(
    server: GoridgeServer, deliveries: Deliveries
) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        # Two PHP RPC objects on one relay both start at seq 1; pipelined here.
        await peer.send(
            encode_call(1, "broadcast.Publish", publish_body("first"))
            + encode_call(1, "broadcast.Publish", publish_body("second"))
        )
        first, second = await peer.reply(), await peer.reply()
        assert (first.seq, second.seq) == (1, 1)
        assert Response.FromString(first.body).ok
        assert Response.FromString(second.body).ok
        assert [topic for topic, _ in deliveries.items] == ["first", "second"]
    finally:
        await peer.close()


async def test_error_reply_then_the_connection_keeps_serving(
    server: GoridgeServer, deliveries: Deliveries
) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(encode_call(5, "broadcast.Publish", publish_body("ok", "bad.*")))
        error = await peer.reply()
        assert error.seq == 5
        assert error.method == "broadcast.Publish"
        assert int(error.flags) == Flag.CODEC_PROTO | Flag.ERROR
        assert error.body.startswith(b"invalid request: messages[0].topics[1] 'bad.*'")
        assert deliveries.items == []
        await peer.send(encode_call(6, "broadcast.Publish", publish_body("ok")))
        reply = await peer.reply()
        assert (reply.seq, reply.body, int(reply.flags)) == (6, b"\x08\x01", Flag.CODEC_PROTO)
    finally:
        await peer.close()


async def test_client_raises_the_servers_errors(
    client: GoridgeClient, deliveries: Deliveries
) -> None:
    with pytest.raises(RpcError, match=r"invalid request: messages\[0\]\.topics: no topics"):
        await client.publish([], b"x")
    with pytest.raises(UnknownMethod, match=r"'broadcast\.Nope'"):
        await client.call("broadcast.Nope", Request())
    # Error replies leave the connection in step.
    await client.publish("after.errors", b"x")


async def test_broker_down_is_an_error_never_ok(server: GoridgeServer) -> None:
    # ``broker`` is never started in this test: it is not connected.
    async with GoridgeClient("127.0.0.1", server.port) as client:
        with pytest.raises(BrokerUnavailable, match="broker unavailable: broker 'memory'"):
            await client.publish("t", b"x")


async def test_json_codec(server: GoridgeServer, deliveries: Deliveries) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        body = b'{"messages": [{"topics": ["j"], "payload": "aGk="}]}'
        await peer.send(encode_call(2, "broadcast.Publish", body, Flag.CODEC_JSON))
        reply = await peer.reply()
        assert int(reply.flags) == Flag.CODEC_JSON
        assert reply.body == b'{"ok": true}'
        assert deliveries.items == [("j", b"hi")]
    finally:
        await peer.close()


# -- hostile input ---------------------------------------------------------------------


async def test_bad_crc_closes_only_that_connection(
    server: GoridgeServer, bystander: Bystander
) -> None:
    peer = await RawPeer.connect(server.port)
    body = b"broadcast.Publish" + publish_body("t")
    await peer.send(header(0x80, len(body), (1, 17), crc=0xDEADBEEF) + body)
    assert await peer.closed_by_server()
    assert peer.decoder.buffered == 0  # closed without a reply: the header is untrusted
    await peer.close()
    await bystander.still_works()
    assert ("t", b"p") not in bystander.deliveries.items


async def test_truncated_header_then_disconnect(
    server: GoridgeServer, bystander: Bystander
) -> None:
    peer = await RawPeer.connect(server.port)
    await peer.send(encode_call(1, "broadcast.Publish", publish_body("t"))[:7])
    await peer.close()
    await bystander.still_works()


async def test_disconnect_mid_payload(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    wire = encode_call(1, "broadcast.Publish", publish_body("t"))
    await peer.send(wire[:-3])
    await bystander.still_works()
    await peer.close()
    await bystander.still_works()
    assert ("t", b"p") not in bystander.deliveries.items


async def test_truncated_frame_then_silence_does_not_block_others(
    server: GoridgeServer, bystander: Bystander
) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(header(0x80, 1000, (1, 17)) + b"broadcast")
        await bystander.still_works()
    finally:
        await peer.close()


async def test_oversized_length_gets_an_error_then_close(
    server: GoridgeServer, bystander: Bystander
) -> None:
    peer = await RawPeer.connect(server.port)
    await peer.send(header(0x80, 0xFFFFFFF0, (77, 17)) + b"broadcast.Publish")
    error = await peer.reply()
    assert error.seq == 77
    assert error.flags & Flag.ERROR
    assert b"exceeds the limit" in error.body
    assert await peer.closed_by_server()
    await peer.close()
    await bystander.still_works()


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("broadcast.Subscribe", publish_body("t"), b"unknown method: 'broadcast.Subscribe'"),
        ("broadcast.Publish", b"\xff\xff\xff\xff garbage", b"invalid request: the body is not"),
        ("broadcast.Publish", b"", b"invalid request: the request has no messages"),
    ],
)
async def test_bad_calls_get_error_replies_and_the_connection_survives(
    server: GoridgeServer, bystander: Bystander, method: str, body: bytes, expected: bytes
) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(encode_call(3, method, body))
        error = await peer.reply()
        assert (error.seq, error.method) == (3, method)
        assert error.flags & Flag.ERROR
        assert error.body.startswith(expected), error.body
        await bystander.still_works()
        await peer.send(encode_call(4, "broadcast.Publish", publish_body("after")))
        assert (await peer.reply()).body == b"\x08\x01"
    finally:
        await peer.close()


async def test_unsupported_codec(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(encode_call(8, "broadcast.Publish", b"gob?", Flag.CODEC_GOB))
        error = await peer.reply()
        assert int(error.flags) == Flag.CODEC_GOB | Flag.ERROR
        assert b"not supported" in error.body
        await bystander.still_works()
    finally:
        await peer.close()


async def test_one_option_gets_an_error_reply(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(header(0x80, 3, (12,)) + b"abc")
        error = await peer.reply()
        assert error.seq == 12
        assert b"2 options" in error.body
        await bystander.still_works()
    finally:
        await peer.close()


async def test_no_options_closes(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    await peer.send(header(0x80, 3, ()) + b"abc")
    assert await peer.closed_by_server()
    await peer.close()
    await bystander.still_works()


async def test_method_length_past_the_payload(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    try:
        await peer.send(header(0x80, 3, (13, 200)) + b"abc")
        error = await peer.reply()
        assert error.seq == 13
        assert b"method length 200" in error.body
        await bystander.still_works()
    finally:
        await peer.close()


async def test_random_garbage(server: GoridgeServer, bystander: Bystander) -> None:
    peer = await RawPeer.connect(server.port)
    await peer.send(bytes(range(256)) * 4)
    assert await peer.closed_by_server()
    await peer.close()
    await bystander.still_works()


async def test_many_clients_at_once(server: GoridgeServer, deliveries: Deliveries) -> None:
    async def one(index: int) -> None:
        async with GoridgeClient("127.0.0.1", server.port) as client:
            for call in range(5):
                await client.publish(f"c{index}.{call}", b"x")

    await asyncio.gather(*(one(i) for i in range(10)))
    assert len(deliveries.items) == 50


async def test_close_disconnects_idle_clients(
    service: PublishService, deliveries: Deliveries
) -> None:
    goridge = await start_goridge_server(service, "127.0.0.1", 0)
    client = GoridgeClient("127.0.0.1", goridge.port)
    await client.publish("before", b"x")
    peer = await RawPeer.connect(goridge.port)
    async with asyncio.timeout(WAIT):
        await goridge.close()
    assert await peer.closed_by_server()
    await peer.close()
    with pytest.raises(OSError):
        await client.publish("after", b"x")
    await client.close()
    assert [topic for topic, _ in deliveries.items] == ["before"]


async def test_close_lets_a_call_in_progress_answer(
    broker: MemoryBroker, deliveries: Deliveries
) -> None:
    class Slow(MemoryBroker):
        def __init__(self) -> None:
            super().__init__("slow")
            self.entered = asyncio.Event()
            self.release = asyncio.Event()

        async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
            self.entered.set()
            await self.release.wait()
            await super().publish(topic, body, confirm=confirm)

    slow = Slow()
    await slow.start(deliveries)
    await slow.bind("#")
    service = PublishService({"slow": slow}, "slow")
    goridge = await start_goridge_server(service, "127.0.0.1", 0)
    client = GoridgeClient("127.0.0.1", goridge.port)
    call = asyncio.create_task(client.publish("in.flight", b"x"))
    await asyncio.wait_for(slow.entered.wait(), WAIT)
    closing = asyncio.create_task(goridge.close())
    slow.release.set()
    await asyncio.wait_for(call, WAIT)
    await asyncio.wait_for(closing, WAIT)
    await client.close()
    await service.close()
    assert deliveries.items == [("in.flight", b"x")]
