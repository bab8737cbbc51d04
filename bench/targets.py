"""The servers under test: how to start each, where clients connect, which pid to measure.

Every target but Web-STOMP is a fresh subprocess per scenario (a clean RSS baseline, no
state carried over); Web-STOMP is the plugin of the RabbitMQ node already running, and the
process measured is that node's ``beam.smp`` (its ``os_pid`` in the management API).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TARGETS",
    "TARGETS",
    "Running",
    "Settings",
    "Target",
    "free_port",
    "rabbitmq_node",
]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Settings:
    """What every target needs to know about this run."""

    amqp_url: str
    stomp_url: str
    management_url: str
    results: Path
    python: str = sys.executable
    loop: str = "auto"
    log_level: str = "warning"


@dataclass
class Running:
    """A started target."""

    url: str  # what the load generator connects to
    pid: int  # the server process measured (CPU, RSS)
    publisher: str  # "amqp" or "floor"
    publish_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    async def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_listening(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {timeout:g}s")


def rabbitmq_node(management_url: str) -> dict[str, Any]:
    """The first node of the management API's ``/api/nodes`` (pid, fds, sockets)."""
    parsed = urllib.parse.urlsplit(management_url)
    user, password = parsed.username or "guest", parsed.password or "guest"
    netloc = parsed.hostname or "127.0.0.1"
    if parsed.port:
        netloc += f":{parsed.port}"
    request = urllib.request.Request(f"{parsed.scheme}://{netloc}/api/nodes")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        nodes: list[dict[str, Any]] = json.load(response)
    return nodes[0]


class Target:
    """One kind of server under test."""

    name = ""
    label = ""
    client = "ws"  # the load generator protocol: ws, sio or stomp
    uses_amqp = True

    def skip_reason(self, settings: Settings, n: int) -> str | None:
        return None

    async def start(self, settings: Settings, tag: str, n: int) -> Running:
        raise NotImplementedError

    #: Where the server runs from (another checkout, for a baseline target).
    root: Path = ROOT

    def _spawn(
        self, settings: Settings, tag: str, argv: list[str], port: int, env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = settings.results / f"{tag}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        return proc, log


def _limit_keys(python: str, root: Path) -> set[str]:
    """The ``limits`` keys of the rabbitsocks that ``python`` imports from ``root``
    (another checkout's, for a baseline target)."""
    probe = (
        "import dataclasses\n"
        "from rabbitsocks.config import LimitsConfig\n"
        "print(' '.join(f.name for f in dataclasses.fields(LimitsConfig)))"
    )
    found = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=root
    )
    return set(found.stdout.split())


def _connection_limits(n: int, known: set[str]) -> str:
    """YAML ``limits`` lines that let ``n`` connections in from one address.

    Every benchmark connection comes from 127.0.0.1 (below 25,000 of them), and rabbitsocks
    caps connections per remote address and per listener. Only the keys the version of
    rabbitsocks under test knows are written (``known``): its configuration refuses
    unknown keys.
    """
    lines = [
        f"      {key}: {max(default, n + 1000)}\n"
        for key, default in (
            ("max_connections", 20_000),
            ("max_connections_per_address", 1_000),
            ("connect_burst", 500),  # every subscriber connects at once from one address
        )
        if key in known
    ]
    return "    limits:\n" + "".join(lines) if lines else ""


class _RabbitSocks(Target):
    path = "/websocket/"
    extra_args: tuple[str, ...] = ()
    #: The virtualenv's ``rabbitsocks`` script; ``None``: the one running the benchmark.
    script: Path | None = None
    callback = "callbacks.pubsub"

    async def start(self, settings: Settings, tag: str, n: int) -> Running:
        port = free_port()
        config = settings.results / f"{tag}.yaml"
        config.write_text(
            f"# generated by bench/: one {self.callback} listener on RabbitMQ\n"
            "listeners:\n"
            f'  - interface: "127.0.0.1:{port}"\n'
            f"    callback: {self.callback}\n"
            f"{_connection_limits(n, self._known_limits(settings))}"
            "brokers:\n"
            "  amqp:\n"
            "    type: amqp\n"
            f"    url: {json.dumps(settings.amqp_url)}\n"
            "    exchange: amq.topic\n"
            "default_broker: amqp\n"
            "log:\n"
            f"  level: {settings.log_level}\n"
        )
        rabbitsocks = str(self.script or Path(settings.python).parent / "rabbitsocks")
        argv = [rabbitsocks, "serve", "-c", str(config), "--loop", settings.loop, *self.extra_args]
        proc, log = self._spawn(settings, tag, argv, port, {})
        await wait_listening(port, proc, log, 20)
        return Running(self._url(port), proc.pid, "amqp", process=proc, log=log)

    def _url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/websocket/"

    def _known_limits(self, settings: Settings) -> set[str]:
        python = str(self.script.parent / "python") if self.script else settings.python
        key = (python, self.root)
        cached = _LIMIT_KEYS.get(key)
        if cached is None:
            cached = _LIMIT_KEYS[key] = _limit_keys(python, self.root)
        return cached


_LIMIT_KEYS: dict[tuple[str, Path], set[str]] = {}


class RabbitSocksWebSocket(_RabbitSocks):
    name = "rs-ws"
    label = "rabbitsocks WebSocket"
    client = "ws"


