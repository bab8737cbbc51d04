"""``python -m bench.flaky``: clients on a flaky network, with and without resume.

The run of issue 15. Two ``rabbitsocks serve`` processes share one RabbitMQ; their broker
keeps history for ``flaky.#`` (a stream of this run's own, deleted at the end). N clients
(half bare WebSocket, half Socket.IO on the websocket transport) join one topic. Each
stays connected for 1 to 3 s (uniformly at random), drops its connection, stays away for
``--offline-min`` to ``--offline-max`` s, and reconnects to one of the two processes at
random. pika, in a process of its own, publishes ``--rate`` sequence-numbered messages a
second for ``--duration`` s, with publisher confirms. When the publisher is done, every
client connects once more and reads until it has the last message (or ``--drain`` s).

The same run is made twice, in one invocation:

- **resume**: the topic is covered by history; a client rejoins with ``since``, the last
  position it received, and counts the ``@resume`` answers;
- **no resume**: the topic has no history (what clients get today); a client just joins
  again, and what was published while it was away is lost to it.

For each run it prints, over all clients: messages expected and received, lost,
duplicated and out of order, clients with every message exactly once in order, resumes
and how many were recovered, the time from connecting to the answer, and the servers'
reads of RabbitMQ for history (from /metrics). It asserts nothing; it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procstat import cpu_seconds, rss_bytes
from bench.targets import ROOT, free_port, wait_listening

PUBLISHER = """
import sys, time, pika
url, topic, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
count = int(rate * duration)
start = time.monotonic()
for seq in range(count):
    delay = start + seq / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    channel.basic_publish("amq.topic", topic, str(seq).encode())
connection.close()
print(count, flush=True)
"""


@dataclass
class Client:
    index: int
    transport: str
    seqs: list[int] = field(default_factory=list)
    last: tuple[str, int] | None = None
    resumes: int = 0
    recovered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)
    connects: int = 0
    errors: int = 0


class Wire(asyncio.Protocol):
    """A bare WebSocket, or Socket.IO on the websocket transport, with as little work per
    frame as a client can do (a zero mask, frames parsed in place): on a 2-core machine
    the clients of python-socketio cost more CPU than the two servers, and fell behind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/websocket/" if self.kind == "ws" else "/socket.io/?EIO=4&transport=websocket"
        transport.write(  # type: ignore[attr-defined]
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.frames.put_nowait(None)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before it was ready"))

    def write(self, text: str, opcode: int = 0x1) -> None:
        payload = text.encode()
        n = len(payload)
        head = bytes([0x80 | opcode, 0x80 | n]) if n < 126 else bytes([0x80 | opcode, 0xFE])
        if n >= 126:
            head += n.to_bytes(2, "big")
        # A zero mask is a mask (RFC 6455 5.3 wants unpredictable ones from browsers).
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + payload)

    def send(self, command: dict[str, Any]) -> None:
        text = json.dumps(command)
        self.write(text if self.kind == "ws" else "42" + json.dumps(["message", text]))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            buffer = buffer[end + 4 :]
            self.upgraded = True
            if self.kind == "ws" and not self.ready.done():
                self.ready.set_result(None)
        start = 0
        while len(buffer) - start >= 2:
            length = buffer[start + 1] & 0x7F
            header = 2
            if length == 126:
                header = 4
                if len(buffer) - start < 4:
                    break
                length = int.from_bytes(buffer[start + 2 : start + 4], "big")
            elif length == 127:
                header = 10
                if len(buffer) - start < 10:
                    break
                length = int.from_bytes(buffer[start + 2 : start + 10], "big")
            if len(buffer) - start < header + length:
                break
            opcode = buffer[start] & 0x0F
            payload = buffer[start + header : start + header + length]
            start += header + length
            if opcode == 0x9:
                self.write(payload.decode(), 0xA)
            elif opcode == 0x1:
                self.text(payload.decode())
        self.buffer = buffer[start:]

    def text(self, text: str) -> None:
        if self.kind == "ws":
            self.frames.put_nowait(json.loads(text))
        elif text.startswith("42"):
            event = json.loads(text[2:])
            if event[0] == "message":
                self.frames.put_nowait(json.loads(event[1]))
        elif text == "2":
            self.write("3")  # Engine.IO pong
        elif text.startswith("0"):
            self.write("40")  # connect the / namespace
        elif text.startswith("40") and not self.ready.done():
            self.ready.set_result(None)

    def drop(self) -> None:
        """A network drop: no closing handshake, the server finds out from TCP."""
        if self.transport is not None:
            self.transport.abort()


