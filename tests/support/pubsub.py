"""Helpers for the pubsub tests: one client interface over both transports, a bridge (a
pubsub listener on a memory or RabbitMQ broker) with a publisher that is independent of it,
``rabbitsocks serve`` processes, the frames that are not commands (``BAD_FRAMES``, shared
with the check of docs/protocol.md), and a join hook that holds joins for race tests.

Nothing here sleeps to synchronise: frames are awaited from queues with a timeout, and
"nothing else arrived" is shown with a sentinel message published last (a broker keeps a
queue's order, and a connection its frames' order, so once the sentinel is read, anything
routed before it would have been read first).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import pytest
import socketio

from rabbitsocks import Listener, start_listener
from rabbitsocks.brokers.amqp import AmqpBroker
from rabbitsocks.brokers.base import Broker
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import LimitsConfig
from rabbitsocks.services import Services

# One record of the ports handed out in this process, for the private nodes and the rest.
from tests.support.rabbitmq import free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Seconds any single expected event may take.
WAIT = 5.0

Transport = Literal["websocket", "socketio"]
BrokerKind = Literal["memory", "amqp"]
TRANSPORTS: tuple[Transport, ...] = ("websocket", "socketio")
BROKERS: tuple[BrokerKind, ...] = ("memory", "amqp")

Frame = dict[str, Any]


def unique(prefix: str = "rs") -> str:
    """A routing-key word of this test's own: amq.topic is shared by every test run."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def amqp_url() -> str:
    """The test RabbitMQ's AMQP URL; fails (never skips) when nothing listens there."""
    url = os.environ.get("RABBITSOCKS_AMQP_URL", DEFAULT_AMQP_URL)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {host}:{port} ({exc}); start it first")
    return url


# --- frames that are not commands -----------------------------------------------------------

#: (what, frame: a command object, text, or bytes for a binary frame, the #error reason)
BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("malformed JSON", '{"command":"join","topics":["a"]', "frame is not valid JSON"),
    ("empty frame", "", "frame is not valid JSON"),
    ("single quotes", "{'command':'join'}", "frame is not valid JSON"),
    ("trailing garbage", '{"command":"join","topics":[]} x', "frame is not valid JSON"),
    ("array", "[1,2]", "frame is not a JSON object"),
    ("string", '"join"', "frame is not a JSON object"),
    ("null", "null", "frame is not a JSON object"),
    ("number", "42", "frame is not a JSON object"),
    ("no command", {"topics": ["a"]}, "missing command"),
    ("command null", {"command": None, "topics": []}, "missing command"),
    ("command not a string", {"command": 1, "topics": []}, "command is not a string"),
    ("unknown command", {"command": "subscribe", "topics": ["a"]}, "unknown command 'subscribe'"),
    ("publish", {"command": "publish", "topics": ["a"]}, "unknown command 'publish'"),
    ("commands are case-sensitive", {"command": "JOIN", "topics": []}, "unknown command 'JOIN'"),
    ("no topics", {"command": "join"}, "missing topics"),
    ("topics a string", {"command": "join", "topics": "a"}, "topics is not a list"),
    ("topics an object", {"command": "leave", "topics": {"a": 1}}, "topics is not a list"),
    ("topic a number", {"command": "join", "topics": ["a", 1]}, "topics must be strings"),
    ("topic null", {"command": "join", "topics": [None]}, "topics must be strings"),
    ("broker a number", {"command": "join", "topics": [], "broker": 1}, "broker is not a string"),
    (
        "payload an object",
        {"command": "join", "topics": [], "payload": {}},
        "payload is not a string",
    ),
    (
        "too many topics",
        {"command": "join", "topics": [f"t{i}" for i in range(1001)]},
        "too many topics in one command (max 1000)",
    ),
    (
        "since not an object",
        {"command": "join", "topics": ["a"], "since": ["a"]},
        "since is not an object",
    ),
    (
        "since names another topic",
        {"command": "join", "topics": ["a"], "since": {"b": {"offset": 1, "epoch": "e"}}},
        "since names a topic that is not in topics",
    ),
    ("binary garbage", b"\x00\x01garbage", "frame is not valid JSON"),
    ("binary invalid UTF-8", b'{"command":"join","topics":["\xff"]}', "frame is not valid UTF-8"),
    ("binary truncated UTF-8", b"\xc3", "frame is not valid UTF-8"),
]


