"""The ``rabbitsocks`` console script itself (not ``python -m``), in subprocesses: it finds
callback modules in the current directory, and its start-up log lists every URL it serves,
each of which answers."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import websockets

from tests.support.pubsub import free_port, serve_env

SCRIPT = Path(sys.executable).parent / "rabbitsocks"
WAIT = 20.0

CALLBACK = """
def subprotocol_name():
    return None

def init(path, options):
    return None

def open(writer, state):
    return writer

def handle_frame(frame, writer):
    writer.send("mine: " + frame)
    return writer

def terminate(state):
    return None
"""


def script() -> str:
    if not SCRIPT.exists():
        pytest.fail(f"the console script is not installed at {SCRIPT}: pip install -e .")
    return str(SCRIPT)


class Served:
    """A ``rabbitsocks serve`` started by the console script, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def read_until(self, pattern: str) -> list[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(WAIT):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("the server exited:\n" + "".join(self.lines))
                self.lines.append(line)
                if re.search(pattern, line):
                    return self.lines

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            return await self.proc.wait()


Start = Callable[[str], Awaitable[Served]]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Start, Path]]:
    """Starts ``rabbitsocks serve`` on a configuration, in ``tmp_path``; kills leftovers."""
    procs: list[Served] = []

    async def start(config: str) -> Served:
        path = tmp_path / "rs.yaml"
        path.write_text(config)
        proc = await asyncio.create_subprocess_exec(
            script(),
            "serve",
            "-c",
            str(path),
            stderr=asyncio.subprocess.PIPE,
            env=serve_env(),
            cwd=tmp_path,
        )
        procs.append(Served(proc))
        return procs[-1]

    yield start, tmp_path
    for proc in procs:
        if proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()


async def test_a_callback_module_in_the_current_directory_is_found(
    served: tuple[Start, Path],
) -> None:
    start, directory = served
    (directory / "my_local_callback.py").write_text(CALLBACK)
    port = free_port()
    config = f'listeners:\n  - interface: "127.0.0.1:{port}"\n    callback: my_local_callback\n'
    (directory / "check.yaml").write_text(config)
    check = await asyncio.create_subprocess_exec(
        script(),
        "check",
        "-c",
        "check.yaml",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
        cwd=directory,
    )
    out, err = await asyncio.wait_for(check.communicate(), WAIT)
    assert (check.returncode, err.decode()) == (0, "")
    assert "callback my_local_callback" in out.decode()
    server = await start(config)
    await server.read_until("listening on")
    async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "mine: hello"
    assert await server.stop() == 0


async def test_the_startup_log_lists_every_url_and_each_answers(
    served: tuple[Start, Path],
) -> None:
    start, _ = served
    port, goridge, http, admin = (free_port() for _ in range(4))
    server = await start(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n    demo: true\n'
        f'rpc:\n  goridge: "127.0.0.1:{goridge}"\n  http: "127.0.0.1:{http}"\n'
        f'admin: "127.0.0.1:{admin}"\n'
    )
    log = "".join(await server.read_until(r"admin on "))
    urls = set(re.findall(r"(?:ws|http|tcp)://[^\s,]+", log))
    assert urls == {
        f"ws://127.0.0.1:{port}/websocket/",
        f"http://127.0.0.1:{port}/socket.io/",
        f"http://127.0.0.1:{port}/",
        f"tcp://127.0.0.1:{goridge}",
        f"http://127.0.0.1:{http}/rpc/",
        f"http://127.0.0.1:{admin}/",
    }, log
    assert f"demo page on http://127.0.0.1:{port}/\n" in log
    async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/"):
        pass
    async with aiohttp.ClientSession() as session:
        polling = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
        async with session.get(polling) as answer:
            assert answer.status == 200
        async with session.get(f"http://127.0.0.1:{port}/") as answer:
            assert answer.status in (200, 503)  # 503: assets not built (scripts/build-demo)
        async with session.post(f"http://127.0.0.1:{http}/rpc/broadcast.Publish") as answer:
            assert answer.status == 415  # the RPC endpoint, asked without a body type
        async with session.get(f"http://127.0.0.1:{admin}/health") as answer:
            assert answer.status == 200
    _, writer = await asyncio.open_connection("127.0.0.1", goridge)
    writer.close()
    assert await server.stop() == 0