async def open_wire(kind: str, port: int) -> Wire:
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(lambda: Wire(kind), "127.0.0.1", port)
    try:
        await asyncio.wait_for(wire.ready, 10)
    except BaseException:
        wire.drop()
        raise
    return wire


async def session(
    client: Client,
    ports: list[int],
    topic: str,
    resume: bool,
    until: float,
    stop: asyncio.Event,
    last_seq: int,
) -> None:
    """Connect, join (with the last position), read until ``until``, ``stop`` or the last
    message, drop."""
    port = random.choice(ports)
    conn = await open_wire(client.transport, port)
    client.connects += 1
    try:
        command: dict[str, Any] = {"command": "join", "topics": [topic]}
        if resume and client.last is not None:
            epoch, offset = client.last
            command["since"] = {topic: {"offset": offset, "epoch": epoch}}
        sent = time.monotonic()
        conn.send(command)
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0 or stop.is_set():
                return
            try:
                frame = await asyncio.wait_for(conn.frames.get(), min(remaining, 0.5))
            except TimeoutError:
                continue
            if frame is None:
                raise ConnectionError("the server closed the connection")
            name = frame["topic"]
            if name == "@join":
                if "since" not in command:
                    client.answer_ms.append((time.monotonic() - sent) * 1000)
                for position in frame.get("positions", {}).values():
                    # Where the log stood: ours until a message (not recovered: replaced).
                    client.last = (position["epoch"], position["offset"])
            elif name == "@resume":
                client.answer_ms.append((time.monotonic() - sent) * 1000)
                client.resumes += 1
                if frame["recovered"]:
                    client.recovered += 1
                else:
                    reason = frame.get("reason", "?")
                    client.reasons[reason] = client.reasons.get(reason, 0) + 1
            elif name.startswith(("@", "#")):
                client.reasons[name] = client.reasons.get(name, 0) + 1
            else:
                client.seqs.append(int(frame["payload"]))
                if "offset" in frame:
                    client.last = (frame["epoch"], frame["offset"])
                if stop.is_set() or client.seqs[-1] == last_seq:
                    return
    finally:
        conn.drop()


async def run_client(
    client: Client,
    ports: list[int],
    topic: str,
    resume: bool,
    published: asyncio.Event,
    last_seq: int,
    args: argparse.Namespace,
) -> None:
    while not published.is_set():
        online = time.monotonic() + random.uniform(1, 3)
        try:
            await session(client, ports, topic, resume, online, published, last_seq)
        except Exception:
            client.errors += 1
        if not published.is_set():
            await asyncio.sleep(random.uniform(args.offline_min, args.offline_max))
    # The publisher is done: one last connection, until the last message or the drain.
    # Without resume, what a client missed never comes: a moment for frames in flight.
    deadline = time.monotonic() + (args.drain if resume else 2.0)
    while (not client.seqs or client.seqs[-1] != last_seq) and time.monotonic() < deadline:
        try:
            await session(client, ports, topic, resume, deadline, asyncio.Event(), last_seq)
        except Exception:
            client.errors += 1


def tally(clients: list[Client], count: int) -> dict[str, Any]:
    expected = list(range(count))
    lost = dupes = disorder = complete = 0
    for c in clients:
        got = set(c.seqs)
        lost += count - len(got & set(expected))
        dupes += len(c.seqs) - len(got)
        disorder += sum(1 for a, b in zip(c.seqs, c.seqs[1:], strict=False) if b <= a)
        complete += c.seqs == expected
    incomplete: list[dict[str, Any]] = []
    for c in clients:
        if c.seqs != expected and len(incomplete) < 5:
            missing = sorted(set(expected) - set(c.seqs))
            spans: list[list[int]] = []
            for m in missing:
                if spans and spans[-1][1] == m - 1:
                    spans[-1][1] = m
                else:
                    spans.append([m, m])
            incomplete.append({"client": c.index, "transport": c.transport, "missing": spans})
    answers = sorted(ms for c in clients for ms in c.answer_ms)
    reasons: dict[str, int] = {}
    for c in clients:
        for reason, n in c.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        "clients": len(clients),
        "expected": count * len(clients),
        "received": sum(len(c.seqs) for c in clients),
        "lost": lost,
        "duplicates": dupes,
        "out_of_order": disorder,
        "complete_clients": complete,
        "connections": sum(c.connects for c in clients),
        "resumes": sum(c.resumes for c in clients),
        "recovered": sum(c.recovered for c in clients),
        "not_recovered": reasons,
        "client_errors": sum(c.errors for c in clients),
        "incomplete_examples": incomplete,
        "answer_ms_p50": statistics.median(answers) if answers else None,
        "answer_ms_p99": answers[int(len(answers) * 0.99)] if answers else None,
        "answer_ms_max": answers[-1] if answers else None,
    }


