"""The real CLI process: serve, check, signals, exit codes."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.pubsub import ROOT, free_port, run_cli, serve_env


class Served:
    """A ``rabbitsocks serve`` process, waited on until it logs that it listens."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []

    async def wait_for_line(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        async def scan() -> re.Match[str]:
            assert self.proc.stderr is not None
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("server exited:\n" + "".join(self.log))
                self.log.append(line)
                if match := re.search(pattern, line):
                    return match

        return await asyncio.wait_for(scan(), timeout)

    async def rest_of_log(self) -> str:
        assert self.proc.stderr is not None
        return "".join(self.log) + (await self.proc.stderr.read()).decode()


async def serve(config: Path) -> Served:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        "serve",
        "-c",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
        cwd=ROOT,
    )
    return Served(proc)


@pytest.fixture
async def echo_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "echo.yaml"
    path.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n    callback: callbacks.echo\n'
    )
    return path, port


async def test_sigterm_closes_clients_with_1001_and_exits_0(
    echo_config: tuple[Path, int],
) -> None:
    path, port = echo_config
    served = await serve(path)
    try:
        match = await served.wait_for_line(r"listening on (ws://\S+)")
        assert match.group(1) == f"ws://127.0.0.1:{port}/websocket/"
        async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/x") as ws:
            await ws.send("ping?")
            assert await asyncio.wait_for(ws.recv(), 5) == "ping?"
            served.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert (ws.close_code, ws.close_reason) == (1001, "going away")
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
        log = await served.rest_of_log()
        assert "shutting down" in log
        assert re.search(r"close \S+ remote=127\.0\.0\.1 transport=websocket path=/x", log)
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


async def test_sigint_stops_an_idle_server(echo_config: tuple[Path, int]) -> None:
    path, _ = echo_config
    served = await serve(path)
    try:
        await served.wait_for_line("listening on")
        served.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


async def test_port_in_use_refuses_to_start_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(f'listeners:\n  - interface: "127.0.0.1:{port}"\n')
        code, _, err = await run_cli("serve", "-c", str(path))
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"rabbitsocks: {path}: listeners[0].interface: port {port} is already in use"
        " (expected a free port; is another server running?)"
    )


async def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - interface: 8080\n    callback: mypkg.nothere\n")
    for command in ("serve", "check"):
        code, out, err = await run_cli(command, "-c", str(path))
        assert code == 2
        assert out == ""
        assert err == (
            f"rabbitsocks: {path}: listeners[0].callback: cannot import 'mypkg.nothere':"
            " no module named 'mypkg' (is it on the Python path?)\n"
        )


async def test_check_prints_what_it_would_start() -> None:
    code, out, _ = await run_cli("check", "-c", "config/default.yaml")
    assert code == 0
    assert "listener 127.0.0.1:8080: callback callbacks.pubsub" in out
    assert "default broker: memory" in out


async def test_version_and_help() -> None:
    code, out, _ = await run_cli("--version")
    assert code == 0
    assert re.fullmatch(r"rabbitsocks \d+\.\d+\.\d+\S*\n", out)
    code, out, _ = await run_cli("serve", "--help")
    assert code == 0
    assert "-c FILE, --config FILE" in out
    code, out, _ = await run_cli("--help")
    assert "RABBITSOCKS_AMQP_URL" in out
