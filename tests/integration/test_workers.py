"""`rabbitsocks serve --workers 2`: two processes on one port, one queue each."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.pubsub import AmqpPublisher, amqp_url, free_port, unique

ROOT = Path(__file__).resolve().parents[2]


def free_port_pair() -> int:
    """A port p with p + 1 free too: worker i serves the admin endpoint on p + i."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports")


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


@pytest.mark.slow
async def test_two_workers_share_the_port_and_deliver_once(tmp_path: Path) -> None:
    url = amqp_url()
    admin = free_port_pair()
    port = free_port()
    while port in (admin, admin + 1):
        port = free_port()
    config = tmp_path / "workers.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
        f"brokers:\n  amqp: {{url: {json.dumps(url)}}}\n"
        f'admin: "127.0.0.1:{admin}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITSOCKS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rabbitsocks", "serve", "-c", str(config), "--workers", "2",
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []
    connected = asyncio.Event()

    async def read_log() -> None:
        # Read to the end: a full pipe would block the workers' logging.
        seen = 0
        while line := (await proc.stderr.readline()).decode():  # type: ignore[union-attr]
            log.append(line)
            if "listening on" in line:  # after the broker connected (server start order)
                seen += 1
                if seen == 2:
                    connected.set()

    reader = asyncio.create_task(read_log())
    topic = unique("workers")
    try:
        try:
            await asyncio.wait_for(connected.wait(), 30)
        except TimeoutError:
            raise AssertionError("the workers did not start:\n" + "".join(log)) from None
        async with aiohttp.ClientSession() as session:
            clients = []
            for _ in range(24):  # the kernel spreads these over both workers
                ws = await session.ws_connect(f"http://127.0.0.1:{port}/websocket/")
                await ws.send_json({"command": "join", "topics": [topic]})
                assert (await ws.receive_json(timeout=5))["topic"] == "@join"
                clients.append(ws)
            metrics = [await scrape(f"http://127.0.0.1:{admin + i}/metrics") for i in range(2)]
            per_worker = [
                re.search(
                    r'rabbitsocks_connections\{listener="[^"]+",transport="websocket"\} (\S+)',
                    text,
                )
                for text in metrics
            ]
            counts = [float(m.group(1)) for m in per_worker if m]
            assert sum(counts) == 24
            assert all(c > 0 for c in counts), counts
            # Each worker froze what it started with: out of every later full collection.
            for text in metrics:
                frozen = re.search(r"^rabbitsocks_gc_frozen_objects (\S+)$", text, re.M)
                assert frozen is not None
                assert float(frozen.group(1)) > 10_000
            publisher = await AmqpPublisher.open(url)
            try:
                await publisher.publish(topic, b"to all")
                await publisher.publish(topic, b"sentinel")
            finally:
                await publisher.close()
            for ws in clients:
                assert await ws.receive_json(timeout=5) == {"topic": topic, "payload": "to all"}
                assert await ws.receive_json(timeout=5) == {"topic": topic, "payload": "sentinel"}
            proc.send_signal(signal.SIGTERM)
            for ws in clients:
                msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert msg.data == 1001
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await asyncio.wait_for(reader, 5)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
            await proc.wait()
        reader.cancel()


async def test_workers_refuse_port_0(tmp_path: Path) -> None:
    config = tmp_path / "zero.yaml"
    config.write_text('listeners:\n  - interface: "127.0.0.1:0"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rabbitsocks", "serve", "-c", str(config), "--workers", "2",
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert (
        err.decode()
        .strip()
        .endswith(
            f"rabbitsocks: {config}: listeners[0].interface: --workers needs a fixed port"
            " (port 0 would give each worker another one)"
        )
    )


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "orphans.yaml"
    config.write_text(
        f'listeners:\n  - interface: "127.0.0.1:{port}"\n    callback: callbacks.echo\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rabbitsocks", "serve", "-c", str(config), "--workers", "2",
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    pids: list[int] = []

    async def started() -> None:
        while not pids:
            line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
            assert line
            if match := re.search(r"started 2 workers: pids (\d+) (\d+)", line):
                pids.extend(int(p) for p in match.groups())

    try:
        await asyncio.wait_for(started(), 20)
    finally:
        proc.kill()  # no SIGTERM to forward: the workers must notice by themselves
        await proc.wait()

    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids):  # another process's life: polled, with a deadline
        assert time.monotonic() < deadline, f"workers {pids} outlived their supervisor"
        await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            state = status.read().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return False
    return "zombie" not in state