# --- clients ------------------------------------------------------------------------------


class PubSubClient:
    """A pubsub client over one transport: frames out, JSON frames in, in order."""

    transport: Transport

    async def send_command(self, command: Any) -> None:
        """Send a command object (JSON text over WebSocket, an object over Socket.IO)."""
        raise NotImplementedError

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def send_binary(self, data: bytes) -> None:
        raise NotImplementedError

    async def next_text(self, timeout: float = WAIT) -> str:
        """The next frame from the server, which must be text."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def next(self, timeout: float = WAIT) -> Frame:
        """The next frame, parsed; it must be a JSON object."""
        text = await self.next_text(timeout)
        frame = json.loads(text)
        assert isinstance(frame, dict), text
        return frame

    async def expect(self, *frames: Frame) -> None:
        """The next frames are exactly ``frames``, in order."""
        got = [await self.next() for _ in frames]
        assert got == list(frames)

    async def command(
        self, command: str, topics: Sequence[str], broker: str | None = None, answers: int = 1
    ) -> list[Frame]:
        """Send a join or leave and return its ``answers`` answer frames."""
        body: dict[str, Any] = {"command": command, "topics": list(topics)}
        if broker is not None:
            body["broker"] = broker
        await self.send_command(body)
        return [await self.next() for _ in range(answers)]

    async def join(self, *topics: str, broker: str | None = None) -> None:
        """Join ``topics``, which must all be accepted."""
        assert await self.command("join", topics, broker) == [
            {"topic": "@join", "payload": list(topics)}
        ]

    async def leave(self, *topics: str, broker: str | None = None) -> None:
        """Leave ``topics``, which must all be left."""
        assert await self.command("leave", topics, broker) == [
            {"topic": "@leave", "payload": list(topics)}
        ]


class WebSocketClient(PubSubClient):
    """aiohttp's WebSocket client on ``/websocket/<path>``."""

    transport: Transport = "websocket"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, port: int, path: str = ""
    ) -> WebSocketClient:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/websocket/{path}", autoping=True)
        return cls(ws)

    async def send_command(self, command: Any) -> None:
        await self.ws.send_str(json.dumps(command))

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def next_text(self, timeout: float = WAIT) -> str:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        assert isinstance(msg.data, str)
        return msg.data

    async def close(self) -> None:
        await self.ws.close()


class SocketIOClient(PubSubClient):
    """python-socketio's ``AsyncClient``; frames are ``message`` events."""

    transport: Transport = "socketio"

    def __init__(self, namespace: str = "/") -> None:
        self.namespace = namespace
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.sio.on("message", self.messages.put_nowait, namespace=namespace)
        self.sio.on("disconnect", lambda *args: self.disconnected.set(), namespace=namespace)

    @classmethod
    async def connect(
        cls, port: int, path: str = "", transports: Sequence[str] = ("websocket",)
    ) -> SocketIOClient:
        client = cls("/" + path)
        await client.sio.connect(
            f"http://127.0.0.1:{port}",
            transports=list(transports),
            namespaces=[client.namespace],
            wait_timeout=WAIT,
        )
        return client

    async def send_command(self, command: Any) -> None:
        # Socket.IO carries objects: the server reads them as their JSON text.
        await self.sio.send(command, namespace=self.namespace)

    async def send_text(self, text: str) -> None:
        await self.sio.send(text, namespace=self.namespace)

    async def send_binary(self, data: bytes) -> None:
        await self.sio.send(data, namespace=self.namespace)

    async def next_text(self, timeout: float = WAIT) -> str:
        data = await asyncio.wait_for(self.messages.get(), timeout)
        assert isinstance(data, str), data
        return data

    async def close(self) -> None:
        await self.sio.disconnect()


