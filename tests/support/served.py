"""``rabbitsocks serve`` in a subprocess, for tests of what only the real command does
(``--workers``, signals, the log)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["Served", "serving"]


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.log)


@contextlib.asynccontextmanager
async def serving(config: Path, *args: str, listening: int = 1) -> AsyncIterator[Served]:
    """``rabbitsocks serve -c config *args`` until ``listening`` "listening on" lines (one
    per worker and listener) were logged; stopped with SIGTERM (exit 0 expected) after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITSOCKS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rabbitsocks", "serve", "-c", str(config), *args,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    served = Served(proc)
    ready = asyncio.Event()

    async def read_log() -> None:
        seen = 0
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode():  # to the end: never a full pipe
            served.log.append(line)
            if "listening on" in line:
                seen += 1
                if seen == listening:
                    ready.set()

    reader = asyncio.create_task(read_log())
    try:
        try:
            await asyncio.wait_for(ready.wait(), 30)
        except TimeoutError:
            raise AssertionError("the server did not start:\n" + served.text) from None
        yield served
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, served.text
        await asyncio.wait_for(reader, 5)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
            await proc.wait()
        reader.cancel()
