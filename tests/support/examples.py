"""Running the examples of README.md and docs/: snippets, shell commands, the default server.

- ``default_server``: the server of ``config/default.yaml`` (what ``scripts/serve`` runs),
  moved to port 0 with the environment overrides a reader would use, in this process.
- ``PrintCapture``: a ``print`` for a snippet's globals, whose lines a test awaits.
- ``run_snippet``: a snippet with top-level ``await`` (as typed at ``python -m asyncio``).
- ``shell_examples`` and ``run_shell``: ``sh`` blocks as (command, expected output) pairs,
  run with ``bash`` in the test's own virtual environment.

Nothing here sleeps: printed lines and frames are awaited with a timeout.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rabbitsocks import Server
from rabbitsocks.config import load_config

ROOT = Path(__file__).resolve().parents[2]
#: The virtual environment running the tests: ``rabbitsocks`` and ``python`` of examples.
VENV_BIN = Path(sys.executable).parent
#: Seconds any single expected event may take.
WAIT = 5.0

#: The overrides that move the default configuration's three fixed ports to free ones.
PORT_ZERO: Mapping[str, str] = {
    "RABBITSOCKS_LISTEN": "127.0.0.1:0",
    "RABBITSOCKS_RPC_HTTP": "0",
    "RABBITSOCKS_ADMIN": "0",
}


# --- the default server ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def default_server(**environ: str) -> AsyncIterator[Server]:
    """``config/default.yaml`` with ``PORT_ZERO`` and ``environ`` applied, started."""
    config = load_config(None, environ={**PORT_ZERO, **environ})
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def rpc_http_port(server: Server) -> int:
    assert server.rpc is not None, "the server has no RPC endpoints"
    port = server.rpc.http_port
    assert port is not None, "the server has no HTTP RPC endpoint"
    return port


def rpc_goridge_port(server: Server) -> int:
    assert server.rpc is not None, "the server has no RPC endpoints"
    assert server.rpc.goridge is not None, "the server has no goridge RPC endpoint"
    return server.rpc.goridge.port


# --- Python snippets --------------------------------------------------------------------------


class PrintCapture:
    """Stands in for ``print`` in a snippet's globals: each call is one line, awaited with
    ``next`` while the snippet runs as a task (whose failure is reported at once)."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, *args: object, sep: str | None = " ", **_: Any) -> None:
        self.lines.put_nowait((" " if sep is None else sep).join(map(str, args)))

    async def next(self, task: asyncio.Task[Any] | None = None, timeout: float = WAIT) -> str:
        """The next printed line; fails if ``task`` ends (or raises) first."""
        line = asyncio.ensure_future(self.lines.get())
        waiting: set[asyncio.Future[Any]] = {line}
        if task is not None:
            waiting.add(task)
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not line.done():
                line.cancel()
        if line in done:
            return line.result()
        if task is not None and task in done:
            cause = None if task.cancelled() else task.exception()
            raise AssertionError(f"the snippet ended before printing: {task!r}") from cause
        raise AssertionError(f"the snippet printed nothing within {timeout:g}s")


async def run_snippet(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """Run ``source`` as the asyncio REPL would: top-level ``await`` allowed."""
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        return await result
    return result


# --- shell examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShellExample:
    """A command of an ``sh`` block and the output its ``# `` lines below it show."""

    command: str
    output: str

    def replace(self, old: str, new: str) -> ShellExample:
        assert old in self.command, f"{old!r} is not in {self.command!r}"
        return ShellExample(self.command.replace(old, new), self.output.replace(old, new))


def shell_examples(block: str) -> list[ShellExample]:
    """The commands of an ``sh`` block, each with the ``# output`` lines that follow it.
    A command spans lines while they do not start with ``# `` (continuations, quotes)."""
    examples: list[ShellExample] = []
    command: list[str] = []
    output: list[str] = []
    for line in block.splitlines():
        if line.startswith("# "):
            assert command, f"output before any command: {line!r}"
            output.append(line.removeprefix("# "))
            continue
        if output:
            examples.append(ShellExample("\n".join(command), "\n".join(output)))
            command, output = [], []
        command.append(line)
    if command:
        examples.append(ShellExample("\n".join(command), "\n".join(output)))
    return examples


def venv_link(directory: Path) -> Path:
    """``directory`` with a ``.venv`` that is the tests' own virtual environment, for an
    example that runs ``. .venv/bin/activate`` (the tests may run from another one)."""
    (directory / ".venv").symlink_to(VENV_BIN.parent, target_is_directory=True)
    return directory


def shell_env(**extra: str) -> dict[str, str]:
    """Our environment without RABBITSOCKS_* settings, this virtual environment first on
    PATH (as ``. .venv/bin/activate`` would), plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RABBITSOCKS_")}
    environ["PATH"] = os.pathsep.join([str(VENV_BIN), environ.get("PATH", "")])
    environ["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    environ.update(extra)
    return environ


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def check(self, expected_output: str) -> None:
        """Exit status 0 and exactly ``expected_output`` on stdout."""
        assert self.returncode == 0, f"exit status {self.returncode}:\n{self.stderr}"
        assert self.stdout.strip() == expected_output, self.stderr


async def run_shell(
    command: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    cwd: Path = ROOT,
) -> Completed:
    """``bash -c command``, in the repository's root unless ``cwd`` says otherwise."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env) if env is not None else shell_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command!r} did not finish within {timeout:g}s") from None
    assert process.returncode is not None
    return Completed(process.returncode, out.decode(), err.decode())