class Clients:
    """Opens clients of either transport to one port and closes them all at the end."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.opened: list[PubSubClient] = []

    async def connect(self, transport: Transport, port: int, path: str = "") -> PubSubClient:
        client: PubSubClient
        if transport == "websocket":
            client = await WebSocketClient.connect(self.session, port, path)
        else:
            client = await SocketIOClient.connect(port, path)
        self.opened.append(client)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.opened), return_exceptions=True)


@contextlib.asynccontextmanager
async def client_pool() -> AsyncIterator[Clients]:
    # limit=0: WebSocket connections stay checked out of the pool for their whole life.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = Clients(session)
        try:
            yield clients
        finally:
            await clients.close()


# --- publishers ---------------------------------------------------------------------------


class AmqpPublisher:
    """An AMQP producer of its own (aio-pika, publisher confirms) on amq.topic: when
    ``publish`` returns, RabbitMQ has routed the message to every bound queue."""

    def __init__(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        self.connection = connection
        self.channel: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    async def open(cls, url: str) -> AmqpPublisher:
        publisher = cls(await aio_pika.connect_robust(url))
        publisher.channel = await publisher.connection.channel(publisher_confirms=True)
        return publisher

    async def publish(self, routing_key: str, body: bytes) -> None:
        assert self.channel is not None
        exchange = await self.channel.get_exchange("amq.topic", ensure=False)
        await exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    async def close(self) -> None:
        await self.connection.close()


_PIKA_PUBLISHER = """
import base64, json, sys
import pika

url, exchange, messages = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
for routing_key, body in messages:
    # pika sends a bytes routing key as is: producers need not send UTF-8.
    channel.basic_publish(exchange, base64.b64decode(routing_key), base64.b64decode(body))
connection.close()
"""


async def pika_publish_in_subprocess(
    url: str, messages: Sequence[tuple[str | bytes, bytes]], exchange: str = "amq.topic"
) -> None:
    """Publish ``messages`` (routing key, body) from another process with a plain blocking
    pika publisher (confirm mode: every message is routed when the process exits 0)."""

    def b64(data: str | bytes) -> str:
        return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()

    payload = json.dumps([[b64(key), b64(body)] for key, body in messages])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PIKA_PUBLISHER,
        url,
        exchange,
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(payload.encode()), 30)
    assert process.returncode == 0, err.decode()


# --- a bridge: listener + broker + independent publisher ------------------------------------


@dataclass
class Bridge:
    """A pubsub listener on ``services``, whose default broker is ``kind``."""

    kind: BrokerKind
    services: Services
    listener: Listener
    publisher: AmqpPublisher | None = None
    extra: list[Listener] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def broker(self) -> Broker:
        return self.services.brokers[self.kind]

    async def publish(self, routing_key: str, body: bytes) -> None:
        """Publish as a producer outside the bridge would: an AMQP client of its own for
        RabbitMQ, the broker's ``publish`` for the in-process memory broker."""
        if self.publisher is not None:
            await self.publisher.publish(routing_key, body)
        else:
            await self.broker.publish(routing_key, body)

    async def add_listener(self, options: dict[str, Any]) -> Listener:
        """Another pubsub listener, with ``options``, on the same brokers."""
        listener = await start_listener(
            "127.0.0.1:0", "callbacks.pubsub", options, services=self.services
        )
        self.extra.append(listener)
        return listener


