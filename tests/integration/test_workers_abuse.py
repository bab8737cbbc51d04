"""``serve --workers 2`` attacked through its session affinity (transports/affinity.py):
requests naming the other worker's sessions, connections that close at once, bodies that
never come. Each test failed on the code before its fix.

Session ids name their worker by their first character ("0..." or "1..."): a client can
make any request go to either worker, whichever accepted its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.procfs import wait_until
from tests.support.pubsub import free_port
from tests.support.served import Served, serving

HANDSHAKE_TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[int, Served, list[int]]]:
    """Two workers on the memory broker (nothing here needs messages to cross them): the
    port, the process, and the workers' pids."""
    port = free_port()
    config = tmp_path / "workers.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
        f"    limits: {{handshake_timeout: {HANDSHAKE_TIMEOUT}}}\n"
        "log: {level: info}\n"
    )
    async with serving(config, "--workers", "2", listening=2) as served:
        found = re.search(r"started 2 workers: pids (\d+) (\d+)", served.text)
        assert found, served.text
        yield port, served, [int(pid) for pid in found.groups()]


def descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, read the whole answer (the server ends the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def poll(sid: str, *, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\n{connection}\r\n"
    ).encode()


@pytest.mark.slow
async def test_a_request_for_the_other_worker_moves_its_socket(tmp_path: Path) -> None:
    # Python 3.11's socket.send_fds drops its address argument: every hand-off failed with
    # ENOTCONN, logged a line and fell back to a relay through the worker that accepted.
    async with two_workers(tmp_path) as (port, served, _):
        for i in range(20):
            for worker in "01":  # whichever worker accepts, half go to the other one
                answer = await exchange(port, poll(f"{worker}nosuchsession{i}"))
                assert answer.startswith(b"HTTP/1.1 400 "), answer
                assert b"Session ID unknown" in answer, answer
        assert "could not hand a connection" not in served.text, served.text[-2000:]


@pytest.mark.slow
async def test_relayed_connections_leave_nothing_behind(tmp_path: Path) -> None:
    # A first request too large to hand over (64 KiB read with its head) is relayed; a
    # relay whose two ends both finished (the client's FIN, the owner's) was never closed:
    # 2 descriptors held for ever, per connection, in the worker that passed it on.
    body = b"x" * (70 * 1024)
    async with two_workers(tmp_path) as (port, _, pids):
        before = [descriptors(pid) for pid in pids]
        for i in range(50):
            for worker in "01":
                request = (
                    f"POST /socket.io/?EIO=4&transport=polling&sid={worker}nosuch{i} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                answer = await exchange(port, request + body)
                assert b"Session ID unknown" in answer, answer
        for pid, count in zip(pids, before, strict=True):
            await wait_until(
                lambda pid=pid, count=count: descriptors(pid) <= count + 2,  # type: ignore[misc]
                5,
                f"worker {pid} to hold no more descriptors than before",
            )


@pytest.mark.slow
async def test_a_forwarded_post_whose_body_never_comes_is_answered(tmp_path: Path) -> None:
    # A later request on a kept-alive connection is forwarded over HTTP; its body was read
    # with no deadline (a connection held for as long as the client liked), and a client
    # that left in the middle of it made aiohttp log a traceback.
    async with two_workers(tmp_path) as (port, served, _):
        # The client that leaves goes first: by the other one's 408, a second later, its
        # request has long been handled.
        for leave in (True, False):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                opened = await reader.readexactly(length)
                other = "1" if b'"sid":"0' in opened else "0"  # the worker that did not answer
                writer.write(
                    f"POST /socket.io/?EIO=4&transport=polling&sid={other}nosuch HTTP/1.1\r\n"
                    "Host: x\r\nContent-Length: 1000\r\n\r\n40".encode()
                )
                if leave:
                    await writer.drain()
                    continue
                async with asyncio.timeout(HANDSHAKE_TIMEOUT + 5):
                    status = await reader.readline()
                    assert status.split()[1] == b"408", status
                    await reader.read()  # and the connection ends
            finally:
                writer.close()
    assert "Traceback" not in served.text, served.text[-3000:]


@pytest.mark.slow
async def test_a_handed_off_request_whose_body_follows_its_head(tmp_path: Path) -> None:
    # The owner started reading a handed-off socket before it was given the bytes the
    # other worker had read: a body that arrived meanwhile was taken for the head of the
    # request (431 "request head larger than 16384 bytes", or 400).
    body = b"4" * 30_000
    async with two_workers(tmp_path) as (port, _, _):
        for i in range(150):
            for worker in "01":
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.get_extra_info("socket").setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                    )
                    writer.write(
                        f"POST /socket.io/?EIO=4&transport=polling&sid={worker}nosuch{i} "
                        "HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                    )
                    await writer.drain()
                    writer.write(body)  # a segment of its own, after the head
                    async with asyncio.timeout(5):
                        answer = await reader.read()
                    assert b"Session ID unknown" in answer, answer[:200]
                finally:
                    writer.close()
