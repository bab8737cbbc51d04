"""What the logs never contain, with real servers and clients: credentials of a failing
authorization endpoint, query strings, the bytes of a request aiohttp refuses, a traceback
per bad request, control characters a peer put in a path."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from aiohttp import web

from rabbitsocks import ConfigError, start_listener
from rabbitsocks.config import AuthConfig, HookConfig, parse_config
from rabbitsocks.plan import plan_config
from tests.support.apps import served
from tests.support.pubsub import ROOT, free_port, serve_env
from tests.support.recorder import Recorder

WAIT = 5.0
SECRETS = ("s3cr3t", "k3y", "pa/ss")


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    """An authorization endpoint that never answers: its base URL, 127.0.0.1:port."""
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/auth", hang)
    async with served(app) as base:
        try:
            yield base.removeprefix("http://")
        finally:
            never.set()


def endpoint_urls(host: str) -> list[str]:
    """Authorization endpoint URLs with credentials: one that times out, one that refuses
    the connection."""
    return [
        f"http://user:s3cr3t@{host}/auth?key=k3y",
        "http://user:s3cr3t@127.0.0.1:9/auth?key=k3y",
    ]


def assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text  # every record, formatted, tracebacks included
    assert "authorization endpoint" in text
    for secret in SECRETS:
        assert secret not in text


async def test_failing_connect_endpoints_log_no_credentials(
    silent_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for url in endpoint_urls(silent_endpoint):
        listener = await start_listener(
            "127.0.0.1:0", Recorder(), auth=AuthConfig(connect=HookConfig(url=url, timeout=0.3))
        )
        try:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/"):
                    pass
            assert refused.value.response.status_code == 503
        finally:
            await listener.stop()
    assert_no_secret(caplog)
    assert caplog.text.count("authorization endpoint http://user:***@") == 2


def test_an_endpoint_url_aiohttp_cannot_use_is_refused_without_its_password() -> None:
    """A password with an unencoded ``/`` makes the URL unusable (aiohttp reads a host
    ``user`` and a port ``pa``): refused with the configuration, its secrets masked."""
    with pytest.raises(ConfigError) as info:
        plan_config(
            parse_config(
                {
                    "listeners": [
                        {
                            "interface": 1,
                            "auth": {"connect": {"url": "http://user:pa/ss@auth:80/a?key=k3y"}},
                        }
                    ]
                },
                source="x.yaml",
                environ={},
            )
        )
    assert str(info.value) == (
        "x.yaml: listeners[0].auth.connect.url: expected an http(s) URL (percent-encode a"
        " password's reserved characters), got 'http://user:***@auth:80/a?***'"
    )


async def test_failing_join_endpoints_log_no_credentials(
    silent_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for url in endpoint_urls(silent_endpoint):
        listener = await start_listener(
            "127.0.0.1:0", "callbacks.pubsub", {"join_auth": {"url": url, "timeout": 0.3}}
        )
        try:
            async with websockets.connect(f"ws://127.0.0.1:{listener.port}/websocket/") as ws:
                await ws.send(json.dumps({"command": "join", "topics": ["t"]}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert answer["topic"] == "#join"
        finally:
            await listener.stop()
    assert_no_secret(caplog)


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(WAIT):
        answer = await reader.read()
    writer.close()
    return answer


TOKEN_LINE = b"GET /socket.io/?token=eyJhbGciOiJIUzI1NiJ9.JWTSECRET.sig&pad=" + b"a" * 9000
COOKIE = b"Cookie: session=COOKIESECRET" + b"b" * 9000


async def bad_requests(port: int, rpc: int) -> None:
    """Oversized requests carrying a token or a cookie, each to one of the HTTP servers of
    a process: the listener's front (a connection's first request), aiohttp behind it (a
    later request on a kept-alive connection), aiohttp alone (the RPC endpoint)."""
    answer = await raw_request(port, TOKEN_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")
    answer = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
        await reader.readexactly(length)
        writer.write(TOKEN_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.0 400")
    writer.close()
    answer = await raw_request(
        rpc, b"POST /rpc/broadcast.Publish HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.0 400")


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_served_logs_hold_no_token_no_traceback_and_one_line_per_event(
    tmp_path: Path, fmt: str
) -> None:
    port, rpc = free_port(), free_port()
    config = tmp_path / "echo.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n    callback: callbacks.echo\n'
        f'rpc:\n  http: "127.0.0.1:{rpc}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        "serve",
        "-c",
        str(config),
        "--log-format",
        fmt,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
        cwd=ROOT,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while b"listening on" not in await proc.stderr.readline():
                pass
        await bad_requests(port, rpc)
        # A path that tries to forge a record and paint the terminal, and a query. (The
        # route's pattern stops at a line feed; a carriage return returns to column 0.)
        forged = "%0D2026-01-01%2000:00:00,000%20INFO%20forged%1B%5B2J"
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/websocket/a{forged}?token=QUERYSECRET"
        ) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "hi"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            log = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for secret in ("JWTSECRET", "COOKIESECRET", "QUERYSECRET"):
        assert secret not in log
    assert "Traceback" not in log
    assert "\x1b" not in log
    assert "\r" not in log
    lines = log.splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        messages = [r["message"] for r in records]
    else:
        assert all(
            re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in lines
        )
        messages = lines
    bad = [m for m in messages if "bad request from 127.0.0.1: " in m]
    assert len(bad) == 4, messages  # one line each
    aiohttp_lines = [m for m in bad if m.endswith(": 400 Got more than 8190 bytes when reading")]
    assert len(aiohttp_lines) == 2, bad
    (opened,) = [m for m in messages if "open " in m and "transport=websocket" in m]
    if fmt == "text":
        assert opened.endswith("path=/a\\r2026-01-01 00:00:00,000 INFO forged\\x1b[2J")
    else:
        assert opened.endswith("path=/a\r2026-01-01 00:00:00,000 INFO forged\x1b[2J")
