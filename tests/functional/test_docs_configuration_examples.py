"""The examples of docs/configuration.md: each error line the page shows is what
``rabbitsocks`` prints, exit status 2, for a ``chat.yaml`` with that mistake; and the
closing ``RABBITSOCKS_AMQP_URL`` example does what it says."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from rabbitsocks.config import Interface, load_config
from tests.support.docs import ROOT, code_blocks
from tests.support.pubsub import serve_env

DOC = "configuration.md"
TEXT = (ROOT / "docs" / DOC).read_text(encoding="utf-8")


def error_lines() -> list[str]:
    (block,) = [b for b in code_blocks(DOC, "") if b.startswith("rabbitsocks: chat.yaml: ")]
    return block.splitlines()


#: For each error line of the page (by its key), a chat.yaml with that mistake and the
#: command that finds it. ``{port}`` is a port another socket holds.
MISTAKES: dict[str, tuple[str, str]] = {
    "listeners[0].websocket.heartbeat": (
        "check",
        'listeners:\n  - interface: "127.0.0.1:8080"\n    websocket: {heartbeat: often}\n',
    ),
    "listeners[1].callback": (
        "check",
        "listeners:\n"
        '  - interface: "127.0.0.1:8080"\n'
        '  - interface: "127.0.0.1:8081"\n'
        "    callback: mypkg.chat\n",
    ),
    "listeners[0].interface": ("serve", 'listeners:\n  - interface: "127.0.0.1:{port}"\n'),
    "listeners[0].limits.max_connections": (
        "check",
        'listeners:\n  - interface: "127.0.0.1:8080"\n    limits: {max_connections: -5}\n',
    ),
    "listeners[0].options.broker": (
        "serve",
        'listeners:\n  - interface: "127.0.0.1:8080"\n    options: {broker: nosuch}\n'
        "brokers:\n  amqp: {url: 'amqp://127.0.0.1:9/'}\n",
    ),
    "listeners[1].options.colour": (
        "check",
        "listeners:\n"
        '  - interface: "127.0.0.1:8080"\n'
        '  - interface: "127.0.0.1:8081"\n'
        "    callback: callbacks.echo\n"
        "    options: {colour: red}\n",
    ),
}


def test_every_error_line_has_a_mistake() -> None:
    keys = [line.split(": ")[2] for line in error_lines()]
    assert keys == list(MISTAKES)


async def rabbitsocks(command: str, directory: Path) -> tuple[int, list[str]]:
    """``python -m rabbitsocks COMMAND -c chat.yaml`` in ``directory``: status, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        command,
        "-c",
        "chat.yaml",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=directory,
        env=serve_env(),
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode().splitlines()


@pytest.mark.parametrize("line", error_lines(), ids=lambda line: line.split(": ")[2])
async def test_the_error_line_is_what_rabbitsocks_prints(line: str, tmp_path: Path) -> None:
    command, yaml = MISTAKES[line.split(": ")[2]]
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        (tmp_path / "chat.yaml").write_text(yaml.replace("{port}", str(port)))
        status, stderr = await rabbitsocks(command, tmp_path)
    assert status == 2, stderr
    # serve may log before it fails; the error is the one line that names the file.
    assert [e for e in stderr if e.startswith("rabbitsocks: ")] == [
        line.replace("port 8080", f"port {port}")
    ], stderr


def test_the_amqp_url_override_example() -> None:
    (example,) = [
        line for line in TEXT.splitlines() if line.startswith("So `RABBITSOCKS_AMQP_URL=")
    ]
    url = example.split("=", 1)[1].split()[0]
    assert "runs the default\nlistener on RabbitMQ, with `memory` still available by name" in TEXT
    config = load_config(None, environ={"RABBITSOCKS_AMQP_URL": url})
    assert config.brokers["amqp"].url == (url,)
    assert config.brokers["amqp"].exchange == "amq.topic"
    assert config.effective_default_broker == "amqp"
    assert "memory" in config.broker_names
    assert config.listeners[0].interface == Interface("127.0.0.1", 8080)