def config_text(port: int, admin: int, url: str, stream: str, connections: int = 1000) -> str:
    return (
        "listeners:\n"
        f'  - interface: "127.0.0.1:{port}"\n'
        "    callback: callbacks.pubsub\n"
        # Every client comes from 127.0.0.1.
        f"    limits:\n      max_connections_per_address: {connections}\n"
        "    socketio:\n      transports: [websocket]\n"
        f'admin: "127.0.0.1:{admin}"\n'
        "brokers:\n"
        "  amqp:\n"
        "    type: amqp\n"
        f'    url: "{url}"\n'
        "    history:\n"
        '      - topics: "flaky.#"\n'
        f'        stream: "{stream}"\n'
        "log:\n  level: warning\n"
    )


async def metrics(admin: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as r:
        for line in (await r.text()).splitlines():
            m = re.match(r"(rabbitsocks_history_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def worker(args: argparse.Namespace) -> None:
    """A share of the clients, in a process of its own: ``ready`` once they all joined,
    then ``published`` on stdin ends the run; prints the clients' figures as JSON."""
    ports = [int(p) for p in args.ports.split(",")]
    clients = [
        Client(i, "ws" if i % 2 == 0 else "sio") for i in range(args.first, args.first + args.n)
    ]
    published = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_client(c, ports, args.topic, args.resume, published, args.last_seq, args)
        )
        for c in clients
    ]
    await asyncio.sleep(2)  # everyone joined before the first message
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    published.set()
    await asyncio.gather(*tasks)
    print(json.dumps([c.__dict__ for c in clients]), flush=True)


