"""``python -m bench.hostile``: a hostile corpus against one ``rabbitsocks serve`` while good
clients count every message.

Starts ``rabbitsocks serve`` with two listeners on RabbitMQ (``callbacks.pubsub`` and
``callbacks.stomp``), connects one well-behaved client per transport (a bare WebSocket,
Socket.IO on long-polling, Socket.IO on WebSocket, STOMP), each subscribed to one topic,
and publishes numbered messages to that topic through RabbitMQ while every attack of the
corpus runs at once, each from an address of its own (127.0.0.10 and up). Then it stops,
waits for the attackers' connections to be gone, and prints:

* whether every good client received every message, in order;
* the server's RSS before, at its peak and after; its open descriptors before and after;
* log lines and bytes written during the run, tracebacks among them;
* seconds from the attackers leaving until the server holds only the good clients.

With ``--baseline DIR`` the same run is made against another checkout (its code, this
virtualenv), in the same invocation: the before and after of a change. It prints figures
and asserts nothing; ``tests/functional/test_*abuse*.py`` are the regression tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import engineio.payload
import socketio
import websockets

from bench.procstat import rss_bytes
from bench.targets import ROOT, free_port, wait_listening

HANDSHAKE_TIMEOUT = 3.0

# --- raw helpers ---------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (RFC 6455 5.2), with a zero mask."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0xFE, n)
    else:
        head = struct.pack("!BBQ", first, 0xFF, n)
    return head + b"\0\0\0\0" + payload


def text(data: str | bytes) -> bytes:
    return frame(0x1, data.encode() if isinstance(data, str) else data)


def upgrade(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


@dataclass
class Ctx:
    port: int
    stomp: int
    deadline: float
    source: str = "127.0.0.10"
    errors: dict[str, int] = field(default_factory=dict)

    def live(self) -> bool:
        return time.monotonic() < self.deadline

    async def open(
        self, data: bytes = b"", port: int | None = None, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((self.source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port or self.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        if data:
            writer.write(data)
        return reader, writer

    async def websocket(
        self, path: str, port: int | None = None, extra: str = "", rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.open(upgrade(path, extra), port, rcvbuf)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if b" 101 " not in head.split(b"\r\n")[0]:
            writer.close()
            raise ConnectionError(head.split(b"\r\n")[0].decode())
        return reader, writer


async def drain_until_closed(reader: asyncio.StreamReader, timeout: float = 3) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass


async def repeat(ctx: Ctx, name: str, step: Callable[[], Awaitable[None]]) -> None:
    while ctx.live():
        try:
            await step()
        except Exception as exc:  # the attacker expects to be refused, cut, reset
            key = f"{name}: {type(exc).__name__}"
            ctx.errors[key] = ctx.errors.get(key, 0) + 1
            await asyncio.sleep(0.01)


# --- the corpus ----------------------------------------------------------------------------

HEADS = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /websocket/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /websocket/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /websocket/ HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /websocket/ HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n",
    b"GET /websocket/?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /websocket/ HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 120 + b"\r\n",
    b"GET /websocket/ HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 20000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
    b"GET /socket.io/?EIO=4&transport=polling&sid=1nosuch HTTP/1.1\r\nHost: x\r\n\r\n",
    upgrade("/socket.io/?EIO=4&transport=websocket&sid="),
    upgrade("/websocket/", "Sec-WebSocket-Version: 8\r\n"),
]


async def http_garbage(ctx: Ctx) -> None:
    async def step() -> None:
        for head in HEADS:
            reader, writer = await ctx.open(head)
            await drain_until_closed(reader, 2)
            writer.close()

    await repeat(ctx, "http garbage", step)


async def slowloris(ctx: Ctx) -> None:
    async def one() -> None:
        reader, writer = await ctx.open()
        for byte in upgrade("/websocket/"):
            writer.write(bytes([byte]))
            await asyncio.sleep(0.5)
            if reader.at_eof() or not ctx.live():
                break
        writer.close()

    async def step() -> None:
        await asyncio.gather(*(one() for _ in range(100)), return_exceptions=True)

    await repeat(ctx, "slowloris", step)


WS_FRAMES = [
    frame(0x1, b'{"command":"join","topics":["\xff"]}'),
    bytes([0x81, 0x02]) + b"hi",  # unmasked
    frame(0x1, b"x", rsv=4),
    frame(0x3, b"x"),
    struct.pack("!BBQ", 0x82, 0xFF, 1 << 63) + b"\0" * 4,
    struct.pack("!BBQ", 0x82, 0xFF, (1 << 63) - 1) + b"\0" * 4,
    frame(0x8, struct.pack("!H", 1005)),
    frame(0x8, b"\x03"),
    frame(0x1, b'{"command":"jo', fin=False) + frame(0x9, b"p") + frame(0x0, b"in}"),
    frame(0x1, b"", fin=False) + frame(0x0, b"", fin=False) * 20000 + frame(0x0, b'"x"'),
    frame(0x1, json.dumps({"command": "join", "topics": ["a" * 300]}).encode()),
    frame(0x1, b"[" * 5000 + b"]" * 5000),
]


async def websocket_protocol(ctx: Ctx) -> None:
    async def step() -> None:
        for junk in WS_FRAMES:
            reader, writer = await ctx.websocket("/websocket/")
            writer.write(junk)
            await drain_until_closed(reader, 2)
            writer.close()

    await repeat(ctx, "websocket frames", step)


async def slow_readers(ctx: Ctx, topic: str) -> None:
    join = json.dumps({"command": "join", "topics": [topic]})

    async def step() -> None:
        held = []
        for _ in range(5):
            _, writer = await ctx.websocket("/websocket/", rcvbuf=4096)
            writer.write(text(join))
            held.append(writer)
            _, sio = await ctx.websocket("/socket.io/?EIO=4&transport=websocket", rcvbuf=4096)
            sio.write(text("40") + text("42" + json.dumps(["message", join])))
            held.append(sio)
        await asyncio.sleep(max(0.0, ctx.deadline - time.monotonic()))
        for writer in held:
            writer.close()

    await repeat(ctx, "slow readers", step)


async def ping_flood(ctx: Ctx) -> None:
    async def step() -> None:
        _, writer = await ctx.websocket("/websocket/", rcvbuf=4096)
        burst = frame(0x9, b"p" * 125) * 1000
        while ctx.live():
            writer.write(burst)
            await writer.drain()
        writer.close()

    await repeat(ctx, "ping flood", step)


async def polling(ctx: Ctx) -> None:
    base = f"http://127.0.0.1:{ctx.port}/socket.io/?EIO=4&transport=polling"
    connector = aiohttp.TCPConnector(local_addr=(ctx.source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def handshake() -> str:
            async with http.get(base) as response:
                body = await response.text()
            return str(json.loads(body[1:])["sid"])

        async def step() -> None:
            sid = await handshake()  # handshake only, never a namespace
            sid = await handshake()
            url = f"{base}&sid={sid}"
            async with http.post(url, data="\x1e".join(["6"] * 64)) as response:
                await response.read()
            # Two probes, and a probe that never sends 5.
            ws_path = f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
            for _ in range(2):
                with contextlib.suppress(Exception):
                    _, writer = await ctx.websocket(ws_path)
                    writer.write(text("2probe"))
            # Overlapping GETs.
            polls = [asyncio.create_task(http.get(url)) for _ in range(2)]
            for task in polls:
                with contextlib.suppress(Exception):
                    (await task).close()
            sid = await handshake()
            url = f"{base}&sid={sid}"
            # A POST that never sends its body, and one that leaves in the middle.
            target = url.removeprefix(f"http://127.0.0.1:{ctx.port}")
            for leave in (False, True):
                _, writer = await ctx.open(
                    f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n40".encode()
                )
                if leave:
                    writer.close()
            sid = await handshake()
            url = f"{base}&sid={sid}"
            async with http.post(url, data="5") as response:  # 5 without a probe
                await response.read()

        await repeat(ctx, "polling", step)


NESTED = "[" * 600 + '{"_placeholder":true,"num":0}' + "]" * 600
SIO_JUNK = [
    [text(f'451-["message",{NESTED}]'), frame(0x2, b"x")],
    [text('4510-["message",{"_placeholder":true,"num":0}]')] + [frame(0x2, b"y" * 60000)] * 9,
    [text('451-["message",{"_placeholder":true,"num":7}]'), frame(0x2, b"x")],
    [text('451-["message",{"_placeholder":true,"num":0}]'), frame(0x2, b"x"), frame(0x2, b"x")],
    [text("42" + json.dumps(["e" * 500_000, 1]))],
    [text("42" + json.dumps(["message", 2**70]))],
    [text("4zz"), text("42[]")],
    [text("5")],
    [text("2probe")],
]


async def socketio_abuse(ctx: Ctx) -> None:
    path = "/socket.io/?EIO=4&transport=websocket"

    async def churn() -> None:
        reader, writer = await ctx.websocket(path)
        writer.write(text("40/a,") + text("41/a,") + text("40/b,"))
        for _ in range(200):
            writer.write(text("40/c,"))
            writer.write(text("41/c,"))
        writer.write(b"".join(text(f'42{10**15 + i}["x"]') for i in range(20000)))  # acks
        await drain_until_closed(reader, 1)
        writer.close()

    async def junk() -> None:
        for frames in SIO_JUNK:
            reader, writer = await ctx.websocket(path)
            writer.write(text("40") + b"".join(frames))
            await drain_until_closed(reader, 2)
            writer.close()

    async def step() -> None:
        await asyncio.gather(churn(), junk())

    await repeat(ctx, "socket.io", step)


async def stomp_abuse(ctx: Ctx) -> None:
    proto = "Sec-WebSocket-Protocol: v12.stomp\r\n"
    connect = text(b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:1,1\n\n\x00")

    async def split() -> None:
        reader, writer = await ctx.websocket("/websocket/", ctx.stomp, proto)
        body = b"a" * 200_000
        data = b"SEND\ndestination:/topic/x\ncontent-length:%d\n\n" % len(body) + body + b"\x00"
        writer.write(connect + b"".join(frame(0x2, data[i : i + 1]) for i in range(len(data))))
        await drain_until_closed(reader, 5)
        writer.close()

    async def floods() -> None:
        reader, writer = await ctx.websocket("/websocket/", ctx.stomp, proto)
        frames = [connect]
        for i in range(300):
            frames.append(text(f"SUBSCRIBE\nid:{i}\ndestination:/topic/f{i}\nreceipt:r{i}\n\n\0"))
            frames.append(text(f"UNSUBSCRIBE\nid:{i}\nreceipt:u{i}\n\n\0"))
        frames.append(text("BEGIN\ntransaction:t\n\n\0"))
        body = b"b" * 100_000
        held = b"SEND\ndestination:/topic/x\ntransaction:t\ncontent-length:100000\n\n" + body
        frames += [frame(0x2, held + b"\0")] * 30
        writer.write(b"".join(frames))
        await drain_until_closed(reader, 5)
        writer.close()

    async def junk() -> None:
        for bad in (b"NOPE\n\n\0", b"SEND\nx\n\n\0", b"CONNECT\naccept-version:9\n\n\0"):
            reader, writer = await ctx.websocket("/websocket/", ctx.stomp, proto)
            writer.write(text(bad))
            await drain_until_closed(reader, 2)
            writer.close()

    async def splits() -> None:
        await asyncio.gather(*(split() for _ in range(4)))

    async def step() -> None:
        await asyncio.gather(splits(), floods(), junk())

    await repeat(ctx, "stomp", step)


# --- the good clients ----------------------------------------------------------------------


@dataclass
class Watcher:
    name: str
    numbers: list[int] = field(default_factory=list)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def got(self, payload: str | bytes) -> None:
        self.numbers.append(int(payload))
        self.progress.set()

    async def until(self, count: int, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.numbers) < count:
                    self.progress.clear()
                    await self.progress.wait()


async def watch_websocket(port: int, topic: str, http: aiohttp.ClientSession) -> Watcher:
    watcher = Watcher("websocket")
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/websocket/", heartbeat=5)
    await ws.send_json({"command": "join", "topics": [topic]})
    assert (await ws.receive_json())["topic"] == "@join"

    async def read() -> None:
        async for msg in ws:
            watcher.got(json.loads(msg.data)["payload"])

    asyncio.get_running_loop().create_task(read())
    return watcher


async def watch_socketio(port: int, topic: str, transport: str) -> Watcher:
    # python-engineio's client refuses a polling answer of more than 16 packets; browsers
    # take any number, and the server answers a poll with everything queued.
    engineio.payload.Payload.max_decode_packets = 1 << 20
    watcher = Watcher(f"socket.io {transport}")
    client = socketio.AsyncClient(reconnection=False)
    joined = asyncio.Event()

    @client.on("message")  # type: ignore[untyped-decorator]
    def message(data: str) -> None:
        frame = json.loads(data)
        if frame["topic"] == "@join":
            joined.set()
        elif frame["topic"] == topic:
            watcher.got(frame["payload"])

    await client.connect(f"http://127.0.0.1:{port}", transports=[transport])
    await client.send(json.dumps({"command": "join", "topics": [topic]}))
    await asyncio.wait_for(joined.wait(), 10)
    return watcher


async def watch_stomp(port: int, topic: str) -> Watcher:
    watcher = Watcher("stomp")
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/websocket/", subprotocols=["v12.stomp"])  # type: ignore[list-item]
    await ws.send("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0")
    assert str(await ws.recv()).startswith("CONNECTED")
    await ws.send(f"SUBSCRIBE\nid:0\ndestination:/topic/{topic}\nreceipt:r\n\n\0")
    assert str(await ws.recv()).startswith("RECEIPT")

    async def read() -> None:
        async for message in ws:
            data = message if isinstance(message, str) else message.decode()
            for frame in data.split("\0"):
                if frame.strip().startswith("MESSAGE"):
                    watcher.got(frame.split("\n\n", 1)[1])

    asyncio.get_running_loop().create_task(read())
    return watcher


# --- one run -------------------------------------------------------------------------------


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def connections(admin: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as r:
        found = re.findall(r"^rabbitsocks_connections\{[^}]*\} (\S+)$", await r.text(), re.M)
    return sum(map(float, found))


ATTACKS: dict[str, Callable[[Ctx], Awaitable[None]]] = {}


def _serve(cwd: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITSOCKS_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rabbitsocks", "serve", "-c", str(config)],
            cwd=cwd, stdout=out, stderr=out, env=env,
        )  # fmt: skip


async def run(
    cwd: Path, amqp: str, seconds: float, rate: float, chosen: list[str]
) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="rs-hostile-"))
    port, stomp, admin = free_port(), free_port(), free_port()
    config = workdir / "hostile.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
        f"    limits: {{handshake_timeout: {HANDSHAKE_TIMEOUT}}}\n"
        "    socketio: {ping_interval: 5, ping_timeout: 5}\n"
        f'  - interface: "127.0.0.1:{stomp}"\n    callback: callbacks.stomp\n'
        f"brokers:\n  amqp: {{url: {json.dumps(amqp)}}}\n"
        f'admin: "127.0.0.1:{admin}"\nlog: {{level: info}}\n'
    )
    log = workdir / "server.log"
    proc = _serve(cwd, config, log)
    try:
        await wait_listening(port, proc, log, 30)
        await wait_listening(stomp, proc, log, 30)
        topic = f"hostile.{os.getpid()}.{random.randrange(1 << 30)}"
        http = aiohttp.ClientSession()
        watchers = [
            await watch_websocket(port, topic, http),
            await watch_socketio(port, topic, "polling"),
            await watch_socketio(port, topic, "websocket"),
            await watch_stomp(stomp, topic),
        ]
        good = await connections(admin)
        rss0, fds0 = rss_bytes(proc.pid), descriptors(proc.pid)
        log0 = log.stat().st_size, log.read_bytes().count(b"\n")
        amqp_conn = await aio_pika.connect(amqp)
        channel = await amqp_conn.channel()
        exchange = await channel.get_exchange("amq.topic")
        ctx = Ctx(port, stomp, time.monotonic() + seconds)
        # The attackers in a process of their own: their CPU must not slow the good
        # clients down (a client that cannot answer its pings in time is not the server's
        # fault).
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.hostile", "--attacker",
            json.dumps([port, stomp, seconds, topic, chosen]), cwd=ROOT,
        )  # fmt: skip
        tasks: list[asyncio.Task[None]] = []
        published, peak = 0, rss0
        payload = b"x" * 1000
        lags: list[float] = []

        async def probe() -> None:  # the event loop's lag, as a request to /health sees it
            async with aiohttp.ClientSession() as admin_http:
                while ctx.live():
                    start = time.monotonic()
                    async with admin_http.get(f"http://127.0.0.1:{admin}/health") as response:
                        await response.read()
                    lags.append(time.monotonic() - start)
                    await asyncio.sleep(0.05)

        tasks.append(asyncio.create_task(probe()))
        while ctx.live():
            await exchange.publish(aio_pika.Message(str(published).encode()), routing_key=topic)
            await exchange.publish(aio_pika.Message(payload), routing_key=topic + ".big")
            published += 1
            peak = max(peak, rss_bytes(proc.pid))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks, return_exceptions=True)
        await attacker.wait()
        left = time.monotonic()
        recovered = None
        while time.monotonic() - left < 60:
            peak = max(peak, rss_bytes(proc.pid))
            if await connections(admin) <= good:
                recovered = time.monotonic() - left
                break
            await asyncio.sleep(0.2)
        for watcher in watchers:
            await watcher.until(published, 30)
        text_log = log.read_bytes()
        result = {
            "published": published,
            "received": {
                w.name: (len(w.numbers), w.numbers == list(range(published))) for w in watchers
            },
            "rss_mb": [round(x / 2**20) for x in (rss0, peak, rss_bytes(proc.pid))],
            "descriptors": [fds0, descriptors(proc.pid)],
            "log_lines": text_log.count(b"\n") - log0[1],
            "log_bytes": len(text_log) - log0[0],
            "tracebacks": text_log.count(b"Traceback"),
            "health_ms": [round(1000 * x) for x in (sorted(lags)[len(lags) // 2], max(lags))]
            if lags
            else None,
            "recovered_s": None if recovered is None else round(recovered, 1),
            "log": str(log),
        }
        await amqp_conn.close()
        await http.close()
        return result
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()


ATTACKS.update(
    {
        "http": http_garbage,
        "slowloris": slowloris,
        "websocket": websocket_protocol,
        "pings": ping_flood,
        "polling": polling,
        "socketio": socketio_abuse,
        "stomp": stomp_abuse,
        "slow-readers": slow_readers,  # type: ignore[dict-item]
    }
)


async def attack(port: int, stomp: int, seconds: float, topic: str, chosen: list[str]) -> None:
    deadline = time.monotonic() + seconds
    errors: dict[str, int] = {}
    tasks: list[Awaitable[None]] = []
    for i, name in enumerate(ATTACKS):
        if name not in chosen:
            continue
        ctx = Ctx(port, stomp, deadline, f"127.0.0.{10 + i}", errors)
        if name == "slow-readers":
            tasks.append(slow_readers(ctx, topic))
        else:
            tasks.append(ATTACKS[name](ctx))
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the corpus runs")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s to the good clients")
    parser.add_argument(
        "--amqp",
        default=os.environ.get("RABBITSOCKS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--baseline", type=Path, help="another checkout, run first")
    parser.add_argument(
        "--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {','.join(ATTACKS)}"
    )
    parser.add_argument("--attacker", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.attacker:
        asyncio.run(attack(*json.loads(args.attacker)))
        return
    runs = [("baseline", args.baseline)] if args.baseline else []
    runs.append(("this", ROOT))
    for name, cwd in runs:
        result = asyncio.run(run(cwd, args.amqp, args.seconds, args.rate, args.attacks.split(",")))
        print(f"== {name} ({cwd})")
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
