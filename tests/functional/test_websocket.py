"""Bare WebSocket on /websocket/<path>: real server on port 0, real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rabbitsocks import ConnectionRefused, Listener, start_listener
from rabbitsocks.config import LimitsConfig, WebSocketConfig
from rabbitsocks.connection import Connection
from rabbitsocks.transports.websocket import WebSocketWire
from tests.support.procfs import wait_until
from tests.support.rawws import OP_PING, RawWebSocket, client_frame
from tests.support.recorder import Recorder, State


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder(subprotocol="rec")


@pytest.fixture
async def listener(recorder: Recorder) -> AsyncIterator[Listener]:
    handle = await start_listener("127.0.0.1:0", recorder, {"k": "v"})
    try:
        yield handle
    finally:
        await handle.stop()


def ws_url(listener: Listener, path: str = "") -> str:
    return f"ws://127.0.0.1:{listener.port}/websocket/{path}"


async def test_path_and_options_reach_init(listener: Listener, recorder: Recorder) -> None:
    async with websockets.connect(ws_url(listener, "rooms/a/b")) as ws:
        await ws.send("path")
        assert await asyncio.wait_for(ws.recv(), 5) == "rooms/a/b"
    assert recorder.inits == [("rooms/a/b", {"k": "v"})]


async def test_empty_path(listener: Listener, recorder: Recorder) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket") as ws:
        await ws.send("path")
        assert await asyncio.wait_for(ws.recv(), 5) == ""


async def test_text_stays_text_and_binary_stays_binary(listener: Listener) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        await ws.send("texte ünïcode")
        assert await asyncio.wait_for(ws.recv(), 5) == "texte ünïcode"
        await ws.send(b"\x00\x01\xfe")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01\xfe"
        big = "x" * 70_000  # a 64-bit length header (RFC 6455 section 5.2)
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), 5) == big


async def test_subprotocol_offered_and_ours_is_echoed(listener: Listener) -> None:
    async with websockets.connect(ws_url(listener), subprotocols=["x", "rec"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "rec"


async def test_no_subprotocol_offered_is_accepted(listener: Listener) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        assert ws.subprotocol is None


async def test_subprotocol_offered_but_not_ours_is_refused(listener: Listener) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(ws_url(listener), protocols=("mqtt", "stomp"))
    assert info.value.status == 400
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(listener), subprotocols=["mqtt"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 400
    assert b"unsupported subprotocol: offered mqtt; this endpoint speaks 'rec'" in (
        refused.value.response.body or b""
    )


async def test_a_callback_speaking_several_subprotocols_gets_its_best_offered_one() -> None:
    # As stomp.js offers "v10.stomp, v11.stomp, v12.stomp": the server picks by its own
    # preference among those offered (RFC 6455 section 4.2.2), and the callback can tell.
    handle = await start_listener("127.0.0.1:0", Recorder(subprotocol=["v12", "v11", "v10"]))
    try:
        async with websockets.connect(ws_url(handle), subprotocols=["v10", "v11"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "v11"
            await ws.send("subprotocol")
            assert await asyncio.wait_for(ws.recv(), 5) == "v11"
        async with websockets.connect(ws_url(handle)) as ws:
            await ws.send("subprotocol")
            assert await asyncio.wait_for(ws.recv(), 5) == "None"
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(ws_url(handle), subprotocols=["v13"])  # type: ignore[list-item]
        assert b"offered v13; this endpoint speaks 'v12', 'v11', 'v10'" in (
            refused.value.response.body or b""
        )
    finally:
        await handle.stop()


async def test_client_ping_is_answered(listener: Listener) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)


async def test_server_pings_and_drops_a_dead_peer() -> None:
    recorder = Recorder()
    handle = await start_listener("127.0.0.1:0", recorder, websocket=WebSocketConfig(heartbeat=0.4))
    try:
        async with aiohttp.ClientSession() as session:
            # autoping off: the client never answers the server's pings, like a dead peer.
            ws = await session.ws_connect(ws_url(handle), autoping=False)
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.PING
            await recorder.wait_terminated(1, timeout=5)
            await ws.close()
    finally:
        await handle.stop()


async def test_a_peer_answering_pings_is_kept() -> None:
    # Pings come from one timer per listener; a peer that answers each one stays, however
    # many intervals go by (one unanswered ping is enough to be dropped, see above).
    recorder = Recorder()
    handle = await start_listener("127.0.0.1:0", recorder, websocket=WebSocketConfig(heartbeat=0.2))
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(ws_url(handle), autoping=False)
            for _ in range(4):
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.PING
                await ws.pong(msg.data)
            await ws.send_str("still here")
            echoed = await ws.receive(timeout=5)
            assert (echoed.type, echoed.data) == (aiohttp.WSMsgType.TEXT, "still here")
            assert recorder.terminated == []
            await ws.close()
    finally:
        await handle.stop()


class BufferGauge(Recorder):
    """On a text frame, records the server's outbound buffer for that connection."""

    def __init__(self) -> None:
        super().__init__()
        self.listener: Listener | None = None
        self.buffered: list[int] = []

    async def handle_frame(self, frame: str | bytes, state: State) -> State:
        assert self.listener is not None
        (conn,) = [
            slot.owner
            for slot in self.listener.gate.registry
            if isinstance(slot.owner, Connection) and slot.owner.state is state
        ]
        assert isinstance(conn.transport, WebSocketWire)
        self.buffered.append(conn.transport.buffered)
        return state


