"""python-socketio with ``AsyncAioPikaManager``, bridging ``amq.topic`` into rooms.

Written the way a Python user would today, following python-socketio's documentation:
an ``AsyncServer`` on aiohttp whose client manager is ``AsyncAioPikaManager`` (so several
server processes share rooms through RabbitMQ), clients that join rooms with a ``message``
event, and an aio-pika consumer that turns each ``amq.topic`` message into
``sio.emit("message", ..., room=routing_key)``. That emit goes to the local room members
(python-socketio's manager: one task per recipient) and is published to the manager's
fanout exchange for the other server processes.

The client protocol is rabbitsocks' Socket.IO one, so one load generator drives both: the
client sends ``message`` with ``{"command":"join","topics":[T]}``, the server answers
``message`` ``{"topic":"@join","payload":[T]}`` and then sends ``{"topic":T,"payload":body}``.

    python -m bench.peers.socketio_aiopika --port 8103 --amqp-url amqp://guest:guest@127.0.0.1/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

import aio_pika
import socketio
from aiohttp import web


async def serve(host: str, port: int, amqp_url: str, channel: str) -> None:
    mgr = socketio.AsyncAioPikaManager(amqp_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    connection = await aio_pika.connect_robust(amqp_url)
    amqp_channel = await connection.channel()
    exchange = await amqp_channel.get_exchange("amq.topic")
    queue = await amqp_channel.declare_queue(exclusive=True, auto_delete=True)
    bound: set[str] = set()

    async def message(sid: str, data: str) -> None:
        command = json.loads(data)
        topics = command["topics"]
        for topic in topics:
            await sio.enter_room(sid, topic)
            if topic not in bound:
                bound.add(topic)
                await queue.bind(exchange, routing_key=topic)
        await sio.emit("message", json.dumps({"topic": "@join", "payload": topics}), to=sid)

    sio.on("message", message)

    async def on_amqp(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with msg.process():
            topic = msg.routing_key or ""
            text = json.dumps({"topic": topic, "payload": msg.body.decode()})
            await sio.emit("message", text, room=topic)

    await queue.consume(on_amqp)

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await connection.close()
    await sio.shutdown()
    await runner.cleanup()


class _WithDetail(logging.Formatter):
    """python-socketio puts the RabbitMQ error in ``extra``, not in the message."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        detail = getattr(record, "rabbitmq_exception", None)
        return f"{text} ({detail})" if detail else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--channel",
        default="rabbitsocks-bench-socketio",
        help="AsyncAioPikaManager's fanout exchange (python-socketio's default is 'socketio')",
    )
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.setFormatter(_WithDetail("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    factory = None
    if args.loop != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.amqp_url, args.channel))


if __name__ == "__main__":
    main()
