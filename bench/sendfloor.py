"""This machine's floor for fan-out latency: writing one frame to each of N sockets.

A server delivering a message to N sockets makes N ``send()`` calls, and on loopback each
call also runs the receiving side's TCP processing. The last of N sockets therefore gets
its copy no sooner than N calls after the first, whatever the server does around them.
This measures that time with nothing else in the way: N connected loopback TCP pairs,
one small frame to each, ``socket.send`` in a plain loop, nobody reading (the frames sit
in the receive buffers). The bench prints it first, so that latency figures can be read
against it.

    python -m bench.sendfloor [-n 1000] [--size 160] [--rounds 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Any

__all__ = ["measure"]


def measure(n: int = 1000, size: int = 160, rounds: int = 20) -> dict[str, Any]:
    """Time ``rounds`` fan-outs of one ``size``-byte frame to ``n`` loopback sockets."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=n)
    clients: list[socket.socket] = []
    servers: list[socket.socket] = []
    try:
        address = listener.getsockname()
        for _ in range(n):
            clients.append(socket.create_connection(address))
            server, _ = listener.accept()
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            servers.append(server)
        frame = b"x" * size
        took = []
        for _ in range(rounds):  # each round adds `size` bytes to every receive buffer
            start = time.perf_counter()
            for server in servers:
                server.send(frame)
            took.append(time.perf_counter() - start)
            time.sleep(0.02)  # a pause between fan-outs, as between messages
    finally:
        for s in (*servers, *clients, listener):
            s.close()
    median = statistics.median(took)
    return {
        "n": n,
        "size": size,
        "rounds": rounds,
        "median_ms": median * 1e3,
        "min_ms": min(took) * 1e3,
        "max_ms": max(took) * 1e3,
        "per_send_us": median / n * 1e6,
    }


def describe(floor: dict[str, Any]) -> str:
    return (
        f"one {floor['size']}-byte frame to each of {floor['n']:,} loopback TCP sockets takes"
        f" {floor['median_ms']:.1f} ms here (median of {floor['rounds']}, min"
        f" {floor['min_ms']:.1f}; {floor['per_send_us']:.1f} us per send()): the last"
        " socket of a fan-out that size gets its copy that much after the first"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(describe(measure(args.n, args.size, args.rounds)))


if __name__ == "__main__":
    main()
