"""Issue 13: Socket.IO's default transport under ``serve --workers 2``.

socket.io-client (and the demo page) starts every session with HTTP long-polling; the
kernel spreads its requests over both workers, and a worker that does not own the session
used to answer 400 "Invalid session" (50 clients: 277 to 389 errors, 806 to 962 of 1,000
messages delivered). Here 50 node socket.io-client clients with their default transports
connect, join, get every message, and no request is refused by either worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_workers import free_port_pair
from tests.support.crowd import everyone_gets
from tests.support.pubsub import amqp_url, free_port, unique
from tests.support.served import serving

CLIENTS = 50
MESSAGES = 20
PASSED = r"rabbitsocks_worker_requests_passed_total\{[^}]*\} (\S+)"
UNKNOWN_SESSIONS = r'rabbitsocks_errors_total\{[^}]*kind="unknown_session"\} (\S+)'


async def summed(admin: int, workers: int, metric: str) -> float:
    """``metric`` (a pattern whose group is the value) summed over every series of every
    worker's /metrics (each worker's admin port is ``admin + i``)."""
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for i in range(workers):
            async with http.get(f"http://127.0.0.1:{admin + i}/metrics") as response:
                text = await response.text()
            total += sum(float(found.group(1)) for found in re.finditer(metric, text))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("clients", [CLIENTS, 300])
async def test_default_socketio_clients_on_two_workers(tmp_path: Path, clients: int) -> None:
    # 50 as issue 13 asks; 300 at once also overflowed the first hand-off channel (a Unix
    # datagram queue holds 10), and its fallback answered requests of other sessions 400.
    port, admin = free_port(), free_port_pair()
    config = tmp_path / "workers.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
        f"brokers:\n  amqp: {{url: {json.dumps(amqp_url())}}}\n"
        f'admin: "127.0.0.1:{admin}"\n'
    )
    async with serving(config, "--workers", "2", listening=2):
        url = f"http://127.0.0.1:{port}"
        result = await everyone_gets(url, unique("crowd"), MESSAGES, clients)
        assert result["errors"] == []
        assert (result["complete"], result["received"]) == (clients, clients * MESSAGES)
        assert await summed(admin, 2, UNKNOWN_SESSIONS) == 0
        # The kernel spread the sessions' requests: some had to be passed on.
        assert await summed(admin, 2, PASSED) > 0
