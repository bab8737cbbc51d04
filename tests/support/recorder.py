"""A callback that records its calls, for tests; it can be told to refuse or to crash.

Frames drive it: ``crash`` raises in ``handle_frame``, ``close:<code>:<reason>`` raises
``CloseConnection``, ``bye`` closes through the writer, anything else is echoed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rabbitsocks import CloseConnection, Writer, current_connection


@dataclass
class State:
    path: str
    writer: Writer | None = None
    frames: list[str | bytes] = field(default_factory=list)


class Recorder:
    def __init__(
        self,
        *,
        subprotocol: str | list[str] | None = None,
        refuse: Exception | None = None,
        crash_in_open: bool = False,
        greet: str | None = None,
    ) -> None:
        self.subprotocol = subprotocol
        self.refuse = refuse
        self.crash_in_open = crash_in_open
        self.greet = greet
        self.inits: list[tuple[str, Any]] = []
        self.opened: list[State] = []
        self.terminated: list[State] = []
        self.terminate_event = asyncio.Event()

    def subprotocol_name(self) -> str | list[str] | None:
        return self.subprotocol

    async def init(self, path: str, options: Any) -> State:
        self.inits.append((path, options))
        if self.refuse is not None:
            raise self.refuse
        return State(path)

    def open(self, writer: Writer, state: State) -> State:
        if self.crash_in_open:
            raise RuntimeError("open exploded")
        state.writer = writer
        self.opened.append(state)
        if self.greet is not None:
            writer.send(self.greet)
        return state

    async def handle_frame(self, frame: str | bytes, state: State) -> State:
        state.frames.append(frame)
        assert state.writer is not None
        if frame == "crash":
            raise ValueError("handle_frame exploded")
        if isinstance(frame, str) and frame.startswith("close:"):
            _, code, reason = frame.split(":", 2)
            raise CloseConnection(int(code), reason)
        if frame == "bye":
            state.writer.close(4000, "bye")
            return state
        if frame == "path":
            state.writer.send(state.path)
            return state
        if frame == "subprotocol":
            state.writer.send(str(current_connection().subprotocol))
            return state
        state.writer.send(frame)
        return state

    def terminate(self, state: State) -> None:
        self.terminated.append(state)
        self.terminate_event.set()

    async def wait_terminated(self, count: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.terminated) < count:
                self.terminate_event.clear()
                await self.terminate_event.wait()

        await asyncio.wait_for(until(), timeout)


# A module-level instance, for tests that start a real server process by import string:
# "tests.support.recorder:recorder".
recorder = Recorder()
