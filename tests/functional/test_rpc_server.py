"""RPC endpoints configured in YAML, served by the Server, and the `publish` CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from rabbitsocks import Server
from rabbitsocks.config import Interface, parse_config
from tests.support.pubsub import run_cli


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "rpc": {"goridge": 0, "http": 0, "token": "s3cret"},
        },
        environ={},
    )
    srv = Server(config)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def test_rpc_bare_ports_bind_loopback_only() -> None:
    config = parse_config(
        {"listeners": [{"interface": 1}], "rpc": {"goridge": 6001, "http": "0.0.0.0:6002"}},
        environ={},
    )
    assert config.rpc.goridge == Interface("127.0.0.1", 6001)
    assert config.rpc.http == Interface("0.0.0.0", 6002)


async def cli_publish(*args: str) -> tuple[int, str, str]:
    return await run_cli("publish", *args, input=b"from stdin")


@pytest.mark.parametrize("via", ["http", "goridge"])
async def test_publish_cli_reaches_a_subscriber(server: Server, via: str) -> None:
    assert server.rpc is not None
    port = server.listeners[0].port
    if via == "http":
        url = f"http://127.0.0.1:{server.rpc.http_port}/rpc"
    else:
        assert server.rpc.goridge is not None
        url = f"127.0.0.1:{server.rpc.goridge.port}"
    async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/") as ws:
        await ws.send(json.dumps({"command": "join", "topics": ["cli.t1", "cli.t2"]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["topic"] == "@join"
        code, out, err = await cli_publish(
            "--via", via, "--url", url, "--token", "s3cret", "-t", "cli.t1", "-t", "cli.t2", "-"
        )
        assert (code, err) == (0, "")
        assert out == f"published 10 bytes to cli.t1, cli.t2 via {via} (confirmed)\n"
        got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
    assert sorted(got, key=lambda m: m["topic"]) == [
        {"topic": "cli.t1", "payload": "from stdin"},
        {"topic": "cli.t2", "payload": "from stdin"},
    ]


async def test_publish_cli_reports_refusals(server: Server) -> None:
    assert server.rpc is not None
    url = f"http://127.0.0.1:{server.rpc.http_port}/rpc"
    code, out, err = await cli_publish("--url", url, "-t", "x", "hello")
    assert (code, out) == (1, "")
    assert err == "rabbitsocks: not published: unauthorized: a valid bearer token is required\n"
    code, _, err = await cli_publish("--url", url, "--token", "s3cret", "-t", "a.*", "hello")
    assert code == 1
    assert err == (
        "rabbitsocks: not published: invalid request: messages[0].topics[0] 'a.*':"
        " wildcards are not allowed\n"
    )


async def test_publish_cli_without_endpoint_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("listeners:\n  - interface: 8080\n")
    code, _, err = await cli_publish("-c", str(path), "-t", "x", "hello")
    assert code == 1
    assert err == (
        f"rabbitsocks: not published: {path} configures no rpc.http, rpc.goridge or amqp"
        " broker to publish through; pass --url, or set RABBITSOCKS_AMQP_URL\n"
    )


async def test_rpc_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    import socket

    from rabbitsocks import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = parse_config(
            {"listeners": [{"interface": "127.0.0.1:0"}], "rpc": {"goridge": port}},
            source="r.yaml",
            environ={},
        )
        with pytest.raises(ConfigError) as info:
            await Server(config).start()
    assert str(info.value) == (
        f"r.yaml: rpc.goridge: port {port} is already in use (expected a free port)"
    )
