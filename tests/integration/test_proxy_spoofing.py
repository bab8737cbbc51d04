"""Behind nginx configured as docs/operations.md shows, a client cannot choose its own
address with a forwarding header of its own.

nginx appends the client's address to ``X-Forwarded-For`` and passes every other header
through, ``Forwarded`` included; we believed ``Forwarded`` first, so a client that sent
``Forwarded: for=<anything>`` was that address for the per-address limit, the logs and the
authorization hooks: 6 connections through nginx under a limit of 2 per address.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from rabbitsocks import start_listener
from rabbitsocks.config import LimitsConfig
from tests.integration.test_proxies import nginx_in_front
from tests.support.docs import code_blocks
from tests.support.pubsub import free_port


@pytest.mark.slow
async def test_a_client_behind_nginx_cannot_forge_its_address(tmp_path: Path) -> None:
    (block,) = code_blocks("operations.md", "nginx")
    listener = await start_listener(
        "127.0.0.1:0",
        "callbacks.pubsub",
        trusted_proxies=("127.0.0.1",),
        limits=LimitsConfig(max_connections_per_address=2),
    )
    front = free_port()
    server_block = (
        block.replace("listen 80;", f"listen 127.0.0.1:{front};")
        .replace("server 10.0.0.11:8080;", f"server 127.0.0.1:{listener.port};")
        .replace("server 10.0.0.12:8080;", "")
    )
    try:
        async with (
            nginx_in_front(tmp_path, server_block, front),
            aiohttp.ClientSession() as http,
        ):
            url = f"http://127.0.0.1:{front}/websocket/"
            opened = [
                await http.ws_connect(url, headers={"Forwarded": f"for=198.51.100.{i}"})
                for i in range(2)
            ]
            # One address, ours, whatever we say: the limit of 2 is reached.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers={"Forwarded": "for=198.51.100.2"})
            assert refused.value.status == 503
            for ws in opened:
                await ws.close()
    finally:
        await listener.stop()
