"""STOMP transactions (BEGIN, COMMIT, ABORT) as RabbitMQ's STOMP plugin does them: the SEND,
ACK and NACK frames of a transaction are held by the connection, in order, and done on
COMMIT or dropped on ABORT. Pure: the session does the frames."""

from __future__ import annotations

from rabbitsocks.stomp.frames import Frame, StompError

__all__ = ["MAX_TRANSACTIONS", "MAX_TRANSACTION_FRAMES", "Transactions"]

#: Open transactions per connection, and frames held by one.
MAX_TRANSACTIONS = 16
MAX_TRANSACTION_FRAMES = 1000


class Transactions:
    """One connection's open transactions."""

    __slots__ = ("_held", "_open", "max_bytes")

    def __init__(self, max_bytes: int = 1 << 62) -> None:
        #: Octets (bodies and headers) all open transactions may hold together: what one
        #: frame may be (``max_frame_size``), since they are frames received and not yet
        #: done. Counted by frame, a transaction could hold 1,000 frames of that size.
        self.max_bytes = max_bytes
        self._open: dict[str, list[Frame]] = {}
        self._held = 0

    def begin(self, name: str) -> None:
        if name in self._open:
            raise StompError("Bad transaction", f"transaction {name!r} has already begun")
        if len(self._open) >= MAX_TRANSACTIONS:
            raise StompError(
                "Too many transactions", f"a connection may have {MAX_TRANSACTIONS} open"
            )
        self._open[name] = []

    def hold(self, name: str, frame: Frame) -> None:
        """Keep ``frame`` (its ``transaction`` header removed) for the COMMIT of ``name``."""
        frames = self._open.get(name)
        if frames is None:
            raise StompError("Bad transaction", f"invalid transaction identifier: {name!r}")
        if len(frames) >= MAX_TRANSACTION_FRAMES:
            raise StompError(
                "Transaction too large",
                f"a transaction holds {MAX_TRANSACTION_FRAMES} frames at most",
            )
        frame.headers.pop("transaction", None)
        size = _size(frame)
        if self._held + size > self.max_bytes:
            raise StompError(
                "Transaction too large", f"transactions hold {self.max_bytes} octets at most"
            )
        self._held += size
        frames.append(frame)

    def end(self, name: str) -> list[Frame]:
        """Close ``name`` (COMMIT or ABORT): the frames it held, in order."""
        frames = self._open.pop(name, None)
        if frames is None:
            raise StompError("Bad transaction", f"invalid transaction identifier: {name!r}")
        self._held -= sum(map(_size, frames))
        return frames


def _size(frame: Frame) -> int:
    """Octets of a held frame, about: its body and its headers."""
    return len(frame.body) + sum(
        len(name) + len(value) + 2 for name, value in frame.headers.items()
    )
