"""What Linux says about this process, read from /proc: its memory, and which TCP
connections it still holds. External state, so tests poll it with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["held_connections", "rss_bytes", "wait_until"]

# /proc/net/tcp states (include/net/tcp_states.h).
TCP_ESTABLISHED = 0x01


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def held_connections(local_port: int, remote_port: int | None = None) -> list[tuple[int, int]]:
    """TCP connections (IPv4) from ``local_port`` (to ``remote_port``) that a process still
    holds a file descriptor for, as ``(remote_port, state)``.

    A socket the process has closed while data was still queued lives on in the kernel as an
    orphan (FIN-WAIT-1, inode 0) until the peer reads or the kernel gives up: it costs kernel
    memory but no descriptor, so it is not listed.
    """
    held = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], int(fields[3], 16), int(fields[9])
        if int(local.rsplit(":", 1)[1], 16) != local_port or inode == 0:
            continue
        rport = int(remote.rsplit(":", 1)[1], 16)
        if rport == 0 or (remote_port is not None and rport != remote_port):
            continue  # the listening socket itself, or another connection
        held.append((rport, state))
    return held


async def wait_until(probe: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``probe`` every 20 ms until it holds; returns the seconds it took. Fails the test
    (AssertionError) after ``timeout`` seconds."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start
