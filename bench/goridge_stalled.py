"""What stalled goridge senders cost a server: RSS held by N half-sent frames, and after.

    .venv/bin/python -m bench.goridge_stalled                # this tree, read_timeout 10 s
    .venv/bin/python -m bench.goridge_stalled --read-timeout 2
    .venv/bin/python -m bench.goridge_stalled --code /path/to/an/older/clone --legacy

Starts ``rabbitsocks serve`` (memory broker, goridge on a free loopback port) from the tree
given by ``--code``, opens N connections that each send the header of a frame as large as
the JSON codec allows (2 MiB + method name) and half of its payload, then stop. It prints
the server's RSS before, once the half frames are in, and ``--hold`` seconds later, with
how many connections the server had closed by then. ``--legacy`` leaves the ``rpc`` keys
an older tree does not know out of the configuration. A program that prints figures, not
a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

from bench.procstat import rss_bytes

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def frame_header(length: int) -> bytes:
    """A goridge v1 header (JSON codec) announcing ``length`` payload bytes, seq 1."""
    head = bytes([0x15, 0x08]) + struct.pack("<I", length)
    return head + struct.pack("<IH", zlib.crc32(head), 0) + struct.pack("<II", 1, 17)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def settle(pid: int, quiet: float = 1.0, limit: float = 30.0) -> int:
    """The RSS of ``pid`` once it stopped growing for ``quiet`` seconds."""
    start = time.monotonic()
    last, since = rss_bytes(pid), time.monotonic()
    while time.monotonic() - start < limit:
        await asyncio.sleep(0.1)
        now = rss_bytes(pid)
        if now > last + 256 * 1024:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return rss_bytes(pid)


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="stalled connections (100)")
    parser.add_argument("--read-timeout", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to wait after")
    parser.add_argument("--code", type=Path, default=ROOT, help="the rabbitsocks tree to run")
    parser.add_argument("--legacy", action="store_true", help="no rpc limit keys in the config")
    args = parser.parse_args()

    port = free_port()
    rpc = f"  goridge: {port}\n  goridge_max_connections: {args.n + 10}\n"
    if not args.legacy:
        rpc += f"  read_timeout: {args.read_timeout}\n"
    else:
        rpc = f"  goridge: {port}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(f'listeners:\n  - interface: "127.0.0.1:0"\nrpc:\n{rpc}')
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}
    env = {k: v for k, v in env.items() if not k.startswith("RABBITSOCKS_")}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitsocks",
        "serve",
        "-c",
        config.name,
        "--log-level",
        "warning",
        env=env,
        cwd=args.code,
    )
    try:
        for _ in range(200):
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            probe.close()
            break
        before = await settle(server.pid)
        half = frame_header(2 * MIB + 1024) + b"broadcast.Publish" + b"x" * MIB
        peers = []
        for _ in range(args.n):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(half)
            peers.append((reader, writer))
        for _, writer in peers:
            await writer.drain()
        held = await settle(server.pid)
        started = time.monotonic()
        results = await asyncio.gather(
            *(asyncio.wait_for(closed(r), args.hold) for r, _ in peers), return_exceptions=True
        )
        cut = sum(1 for r in results if r is True)
        took = time.monotonic() - started
        after = await settle(server.pid)
        print(f"code: {args.code}  read_timeout: {'-' if args.legacy else args.read_timeout}")
        print(f"RSS before:                          {before / MIB:8.1f} MiB")
        print(
            f"RSS with {args.n} half frames held:      {held / MIB:8.1f} MiB"
            f"  (+{(held - before) / MIB:.1f})"
        )
        print(f"connections cut by the server:       {cut} of {args.n} (within {took:.1f} s)")
        print(
            f"RSS {args.hold:g} s later:                 {after / MIB:8.1f} MiB"
            f"  (+{(after - before) / MIB:.1f})"
        )
        for _, writer in peers:
            writer.close()
    finally:
        server.terminate()
        await server.wait()
        os.unlink(config.name)


if __name__ == "__main__":
    asyncio.run(main())
