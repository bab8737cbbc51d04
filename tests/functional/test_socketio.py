"""Socket.IO on /socket.io/: python-socketio's AsyncClient over polling and websocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import engineio.payload
import pytest
import socketio

from rabbitsocks import ConnectionRefused, Listener, Services, start_listener
from rabbitsocks.config import LimitsConfig
from tests.support.engineio import Poller
from tests.support.rawws import RawWebSocket
from tests.support.recorder import Recorder, State

TRANSPORTS = {
    "polling": ["polling"],
    "websocket": ["websocket"],
    "upgrade": ["polling", "websocket"],
}


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def listener(recorder: Recorder) -> AsyncIterator[Listener]:
    handle = await start_listener("127.0.0.1:0", recorder, {"k": "v"})
    try:
        yield handle
    finally:
        await handle.stop()


class Client:
    """An AsyncClient whose ``message`` events land in a queue."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.connect_errors: list[Any] = []
        self.sio.on(
            "connect_error", lambda ns, data: self.connect_errors.append(data), namespace="*"
        )
        self.sio.on("message", lambda ns, data: self.messages.put_nowait(data), namespace="*")
        self.sio.on("disconnect", lambda *a: self.disconnected.set(), namespace="*")

    async def connect(
        self, listener: Listener, transports: list[str], namespaces: list[str] | None = None
    ) -> None:
        await self.sio.connect(
            f"http://127.0.0.1:{listener.port}",
            transports=transports,
            namespaces=namespaces or ["/"],
            wait_timeout=5,
        )

    async def next(self) -> Any:
        return await asyncio.wait_for(self.messages.get(), 5)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client()
    try:
        yield c
    finally:
        await c.sio.disconnect()


@pytest.mark.parametrize("mode", list(TRANSPORTS))
async def test_frames_both_ways(
    listener: Listener, recorder: Recorder, client: Client, mode: str
) -> None:
    await client.connect(listener, TRANSPORTS[mode])
    await client.sio.send("hello")
    assert await client.next() == "hello"
    await client.sio.send(b"\x00\xff")
    assert await client.next() == b"\x00\xff"
    if mode == "upgrade":
        assert client.sio.transport() == "websocket"
    assert recorder.inits == [("", {"k": "v"})]


@pytest.mark.parametrize("mode", ["polling", "websocket"])
async def test_objects_arrive_as_json_text(
    listener: Listener, recorder: Recorder, client: Client, mode: str
) -> None:
    await client.connect(listener, TRANSPORTS[mode])
    await client.sio.send({"command": "join", "topics": ["a"]})
    assert await client.next() == '{"command":"join","topics":["a"]}'
    await client.sio.send([1, "two"])
    assert await client.next() == '[1,"two"]'


async def test_namespace_is_the_path(
    listener: Listener, recorder: Recorder, client: Client
) -> None:
    await client.connect(listener, ["websocket"], namespaces=["/chat", "/rooms/a"])
    await client.sio.send("path", namespace="/chat")
    assert await client.next() == "chat"
    await client.sio.send("path", namespace="/rooms/a")
    assert await client.next() == "rooms/a"
    assert sorted(path for path, _ in recorder.inits) == ["chat", "rooms/a"]


async def test_open_greeting_arrives_after_connect() -> None:
    handle = await start_listener("127.0.0.1:0", Recorder(greet="welcome"))
    client = Client()
    try:
        await client.connect(handle, ["polling"])
        assert await client.next() == "welcome"
    finally:
        await client.sio.disconnect()
        await handle.stop()


@pytest.mark.parametrize("mode", ["polling", "websocket"])
async def test_init_refusal_is_a_connect_error_with_the_reason(mode: str) -> None:
    handle = await start_listener("127.0.0.1:0", Recorder(refuse=ConnectionRefused("go away")))
    client = Client()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(handle, TRANSPORTS[mode])
        assert client.connect_errors == [{"message": "go away"}]
    finally:
        await handle.stop()


