"""The load generator: node worker processes (``loadgen.mjs``) and their control.

Several processes, because one node process tops out near 100,000 messages/s (issue 6)
and the targets are meant to go past that. Each worker is driven by JSON lines over its
stdin and stdout; see the worker's header for the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procstat import cpu_seconds

__all__ = ["LoadGenerator", "node_available"]

WORKER = Path(__file__).resolve().parent / "loadgen.mjs"
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"


def node_available() -> str | None:
    """Why the load generator cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (Node 18 or newer)"
    if not (NODE_MODULES / "ws").is_dir():
        return "node_modules is missing: run `npm ci --prefix bench` (or `bench/run` does it)"
    return None


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    lock: asyncio.Lock

    async def ask(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load generator {self.proc.pid} exited")
        answer: dict[str, Any] = json.loads(line)
        return answer


class LoadGenerator:
    """``workers`` node processes sharing the subscribers of one scenario."""

    def __init__(self, workers: int) -> None:
        self.size = workers
        self._workers: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    async def start(self) -> None:
        for _ in range(self.size):
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(WORKER),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )
            self._workers.append(_Worker(proc, asyncio.Lock()))

    async def _all(self, message: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.ask(message, timeout) for w in self._workers)))

    async def connect(
        self,
        kind: str,
        url: str,
        topics: list[str],
        n: int,
        *,
        concurrency: int,
        timeout: float,
        total_timeout: float,
        addr_every: int = 25_000,
        engine: str = "raw",
    ) -> dict[str, Any]:
        """Open ``n`` subscribers; connection ``i`` joins ``topics[i % len(topics)]``."""
        share, extra = divmod(n, self.size)
        first = 0
        asks = []
        for k, worker in enumerate(self._workers):
            count = share + (1 if k < extra else 0)
            asks.append(
                worker.ask(
                    {
                        "cmd": "connect",
                        "kind": kind,
                        "engine": engine,
                        "url": url,
                        "topics": topics,
                        "first": first,
                        "count": count,
                        "concurrency": max(1, concurrency // self.size),
                        "timeout_ms": int(timeout * 1000),
                        "total_timeout_ms": int(total_timeout * 1000),
                        "addr_every": addr_every,
                    },
                    total_timeout + timeout + 10,
                )
            )
            first += count
        answers = await asyncio.gather(*asks)
        errors: dict[str, int] = {}
        for a in answers:
            for why, count in a["errors"].items():
                errors[why] = errors.get(why, 0) + count
        return {
            "ok": sum(a["ok"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": errors,
            "seconds": max(a["ms"] for a in answers) / 1000,
        }

    async def phase(self, phase: int) -> None:
        await self._all({"cmd": "phase", "phase": phase}, 10)

    async def received(self, expected: dict[str, int]) -> tuple[int, int]:
        """Messages received in this phase, and how many the open sockets should get."""
        answers = await self._all({"cmd": "count", "expected": expected}, 10)
        return sum(a["received"] for a in answers), sum(a["want"] for a in answers)

    async def stats(self, expected: dict[str, int]) -> list[dict[str, Any]]:
        return await self._all({"cmd": "stats", "expected": expected}, 30)

    async def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(RuntimeError, TimeoutError, OSError, ValueError):
                await worker.ask({"cmd": "close"}, 10)
        for worker in self._workers:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()
        self._workers.clear()
