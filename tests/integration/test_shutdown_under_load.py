"""Graceful shutdown under load (issue 5, point 7): a real ``rabbitsocks serve`` on RabbitMQ
with 2,000 bare WebSocket connections and some Socket.IO clients, all joined to topics, gets
SIGTERM: it stops accepting, every client sees 1001 "going away" (Socket.IO: a disconnect),
the process exits 0 within the configured ``shutdown_timeout``, and its queue and bindings
are gone from RabbitMQ.

The bare WebSocket clients are ``RawWebSocket`` (tests/support/rawws.py): a socket and a few
bytes each, so that thousands fit in the test process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import socketio

from tests.support.pubsub import ServeProcess, amqp_url, serve_env, unique
from tests.support.rawws import OP_CLOSE, RawWebSocket

if TYPE_CHECKING:
    from tests.integration.conftest import RabbitAdmin

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

WEBSOCKETS = 2000
SOCKETIO = {"websocket": 15, "polling": 5}
TOPICS = 50
SHUTDOWN_TIMEOUT = 10.0
T = TypeVar("T")


def enough_descriptors(needed: int) -> None:
    """Raise this process's open-file limit (the server, our child, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def bounded(count: int, make: Callable[[int], Awaitable[T]], limit: int = 100) -> list[T]:
    """``make(i)`` for i in range(count), at most ``limit`` at a time, in order."""
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> T:
        async with gate:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def config(path: Path, url: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "listeners": [
                    {
                        "interface": "127.0.0.1:0",
                        "callback": "callbacks.pubsub",
                        "limits": {"max_connections_per_address": 10_000, "connect_burst": 10_000},
                    }
                ],
                "brokers": {"amqp": {"type": "amqp", "url": url}},
                "default_broker": "amqp",
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
                "log": {"level": "warning"},
            }
        )
    )
    return path


async def test_sigterm_with_thousands_of_connections(
    tmp_path: Path, rabbitmq_admin: RabbitAdmin
) -> None:
    enough_descriptors(2 * WEBSOCKETS + 1000)
    prefix = unique("load")
    topics = [f"{prefix}.{i}" for i in range(TOPICS)]
    served = await ServeProcess.start(
        "-c",
        str(config(tmp_path / "load.yaml", amqp_url())),
        "--log-level",
        "info",
        env=serve_env(),
    )
    raws: list[RawWebSocket] = []
    sios: list[socketio.AsyncClient] = []
    try:
        match = await served.wait_for_line(r"broker 'amqp': connected to \S+, queue (\S+)")
        queue = match.group(1)
        port = served.port

        async def open_websocket(i: int) -> RawWebSocket:
            raw = await RawWebSocket.connect(port)
            raws.append(raw)
            topic = topics[i % TOPICS]
            await raw.send_text(json.dumps({"command": "join", "topics": [topic]}))
            assert json.loads((await raw.recv_data()).text) == {
                "topic": "@join",
                "payload": [topic],
            }
            return raw

        await bounded(WEBSOCKETS, open_websocket)
        disconnected = asyncio.Queue[str]()
        for transport, count in SOCKETIO.items():
            for _ in range(count):
                sio = socketio.AsyncClient(reconnection=False)
                sios.append(sio)
                answers = asyncio.Queue[str]()
                sio.on("message", answers.put_nowait)
                sio.on("disconnect", lambda *_, t=transport: disconnected.put_nowait(t))
                await sio.connect(f"http://127.0.0.1:{port}", transports=[transport])
                await sio.send({"command": "join", "topics": topics[:3]})
                answer = json.loads(await asyncio.wait_for(answers.get(), 10))
                assert answer == {"topic": "@join", "payload": topics[:3]}
        assert sorted(await rabbitmq_admin.bindings(queue)) == sorted(topics)

        served.process.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()

        async def closed_with_1001(raw: RawWebSocket) -> None:
            frames, close = await raw.read_to_close(timeout=SHUTDOWN_TIMEOUT + 5)
            assert frames == []
            assert (close.close_code, close.close_reason) == (1001, "going away")
            await raw.send_frame(OP_CLOSE, close.payload[:2])  # as a browser answers
            assert await raw.closed_by_server(SHUTDOWN_TIMEOUT)

        first = asyncio.create_task(closed_with_1001(raws[0]))
        await first
        # Past the first 1001, the listener no longer accepts anything.
        with pytest.raises(ConnectionError):
            await RawWebSocket.connect(port)
        await asyncio.gather(*(closed_with_1001(raw) for raw in raws[1:]))
        async with asyncio.timeout(SHUTDOWN_TIMEOUT + 5):
            gone = sorted([await disconnected.get() for _ in sios])
        assert gone == sorted(t for t, count in SOCKETIO.items() for _ in range(count))

        code = await asyncio.wait_for(served.process.wait(), SHUTDOWN_TIMEOUT + 5)
        exited = time.monotonic() - sigterm
        assert code == 0, "".join(served.log[-20:])
        # Within the configured bound (the server stops waiting for connections at
        # shutdown_timeout; unbinding and closing AMQP come after).
        assert exited < SHUTDOWN_TIMEOUT + 2.0, f"exited {exited:.1f}s after SIGTERM"
        log = "".join(served.log)
        assert "still open after" not in log  # nobody had to be dropped
        assert "stopped" in log

        async def queue_gone() -> bool:
            return await rabbitmq_admin.queue(queue) is None

        await rabbitmq_admin.eventually(queue_gone, what=f"queue {queue} to go")
        assert await rabbitmq_admin.bindings(queue) == []
    finally:
        for raw in raws:
            raw.close()
        for sio in sios:
            await sio.disconnect()
        await served.kill()