async def one_run(
    args: argparse.Namespace,
    ports: list[int],
    admins: list[int],
    resume: bool,
    pids: list[int],
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topic = f"flaky.{run}" if resume else f"plain{run}"
    count = int(args.rate * args.duration)
    before = [await metrics(a) for a in admins]
    workers = []
    share = -(-args.n // args.workers)
    for first in range(0, args.n, share):
        argv = [
            sys.executable, "-m", "bench.flaky", "--worker", "--ports", ",".join(map(str, ports)),
            "--topic", topic, "--first", str(first), "-n", str(min(share, args.n - first)),
            "--last-seq", str(count - 1), "--offline-min", str(args.offline_min),
            "--offline-max", str(args.offline_max), "--drain", str(args.drain),
        ]  # fmt: skip
        if resume:
            argv.append("--resume")
        workers.append(
            await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
        )
    for proc in workers:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"a client worker did not start: {line!r}")
    started = time.monotonic()
    cpu = [cpu_seconds(pid) for pid in pids]
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, args.amqp_url, topic, str(args.rate), str(args.duration),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await publisher.communicate()
    clients: list[Client] = []
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(b"published\n")
        await proc.stdin.drain()
    for proc in workers:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        clients += [Client(**c) for c in json.loads(line)]
        await proc.wait()
    after = [await metrics(a) for a in admins]
    result = tally(clients, count)
    result["server_cpu_s"] = round(
        sum(cpu_seconds(p) - c for p, c in zip(pids, cpu, strict=True)), 1
    )
    result["server_rss_mib"] = round(sum(rss_bytes(p) for p in pids) / 2**20, 1)
    result["published"] = int(out.strip() or 0)
    result["seconds"] = round(time.monotonic() - started, 1)
    reads: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        for key, value in a.items():
            if "_total" in key and ("reads" in key or "replayed" in key or "resumes" in key):
                reads[key] = reads.get(key, 0) + value - b.get(key, 0)
    result["server_metrics"] = reads
    return result


def show(results: dict[str, dict[str, Any]]) -> None:
    rows = [
        ("clients (half WS, half Socket.IO)", "clients"),
        ("messages published", "published"),
        ("deliveries expected", "expected"),
        ("deliveries received", "received"),
        ("lost", "lost"),
        ("duplicated", "duplicates"),
        ("out of order", "out_of_order"),
        ("clients with every message once, in order", "complete_clients"),
        ("connections made", "connections"),
        ("resumes answered", "resumes"),
        ("  recovered: true", "recovered"),
        ("  recovered: false", "not_recovered"),
        ("join answer p50 ms", "answer_ms_p50"),
        ("join answer p99 ms", "answer_ms_p99"),
        ("client errors", "client_errors"),
        ("servers' CPU s (both, while publishing)", "server_cpu_s"),
        ("servers' RSS MiB (both, at the end)", "server_rss_mib"),
    ]
    names = list(results)
    print(f"{'':44}" + "".join(f"{n:>16}" for n in names))
    for label, key in rows:
        cells = []
        for n in names:
            value = results[n].get(key)
            if isinstance(value, float):
                cells.append(f"{value:16.1f}")
            elif isinstance(value, dict):
                cells.append(f"{sum(value.values()):16}")
            else:
                cells.append(f"{value if value is not None else '-':>16}")
        print(f"{label:44}" + "".join(cells))


def start_server(script: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(script), "serve", "-c", str(config)], cwd=ROOT, stdout=out, stderr=out
        )


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="rs-flaky-"))
    stream = f"rabbitsocks-bench-flaky-{uuid.uuid4().hex[:8]}"
    script = ROOT / ".venv" / "bin" / "rabbitsocks"
    servers: list[subprocess.Popen[bytes]] = []
    ports = [free_port(), free_port()]
    admins = [free_port(), free_port()]
    try:
        for i, (port, admin) in enumerate(zip(ports, admins, strict=True)):
            config = workdir / f"server{i}.yaml"
            config.write_text(config_text(port, admin, args.amqp_url, stream))
            log = workdir / f"server{i}.log"
            servers.append(await asyncio.to_thread(start_server, script, config, log))
            await wait_listening(port, servers[-1], log, 30)
        await asyncio.sleep(2)  # both streams attached
        print(
            f"N = {args.n} clients, 2 processes, {args.rate:g} messages/s for {args.duration:g} s;"
            f" each client connected 1-3 s, then away {args.offline_min:g}-{args.offline_max:g} s,"
            " then back on a random process",
            flush=True,
        )
        results = {}
        for name, resume in (("resume", True), ("no resume", False)):
            pids = [server.pid for server in servers]
            results[name] = await one_run(args, ports, admins, resume, pids)
            print(f"  {name}: done in {results[name]['seconds']} s", flush=True)
        show(results)
        for name, result in results.items():
            print(f"{name}: not recovered {result['not_recovered']};"
                  f" servers: {result['server_metrics']}")  # fmt: skip
        save("flaky", {"args": vars(args), "results": results}, workdir)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(15)
        await delete_stream(args.amqp_url, stream)


def save(kind: str, figures: dict[str, Any], workdir: Path) -> None:
    """Write a run's figures to bench/results/<kind>-<time>.json and say where."""
    out = ROOT / "bench" / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures in {out.relative_to(ROOT)}; server logs in {workdir}")


async def delete_stream(url: str, stream: str) -> None:
    """Delete a run's history stream, with pika in a process of its own."""
    delete = (
        "import pika, sys; c = pika.BlockingConnection(pika.URLParameters(sys.argv[1]));"
        " c.channel().queue_delete(sys.argv[2]); c.close()"
    )
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", delete, url, stream], check=False
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flaky", description=__doc__)
    p.add_argument("-n", type=int, default=200, help="clients (default 200)")
    p.add_argument("--rate", type=float, default=50.0, help="messages/s (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    p.add_argument("--offline-min", type=float, default=0.0, help="seconds away, at least")
    p.add_argument("--offline-max", type=float, default=1.0, help="seconds away, at most")
    p.add_argument("--drain", type=float, default=20.0, help="seconds to catch up at the end")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--last-seq", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    asyncio.run(worker(args) if args.worker else main_async(args))


if __name__ == "__main__":
    main()
