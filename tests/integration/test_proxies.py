"""Issue 13: behind the load balancers docs/operations.md shows, as written there.

Two rabbitsocks processes (two "hosts") on RabbitMQ behind HAProxy (sticky by the Engine.IO
cookie, the client's address in the PROXY protocol, /ready as the health check) and behind
nginx (sticky by address, X-Forwarded-For). 50 socket.io-client clients with their default
transports (polling, then the upgrade) come from five addresses, 127.0.0.2 to .6, with a
limit of 10 connections per address: only if each process sees the clients' addresses
rather than the proxy's can they all connect. Every message must reach every client.

The proxies' configurations are the code blocks of docs/operations.md, with their
addresses and ports replaced by this test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_workers_socketio import CLIENTS, MESSAGES
from tests.support.crowd import everyone_gets
from tests.support.docs import code_blocks
from tests.support.pubsub import amqp_url, free_port, unique
from tests.support.served import Served, serving

PER_ADDRESS = 10
SOURCES = 5


def require(program: str) -> str:
    for path in (shutil.which(program), f"/usr/sbin/{program}"):
        if path and Path(path).exists():
            return path
    pytest.fail(f"{program} is not installed: apt-get install -y haproxy nginx-light")


@contextlib.asynccontextmanager
async def two_servers(
    tmp_path: Path, *, proxy_protocol: bool
) -> AsyncIterator[list[tuple[int, int, Served]]]:
    """Two ``rabbitsocks serve`` processes: (port, admin port, process) each."""
    servers: list[tuple[int, int, Served]] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            port, admin = free_port(), free_port()
            config = tmp_path / f"{name}.yaml"
            config.write_text(
                f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
                '    trusted_proxies: ["127.0.0.1"]\n'
                f"    proxy_protocol: {json.dumps(proxy_protocol)}\n"
                "    socketio: {cookie: io}\n"
                f"    limits: {{max_connections_per_address: {PER_ADDRESS}}}\n"
                f"brokers:\n  amqp: {{url: {json.dumps(amqp_url())}}}\n"
                f'admin: "127.0.0.1:{admin}"\n'
                "log: {level: info}\n"
            )
            served = await stack.enter_async_context(serving(config))
            servers.append((port, admin, served))
        yield servers


@contextlib.asynccontextmanager
async def running(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(15):
        while True:
            if proc.returncode is not None:
                assert proc.stderr is not None
                raise AssertionError((await proc.stderr.read()).decode())
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # the proxy process binding its port: polled
                continue
            writer.close()
            return


@contextlib.asynccontextmanager
async def nginx_in_front(tmp_path: Path, server_block: str, front: int) -> AsyncIterator[None]:
    """nginx serving ``server_block`` (docs/operations.md's, with local addresses), once it
    listens on ``front``; its files under ``tmp_path``."""
    nginx = require("nginx")
    (tmp_path / "nginx").mkdir()
    path = tmp_path / "nginx" / "nginx.conf"
    path.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path}/body;\n"
        f"proxy_temp_path {tmp_path}/proxy;\n{server_block}\n}}\n"
    )
    async with running(
        nginx, "-c", str(path), "-p", str(tmp_path / "nginx"), "-g", "daemon off;"
    ) as proc:
        await until_listening(front, proc)
        yield


async def everyone_gets_everything(front: int, servers: list[tuple[int, int, Served]]) -> None:
    url = f"http://127.0.0.1:{front}"
    result = await everyone_gets(
        url, unique("proxied"), MESSAGES, CLIENTS, SOURCES, withCredentials=True
    )
    assert result["errors"] == []
    assert (result["complete"], result["received"]) == (CLIENTS, CLIENTS * MESSAGES)
    log = "".join(served.text for _, _, served in servers)
    # The processes saw the clients, not the proxy.
    assert re.search(r"open \S+ remote=127\.0\.0\.[2-6] transport=socketio", log), log[-2000:]
    assert not re.search(r"remote=127\.0\.0\.1 transport=socketio", log)
    assert "too many connections" not in log


@pytest.mark.slow
async def test_behind_haproxy_as_the_docs_show(tmp_path: Path) -> None:
    haproxy = require("haproxy")
    (block,) = code_blocks("operations.md", "haproxy")
    front = free_port()
    async with two_servers(tmp_path, proxy_protocol=True) as servers:
        (port_a, admin_a, _), (port_b, admin_b, _) = servers
        config = (
            block.replace("bind :80", f"bind 127.0.0.1:{front}")
            .replace("10.0.0.11:8080", f"127.0.0.1:{port_a}")
            .replace("10.0.0.12:8080", f"127.0.0.1:{port_b}")
            .replace("cookie rs1 check port 8082", f"cookie rs1 check port {admin_a}")
            .replace("cookie rs2 check port 8082", f"cookie rs2 check port {admin_b}")
        )
        assert "10.0.0" not in config
        assert "8082" not in config
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        async with running(haproxy, "-f", str(path), "-db") as proc:
            await until_listening(front, proc)
            await everyone_gets_everything(front, servers)
        logs = [served.text for _, _, served in servers]
        assert all("transport=socketio" in text for text in logs), "roundrobin used one server"


@pytest.mark.slow
async def test_behind_nginx_as_the_docs_show(tmp_path: Path) -> None:
    (block,) = code_blocks("operations.md", "nginx")
    front = free_port()
    async with two_servers(tmp_path, proxy_protocol=False) as servers:
        (port_a, _, _), (port_b, _, _) = servers
        server_block = (
            block.replace("listen 80;", f"listen 127.0.0.1:{front};")
            .replace("10.0.0.11:8080", f"127.0.0.1:{port_a}")
            .replace("10.0.0.12:8080", f"127.0.0.1:{port_b}")
        )
        assert "10.0.0" not in server_block
        async with nginx_in_front(tmp_path, server_block, front):
            await everyone_gets_everything(front, servers)
