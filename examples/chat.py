"""A chat room callback: every text frame is sent to everyone in the same room.

The room is the path: clients of ``/websocket/lobby`` (or Socket.IO namespace ``/lobby``)
talk to each other. Serve it with ``callback: examples.chat`` in a listener.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rabbitsocks import ConnectionRefused, ListenerContext, SharedFrame, Writer


@dataclass(frozen=True)
class Options:
    max_room_size: int = 50


@dataclass
class Member:
    room: str
    name: str = "anonymous"
    writer: Writer | None = None


@dataclass
class ChatRoom:
    options: Options
    rooms: dict[str, set[Writer]] = field(default_factory=dict)

    def subprotocol_name(self) -> str:
        return "chat"

    def init(self, path: str, options: Any) -> Member:
        if not path:
            raise ConnectionRefused("pick a room: /websocket/<room>", status=400)
        if len(self.rooms.get(path, ())) >= self.options.max_room_size:
            raise ConnectionRefused("this room is full", status=403)
        return Member(room=path)

    def open(self, writer: Writer, member: Member) -> Member:
        member.writer = writer
        self.rooms.setdefault(member.room, set()).add(writer)
        return member

    def handle_frame(self, frame: str | bytes, member: Member) -> Member:
        if isinstance(frame, bytes):
            raise ValueError("this room speaks text")  # closes this connection with 1011
        if frame.startswith("/nick "):
            member.name = frame.removeprefix("/nick ").strip() or member.name
            return member
        line = SharedFrame(f"{member.name}: {frame}")  # encoded once for the whole room
        for writer in self.rooms[member.room]:
            writer.send_shared(line)
        return member

    def terminate(self, member: Member) -> None:
        room = self.rooms.get(member.room, set())
        if member.writer is not None:
            room.discard(member.writer)
        if not room:
            self.rooms.pop(member.room, None)


def setup(context: ListenerContext) -> ChatRoom:
    """One ChatRoom per listener: rooms are not shared between listeners."""
    return ChatRoom(context.options)