class RabbitSocksWorkers(_RabbitSocks):
    """``rabbitsocks serve --workers 2``: two processes on one port (SO_REUSEPORT), each
    with its own AMQP queue. CPU and RSS are summed over the supervisor and its workers."""

    name = "rs-ws-w2"
    label = "rabbitsocks WebSocket, 2 workers"
    client = "ws"
    extra_args = ("--workers", "2")

    def skip_reason(self, settings: Settings, n: int) -> str | None:
        rabbitsocks = str(Path(settings.python).parent / "rabbitsocks")
        text = subprocess.run(
            [rabbitsocks, "serve", "--help"], capture_output=True, text=True, timeout=30
        ).stdout
        return None if "--workers" in text else "this rabbitsocks has no `serve --workers`"


class RabbitSocksSocketIO(_RabbitSocks):
    name = "rs-sio"
    label = "rabbitsocks Socket.IO"
    client = "sio"

    def _url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"


class RabbitSocksStomp(_RabbitSocks):
    """``callbacks.stomp`` with its default options (/topic/ subscriptions allowed), and the
    Web-STOMP target's client: STOMP 1.2, one SUBSCRIBE to /topic/ with a receipt."""

    name = "rs-stomp"
    label = "rabbitsocks STOMP"
    client = "stomp"
    callback = "callbacks.stomp"

    def skip_reason(self, settings: Settings, n: int) -> str | None:
        if not (ROOT / "callbacks" / "stomp.py").is_file():
            return "this rabbitsocks has no callbacks.stomp"
        return None


class WebStomp(Target):
    name = "stomp"
    label = "RabbitMQ Web-STOMP"
    client = "stomp"
    #: Sockets left to the other users of the shared RabbitMQ node.
    RESERVE = 100

    def skip_reason(self, settings: Settings, n: int) -> str | None:
        try:
            node = rabbitmq_node(settings.management_url)
        except OSError as exc:
            return f"management API unreachable: {exc}"
        room = int(node.get("sockets_total") or 0) - int(node.get("sockets_used") or 0)
        if n > room - self.RESERVE:
            return (
                f"RabbitMQ's open-files limit is {node.get('fd_total')}: it accepts"
                f" {node.get('sockets_total')} sockets ({node.get('sockets_used')} in use);"
                f" {n} more would starve the node's other users. Raise `ulimit -n` before"
                " starting RabbitMQ (see bench/README.md)"
            )
        return None

    async def start(self, settings: Settings, tag: str, n: int) -> Running:
        node = rabbitmq_node(settings.management_url)
        return Running(settings.stomp_url, int(node["os_pid"]), "amqp")


class SocketIOAioPika(Target):
    name = "sio-aiopika"
    label = "python-socketio + AsyncAioPikaManager"
    client = "sio"

    async def start(self, settings: Settings, tag: str, n: int) -> Running:
        port = free_port()
        argv = [
            settings.python, "-m", "bench.peers.socketio_aiopika", "--port", str(port),
            "--amqp-url", settings.amqp_url, "--loop", settings.loop,
        ]  # fmt: skip
        proc, log = self._spawn(settings, tag, argv, port, {})
        await wait_listening(port, proc, log, 20)
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        return Running(url, proc.pid, "amqp", process=proc, log=log)


class AiohttpFloor(Target):
    name = "floor"
    label = "aiohttp floor (no broker)"
    client = "ws"
    uses_amqp = False

    async def start(self, settings: Settings, tag: str, n: int) -> Running:
        port, publish_port = free_port(), free_port()
        argv = [
            settings.python, "-m", "bench.peers.aiohttp_floor", "--port", str(port),
            "--publish-port", str(publish_port), "--loop", settings.loop,
        ]  # fmt: skip
        proc, log = self._spawn(settings, tag, argv, port, {})
        await wait_listening(port, proc, log, 20)
        url = f"ws://127.0.0.1:{port}/websocket/"
        return Running(url, proc.pid, "floor", publish_port, process=proc, log=log)


def add_baseline(checkout: Path) -> list[str]:
    """Targets ``rs-ws-base`` and ``rs-sio-base``: another rabbitsocks checkout (the code
    before a change, with its virtualenv in ``.venv``), measured in the same run as this
    one, so that before and after share the machine's state."""
    script = checkout / ".venv" / "bin" / "rabbitsocks"
    if not script.exists():
        raise SystemExit(f"bench: no {script} (make the baseline's virtualenv first)")
    names = []
    for base in (RabbitSocksWebSocket, RabbitSocksSocketIO):
        target = base()
        target.name = f"{base.name}-base"
        target.label = f"{base.label} (baseline)"
        target.root = checkout
        target.script = script
        TARGETS[target.name] = target
        names.append(target.name)
    return names


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        RabbitSocksWebSocket(),
        RabbitSocksSocketIO(),
        RabbitSocksStomp(),
        WebStomp(),
        SocketIOAioPika(),
        AiohttpFloor(),
        RabbitSocksWorkers(),
    )
}
#: What runs when --targets is not given: the comparison issue 6 asks for.
DEFAULT_TARGETS = ("rs-ws", "rs-sio", "rs-stomp", "stomp", "sio-aiopika", "floor")
