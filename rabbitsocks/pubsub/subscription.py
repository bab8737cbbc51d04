"""Who the hub delivers to (a ``Subscription``), and what a join or a leave comes to.

Pure, and below both ``hub.py`` and ``resume.py``, which share these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rabbitsocks.frames import SharedFrame
from rabbitsocks.messages import Encoder

__all__ = ["FanoutWriter", "GapHandler", "JoinResult", "Subscription"]

#: Told that messages of ``topics`` published between two moments (milliseconds since the
#: Unix epoch) may not have reached the subscription: ``on_gap(topics, start_ms, end_ms)``.
GapHandler = Callable[[list[str], int, int], None]


class FanoutWriter(Protocol):
    """Where a subscription's messages go: any ``Writer`` (its ``send_shared``)."""

    def send_shared(self, frame: SharedFrame) -> None: ...


class Subscription:
    """One subscriber of the hub: a writer, and the format its messages are encoded in.

    Made by ``Hub.register``; a connection usually has one, a protocol with several
    subscriptions per connection (STOMP's ``SUBSCRIBE``) has one each. Compared by identity.
    """

    __slots__ = ("encoder", "on_gap", "send", "writer")

    def __init__(
        self, writer: FanoutWriter, encoder: Encoder, on_gap: GapHandler | None = None
    ) -> None:
        self.writer = writer
        self.encoder = encoder
        self.send = writer.send_shared  # bound once: one call per delivery on the hot path
        self.on_gap = on_gap

    def __repr__(self) -> str:
        return f"<Subscription {self.writer!r}>"


@dataclass(slots=True)
class JoinResult:
    """The outcome of a join or a leave: topics done, and topics refused by reason.

    A join with positions also says, per topic that had one, whether what followed it was
    recovered (``None``) or why not, and gives the frames to send after the answer.
    """

    done: list[str] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)
    resumed: dict[str, str | None] = field(default_factory=dict)
    replay: list[SharedFrame] = field(default_factory=list)
    #: Where the log of each history topic joined stands (not for those recovered: their
    #: replay, or the client's own position, says), as (offset, epoch).
    positions: dict[str, tuple[int, str]] = field(default_factory=dict)

    def refuse(self, topic: str, reason: str) -> None:
        self.refused.setdefault(reason, []).append(topic)