async def test_crash_disconnects_only_that_client(listener: Listener, recorder: Recorder) -> None:
    victim, bystander = Client(), Client()
    try:
        await victim.connect(listener, ["websocket"])
        await bystander.connect(listener, ["polling"])
        await victim.sio.send("crash")
        await asyncio.wait_for(victim.disconnected.wait(), 5)
        await recorder.wait_terminated(1)
        await bystander.sio.send("still here")
        assert await bystander.next() == "still here"
    finally:
        await victim.sio.disconnect()
        await bystander.sio.disconnect()
    await recorder.wait_terminated(2)


@pytest.mark.parametrize("mode", ["polling", "websocket"])
async def test_client_disconnect_terminates_once(
    listener: Listener, recorder: Recorder, mode: str
) -> None:
    client = Client()
    await client.connect(listener, TRANSPORTS[mode])
    await client.sio.send("a")
    await client.next()
    await client.sio.disconnect()
    await recorder.wait_terminated(1)
    assert [s.frames for s in recorder.terminated] == [["a"]]


async def test_writer_close_disconnects(listener: Listener, recorder: Recorder) -> None:
    client = Client()
    await client.connect(listener, ["websocket"])
    await client.sio.send("bye")
    await asyncio.wait_for(client.disconnected.wait(), 5)
    await recorder.wait_terminated(1)


async def test_stop_disconnects_clients_and_terminates(recorder: Recorder) -> None:
    handle = await start_listener("127.0.0.1:0", recorder)
    clients = [Client(), Client()]
    await clients[0].connect(handle, ["websocket"])
    await clients[1].connect(handle, ["polling"])
    await handle.stop()
    for c in clients:
        await asyncio.wait_for(c.disconnected.wait(), 5)
    assert len(recorder.terminated) == 2


async def test_engineio_handshake_is_v4(listener: Listener) -> None:
    url = f"http://127.0.0.1:{listener.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        body = await response.text()
    assert body.startswith('0{"sid":')
    assert '"upgrades":["websocket"]' in body


