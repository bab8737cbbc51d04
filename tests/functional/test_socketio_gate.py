"""Issue 11: the Socket.IO side door is closed. Every Engine.IO session and every namespace
connection passes the same gate as a bare WebSocket (origin, connection limits, connect
authorization), whatever the query string says; the limits count namespace connections
and handshake-only sessions, which expire; namespaces share one command rate.

The clients are raw: an Engine.IO polling client (tests/support/engineio.py) and a bare
WebSocket, since the attacks are requests no Socket.IO library sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rabbitsocks import Listener, start_listener
from rabbitsocks.config import AuthConfig, HookConfig, JwtConfig, LimitsConfig, SocketIOConfig
from tests.support import hooks
from tests.support.engineio import Poller
from tests.support.procfs import wait_until

SECRET = "test-secret-of-32-bytes-at-least!"
UNKNOWN_SID = {"code": 1, "message": "Session ID unknown"}


@pytest.fixture
async def guarded() -> AsyncIterator[Listener]:
    """pubsub with tokens required and room for 2 connections."""
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        auth=AuthConfig(jwt=JwtConfig(secret=SECRET)),
        limits=LimitsConfig(max_connections=2),
    )
    try:
        yield listener
    finally:
        await listener.stop()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_an_empty_sid_is_an_unknown_session_not_a_new_one(
    guarded: Listener, transport: str
) -> None:
    # python-engineio dropped a blank sid= and opened a new session, while our check saw a
    # sid: no token, no hook, no limit (point 1).
    url = f"127.0.0.1:{guarded.port}/socket.io/?EIO=4&transport={transport}&sid="
    for _ in range(3):  # more than max_connections: none of them may open anything
        if transport == "websocket":
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(f"ws://{url}")
            response = refused.value.response
            assert response.status_code == 400
            assert json.loads(response.body or b"") == UNKNOWN_SID
        else:
            async with Poller(guarded.port, "&sid=") as poller:
                assert await poller.handshake() == (
                    400,
                    json.dumps(UNKNOWN_SID, separators=(",", ":")),
                )
    assert guarded.connections == 0


async def test_every_namespace_passes_the_gate_and_counts() -> None:
    hooks.asked.clear()
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        auth=AuthConfig(connect=HookConfig(callable="tests.support.hooks:namespaces_but_secret")),
        limits=LimitsConfig(max_connections=50, max_connections_per_address=3),
    )
    try:
        async with Poller(listener.port) as poller:
            assert (await poller.handshake())[0] == 200
            assert listener.connections == 1  # the session, before any namespace
            assert (await poller.connect("/")).startswith("40{")
            assert listener.connections == 1  # "/" took over the session's slot
            assert (await poller.connect("/secret")) == '44/secret,{"message":"not this one"}'
            assert (await poller.connect("/a")).startswith("40/a,{")
            assert (await poller.connect("/b")).startswith("40/b,{")
            assert listener.connections == 3
            refused = await poller.connect("/c")
            assert refused == '44/c,{"message":"too many connections from your address"}'
            # The hook saw the handshake, then every namespace by name.
            assert hooks.asked == [None, "/", "/secret", "/a", "/b"]
            # Leaving a namespace frees its slot.
            assert (await poller.post("41/a,"))[0] == 200
            await wait_until(lambda: listener.connections == 2, 5, "the namespace to end")
            assert (await poller.connect("/c")).startswith("40/c,{")
            # The same namespace twice is refused, not counted twice.
            assert (await poller.connect("/c")) == '44/c,{"message":"already connected"}'
            assert listener.connections == 3
    finally:
        await listener.stop()


async def test_namespaces_of_one_session_share_its_command_rate() -> None:
    listener = await start_listener("127.0.0.1:0", "callbacks.pubsub", {"rate": 0.01, "burst": 2})
    try:
        async with Poller(listener.port) as poller:
            await poller.handshake()
            await poller.connect("/")
            await poller.connect("/other")
            join = json.dumps({"command": "join", "topics": ["t"]})
            await poller.send(join)
            await poller.send(join, "/other")
            await poller.send(join, "/other")  # the third command of the session
            answers = []
            while len(answers) < 3:
                answers += [p for p in await poller.poll() if p.startswith("42")]
            topics = [json.loads(json.loads(p[p.index("[") :])[1])["topic"] for p in answers]
            assert topics == ["@join", "@join", "#error"]
    finally:
        await listener.stop()


async def test_sessions_without_a_namespace_count_and_expire() -> None:
    # Point 5: 40,000 handshakes from one address held 190 MB for ever.
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        limits=LimitsConfig(max_connections_per_address=3, handshake_timeout=0.5),
        socketio=SocketIOConfig(ping_interval=0.2, ping_timeout=0.2),
    )
    pollers = [Poller(listener.port) for _ in range(4)]
    try:
        statuses = [(await p.handshake())[0] for p in pollers]
        assert statuses == [200, 200, 200, 503]
        assert listener.connections == 3
        await wait_until(lambda: listener.connections == 0, 5, "the idle sessions to expire")
        assert (await pollers[3].handshake())[0] == 200
    finally:
        for poller in pollers:
            await poller.close()
        await listener.stop()


async def test_connecting_in_a_loop_is_limited_per_address() -> None:
    # Red team: connect/disconnect churn reached 3,900 namespace connections a second on
    # one TCP connection (7,800 log lines a second), bounded only by concurrent counts.
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        limits=LimitsConfig(connect_rate=0.001, connect_burst=5),
    )
    try:
        async with Poller(listener.port) as poller:
            assert (await poller.handshake())[0] == 200  # 1 of 5
            assert (await poller.connect("/")).startswith("40{")  # the session's slot
            for _ in range(4):  # 2 to 5 of 5, each leaving again at once
                assert (await poller.connect("/churn")).startswith("40/churn,{")
                assert (await poller.post("41/churn,"))[0] == 200
                await wait_until(lambda: listener.connections == 1, 5, "the namespace to go")
            refused = await poller.connect("/churn")
            assert (
                refused == '44/churn,{"message":"too many connections from your address too fast"}'
            )
        with pytest.raises(InvalidStatus) as limited:
            await websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/")
        assert limited.value.response.status_code == 503
        assert limited.value.response.headers["Retry-After"] == "1"
    finally:
        await listener.stop()
