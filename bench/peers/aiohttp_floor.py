"""The floor: a raw aiohttp fan-out server with no broker.

The best a Python server can do on this machine for the job rabbitsocks does, so the
figure rabbitsocks is held to (80% of it). It speaks the same client protocol as
rabbitsocks' pubsub on ``/websocket/`` (``{"command":"join","topics":[T]}`` answered by
``{"topic":"@join","payload":[T]}``; messages as ``{"topic":T,"payload":body}``), so the
same load generator drives both. Messages come in over a plain TCP socket instead of AMQP,
one per line, ``topic<TAB>body<LF>``, and each is encoded once (orjson, the RFC 6455 frame
header included) and written with ``transport.write`` to every socket of the topic: no
task, no coroutine, no per-recipient encoding.

    python -m bench.peers.aiohttp_floor --port 8101 --publish-port 8102 [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from typing import Any

import orjson
from aiohttp import WSMsgType, web

_FIN_TEXT = 0x81
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 1 << 16:
        return _PACK_16(_FIN_TEXT, 126, n) + payload
    return _PACK_64(_FIN_TEXT, 127, n) + payload


class Floor:
    def __init__(self) -> None:
        self.topics: dict[str, set[asyncio.Transport]] = {}
        self.messages = 0
        self.deliveries = 0

    def fan_out(self, topic: str, body: str) -> None:
        subs = self.topics.get(topic)
        self.messages += 1
        if not subs:
            return
        frame = text_frame(orjson.dumps({"topic": topic, "payload": body}))
        for transport in subs:
            transport.write(frame)
        self.deliveries += len(subs)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        joined: list[str] = []
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                try:
                    command: Any = orjson.loads(msg.data)
                    topics = [t for t in command["topics"] if isinstance(t, str)]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await ws.send_str('{"topic":"#error","payload":"bad command"}')
                    continue
                if command.get("command") != "join":
                    await ws.send_str('{"topic":"#error","payload":"only join is supported"}')
                    continue
                for topic in topics:
                    self.topics.setdefault(topic, set()).add(transport)
                    joined.append(topic)
                await ws.send_str(orjson.dumps({"topic": "@join", "payload": topics}).decode())
        finally:
            for topic in joined:
                subs = self.topics.get(topic)
                if subs is not None:
                    subs.discard(transport)
                    if not subs:
                        del self.topics[topic]
        return ws


class PublishProtocol(asyncio.Protocol):
    """``topic<TAB>body<LF>`` records from the bench driver."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        fan_out = self.floor.fan_out
        for line in lines:
            topic, _, body = line.partition(b"\t")
            fan_out(topic.decode(), body.decode())


async def serve(host: str, port: int, publish_port: int) -> None:
    floor = Floor()
    loop = asyncio.get_running_loop()
    # The publish port first: the driver takes the WebSocket port answering as ready.
    server = await loop.create_server(lambda: PublishProtocol(floor), host, publish_port)
    app = web.Application()
    app.router.add_get("/websocket/", floor.websocket)
    app.router.add_get("/websocket", floor.websocket)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--publish-port", type=int, required=True)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    factory = None
    if args.loop != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.publish_port))


if __name__ == "__main__":
    main()
