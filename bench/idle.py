"""``python -m bench.idle``: what an idle connection costs the server, per transport.

Starts ``rabbitsocks serve`` (``callbacks.pubsub`` on the memory broker, its default
settings: server pings every 20 s, Engine.IO pings every 25 s), measures its RSS, opens N
connections that each join one topic and then stay idle (a bare WebSocket, or Socket.IO on
the websocket transport with the ``/`` namespace connected), waits through a ping cycle
(the client answers pings), and measures again. Prints KiB per connection.

With ``--baseline DIR`` the same runs against another checkout (its ``.venv``), in the
same invocation: the before and after of a change. Clients connect from 127.0.0.2 and up
(``--sources``), one address per 5,000 connections, so N is not capped by one address's
ephemeral ports; they are spread over client processes of at most 15,000 each. The
open-files limit of one server process is the cap (``ulimit -n``); with ``--workers W``
the server is ``rabbitsocks serve --workers W`` and its RSS is that of all its processes.
After the idle wait every client process reports how many of its connections are still
open: a connection the server's heartbeat closed would show there.
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
#: Connections per client process, below this machine's 20,000 open files a process.
PER_CLIENT = 15_000


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
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False

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


async def clients(kind: str, port: int, first: int, n: int, sources: int, hold: float) -> None:
    """Connections ``first`` to ``first + n - 1`` of the run: print ``ready`` once all have
    joined, then, ``hold`` seconds later, ``open <how many still are>``."""
    loop = asyncio.get_running_loop()
    held: list[Idle] = []
    gate = asyncio.Semaphore(300)

    async def one(i: int) -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            source = f"127.0.0.{2 + (i // PER_SOURCE) % max(sources, 1)}"
            _, protocol = await loop.create_connection(
                lambda: Idle(kind, ready), "127.0.0.1", port, local_addr=(source, 0)
            )
            held.append(protocol)
            await asyncio.wait_for(ready, 60)

    await asyncio.gather(*(one(i) for i in range(first, first + n)))
    print("ready", flush=True)
    await asyncio.sleep(hold)  # idle through the server's pings, answering them
    print(f"open {sum(1 for p in held if p.open)}", flush=True)
    await asyncio.Event().wait()


def _serve(
    script: Path, cwd: Path, config: Path, log: Path, workers: int
) -> subprocess.Popen[bytes]:
    command = [str(script), "serve", "-c", str(config)]
    if workers > 1:
        command += ["--workers", str(workers)]
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, stdout=out, stderr=out)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in _tree(pid))


async def measure(
    script: Path, cwd: Path, kind: str, n: int, sources: int, wait: float, workers: int
) -> tuple[float, int]:
    """KiB of server RSS per connection, and how many connections were open after
    ``wait`` seconds idle."""
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
    server = _serve(script, cwd, config, log, workers)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await wait_listening(port, server, log, 20)
        await asyncio.sleep(1 + workers)  # every worker started and settled
        before = tree_rss_kib(server.pid)
        for first in range(0, n, PER_CLIENT):
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.idle", "--client", kind, "--port", str(port),
                "--first", str(first), "-n", str(min(PER_CLIENT, n - first)),
                "--sources", str(sources), "--wait", str(wait),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            ))  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 600)
            if line.strip() != b"ready":
                raise RuntimeError(f"the clients did not all connect: {line!r}")
        still = 0
        for proc in procs:  # each reports after its own wait: through a ping cycle, answered
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), wait + 600)
            still += int(line.split()[1])
        after = tree_rss_kib(server.pid)
        return (after - before) / n, still
    finally:
        for proc in procs:
            proc.kill()
            await proc.wait()
        server.terminate()
        server.wait(15)


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.n / args.workers + 100 > hard:
        print(f"bench.idle: the open-files limit is {hard} per process: N = {args.n} in"
              f" {args.workers} server process(es) needs more (raise `ulimit -n` as root,"
              " or --workers)", file=sys.stderr)  # fmt: skip
    runs = [("rabbitsocks", ROOT / ".venv" / "bin" / "rabbitsocks", ROOT)]
    if args.baseline is not None:
        base = args.baseline.resolve()
        runs.append(("baseline", base / ".venv" / "bin" / "rabbitsocks", base))
    where = f"serve --workers {args.workers}" if args.workers > 1 else "one server process"
    print(f"N = {args.n:,} idle connections, each joined to a topic, {where};"
          " RSS after - before, / N; connections still open after the idle wait")  # fmt: skip
    kinds = [("ws", "bare WebSocket"), ("sio", "Socket.IO (websocket)")]
    for kind, label in [k for k in kinds if args.only in (None, k[0])]:
        for name, script, cwd in runs:
            started = time.monotonic()
            kib, still = await measure(
                script, cwd, kind, args.n, args.sources, args.wait, args.workers
            )
            print(f"  {label:24} {name:12} {kib:6.1f} KiB/connection  open {still:,}"
                  f" of {args.n:,}  ({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    p.add_argument("-n", type=int, default=5_000, help="idle connections (default 5,000)")
    p.add_argument("--sources", type=int, default=4, help="client source addresses")
    p.add_argument("--wait", type=float, default=45.0, help="seconds idle before measuring")
    p.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    p.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    p.add_argument("--only", choices=("ws", "sio"), help="one transport only")
    p.add_argument("--client", choices=("ws", "sio"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(clients(args.client, args.port, args.first, args.n, args.sources, args.wait))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
