"""Configuration that tells the truth: ``rabbitsocks check`` and ``rabbitsocks serve`` refuse
the same mistakes with the same line (file, key, what was expected), exit status 2, and
nothing started. The real CLI, in subprocesses."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from rabbitsocks import ConfigError, start_listener
from rabbitsocks.config import LimitsConfig, WebSocketConfig
from tests.support.pubsub import ROOT, serve_env

LISTENER = '  - interface: "127.0.0.1:0"\n'

#: (what, the YAML after "listeners:\n" + LISTENER, the message after "<file>: ")
MISTAKES: list[tuple[str, str, str]] = [
    (
        "a broker that is not configured",
        "    options: {broker: nosuch}\nbrokers:\n  amqp: {url: 'amqp://127.0.0.1:9/'}\n",
        "listeners[0].options.broker: expected one of the configured brokers (memory, amqp),"
        " got 'nosuch'",
    ),
    (
        "negative max_connections",
        "    limits: {max_connections: -5}\n",
        "listeners[0].limits.max_connections: expected an integer >= 1, got -5",
    ),
    (
        "negative heartbeat",
        "    websocket: {heartbeat: -1}\n",
        "listeners[0].websocket.heartbeat: expected a number >= 0, got -1",
    ),
    (
        "an infinite heartbeat",
        "    websocket: {heartbeat: .inf}\n",
        "listeners[0].websocket.heartbeat: expected a finite number, got inf (float)",
    ),
    (
        "max_frame_size 0",
        "    websocket: {max_frame_size: 0}\n",
        "listeners[0].websocket.max_frame_size: expected an integer >= 1, got 0",
    ),
    (
        "ping_interval 0",
        "    socketio: {ping_interval: 0}\n",
        "listeners[0].socketio.ping_interval: expected a number > 0, got 0",
    ),
    (
        "a negative handshake timeout",
        "    limits: {handshake_timeout: -0.5}\n",
        "listeners[0].limits.handshake_timeout: expected a number > 0, got -0.5",
    ),
    (
        "a negative hook timeout",
        "    auth: {connect: {url: 'http://127.0.0.1:9/', timeout: -1}}\n",
        "listeners[0].auth.connect.timeout: expected a number > 0, got -1",
    ),
    (
        "pubsub rate 0",
        "    options: {rate: 0}\n",
        "listeners[0].options.rate: expected a number > 0, got 0",
    ),
    (
        "pubsub burst 0",
        "    options: {burst: 0}\n",
        "listeners[0].options.burst: expected an integer >= 1, got 0",
    ),
    (
        "options echo would ignore",
        "    callback: callbacks.echo\n    options: {colour: red}\n",
        "listeners[0].options.colour: unknown key (callbacks.echo takes no options)",
    ),
    (
        "a join hook that does not load",
        "    options: {join_auth: {callable: 'nosuch_module_h:allow'}}\n",
        "listeners[0].options.join_auth.callable: cannot load 'nosuch_module_h:allow':"
        " No module named 'nosuch_module_h'",
    ),
    (
        "a connect hook that does not load",
        "    auth: {connect: {callable: 'json:nosuch'}}\n",
        "listeners[0].auth.connect.callable: cannot load 'json:nosuch':"
        " module 'json' has no attribute 'nosuch'",
    ),
    (
        "a JWT public key that cannot be read",
        "    auth: {jwt: {algorithms: [RS256], public_key: /nonexistent/key.pem}}\n",
        "listeners[0].auth.jwt.public_key: cannot read '/nonexistent/key.pem':"
        " [Errno 2] No such file or directory: '/nonexistent/key.pem'",
    ),
    (
        "rpc.max_request_size 0",
        "rpc: {max_request_size: 0}\n",
        "rpc.max_request_size: expected an integer >= 1, got 0",
    ),
    (
        "rpc.read_timeout 0",
        "rpc: {read_timeout: 0}\n",
        "rpc.read_timeout: expected a number > 0, got 0",
    ),
    (
        "rpc.goridge_max_connections 0",
        "rpc: {goridge_max_connections: 0}\n",
        "rpc.goridge_max_connections: expected an integer >= 1, got 0",
    ),
    (
        "a negative shutdown timeout",
        "shutdown_timeout: -1\n",
        "shutdown_timeout: expected a number >= 0, got -1",
    ),
]


async def run(command: str, config: Path) -> tuple[int | None, str, str]:
    """``python -m rabbitsocks COMMAND -c CONFIG``: exit status, stdout, stderr. A server
    that starts (the mistake went unnoticed) is stopped after 10 s, status ``None``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        command,
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return None, out.decode(), err.decode()
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("what", "yaml", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
async def test_check_and_serve_refuse_it_alike(
    tmp_path: Path, what: str, yaml: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listeners:\n" + LISTENER + yaml)
    checked, served = await asyncio.gather(run("check", config), run("serve", config))
    expected = (2, "", f"rabbitsocks: {config}: {message}\n")
    assert checked == expected
    assert served == expected


async def test_check_prints_the_parsed_options(tmp_path: Path) -> None:
    config = tmp_path / "good.yaml"
    config.write_text("listeners:\n" + LISTENER + "    options: {max_topics: 7}\n")
    code, out, err = await run("check", config)
    assert (code, err) == (0, "")
    assert "  max_topics: 7\n" in out
    assert "  rate: 20.0\n" in out


async def test_check_prints_no_credentials_of_a_hook_url(tmp_path: Path) -> None:
    config = tmp_path / "hook.yaml"
    config.write_text(
        "listeners:\n"
        + LISTENER
        + "    options: {join_auth: {url: 'http://u:s3cr3t@auth:8000/join?key=k3y'}}\n"
    )
    code, out, err = await run("check", config)
    assert (code, err) == (0, "")
    assert "http://u:***@auth:8000/join?***" in out
    assert "s3cr3t" not in out
    assert "k3y" not in out


@pytest.mark.parametrize(
    ("callback", "options", "settings", "message"),
    [
        (
            "callbacks.pubsub",
            {"broker": "nope"},
            {},
            "<api>: listener.options.broker: expected one of the configured brokers (memory),"
            " got 'nope'",
        ),
        (
            "callbacks.echo",
            {"colour": "red"},
            {},
            "<api>: listener.options.colour: unknown key (callbacks.echo takes no options)",
        ),
        (
            "callbacks.echo",
            None,
            {"websocket": WebSocketConfig(heartbeat=-1)},
            "<api>: listener.websocket.heartbeat: expected a number >= 0, got -1",
        ),
        (
            "callbacks.echo",
            None,
            {"limits": LimitsConfig(max_connections=0)},
            "<api>: listener.limits.max_connections: expected an integer >= 1, got 0",
        ),
    ],
)
async def test_start_listener_refuses_what_the_configuration_would(
    callback: str, options: dict[str, str] | None, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        await start_listener("127.0.0.1:0", callback, options, **settings)
    assert str(info.value) == message