@pytest.mark.parametrize("mode", ["websocket", "upgrade", "polling"])
async def test_fanout_keeps_order_on_every_transport(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst of small and large frames (written early past FLUSH_AT, or at the end of
    # the turn; queued for a poll): the order must survive whatever carries them.
    from rabbitsocks import Services

    # python-engineio's *client* refuses a polling answer of more than 16 packets (browsers
    # take any number); the server answers a poll with everything queued.
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 10_000)

    services = Services.memory_only()
    await services.start()
    # 1.3 MB in one turn of the loop: a polling client holds all of it until its next poll.
    limits = LimitsConfig(max_outbound_bytes=4 << 20)
    handle = await start_listener(
        "127.0.0.1:0", "callbacks.pubsub", services=services, limits=limits
    )
    client = Client()
    try:
        await client.connect(handle, TRANSPORTS[mode])
        await client.sio.send('{"command":"join","topics":["order"]}')
        assert json.loads(await client.next())["topic"] == "@join"
        broker = services.brokers["memory"]
        count = 300
        for i in range(count):
            await broker.publish("order", f"{i} ".encode() + b"x" * (30_000 if i % 7 == 0 else 10))
        numbers = []
        for _ in range(count):
            numbers.append(int(json.loads(await client.next())["payload"].split()[0]))
        assert numbers == list(range(count))
    finally:
        await client.sio.disconnect()
        await handle.stop()
        await services.close()


class Burst(Recorder):
    """On any frame: 50 text frames, a binary one, 50 more text frames, in one turn."""

    async def handle_frame(self, frame: str | bytes, state: State) -> State:
        writer = state.writer
        assert writer is not None
        for i in range(50):
            writer.send(f"t{i}")
        writer.send(b"\x00binary")
        for i in range(50, 100):
            writer.send(f"t{i}")
        return state


@pytest.mark.parametrize("mode", ["websocket", "upgrade"])
async def test_frames_of_one_turn_keep_their_order_around_a_binary_event(mode: str) -> None:
    # Text frames of one turn wait to be written together; a binary event goes through
    # Engine.IO's queue, so what waits must go out before it, and what follows after it.
    handle = await start_listener("127.0.0.1:0", Burst())
    client = Client()
    try:
        await client.connect(handle, TRANSPORTS[mode])
        await client.sio.send("go")
        got = [await client.next() for _ in range(101)]
        assert got == [f"t{i}" for i in range(50)] + [b"\x00binary"] + [
            f"t{i}" for i in range(50, 100)
        ]
    finally:
        await client.sio.disconnect()
        await handle.stop()


async def test_nothing_overtakes_across_the_upgrade() -> None:
    # Issue 12: python-engineio's writer took a packet off its queue before writing it, so
    # a frame written straight to the socket could overtake it. Here a publisher runs
    # through every step of a polling session's upgrade, by hand (engine.io's protocol:
    # probe, noop to the pending poll, upgrade), and every message arrives once, in order,
    # over whichever transport carried it.
    services = Services.memory_only()
    await services.start()
    handle = await start_listener("127.0.0.1:0", "callbacks.pubsub", services=services)
    broker = services.brokers["memory"]
    stop_at: int | None = None
    published = 0

    async def publish() -> None:
        nonlocal published
        while stop_at is None or published < stop_at:
            await broker.publish("seq", str(published).encode())
            published += 1
            await asyncio.sleep(0)  # one per turn of the loop: the steps interleave

    def numbers(packets: list[str]) -> list[int]:
        found = []
        for packet in packets:
            if packet.startswith("42"):
                _, data = json.loads(packet[2:])
                message = json.loads(data)
                if message["topic"] == "seq":
                    found.append(int(message["payload"]))
        return found

    received: list[int] = []
    publisher: asyncio.Task[None] | None = None
    try:
        async with Poller(handle.port) as poller:
            await poller.handshake()
            await poller.connect("/")
            await poller.send(json.dumps({"command": "join", "topics": ["seq"]}))
            while not any("@join" in p for p in await poller.poll()):
                pass
            publisher = asyncio.create_task(publish())
            for _ in range(3):
                received += numbers(await poller.poll())
            ws = await RawWebSocket.connect(
                handle.port, f"/socket.io/?EIO=4&transport=websocket&sid={poller.sid}"
            )
            try:
                await ws.send_text("2probe")
                assert (await ws.recv_data()).text == "3probe"
                received += numbers(await poller.poll())  # ended by the noop
                received += numbers(await poller.poll())  # polling goes on until "5"
                await ws.send_text("5")
                stop_at = published + 500  # 500 more after the switch, then stop
                await publisher
                while len(received) < published:
                    frame = await ws.recv_data()
                    if frame.text == "2":
                        await ws.send_text("3")
                        continue
                    received += numbers([frame.text])
            finally:
                ws.close()
        assert received == list(range(published))
    finally:
        if publisher is not None:
            publisher.cancel()
        await handle.stop()
        await services.close()


class Alternate(Recorder):
    """On "go:<gap>": binary and text frames alternately, ``gap`` loop turns apart."""

    async def handle_frame(self, frame: str | bytes, state: State) -> State:
        writer = state.writer
        assert writer is not None
        assert isinstance(frame, str)
        gap = int(frame.split(":")[1])
        for i in range(150):
            writer.send(f"b{i}".encode())
            for _ in range(gap):
                await asyncio.sleep(0)
            writer.send(f"t{i}")
            for _ in range(gap):
                await asyncio.sleep(0)
        return state


@pytest.mark.parametrize("gap", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_binary_and_text_frames_alternating_keep_their_order(
    mode: str, gap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Aimed at the window issue 12 describes in the old transport: a binary frame went
    # through python-engineio's queue, a text frame straight to the socket when the queue
    # looked empty, and the queue's writer had taken a packet without writing it yet.
    # Frames alternate between the two kinds, some loop turns apart, so that every
    # interleaving of "taken" and "written" is crossed.
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 10_000)  # see above
    handle = await start_listener("127.0.0.1:0", Alternate())
    client = Client()
    try:
        await client.connect(handle, TRANSPORTS[mode])
        await client.sio.send(f"go:{gap}")
        got = [await client.next() for _ in range(300)]
        expected: list[str | bytes] = []
        for i in range(150):
            expected += [f"b{i}".encode(), f"t{i}"]
        assert got == expected
    finally:
        await client.sio.disconnect()
        await handle.stop()