async def until_connected(broker: Broker, timeout: float = 15.0) -> None:
    """Until ``broker`` is connected. A RabbitMQ that another test just restarted accepts
    TCP connections a little before it accepts AMQP sessions, and the broker then retries
    by itself; it tells only its hub, so its public ``connected`` is polled, briefly."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not broker.connected:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"broker {broker.name} did not connect within {timeout:g}s")
        await asyncio.sleep(0.05)


def make_services(kind: BrokerKind, url: str | None = None, **amqp: Any) -> Services:
    """``memory`` always, plus an ``amqp`` broker (the default) when ``kind`` is amqp."""
    brokers: dict[str, Broker] = {"memory": MemoryBroker("memory")}
    if kind == "amqp":
        amqp.setdefault("url", url or amqp_url())
        brokers["amqp"] = AmqpBroker("amqp", **amqp)
    return Services(brokers=brokers, default_broker=kind)


@contextlib.asynccontextmanager
async def bridge(
    kind: BrokerKind,
    options: dict[str, Any] | None = None,
    *,
    urls: Sequence[str] | None = None,
    publish_to: str | None = None,
    **amqp: Any,
) -> AsyncIterator[Bridge]:
    """A pubsub listener on ``kind``; ``urls`` (RabbitMQ nodes, a private cluster's, or a
    relay the test cuts) instead of the test RabbitMQ. The bridge's own publisher uses
    ``publish_to``, else the first URL."""
    url = (urls[0] if urls else amqp_url()) if kind == "amqp" else None
    if urls:
        services = make_services(kind, **amqp, url=list(urls))
    else:
        services = make_services(kind, url, **amqp)
    direct = publish_to or url
    await services.start()
    listener: Listener | None = None
    handle: Bridge | None = None
    try:
        await until_connected(services.hub().broker)
        # Every test client connects from 127.0.0.1, a thousand of them at once in some
        # tests: past the default connection rate of one address.
        listener = await start_listener(
            "127.0.0.1:0",
            "callbacks.pubsub",
            options or {},
            services=services,
            limits=LimitsConfig(connect_burst=20_000),
        )
        handle = Bridge(kind, services, listener)
        if direct is not None:
            handle.publisher = await AmqpPublisher.open(direct)
        yield handle
    finally:
        if handle is not None:
            for extra in handle.extra:
                await extra.stop()
            if handle.publisher is not None:
                await handle.publisher.close()
        if listener is not None:
            await listener.stop()
        await services.close()


# --- rabbitsocks serve in a process of its own ------------------------------------------------


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a server process: ours, minus any RABBITSOCKS_* setting."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RABBITSOCKS_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(extra)
    return environ


async def run_cli(
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, str, str]:
    """``python -m rabbitsocks ARGS`` run to its end, with ``input`` on its stdin (else ours)
    and ``env`` (else ``serve_env()``): its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        *args,
        stdin=None if input is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env() if env is None else env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(input), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class ServeProcess:
    """``python -m rabbitsocks serve``, its stderr drained in the background (a full pipe
    would block the server) and searched for lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[str] = []
        self._new_line = asyncio.Event()
        self._eof = False
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    @classmethod
    async def start(
        cls, *args: str, env: dict[str, str] | None = None, amqp: bool = True
    ) -> ServeProcess:
        """Start it and wait until it listens and, with ``amqp``, until its broker ``amqp``
        is connected (it may start before RabbitMQ accepts it, and then retries by itself;
        the log line is the only outside sign of it)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rabbitsocks",
            "serve",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env or serve_env(),
            cwd=ROOT,
        )
        served = cls(process)
        try:
            match = await served.wait_for_line(r"listening on ws://127\.0\.0\.1:(\d+)/websocket/")
            if amqp:
                await served.wait_for_line(r"broker 'amqp': connected to ")
        except BaseException:
            await served.kill()
            raise
        served.port = int(match.group(1))
        return served

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode(errors="replace"))
            self._new_line.set()
        self._eof = True
        self._new_line.set()

    async def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first log line (old or new) matching ``pattern``."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.log[seen:]:
                    if match := re.search(pattern, line):
                        return match
                seen = len(self.log)
                if self._eof:
                    raise AssertionError("the server exited:\n" + "".join(self.log))
                self._new_line.clear()
                await self._new_line.wait()

    async def kill(self) -> None:
        """SIGKILL: no Connection.Close, no cleanup of any kind."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
        await self.kill()


def amqp_config(path: Path, url: str) -> Path:
    """A one-listener pubsub configuration on port 0 with an ``amqp`` broker as default."""
    path.write_text(
        "listeners:\n"
        '  - interface: "127.0.0.1:0"\n'
        "    callback: callbacks.pubsub\n"
        "brokers:\n"
        "  amqp:\n"
        "    type: amqp\n"
        f"    url: {json.dumps(url)}\n"
        "default_broker: amqp\n"
    )
    return path


# --- a join hook that holds joins until the test lets them through --------------------------


@dataclass
class HeldJoins:
    """State of ``held_join_hook``; a test calls ``reset`` first (events bind to a loop)."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.released = asyncio.Event()


held_joins = HeldJoins()


async def held_join_hook(topics: list[str], connection: object) -> bool:
    """A join authorization hook (``tests.support.pubsub:held_join_hook``) that allows
    every topic, once the test opens ``held_joins.gate``."""
    held_joins.arrived.set()
    await held_joins.gate.wait()
    held_joins.released.set()
    return True
