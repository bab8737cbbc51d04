"""Races in pubsub's control path: the hub with a broker whose binds wait for the test, and
a connection that goes away while its join is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rabbitsocks import start_listener
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import SocketIOConfig
from rabbitsocks.frames import SharedFrame
from rabbitsocks.pubsub.hub import Hub
from rabbitsocks.pubsub.protocol import encode_delivery, encode_message
from tests.support.procfs import wait_until
from tests.support.pubsub import held_joins


class GatedBroker(MemoryBroker):
    """A memory broker whose ``bind`` waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = asyncio.Event()
        self.binding = asyncio.Event()

    async def bind(self, pattern: str) -> None:
        self.binding.set()
        await self.gate.wait()
        await super().bind(pattern)


class Sink:
    """A subscriber that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []

    def send_shared(self, frame: SharedFrame) -> None:
        self.frames.append(frame.data)


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedBroker, Hub]]:
    broker = GatedBroker()
    hub = Hub(broker)
    await hub.start()
    try:
        yield broker, hub
    finally:
        await hub.close()


async def test_hub_delivers_to_a_joiner_only_once_its_whole_join_is_done(
    gated: tuple[GatedBroker, Hub],
) -> None:
    broker, hub = gated
    early, late = Sink(), Sink()
    early_sub = hub.register(early, encode_delivery)
    late_sub = hub.register(late, encode_delivery)
    broker.gate.set()
    await hub.join(early_sub, ["a"])
    broker.gate.clear()
    join = asyncio.create_task(hub.join(late_sub, ["a", "b"]))  # "a" is bound, "b" waits
    await asyncio.wait_for(broker.binding.wait(), 5)
    await broker.publish("a", b"before the answer")
    broker.gate.set()
    assert (await join).done == ["a", "b"]
    await broker.publish("a", b"after")
    assert early.frames == [
        encode_message("a", b"before the answer"),
        encode_message("a", b"after"),
    ]
    assert late.frames == [encode_message("a", b"after")]


async def test_hub_forgets_a_connection_gone_while_its_join_was_in_flight(
    gated: tuple[GatedBroker, Hub],
) -> None:
    broker, hub = gated
    staying, going = Sink(), Sink()
    staying_sub = hub.register(staying, encode_delivery)
    going_sub = hub.register(going, encode_delivery)
    broker.gate.set()
    await hub.join(staying_sub, ["a"])
    broker.gate.clear()
    broker.binding.clear()
    join = asyncio.create_task(hub.join(going_sub, ["a", "b"]))
    await asyncio.wait_for(broker.binding.wait(), 5)  # "a" is joined, "b" is binding
    await hub.unregister(going_sub)
    broker.gate.set()
    result = await join
    assert result.done == ["a"]
    assert result.refused == {"connection closed": ["b"]}
    await broker.publish("a", b"x")
    await broker.publish("b", b"y")
    assert going.frames == []
    assert staying.frames == [encode_message("a", b"x")]
    assert hub.live_topics == 1
    assert hub.topics_of(going_sub) == frozenset()


async def test_a_socketio_connection_gone_while_its_join_awaits_authorization() -> None:
    # The client stops answering Engine.IO pings while a join waits for its authorization
    # hook: the session ends, and once the join is done terminate leaves everything, so a
    # dead connection does not stay joined (and its topic bound) for ever.
    held_joins.reset()
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        {"join_auth": {"callable": "tests.support.pubsub:held_join_hook"}},
        socketio=SocketIOConfig(ping_interval=0.3, ping_timeout=0.3),
    )
    hub = listener.services.hub()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{listener.port}/socket.io/?EIO=4&transport=websocket"
            eio = await session.ws_connect(url)
            assert (await eio.receive(timeout=5)).data.startswith("0{")  # Engine.IO open
            await eio.send_str("40")  # Socket.IO connect to "/"
            assert (await eio.receive(timeout=5)).data.startswith("40{")
            await eio.send_str('42["message",{"command":"join","topics":["held"]}]')
            await asyncio.wait_for(held_joins.arrived.wait(), 5)
            # Pings go unanswered from now on: the server ends the session. terminate waits
            # for the join in flight (it never runs beside a handle_frame).
            assert listener.engineio is not None
            await wait_until(lambda: not listener.engineio.sessions, 5, "the session to end")
            assert listener.connections == 1
            held_joins.gate.set()
            await asyncio.wait_for(held_joins.released.wait(), 5)
            await wait_until(lambda: not listener.connections, 5, "terminate")
            assert (hub.subscribers, hub.live_topics) == (0, 0)
            await eio.close()
    finally:
        held_joins.gate.set()
        await listener.stop()
