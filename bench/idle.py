"""``python -m bench.idle``: what an idle connection costs the server, per transport.

Starts ``rabbitsocks serve`` (``callbacks.pubsub`` on the memory broker, its default
settings: server pings every 20 s, Engine.IO pings every 25 s), measures its RSS, opens N
connections that each join one topic and then stay idle (a bare WebSocket, or Socket.IO on
the websocket transport with the ``/`` namespace connected), waits through a ping cycle
(the client answers pings), and measures again. Prints KiB per connection.

With ``--baseline DIR`` the same runs against another checkout (its ``.venv``), in the
same invocation: the before and after of a change. Clients connect from 127.0.0.2 and up
(``--sources``), one address per 5,000 connections, so N is not capped by one address's
ephemeral ports; the open-files limit of both processes is the cap (``ulimit -n``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.targets import ROOT, free_port, wait_listening

PER_SOURCE = 5_000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Idle(asyncio.Protocol):
    """One idle client: answers WebSocket pings and Engine.IO pings, reads nothing else."""

    def __init__(self, kind: str, ready: asyncio.Future[None]) -> None:
        self.kind = kind
        self.ready = ready
        self.buffer = b""
        self.stage = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/websocket/" if self.kind == "ws" else "/socket.io/?EIO=4&transport=websocket"
        self.transport.write(  # type: ignore[union-attr]
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send(self, text: str, opcode: int = 0x1) -> None:
        payload = text.encode()
        assert len(payload) < 126
        # A zero mask: valid (RFC 6455 5.3 asks for unpredictable masks from browsers).
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.stage == 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4 :]
            self.stage = 1
            if self.kind == "ws":
                self.send(json.dumps({"command": "join", "topics": ["idle"]}))
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            if length >= 126:
                if len(self.buffer) < header:
                    return
                length = int.from_bytes(self.buffer[2:header], "big")
            if len(self.buffer) < header + length:
                return
            opcode = self.buffer[0] & 0x0F
            payload = self.buffer[header : header + length]
            self.buffer = self.buffer[header + length :]
            if opcode == 0x9:
                self.send(payload.decode(), 0xA)
            elif opcode == 0x1:
                self.text(payload.decode())

    def text(self, text: str) -> None:
        if text == "2":
            self.send("3")  # Engine.IO pong
        elif text.startswith("0{"):
            self.send("40")
        elif text.startswith("40"):
            self.send(
                "42" + json.dumps(["message", json.dumps({"command": "join", "topics": ["idle"]})])
            )
        elif "@join" in text and not self.ready.done():
            self.ready.set_result(None)


async def clients(kind: str, port: int, n: int, sources: int) -> None:
    loop = asyncio.get_running_loop()
    held = []
    gate = asyncio.Semaphore(300)

    async def one(i: int) -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            source = f"127.0.0.{2 + (i // PER_SOURCE) % max(sources, 1)}"
            transport, _ = await loop.create_connection(
                lambda: Idle(kind, ready), "127.0.0.1", port, local_addr=(source, 0)
            )
            held.append(transport)
            await asyncio.wait_for(ready, 30)

    await asyncio.gather(*(one(i) for i in range(n)))
    print("ready", flush=True)
    await asyncio.Event().wait()


def _serve(script: Path, cwd: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(script), "serve", "-c", str(config)], cwd=cwd, stdout=out, stderr=out
        )


async def measure(script: Path, cwd: Path, kind: str, n: int, sources: int, wait: float) -> float:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rs-idle-"))
    config = workdir / "idle.yaml"
    config.write_text(
        "listeners:\n"
        f'  - interface: "127.0.0.1:{port}"\n'
        "    callback: callbacks.pubsub\n"
        "    limits:\n"
        f"      max_connections: {n + 1000}\n"
        f"      max_connections_per_address: {n + 1000}\n"
        f"      connect_burst: {n + 1000}\n"
        "log:\n  level: warning\n"
    )
    log = workdir / "server.log"
    server = _serve(script, cwd, config, log)
    client: asyncio.subprocess.Process | None = None
    try:
        await wait_listening(port, server, log, 20)
        await asyncio.sleep(1)
        before = rss_kib(server.pid)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.idle", "--client", kind, "--port", str(port),
            "-n", str(n), "--sources", str(sources), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), 300)
        if line.strip() != b"ready":
            raise RuntimeError(f"the clients did not all connect: {line!r}")
        await asyncio.sleep(wait)  # through a ping cycle, answered
        after = rss_kib(server.pid)
        return (after - before) / n
    finally:
        if client is not None:
            client.kill()
            await client.wait()
        server.terminate()
        server.wait(15)


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.n + 100 > hard:
        print(f"bench.idle: the open-files limit is {hard}: N = {args.n} needs more"
              " (raise `ulimit -n` as root)", file=sys.stderr)  # fmt: skip
    runs = [("rabbitsocks", ROOT / ".venv" / "bin" / "rabbitsocks", ROOT)]
    if args.baseline is not None:
        base = args.baseline.resolve()
        runs.append(("baseline", base / ".venv" / "bin" / "rabbitsocks", base))
    print(f"N = {args.n:,} idle connections, each joined to a topic; RSS after - before, / N")
    for kind, label in (("ws", "bare WebSocket"), ("sio", "Socket.IO (websocket)")):
        for name, script, cwd in runs:
            started = time.monotonic()
            kib = await measure(script, cwd, kind, args.n, args.sources, args.wait)
            print(f"  {label:24} {name:12} {kib:6.1f} KiB/connection"
                  f"  ({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    p.add_argument("-n", type=int, default=5_000, help="idle connections (default 5,000)")
    p.add_argument("--sources", type=int, default=4, help="client source addresses")
    p.add_argument("--wait", type=float, default=45.0, help="seconds idle before measuring")
    p.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    p.add_argument("--client", choices=("ws", "sio"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(clients(args.client, args.port, args.n, args.sources))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