async def test_a_ping_flood_from_a_peer_that_does_not_read_stays_bounded() -> None:
    # Every ping is answered while the peer reads; past the outbound limit pongs are
    # skipped (RFC 6455 5.5.3 lets a peer answer only the latest ping), not buffered.
    limit = 64 * 1024
    gauge = BufferGauge()
    handle = await start_listener(
        "127.0.0.1:0", gauge, limits=LimitsConfig(max_outbound_bytes=limit)
    )
    gauge.listener = handle
    try:
        flooder = await RawWebSocket.connect(handle.port, rcvbuf=4096)
        async with websockets.connect(ws_url(handle)) as bystander:
            pings = client_frame(OP_PING, b"p" * 125) * 1000
            for _ in range(30):  # 30,000 pings: 3.8 MB of pongs, more than kernel buffers
                await flooder.send_raw(pings)
            await flooder.send_text("after the pings")
            await wait_until(lambda: len(gauge.buffered) == 1, 10, "the frame after the pings")
            # The limit, and at most one turn's pongs over it (a turn reads up to 256 KiB).
            assert gauge.buffered[0] <= limit + 256 * 1024, gauge.buffered
            pong = await bystander.ping(b"and me?")
            await asyncio.wait_for(pong, 5)
        flooder.close()
    finally:
        await handle.stop()


async def test_init_refusal_gives_its_status_and_reason() -> None:
    recorder = Recorder(refuse=ConnectionRefused("no entry for you", status=401))
    handle = await start_listener("127.0.0.1:0", recorder)
    try:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ws_url(handle))
        assert info.value.response.status_code == 401
        assert info.value.response.body == b"no entry for you\n"
        assert recorder.terminated == []  # init failed: no terminate
    finally:
        await handle.stop()


async def test_any_init_exception_refuses_with_403() -> None:
    handle = await start_listener("127.0.0.1:0", Recorder(refuse=KeyError("nope")))
    try:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ws_url(handle))
        assert info.value.response.status_code == 403
    finally:
        await handle.stop()


async def test_crash_closes_only_that_connection(listener: Listener, recorder: Recorder) -> None:
    async with websockets.connect(ws_url(listener)) as bystander:
        async with websockets.connect(ws_url(listener)) as victim:
            await victim.send("crash")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(victim.recv(), 5)
            assert victim.close_code == 1011
            assert victim.close_reason == "internal error"
        await recorder.wait_terminated(1)
        await bystander.send("still here")
        assert await asyncio.wait_for(bystander.recv(), 5) == "still here"
    await recorder.wait_terminated(2)
    assert len(recorder.terminated) == 2


async def test_crash_in_open_closes_with_1011() -> None:
    recorder = Recorder(crash_in_open=True)
    handle = await start_listener("127.0.0.1:0", recorder)
    try:
        async with websockets.connect(ws_url(handle)) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1011
        await recorder.wait_terminated(1)
    finally:
        await handle.stop()


async def test_close_code_carried_by_the_exception(listener: Listener) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        await ws.send("close:4321:you asked for it")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (4321, "you asked for it")


async def test_writer_close(listener: Listener, recorder: Recorder) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        await ws.send("bye")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
    await recorder.wait_terminated(1)


async def test_terminate_runs_once_when_the_client_closes(
    listener: Listener, recorder: Recorder
) -> None:
    async with websockets.connect(ws_url(listener)) as ws:
        await ws.send("a")
        await asyncio.wait_for(ws.recv(), 5)
    await recorder.wait_terminated(1)
    assert [s.frames for s in recorder.terminated] == [["a"]]


async def test_terminate_runs_when_the_client_vanishes(
    listener: Listener, recorder: Recorder
) -> None:
    ws = await websockets.connect(ws_url(listener))
    await ws.send("a")
    await asyncio.wait_for(ws.recv(), 5)
    ws.transport.abort()  # no close frame: a dropped TCP connection
    await recorder.wait_terminated(1)


async def test_open_can_send_first(recorder: Recorder) -> None:
    greeter = Recorder(greet="welcome")
    handle = await start_listener("127.0.0.1:0", greeter)
    try:
        async with websockets.connect(ws_url(handle)) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
    finally:
        await handle.stop()


async def test_oversized_frame_closes_with_1009() -> None:
    recorder = Recorder()
    handle = await start_listener(
        "127.0.0.1:0", recorder, websocket=WebSocketConfig(max_frame_size=1000)
    )
    try:
        async with websockets.connect(ws_url(handle)) as ws:
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009
        await recorder.wait_terminated(1)
    finally:
        await handle.stop()


@pytest.mark.parametrize("path", ["/", "/other", "/websocketx", "/socket.iox/"])
async def test_anything_else_is_404(listener: Listener, path: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{listener.port}{path}") as response,
    ):
        assert response.status == 404


async def test_plain_get_on_websocket_path_is_400(listener: Listener) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(ws_url(listener).replace("ws://", "http://")) as response,
    ):
        assert response.status == 400
        assert "expected a WebSocket upgrade" in await response.text()


async def test_stop_closes_clients_with_1001_and_terminates(
    recorder: Recorder,
) -> None:
    handle = await start_listener("127.0.0.1:0", recorder)
    ws = await websockets.connect(ws_url(handle))
    await ws.send("a")
    await asyncio.wait_for(ws.recv(), 5)
    await handle.stop()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert (ws.close_code, ws.close_reason) == (1001, "going away")
    assert len(recorder.terminated) == 1
